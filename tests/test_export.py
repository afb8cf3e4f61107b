"""ONNX export of the real SmolLM2-135M, adapted with a single- and a multi-subspace reduction.

One session-scoped export (int8 + .ort + parity check) serves most tests; the parity
figures it measured are in its manifest.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import genai_greedy

from edge_c2i.errors import EdgeC2IError
from edge_c2i.export import onnx_export, parity
from edge_c2i.export.onnx_export import export_model
from edge_c2i.export.runtime import MANIFEST, OnnxLM, evaluate_onnx

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SINGLE, MULTI = (20, "out", 1), (10, "out", 4)  # (layer, type, clusters), rate 0.2
RATE = 0.2


@pytest.fixture(scope="session")
def adapted(tmp_path_factory):
    """An adapted folder and its PyTorch model: down_proj of layer 20 (c=1) and 10 (c=4)."""
    from edge_c2i.adapted import save_adapted
    from edge_c2i.factorize import reduce
    from edge_c2i.models import load_model
    from edge_c2i.targets import get_target

    model, tok = load_model("smollm2-135m")
    reductions = [reduce(model, get_target(model, layer, kind), RATE, clusters=c)
                  for layer, kind, c in (SINGLE, MULTI)]
    folder = tmp_path_factory.mktemp("adapted") / "smol-adapted"
    save_adapted(model, tok, folder, reductions,
                 info={"base_model": "smollm2-135m", "task": "bundled:continents",
                       "method": "test"})
    return folder, model, tok


@pytest.fixture(scope="session")
def exported(adapted, tmp_path_factory):
    """The adapted folder exported with int8, int4 and ORT format (parity checked at export)."""
    out = tmp_path_factory.mktemp("onnx") / "smol-onnx"
    manifest = export_model(str(adapted[0]), out, int8=True, int4=True, ort=True)
    return out, manifest


def _with_weights(files: dict) -> dict:
    """A manifest's file sizes, each .onnx file with its weights (NAME.onnx_data)."""
    return {name: size + files.get(name + "_data", 0) for name, size in files.items()}


def test_fp32_logits_and_greedy_tokens_match_pytorch(exported, adapted):
    out, manifest = exported
    fig = manifest["parity"]["model.onnx"]
    assert fig["max_abs_logit_diff"] <= 1e-3
    assert fig["greedy_same"] == fig["prompts"] == len(parity.PROMPTS)
    # independently: the runtime's own generate loop against transformers' generate
    model, tok = adapted[1], adapted[2]
    lm = OnnxLM(out)
    for prompt in ("The capital of France is", "Water boils at a temperature of"):
        ids = lm.encode(prompt)
        assert ids == tok(prompt)["input_ids"]
        with torch.no_grad():
            full = model(torch.tensor([ids])).logits[0].numpy()
            want = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                  max_new_tokens=10, do_sample=False, pad_token_id=2)
        assert np.abs(lm.logits(ids) - full).max() <= 1e-3
        assert lm.greedy(ids, 10) == want[0, len(ids):].tolist()


def _weights_of(graph, prefix: str) -> list[tuple[int, ...]]:
    """Shapes of the 2-D initializers read by the nodes named under ``prefix``."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer if len(t.dims) == 2}
    return sorted(shapes[i] for n in graph.node if n.name.startswith(prefix)
                  for i in n.input if i in shapes)


def test_factors_stay_factored_in_the_graph(exported, adapted):
    out, _ = exported
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    model = adapted[1]
    single = model.get_submodule("model.layers.20.mlp.down_proj")
    k = single.rank
    # MatMul weights are stored input x output: B^T (1536 x k), then A^T (k x 576)
    assert _weights_of(graph, "/model/layers.20/mlp/down_proj/") == sorted([(1536, k), (k, 576)])
    multi = model.get_submodule("model.layers.10.mlp.down_proj")
    want = [(1536, sum(multi.ranks))] + [(r, s) for r, s in zip(multi.ranks, multi.group_sizes)]
    assert _weights_of(graph, "/model/layers.10/mlp/down_proj/") == sorted(want)
    ops = {n.op_type for n in graph.node if n.name.startswith("/model/layers.10/mlp/down_proj/")}
    assert "Gather" in ops  # the rows go back to their order
    assert _weights_of(graph, "/model/layers.5/mlp/down_proj/") == [(1536, 576)]  # not reduced
    # the fused graph: one product for q/k/v and one for gate/up where none is reduced
    assert _weights_of(graph, "/model/layers.5/self_attn/qkv_proj/") == [(576, 576 + 2 * 192)]
    assert _weights_of(graph, "/model/layers.5/mlp/gate_up_proj/") == [(576, 2 * 1536)]
    assert not any(d == (1536, 576) for d in _weights_of(graph, "/model/layers.20/"))
    # int8 quantizes each factor on its own: still separate MatMulNBits, never a product
    q = onnx.load(out / "model_int8.onnx", load_external_data=False).graph
    nbits = [n for n in q.node if n.op_type == "MatMulNBits"
             and n.name.startswith("/model/layers.20/mlp/down_proj/")]
    dims = sorted(tuple(a.i for a in n.attribute if a.name in ("K", "N")) for n in nbits)
    assert dims == sorted([(1536, k), (k, 576)])


def test_int8_is_within_tolerance_and_smaller(exported):
    manifest = exported[1]
    fig = manifest["parity"]["model_int8.onnx"]
    assert parity.failure(fig, "int8") is None
    assert fig["logit_corr_mean"] >= parity.INT8_MIN_CORR
    assert fig["top1_agreement"] >= parity.INT8_MIN_TOP1
    files = _with_weights(manifest["files"])
    # the tied LM head and the embedding share one 8-bit table: no fp32 copy of it is left
    assert manifest["int8"]["lm_head_and_embedding"] == "shared 8-bit table, blocks of 64"
    assert files["model_int8.onnx"] < 0.3 * files["model.onnx"]
    assert manifest["int8"]["scheme"] == "blockwise"


def test_int4_keeps_the_4bit_model_and_the_factors(exported, adapted):
    out, manifest = exported
    info, fig = manifest["int4"], manifest["parity"]["model_int4.onnx"]
    # SmolLM2 ships as GGUF Q4_1: every matrix not reduced sits on a 4-bit grid and is kept
    # exactly (q/k/v and gate/up as one product each: 4 per layer); the factors of the two
    # reductions are rounded on their own statistics
    assert info["matmuls_exact_grid"] == 4 * 30 - 2
    assert info["matmuls_fitted"] == 2 + 1 + 4  # B, A of c=1; stacked B's, 4 A's
    assert (info["finer"], info["matmuls_8bit"]) == ("int8", 0)  # Q4_1: no finer grid
    assert info["lm_head_and_embedding"] == "shared 8-bit table, blocks of 64"
    # int8 activations (accuracy level 4) on top of two rounded reductions: over the
    # parity prompts' ~15 positions one flip is 0.07.  The activations' rounding depends on
    # the CPU's int8 kernels: logit correlation 0.9944 on a Xeon with AVX512-VNNI and AMX
    # (0.9971 at accuracy level 1, the int8 file 0.9983), over 0.995 on the CPU before it
    assert info["accuracy_level"] == 4
    assert fig["top1_agreement"] >= 0.9 and fig["logit_corr_mean"] >= 0.99
    files = _with_weights(manifest["files"])
    assert files["model_int4.onnx"] < 0.25 * files["model.onnx"]
    assert files["model_int4.onnx"] < 0.75 * files["model_int8.onnx"]
    graph = onnx.load(out / "model_int4.onnx", load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "FusedMatMul" not in ops
    assert not [n for n in graph.node if n.op_type == "MatMul"
                and n.input[1] in {t.name for t in graph.initializer}]
    # the grid's remainders ride in the grid matrices' own products ([x, blockmeans] inputs):
    # one Concat per group of grid matrices sharing an input, none for the factors
    assert info["remainder"] == "folded"
    assert sum(n.op_type == "Concat" and n.name.endswith("_Concat") for n in graph.node) == 4 * 30 - 2


def _nbits_blocks(path: Path) -> dict[int, int]:
    """block_size -> how many MatMulNBits / GatherBlockQuantized nodes of ``path`` use it."""
    from collections import Counter

    graph = onnx.load(path, load_external_data=False).graph
    return Counter(a.i for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")
                   for a in n.attribute if a.name == "block_size")


def test_int8_and_head_blocks_set_every_8bit_block(exported, tmp_path):
    from edge_c2i.export.int4 import quantize_int4, table_block
    from edge_c2i.export.postprocess import quantize_int8

    out, manifest = exported
    # defaults: the int8 matrices in blocks of 32; the shared head / embedding table in 64
    # (one MatMulNBits, one GatherBlockQuantized), in both files
    assert manifest["int8"]["block_size"] == 32
    assert manifest["int8"]["head_block"] == manifest["int4"]["head_block"] == 64
    int8_blocks = _nbits_blocks(out / "model_int8.onnx")
    assert int8_blocks[64] == 2 and set(int8_blocks) == {32, 64}
    assert _nbits_blocks(out / "model_int4.onnx")[64] == 2
    assert (table_block(576, 128), table_block(640, 128), table_block(40, 32)) == (64, 128, None)
    fp32 = OnnxLM(out, 1, "model.onnx")
    ids = fp32.prompt_ids("Q: What is the capital of France?\nA: The capital of France is")
    ref = fp32.logits(ids)[-6:]
    shutil.copy(out / MANIFEST, tmp_path / MANIFEST)
    shutil.copy(out / "tokenizer.json", tmp_path / "tokenizer.json")
    for block in (64, 128):
        # SmolLM2's 576-wide table does not take blocks of 128: it falls back to 64
        info = quantize_int8(out / "model.onnx", tmp_path / "model_int8.onnx", block_size=block,
                             head_block=128)
        assert info["block_size"] == block
        assert info["lm_head_and_embedding"] == "shared 8-bit table, blocks of 64"
        blocks = _nbits_blocks(tmp_path / "model_int8.onnx")
        assert blocks[64] >= 2 and set(blocks) == {block, 64}
        got = OnnxLM(tmp_path, 1, "model_int8.onnx").logits(ids)[-6:]
        corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(got, ref)]
        # a misplaced scale or code would drop this far below
        assert np.mean(corr) > 0.985, (block, corr)
    info = quantize_int4(out / "model.onnx", tmp_path / "model_int4.onnx", head_block=32)
    assert info["lm_head_and_embedding"] == "shared 8-bit table, blocks of 32"
    assert set(_nbits_blocks(tmp_path / "model_int4.onnx")) == {32}


def test_head_refine_ranks_in_4_bits_and_computes_the_best_logits_exactly(exported, tmp_path,
                                                                          monkeypatch):
    """--head-refine N: the head's 8-bit table as two 4-bit halves (the same bytes); a 4-bit
    product of the high halves ranks the vocabulary and the N best logits are the 8-bit
    table's in fp32.  Checked against the plain 8-bit head computed with fp32 activations
    (accuracy level 1), the same body: the best logit and 63 others equal (which needs the
    embedding, read from the two halves, exact), the others only close; onnxruntime-genai
    decodes it."""
    import onnxruntime_genai as og

    from edge_c2i.export import int4
    from edge_c2i.export.postprocess import quantize_int8

    out, _ = exported
    for name in (MANIFEST, "tokenizer.json", "tokenizer_config.json", "config.json",
                 "genai_config.json", "generation_config.json"):
        if (out / name).is_file():
            shutil.copy(out / name, tmp_path / name)
    info = quantize_int8(out / "model.onnx", tmp_path / "refined.onnx", head_refine=64)
    assert info["head_refine"] == 64 and "best 64 logits exact" in info["lm_head_and_embedding"]
    graph = onnx.load(tmp_path / "refined.onnx", load_external_data=False).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    assert bits[head.name] == 4
    assert sorted(b for n, b in bits.items() if n.endswith(("_hi", "_lo"))) == [4] * 4
    assert {"TopK", "ScatterElements"} <= {n.op_type for n in graph.node}
    monkeypatch.setattr(int4, "HEAD_ACCURACY_LEVEL", 1)  # the 8-bit head, fp32 activations
    quantize_int8(out / "model.onnx", tmp_path / "plain.onnx")
    sizes = {name: sum(f.stat().st_size for f in tmp_path.glob(f"{name}.onnx*"))
             for name in ("refined", "plain")}
    assert sizes["refined"] < 1.01 * sizes["plain"]
    refined = OnnxLM(tmp_path, 1, "refined.onnx")
    ids = refined.prompt_ids("Q: What is the capital of France?\nA: The capital of France is")
    got, want = refined.logits(ids), OnnxLM(tmp_path, 1, "plain.onnx").logits(ids)
    best4 = []
    for g, w in zip(got, want):
        same = np.abs(g - w) <= 1e-4 * np.abs(w).max()
        # 64 exact, the rest coarse (but for rows whose low halves add nothing: unused tokens)
        assert same.sum() >= 64 and same.mean() < 0.5
        assert g.argmax() == w.argmax() and g.max() == pytest.approx(w.max(), rel=1e-5)
        assert np.corrcoef(g, w)[0, 1] > 0.9
        best4.append(same[np.argsort(-w)[:4]].all())
    # the 4-bit ranking can miss a lower one of the best few: where in the best 64 the exact
    # best 4 were, in a one-off over 800 positions of README text: 0.999
    assert np.mean(best4) >= 0.8, best4
    config = og.Config(str(tmp_path))
    config.overlay(json.dumps({"model": {"decoder": {"filename": "refined.onnx"}}}))
    assert genai_greedy(og.Model(config), ids, 8) == refined.greedy(ids, 8)


def test_ort_format_loads_and_gives_the_same_greedy_tokens(exported):
    out, manifest = exported
    assert (out / "required_operators.config").is_file()
    ops = (out / "required_operators.config").read_text()
    assert "MatMul" in ops and "com.microsoft" in ops
    assert str(out.parent) not in ops  # no temp-folder paths in its comments
    onnx_lm, ort_lm = OnnxLM(out, model_file="model.onnx"), OnnxLM(out, model_file="model.ort")
    for prompt in ("The capital of France is", "def add(a, b):"):
        ids = onnx_lm.encode(prompt)
        assert ort_lm.greedy(ids, 8) == onnx_lm.greedy(ids, 8)
    assert manifest["parity"]["model_int8.ort"]["greedy_same"] >= 1
    # the tied LM head reads the embedding in place: no transposed copy in the .ort file
    assert manifest["files"]["model.ort"] < 1.05 * (manifest["files"]["model.onnx"]
                                                   + manifest["files"]["model.onnx_data"])


def test_dynamic_int8_scheme_exports_and_keeps_its_weights_beside_it(adapted, tmp_path):
    """--int8-scheme dynamic (quantize_dynamic) on the fused graph: MatMulInteger, the MLP
    output matrices in fp32, parity checked at export, its weights in NAME.onnx_data like
    every export file (no other data file)."""
    out = tmp_path / "dynamic"
    manifest = export_model(str(adapted[0]), out, int8=True, int8_scheme="dynamic")
    assert manifest["int8"]["op"] == "MatMulInteger" and manifest["int8"]["fp32_matmuls"] > 0
    assert parity.failure(manifest["parity"]["model_int8.onnx"], "int8") is None
    assert sorted(f.name for f in out.iterdir() if f.name.startswith("model_int8")) == \
        ["model_int8.onnx", "model_int8.onnx_data"]


def test_every_onnx_file_keeps_its_weights_beside_it(exported):
    """NAME.onnx holds the graph, NAME.onnx_data the weights (export/files.py), both in the
    manifest, the data file as readable as the graph (onnx writes it owner-only)."""
    out, manifest = exported
    for name in ("model.onnx", "model_int8.onnx", "model_int4.onnx"):
        graph, data = out / name, out / (name + "_data")
        assert graph.stat().st_size < 1e6 and data.stat().st_size > 50e6, name
        assert manifest["files"][data.name] == data.stat().st_size
        assert data.stat().st_mode == graph.stat().st_mode
        assert all(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(graph, load_external_data=False).graph.initializer
                   if t.ByteSize() > 4096)
    # every size the manifest lists is the file's (the manifest's own is not listed)
    assert {n: (out / n).stat().st_size for n in manifest["files"]} == manifest["files"]


def test_android_copy_script_joins_an_onnx_file_with_its_weights(exported, tmp_path):
    """Without a .ort file copy_model.sh takes the .onnx; the app copies one asset, so the
    graph and its weights are joined into one file that gives the same tokens."""
    out, _ = exported
    src = tmp_path / "export"
    src.mkdir()
    for f in out.iterdir():  # the int8 file and what the app reads, no .ort files
        if f.name.startswith("model_int8.onnx") or f.suffix == ".json":
            shutil.copy(f, src / f.name)
    script = tmp_path / "demo" / "copy_model.sh"
    script.parent.mkdir()
    shutil.copy(Path(__file__).parents[1] / "android_demo" / "copy_model.sh", script)
    run = subprocess.run(["bash", str(script), str(src), "--int8"], capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stderr
    assets = tmp_path / "demo" / "app" / "src" / "main" / "assets" / "model"
    assert sorted(f.name for f in assets.iterdir() if "onnx" in f.name) == ["model.onnx"]
    joined = onnx.load(assets / "model.onnx", load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in joined.graph.initializer)
    ids = OnnxLM(out, model_file="model_int8.onnx").encode("The capital of France is")
    assert OnnxLM(assets, model_file="model.onnx").greedy(ids, 6) == \
        OnnxLM(out, model_file="model_int8.onnx").greedy(ids, 6)


def test_manifest_has_what_the_android_app_reads(exported):
    out, manifest = exported
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert (manifest["num_layers"], manifest["num_kv_heads"], manifest["head_dim"]) == (30, 3, 64)
    assert manifest["eos_token_id"] == [2]  # config's <|im_end|>, not the tokenizer's eos
    assert manifest["add_bos_token"] is False
    assert manifest["input_names"][:3] == ["input_ids", "attention_mask", "past_key_values.0.key"]
    assert manifest["graph"]["kind"] == "fused" and manifest["graph"]["nodes"] < 500
    assert "past_key_values.29.value" in manifest["input_names"]
    assert manifest["output_names"][0] == "logits" and "present.0.key" in manifest["output_names"]
    assert manifest["adapted"] and manifest["task"] == "bundled:continents"
    assert [r["clusters"] for r in manifest["reductions"]] == [1, 4]
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (out / name).is_file()


def test_runtime_path_does_not_import_torch(exported):
    out, _ = exported
    code = textwrap.dedent(f"""
        import sys
        from types import SimpleNamespace
        from edge_c2i.export.cli import generate_command
        from edge_c2i.export.runtime import OnnxLM, evaluate_onnx
        from edge_c2i.tasks import Example
        generate_command(SimpleNamespace(onnx={str(out)!r}, prompt="Hello", max_new_tokens=2,
                                         int8=True, threads=1))
        evaluate_onnx({str(out)!r}, [Example("Is it? ", "yes", ("yes", "no"))])
        heavy = sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout


def test_onnx_accuracy_matches_pytorch_on_a_task_sample(exported, adapted):
    from edge_c2i.evaluate import evaluate
    from edge_c2i.tasks import load_task, split

    examples = split(load_task("bundled:continents")).eval[:30]
    want = evaluate(adapted[1], adapted[2], examples)
    got = evaluate_onnx(exported[0], examples, threads=2)
    assert got["n"] == want["n"] == 30
    assert abs(got["accuracy"] - want["accuracy"]) <= 0.01
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-3)


def test_cli_head_refine_passes_parity_and_generates_paris(tmp_path, capsys):
    """export --head-refine 64: parity holds the int8 file to its top-1 bound and, as its
    logits outside the best 64 are 4-bit, to int4's correlation bound; it says so."""
    from edge_c2i.cli import main

    out = tmp_path / "refined"
    assert main(["export", "smollm2-135m", "--out", str(out), "--int8",
                 "--head-refine", "64"]) == 0
    printed = capsys.readouterr().out
    assert "LM head: ranked in 4 bits, its best 64 logits exact" in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["int8"]["head_refine"] == 64
    fig = manifest["parity"]["model_int8.onnx"]
    assert fig["top1_agreement"] >= parity.INT8_MIN_TOP1
    assert fig["logit_corr_mean"] >= parity.INT4_MIN_CORR
    lossy = {"logit_corr_mean": 0.95, "top1_agreement": 0.95}
    assert "logit correlation" in parity.failure(lossy, "int8")
    assert parity.failure(lossy, "int8", refined=True) is None
    assert main(["generate", "--onnx", str(out), "--prompt", "The capital of France is",
                 "--max-new-tokens", "8", "--int8"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_cli_exports_the_packaged_model_and_generates_paris(tmp_path, capsys):
    from edge_c2i.cli import main

    out = tmp_path / "dense"
    assert main(["export", "smollm2-135m", "--out", str(out), "--int4"]) == 0
    assert (out / "model_int4.onnx").is_file() and not (out / "model_int8.onnx").exists()
    printed = capsys.readouterr().out
    assert "parity model_int4.onnx" in printed
    # compress's file budgets: the estimates of these files err on the large side, by < 2%
    compress = importlib.import_module("edge_c2i.compress")
    from edge_c2i.factorize import count_params
    from edge_c2i.models import load_model
    from edge_c2i.targets import find_targets

    model, _ = load_model("smollm2-135m")
    linear = sum(p.numel() for t in find_targets(model)
                 for p in model.get_submodule(t.name).parameters())
    other = count_params(model) - linear
    for name, precision in (("model.onnx", "fp32"), ("model_int4.onnx", "int4")):
        mb = sum(f.stat().st_size for f in out.glob(name + "*")) / 1e6
        assert mb <= compress.file_mb(linear, other, precision) <= 1.02 * mb, name
    assert "int4 matrices: 120 on a 4-bit grid (exact), 0 on a finer grid" in printed
    for flags in ([], ["--int4"]):
        assert main(["generate", "--onnx", str(out), "--prompt", "The capital of France is",
                     "--max-new-tokens", "8", *flags]) == 0
        assert "Paris" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # one model file at a time
        main(["generate", "--onnx", str(out), "--prompt", "x", "--int8", "--int4"])
    assert exit_.value.code == 2


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_existing_out_without_force_is_refused_and_kept(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EdgeC2IError, match="--force"):
        export_model("smollm2-135m", out)
    assert _leftovers(tmp_path) == ["taken"] and (out / "keep.txt").read_text() == "mine"


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    src = tmp_path / "not-a-model"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    with pytest.raises(EdgeC2IError, match="not a model"):
        export_model(str(src), tmp_path / "out")
    assert _leftovers(tmp_path) == ["not-a-model"]


def test_an_unknown_block_size_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(EdgeC2IError, match="int8 block size 48 is not one of 32, 64, 128"):
        export_model("smollm2-135m", tmp_path / "out", int8=True, int8_block=48)
    with pytest.raises(EdgeC2IError, match="head block size 256 is not one of 32, 64, 128"):
        export_model("smollm2-135m", tmp_path / "out", int4=True, head_block=256)
    with pytest.raises(EdgeC2IError, match="unknown int4 finer 'int2': use int8 or int4"):
        export_model("smollm2-135m", tmp_path / "out", int4=True, int4_finer="int2")
    with pytest.raises(EdgeC2IError, match="--head-refine -1: use 0"):
        export_model("smollm2-135m", tmp_path / "out", int8=True, head_refine=-1)
    assert _leftovers(tmp_path) == []


def test_an_out_folder_that_holds_the_source_is_refused(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    with pytest.raises(EdgeC2IError, match="not an ONNX export folder"):
        export_model(str(src), src, force=True)
    assert _leftovers(src) == ["config.json"]


def test_a_parity_failure_leaves_nothing_behind(exported, adapted, tmp_path, monkeypatch):
    done = exported[0]

    def fake_export(model, tokenizer, folder, opset=None, graph="auto"):  # the session's graph
        for f in done.iterdir():
            if f.name == "model.onnx":
                os.link(f, folder / f.name)  # 534 MB: a hard link, not a copy
            elif f.suffix not in (".onnx", ".ort") and f.name != MANIFEST:
                shutil.copy(f, folder)
        return 17, {"kind": "fused", "nodes": 0}

    monkeypatch.setattr(onnx_export, "export_graph", fake_export)
    monkeypatch.setattr(parity, "PROMPTS", parity.PROMPTS[:1])
    monkeypatch.setattr(parity, "FP32_ATOL", -1.0)  # nothing can pass
    with pytest.raises(EdgeC2IError, match="parity check failed"):
        export_model(str(adapted[0]), tmp_path / "out")
    assert _leftovers(tmp_path) == []


def _genai_model(folder: Path, filename: str):
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {
        "filename": filename, "session_options": {"intra_op_num_threads": 1}}}}))
    return og, og.Model(config)


def test_onnxruntime_genai_runs_every_model_file_with_our_greedy_tokens(exported):
    out, manifest = exported
    genai = json.loads((out / "genai_config.json").read_text())
    assert manifest["genai"] == {"config": "genai_config.json", "decoder": "model_int4.onnx"}
    assert genai["model"]["decoder"]["filename"] == "model_int4.onnx"
    # GroupQueryAttention writes into the past buffer: onnxruntime-genai shares it
    assert genai["search"]["past_present_share_buffer"] is True
    assert "position_ids" not in genai["model"]["decoder"]["inputs"]
    for filename in ("model.onnx", "model_int8.onnx", "model_int4.onnx", "model.ort",
                     "model_int8.ort", "model_int4.ort"):
        _, model = _genai_model(out, filename)
        lm = OnnxLM(out, 1, filename)
        for prompt in ("The capital of France is", "Q: Is a tomato a fruit?\nA:"):
            ids = lm.prompt_ids(prompt)
            assert genai_greedy(model, ids, 8) == lm.greedy(ids, 8), (filename, prompt)
        del model


def test_onnxruntime_genai_decodes_a_batch_of_prompts_as_each_alone(exported):
    """A batch of prompts of different lengths: onnxruntime-genai pads the shorter ones on the
    right, so each sequence's logits come from its own last token, not the input's last column
    (a pad for the shorter ones), in the prefill and every step after it."""
    out, _ = exported
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).padding_side == "right"  # as the graph reads
    prompts = ["The capital of France is", "def quicksort(arr):\n",
               "1, 1, 2, 3, 5, 8, 13,", "Water boils at a temperature of one hundred"]
    for filename in ("model.onnx", "model_int4.onnx"):
        og, model = _genai_model(out, filename)
        tokenizer = og.Tokenizer(model)
        batch = tokenizer.encode_batch(prompts)
        assert len({len(tokenizer.encode(p)) for p in prompts}) > 1  # padded, really
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=batch.shape()[1] + 8, batch_size=len(prompts))
        generator = og.Generator(model, params)
        generator.append_tokens(batch)
        steps = []
        while not generator.is_done():
            generator.generate_next_token()
            steps.append([int(t) for t in generator.get_next_tokens()])
        for i, prompt in enumerate(prompts):
            alone = genai_greedy(model, [int(t) for t in tokenizer.encode(prompt)], 8)
            assert [step[i] for step in steps] == alone, (filename, prompt)
        del generator, model


def test_optimum_graph_stays_available_and_agrees(exported, tmp_path):
    """--graph optimum (every architecture optimum knows) on the dense model: its own layout
    (position_ids, concatenated cache), parity-checked at export, the fused graph's tokens."""
    out = tmp_path / "optimum"
    manifest = export_model("smollm2-135m", out, graph="optimum")
    assert manifest["graph"]["kind"] == "optimum" and manifest["graph"]["nodes"] > 5000
    assert "position_ids" in manifest["input_names"]
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is False
    assert genai["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    fused_dense = tmp_path / "fused"
    export_model("smollm2-135m", fused_dense, check=False)
    a, b = OnnxLM(out), OnnxLM(fused_dense)
    ids = a.encode("The capital of France is")
    assert np.abs(a.logits(ids) - b.logits(ids)).max() < 1e-3
    assert a.greedy(ids, 8) == b.greedy(ids, 8)


# prompts as BIG-bench builds them (task prefix, "\nQ: ", "\nA: "), with its accents, quotes
# and punctuation
QA_PROMPTS = [("Identify the relation between the following premises and hypotheses, choosing "
               "from the options 'entailment' or 'non-entailment'.\nQ: Premise: Anna thinks that "
               "the café in Zürich sells crêpes.\nHypothesis: The café sells crêpes.\nRelation: "),
              ("\nQ: Is the claim \"Nikolaj Coster-Waldau worked with the Fox Broadcasting "
               "Company.\" true or false?\nA: "),
              "\nQ: What happens if you crack your knuckles a lot?\nA: ",
              "\nQ: The native language of Émile Zola is\nA: "]


def task_texts(load_task, n: int) -> list[str]:
    """The first ``n`` prompts of each bundled task, and QA_PROMPTS."""
    return [e.prompt for name in ("bundled:continents", "bundled:continents-open")
            for e in load_task(name).examples[:n]] + QA_PROMPTS


def test_onnxruntime_genai_tokenizes_as_transformers_does(exported, adapted):
    from edge_c2i.tasks import load_task

    out, _ = exported
    hf = adapted[2]
    og, model = _genai_model(out, "model_int8.onnx")
    tokenizer = og.Tokenizer(model)
    texts = task_texts(load_task, 100)
    texts += ["ünïcödé 日本語 🤗", "  two spaces", "\ttab\n\nnewlines", "l'été", "x" * 40, ""]
    differ = [t for t in texts if [int(i) for i in tokenizer.encode(t)] != hf(t)["input_ids"]]
    assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[0]!r}"
    ids = hf(texts[-6])["input_ids"]
    assert tokenizer.decode(ids) == hf.decode(ids) == texts[-6]


def test_onnxruntime_genai_reads_gemma3_tokenizer_with_special_tokens(exported, tmp_path):
    """Gemma-3's rebuilt SentencePiece BPE (its files as every Gemma-3 export writes them) in
    onnxruntime-genai beside a small export's decoder: asked to add special tokens, as
    transformers does by default, it gives transformers' ids (BOS included) on task prompts
    and on runs of spaces (Gemma's whitespace pieces, matched on the raw text); without the
    option it leaves out the BOS."""
    from transformers import AutoTokenizer

    from edge_c2i.export.onnx_export import write_tokenizer
    from edge_c2i.models import resolve
    from edge_c2i.tasks import load_task

    out, _ = exported
    folder = tmp_path / "gemma-tokenizer"
    folder.mkdir()
    for f in ("genai_config.json", "model_int8.onnx", "model_int8.onnx_data"):
        (folder / f).symlink_to(out / f)
    hf = AutoTokenizer.from_pretrained(resolve("gemma3-270m"))  # as load_model reads it
    write_tokenizer(AutoTokenizer.from_pretrained(resolve("gemma3-270m")), folder)
    og, model = _genai_model(folder, "model_int8.onnx")
    tokenizer = og.Tokenizer(model)
    texts = task_texts(load_task, 50)
    texts += ["ünïcödé 日本語 🤗", "\ttab\nnewline", "l'été", "a  b", "  two", "end   ",
              "def f():\n    return 1", " " * 40, "x" + " " * 33 + "y", "\t  \t"]
    plain = [int(i) for i in tokenizer.encode(texts[0])]
    assert plain == hf(texts[0])["input_ids"][1:]  # no BOS by default
    tokenizer.update_options(add_special_tokens="true")
    differ = [t for t in texts if [int(i) for i in tokenizer.encode(t)] != hf(t)["input_ids"]]
    assert not differ, f"{len(differ)} of {len(texts)} differ, e.g. {differ[0]!r}"
    ids = hf("a  b")["input_ids"]
    assert hf.convert_ids_to_tokens(ids)[1:] == ["a", "  ", "b"]  # one piece for the run
    for text in ("a  b", "x   y", "def f():\n    return 1", "x" + " " * 33 + "y"):
        assert tokenizer.decode(hf(text)["input_ids"]) == text
