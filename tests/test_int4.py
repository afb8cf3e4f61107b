"""4-bit export of matrices that were 4-bit to begin with (export/int4.py), on real weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_c2i.export.files import size
from edge_c2i.export.int4 import grid_codes, quantize_int4


@pytest.fixture(scope="module")
def smol_weight():
    """A down_proj of the packaged SmolLM2 (GGUF Q4_1), as ONNX holds it: K x N."""
    from safetensors.numpy import load_file

    from edge_c2i.models import resolve

    weights = load_file(resolve("smollm2-135m") / "model.safetensors")
    return np.ascontiguousarray(weights["model.layers.3.mlp.down_proj.weight"].T)


def _one_matmul(w: np.ndarray, path) -> None:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _run(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_a_q4_1_matrix_is_found_on_its_grid(smol_weight):
    codes, step, lo = grid_codes(smol_weight)
    n_out, blocks = step.shape
    assert codes.shape == (n_out, blocks, 32) and codes.max() == 15
    rebuilt = (codes * step[..., None] + lo[..., None]).reshape(n_out, -1).T
    assert np.abs(rebuilt - smol_weight).max() <= 1e-6 * np.abs(smol_weight).max()
    rng = np.random.default_rng(0)
    assert grid_codes(rng.standard_normal((64, 8)).astype(np.float32)) is None


def test_int4_of_a_grid_matrix_is_exact_and_of_others_is_rounded(smol_weight, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, smol_weight.shape[0])).astype(np.float32)
    want = x @ smol_weight
    _one_matmul(smol_weight, tmp_path / "grid.onnx")
    # accuracy level 1 (fp32 activations): the weights are exact, float rounding only
    info = quantize_int4(tmp_path / "grid.onnx", tmp_path / "grid4.onnx", accuracy_level=1,
                         remainder="product")
    assert (info["matmuls_exact_grid"], info["matmuls_fitted"]) == (1, 0)
    got = _run(tmp_path / "grid4.onnx", x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # the default, level 4, rounds the activations to int8 per block: a small error only
    info = quantize_int4(tmp_path / "grid.onnx", tmp_path / "grid4_l4.onnx", remainder="product")
    assert info["accuracy_level"] == 4
    fast = np.abs(_run(tmp_path / "grid4_l4.onnx", x) - want).max() / np.abs(want).max()
    assert 1e-7 < fast < 2e-2
    # the same matrix moved off its grid: ONNX Runtime's round-to-nearest, a real error
    off = smol_weight + rng.standard_normal(smol_weight.shape).astype(np.float32) * 1e-3
    _one_matmul(off, tmp_path / "off.onnx")
    info = quantize_int4(tmp_path / "off.onnx", tmp_path / "off4.onnx")
    assert (info["matmuls_exact_grid"], info["matmuls_fitted"]) == (0, 1)
    err = np.abs(_run(tmp_path / "off4.onnx", x) - x @ off).max() / np.abs(x @ off).max()
    assert max(1e-4, 2 * fast) < err < 0.2
    assert size(tmp_path / "grid4.onnx") < 0.2 * size(tmp_path / "grid.onnx")


def test_a_grid_matrix_stays_exact_beside_a_rounded_one(smol_weight, tmp_path):
    """One model with both kinds: the rounding of the off-grid matrix must not reach the grid
    matrix's remainder product (ONNX Runtime's quantizer rounds every MatMul it is not told
    to leave alone)."""
    k, n = smol_weight.shape
    rng = np.random.default_rng(1)
    off = rng.standard_normal((k, n)).astype(np.float32) * 0.02
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "grid"], ["y"], name="/grid/MatMul"),
         helper.make_node("MatMul", ["x", "off"], ["z"], name="/off/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, None, n])],
        [numpy_helper.from_array(smol_weight, "grid"), numpy_helper.from_array(off, "off")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
              tmp_path / "both.onnx")
    info = quantize_int4(tmp_path / "both.onnx", tmp_path / "both4.onnx", accuracy_level=1,
                         remainder="product")
    assert (info["matmuls_exact_grid"], info["matmuls_fitted"]) == (1, 1)
    q = onnx.load(tmp_path / "both4.onnx").graph
    assert [n.op_type for n in q.node if "remainder" in n.name] == ["MatMul"]
    x = rng.standard_normal((1, 5, k)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "both4.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    y, z = session.run(None, {"x": x})
    want = x @ smol_weight
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(z - x @ off).max() > 1e-4 * np.abs(x @ off).max()


def test_folded_remainders_are_near_exact_in_one_product(smol_weight, tmp_path):
    """The default: the grid's remainders ride in the same MatMulNBits (inputs [x, blockmeans]),
    rounded to 4 bits on their own.  At fp32 activations its error is far below rounding the
    zero points (the remainders dropped) and above float rounding; the file is smaller than
    with the fp32 remainder product."""
    from edge_c2i.export.int4 import _zero_and_remainder

    k, n = smol_weight.shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, k)).astype(np.float32)
    want = x @ smol_weight
    _one_matmul(smol_weight, tmp_path / "grid.onnx")
    info = quantize_int4(tmp_path / "grid.onnx", tmp_path / "folded.onnx", accuracy_level=1)
    assert info["remainder"] == "folded" and info["matmuls_exact_grid"] == 1
    graph = onnx.load(tmp_path / "folded.onnx").graph
    assert [nd.op_type for nd in graph.node] == ["AveragePool", "Concat", "MatMulNBits"]
    nbits = graph.node[-1]
    assert {a.name: a.i for a in nbits.attribute}["K"] == k + k // 32
    err = np.abs(_run(tmp_path / "folded.onnx", x) - want).max() / np.abs(want).max()
    codes, step, lo = grid_codes(smol_weight)
    zero, _ = _zero_and_remainder(step, lo)  # remainders dropped: zero points rounded
    dropped = ((codes.astype(np.float64) - zero[..., None]) * step[..., None]).reshape(n, -1).T
    err_dropped = np.abs(x @ dropped - want).max() / np.abs(want).max()
    assert 1e-6 < err < 0.1 * err_dropped
    quantize_int4(tmp_path / "grid.onnx", tmp_path / "product.onnx", remainder="product")
    assert size(tmp_path / "folded.onnx") < 0.93 * size(tmp_path / "product.onnx")


def test_fitted_codes_are_never_worse_than_round_to_nearest(smol_weight):
    """Off-grid blocks (the packaged matrix plus noise, and a factor-like matrix whose K is
    not a multiple of 32): per block, the fitted codes' squared error is at most plain
    round-to-nearest's (its first candidate), and clearly lower overall."""
    from edge_c2i.export.int4 import fitted_codes

    rng = np.random.default_rng(2)
    for w in (smol_weight + rng.standard_normal(smol_weight.shape).astype(np.float32) * 1e-3,
              rng.standard_t(4, (50, 96)).astype(np.float32)):
        k, n = w.shape
        codes, step, zero = fitted_codes(w)
        padded = np.pad(w, ((0, -k % 32), (0, 0)), mode="edge")
        blocks = padded.T.reshape(n, -1, 32).astype(np.float64)
        fit = (((codes.astype(np.float64) - zero[..., None]) * step[..., None] - blocks) ** 2).sum(-1)
        lo, hi = blocks.min(-1), blocks.max(-1)
        s = np.maximum((hi - lo) / 15, 1e-30)
        z = np.clip(np.rint(-lo / s), 0, 15)
        q = np.clip(np.rint(blocks / s[..., None] + z[..., None]), 0, 15)
        rtn = (((q - z[..., None]) * s[..., None] - blocks) ** 2).sum(-1)
        assert np.all(fit <= rtn * (1 + 1e-5) + 1e-12)
        assert fit.sum() < 0.9 * rtn.sum()
        assert codes.max() <= 15 and zero.max() <= 15


@pytest.fixture(scope="module")
def gemma_weights():
    """Three matrices of the packaged Gemma-3 (GGUF Q4_K_M) as ONNX holds them (K x N): layer
    0's MLP gate (Q5_0), V (Q8_0) and MLP down (Q6_K), none of them on a 4-bit grid."""
    from safetensors import safe_open

    from edge_c2i.models import resolve

    folder = resolve("gemma3-270m")
    names = {"q5_0": "mlp.gate_proj", "q8_0": "self_attn.v_proj", "q6_k": "mlp.down_proj"}
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "np") as f:
            keys = set(f.keys())
            for kind, name in names.items():
                key = f"model.layers.0.{name}.weight"
                if key in keys:
                    out[kind] = np.ascontiguousarray(f.get_tensor(key).T)
    assert set(out) == set(names)
    return out


def test_finer_gguf_grids_are_found_and_kept_in_8_bits(gemma_weights, smol_weight):
    from edge_c2i.export.int4 import codes8, finer_grid

    rng = np.random.default_rng(0)
    assert not finer_grid(rng.standard_normal((64, 8)).astype(np.float32))
    assert not finer_grid(smol_weight)  # Q4_1: on a 4-bit grid, not a finer one
    for kind, w in gemma_weights.items():
        assert grid_codes(w) is None and finer_grid(w), kind
        codes, step, zero = codes8(w)
        k, n = w.shape
        back = (step[..., None] * (codes.astype(np.float64) - zero[..., None]))
        err = np.abs(back.reshape(n, k).T - w).max() / np.abs(w).max()
        if kind == "q6_k":  # two scales per block of 32: rounded on 255 steps
            assert 1e-6 < err < 1 / 255
        else:  # symmetric: the grid itself
            assert err <= 1e-6, kind


def test_int4_keeps_a_q5_0_matrix_in_8_bits_unless_told(gemma_weights, tmp_path):
    w = gemma_weights["q5_0"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, w.shape[0])).astype(np.float32)
    want = x @ w
    _one_matmul(w, tmp_path / "q5.onnx")
    info = quantize_int4(tmp_path / "q5.onnx", tmp_path / "q5_8.onnx", accuracy_level=1)
    assert (info["finer"], info["matmuls_8bit"], info["matmuls_fitted"]) == ("int8", 1, 0)
    assert info["matmuls_8bit_as_two_4bit"] == 1
    nodes = onnx.load(tmp_path / "q5_8.onnx").graph.node
    # fp32 activations: the 8-bit codes as two 4-bit products (their nibbles), added, which
    # ONNX Runtime runs by its fast kernel; the same weights, to float rounding
    assert [n.op_type for n in nodes] == ["MatMulNBits", "MatMulNBits", "Add"]
    assert [a.i for n in nodes for a in n.attribute if a.name == "bits"] == [4, 4]
    kept = np.abs(_run(tmp_path / "q5_8.onnx", x) - want).max() / np.abs(want).max()
    assert kept <= 1e-5
    info = quantize_int4(tmp_path / "q5.onnx", tmp_path / "q5_8l4.onnx")  # level 4: one product
    assert (info["matmuls_8bit"], info["matmuls_8bit_as_two_4bit"]) == (1, 0)
    nodes = onnx.load(tmp_path / "q5_8l4.onnx").graph.node
    assert [(n.op_type, a.i) for n in nodes for a in n.attribute if a.name == "bits"] == [
        ("MatMulNBits", 8)]
    info = quantize_int4(tmp_path / "q5.onnx", tmp_path / "q5_4.onnx", accuracy_level=1,
                         finer="int4")
    assert (info["matmuls_8bit"], info["matmuls_fitted"]) == (0, 1)
    rounded = np.abs(_run(tmp_path / "q5_4.onnx", x) - want).max() / np.abs(want).max()
    assert rounded > 100 * max(kept, 1e-7)
    assert size(tmp_path / "q5_4.onnx") < size(tmp_path / "q5_8.onnx")


def test_the_packaged_gemma3_matrices_by_grid():
    """Every linear weight of the packaged Gemma-3 (GGUF Q4_K_M), as the README counts them:
    attention outputs and half the MLP down matrices on a 4-bit grid (Q4_K), the rest on a
    finer one (Q5_0, Q6_K, Q8_0), none off a grid.  The export packs q/k/v and gate/up into
    one product each, so its int4 has 18 + 9 = 27 exact products and 18 + 18 + 9 = 45 in 8
    bits."""
    from safetensors import safe_open

    from edge_c2i.export.int4 import finer_grid
    from edge_c2i.models import resolve

    kinds = {}
    for path in sorted(resolve("gemma3-270m").glob("*.safetensors")):
        with safe_open(path, "np") as f:
            names = f.keys()
            for key in names:
                if ".layers." in key and key.endswith("proj.weight"):
                    w = np.ascontiguousarray(f.get_tensor(key).T)
                    kinds[key] = ("grid" if grid_codes(w) is not None
                                  else "finer" if finer_grid(w) else "off")
    by = {kind: sorted({k.split(".")[-2] for k, v in kinds.items() if v == kind})
          for kind in ("grid", "finer", "off")}
    counts = {kind: sum(v == kind for v in kinds.values()) for kind in ("grid", "finer", "off")}
    assert counts == {"grid": 18 + 9, "finer": 18 * 5 + 9, "off": 0}, counts
    assert by["grid"] == ["down_proj", "o_proj"]
    assert by["finer"] == ["down_proj", "gate_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
