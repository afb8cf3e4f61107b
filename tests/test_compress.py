"""compress: whitened truncation on the real SmolLM2, the allocation, the folder it writes."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_c2i.config import CompressConfig
from edge_c2i.errors import EdgeC2IError
from edge_c2i.targets import Target, find_targets, weight_matrix
from edge_c2i.tasks import load_task, split

C = importlib.import_module("edge_c2i.compress")  # the module: edge_c2i.compress is the verb

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [3, 20]


@pytest.fixture(scope="module")
def calibrated(smol):
    """A calibration pass over 64 qa_wikidata examples for layers 3 and 20, and the inputs
    each matrix saw (collected here, independently of calibrate's sums)."""
    model, tok = smol
    examples = split(load_task("bundled:continents-open"), 64, 10, 10, 0).calib
    targets = find_targets(model, LAYERS)
    seen = {}

    def grab(key):
        def hook(module, args, output):
            seen.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))
        return hook

    hooks = [model.get_submodule(t.name).register_forward_hook(grab(t.key)) for t in targets]
    try:
        cal = C.calibrate(model, tok, examples, targets, progress=False)
    finally:
        for h in hooks:
            h.remove()
    return model, targets, cal, seen


def test_calibration_without_weight_gradients_gives_the_same_sums(calibrated, smol):
    """The default prices need no dL/dW: a pass without it (backward from the lowest
    target's block, weights frozen) gives the same Gram matrices and output gradients."""
    model, tok = smol
    _, targets, cal, _ = calibrated
    examples = split(load_task("bundled:continents-open"), 64, 10, 10, 0).calib
    lean = C.calibrate(model, tok, examples, targets, progress=False, grads=False)
    assert lean.grads is None and cal.grads is not None
    assert lean.tokens == cal.tokens and lean.shared == cal.shared
    assert lean.loss == pytest.approx(cal.loss, rel=1e-6)
    for t in targets:
        assert torch.allclose(lean.grams[t.key], cal.grams[t.key], rtol=1e-5, atol=1e-3)
        assert lean.out_grad_sq[t.key] == pytest.approx(cal.out_grad_sq[t.key], rel=1e-4)
    assert all(not p.requires_grad for p in model.parameters())
    sp = C.spectrum(targets[0], weight_matrix(model.get_submodule(targets[0].name)), lean)
    assert sp.first_order is None
    with pytest.raises(ValueError, match="gradients"):
        sp.prices("task")
    assert torch.allclose(sp.prices("fisher"), C.spectrum(
        targets[0], weight_matrix(model.get_submodule(targets[0].name)), cal).prices("fisher"),
        rtol=1e-3)


def test_shared_inputs_share_one_gram_and_count_real_tokens_only(calibrated, smol):
    from edge_c2i.evaluate import Scorer

    _, _, cal, seen = calibrated
    assert cal.shared["3.k"] == "3.q" and cal.shared["3.v"] == "3.q"
    assert cal.shared["20.in"] == "20.gate" or cal.shared["20.gate"] == "20.in"
    assert cal.grams["3.k"] is cal.grams["3.q"]
    assert cal.shared["3.o"] == "3.o" and cal.shared["3.out"] == "3.out"
    # the sums run over each example's prompt and gold answer, not the batches' padding
    examples = split(load_task("bundled:continents-open"), 64, 10, 10, 0).calib
    assert cal.tokens == sum(Scorer(smol[1], examples, gold_only=True).positions)
    assert cal.tokens < sum(x.shape[0] for x in seen["3.q"])


@pytest.mark.parametrize("key", ["3.q", "20.out"])
def test_whitened_truncation_error_is_the_cut_values_and_below_plain(calibrated, key):
    model, targets, cal, _ = calibrated
    target = next(t for t in targets if t.key == key)
    W = weight_matrix(model.get_submodule(target.name)).double()
    white = C.spectrum(target, W, cal, "whitened")
    plain = C.spectrum(target, W, cal, "plain")
    Cg = cal.grams[key].double()
    _, eps = C.cholesky(Cg)
    Creg = Cg + eps * torch.eye(len(Cg), dtype=Cg.dtype)  # what was factored

    def error(sp, k):
        delta = W - sp.A[:, :k].double() @ sp.B[:k].double()
        return float(((delta @ Creg) * delta).sum())  # sum_t |delta x_t|^2

    for k in (white.p // 4, white.p // 2):
        cut = float((white.s[k:] ** 2).sum())
        assert error(white, k) == pytest.approx(cut, rel=2e-3)
        assert error(white, k) < error(plain, k)
    # only the components a factor pair can keep are stored: up to k* = m n / (m + n)
    kept = white.A.shape[1]
    assert kept == min(white.k_star, white.p) == white.B.shape[0] < white.p
    assert error(white, kept) == pytest.approx(float((white.s[kept:] ** 2).sum()), rel=2e-3)


def test_first_order_price_is_the_loss_gradient_along_the_cut(calibrated):
    """-s_i u_i^T G b_i, against the directional derivative <G, dW> computed directly."""
    model, targets, cal, _ = calibrated
    target = next(t for t in targets if t.key == "20.out")
    W = weight_matrix(model.get_submodule(target.name)).double()
    sp = C.spectrum(target, W, cal, "whitened")
    G = cal.grads[target.key].double()
    kept = sp.A.shape[1]
    for i in (0, kept // 2, kept - 1):
        dW = -sp.A[:, i:i + 1].double() @ sp.B[i:i + 1].double()
        assert float(sp.first_order[i]) == pytest.approx(float((G * dW).sum()), rel=1e-3,
                                                         abs=1e-9)


def _fake_spectra(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for j, (m, n) in enumerate(shapes):
        p = min(m, n)
        s = torch.rand(p, generator=gen, dtype=torch.float64).sort(descending=True).values + 0.1
        out.append(C.Spectrum(Target(j, "x", f"m{j}"), m, n, s, torch.zeros(m, p),
                              torch.zeros(p, n), s * s, torch.zeros(p, dtype=torch.float64),
                              float(j + 1), "whitened"))
    return out


@pytest.mark.parametrize("rule", ["output", "fisher", "task"])
@pytest.mark.parametrize("size", [0.95, 0.8, 0.6, 0.3])
def test_allocation_meets_the_budget(rule, size):
    spectra = _fake_spectra([(64, 192), (192, 64), (64, 64), (32, 64)] * 3)
    before = C.linear_params(spectra)
    budget = int(size * before)
    ranks = C.allocate(spectra, rule, budget)
    used = C.linear_params(spectra, ranks)
    assert used <= budget
    # no room left for one more component of any matrix that is still factored
    room = [sp.m + sp.n for sp in spectra if ranks[sp.key] < min(sp.k_star, sp.p) - 1]
    assert not room or budget - used < max(room)
    for sp in spectra:
        assert ranks[sp.key] == sp.p or 1 <= ranks[sp.key] < sp.k_star
    uni = C.uniform(spectra, budget)
    assert C.linear_params(spectra, uni) <= budget


def test_allocation_cuts_the_cheapest_matrix_first():
    cheap, dear = _fake_spectra([(64, 64), (64, 64)])
    cheap.error = cheap.error * 1e-6
    ranks = C.allocate([cheap, dear], "fisher", int(0.75 * 2 * 64 * 64))
    assert ranks[dear.key] == dear.p and ranks[cheap.key] < cheap.k_star


def test_a_budget_below_rank_one_is_refused():
    spectra = _fake_spectra([(64, 64)])
    with pytest.raises(EdgeC2IError, match="larger size"):
        C.allocate(spectra, "output", 10)


def test_keep_rules_accuracy_counts_examples_paired_allows_noise():
    # the loss bound holds under every rule
    for rule in ("accuracy", "paired"):
        assert not C.size_kept(5, 0, 2.06, 2.0, 0.05, rule)
        assert C.size_kept(5, 0, 2.04, 2.0, 0.05, rule)
    # accuracy: one example fewer right fails; paired: one loss among 9 disagreements is
    # noise (P(>= 5 of 9) = 0.5), seven of nine is not at alpha 0.2 (P = 0.09)
    assert not C.size_kept(4, 5, 2.0, 2.0, 0.05, "accuracy")
    assert C.size_kept(4, 5, 2.0, 2.0, 0.05, "paired", alpha=0.2)
    assert not C.size_kept(2, 7, 2.0, 2.0, 0.05, "paired", alpha=0.2)
    assert C.size_kept(2, 7, 2.0, 2.0, 0.05, "paired", alpha=0.05)
    with pytest.raises(EdgeC2IError, match="keep rule"):
        CompressConfig(keep_rule="lenient")


def test_keep_mode_stops_at_the_first_size_that_loses():
    from edge_c2i.adapted import FACTOR_TYPES
    from edge_c2i.models import load_model

    model, tok = load_model("smollm2-135m")  # compress changes it: not the session's copy
    # four middle layers: at 5% of their rank the continents are lost (0 wins, 11 losses when
    # written; layers 20-21 alone at 5% still won 1 and lost 1)
    config = CompressConfig(sizes=(0.98, 0.05), layers=(10, 11, 12, 13), n_calib=16, n_eval=30,
                            n_test=30)
    report = C.compress(model, tok, "bundled:continents-open", config, progress=False)
    ladder = report.ladder
    assert ladder[-1]["size"] == 0.05 and not ladder[-1]["kept"]  # 5%: the task is gone
    kept = [step for step in ladder if step["kept"]]
    assert len(kept) == len(ladder) - 1
    assert all(step["wins"] + step["losses"] <= 30 for step in ladder)
    after = report.budget["linear_params_after"]
    assert after == (kept[-1]["linear_params"] if kept else report.budget["linear_params_before"])
    factored = [m for m in model.modules() if isinstance(m, FACTOR_TYPES)]
    assert len(factored) == len(report.reductions) == len(report.to_dict()["ranks"])
    assert all(r.basis == "whitened" for r in report.reductions)


@pytest.mark.slow
def test_compress_cli_writes_a_folder_that_loads_exports_and_refuses_apply(tmp_path):
    out = tmp_path / "small"
    run = subprocess.run(
        [sys.executable, "-m", "edge_c2i.cli", "compress", "--size", "0.9", "--samples", "16",
         "--test-samples", "30", "--layers", "18,19,20", "--out", str(out), "--quiet",
         "--threads", "2", "--task", "bundled:continents-open"], capture_output=True, text=True,
        cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    bud = report["budget"]
    assert bud["linear_params_after"] <= 0.9 * bud["linear_params_before"]
    assert report["ranks"] and all(k.split(".")[0] in ("18", "19", "20") for k in report["ranks"])
    assert "layer" in run.stdout and "compress (budget)" in run.stdout

    from edge_c2i.adapted import FACTOR_TYPES, load_adapted
    from edge_c2i.export.onnx_export import export_model
    from edge_c2i.models import load_plain

    model = load_adapted(out)
    factored = [n for n, m in model.named_modules() if isinstance(m, FACTOR_TYPES)]
    assert len(factored) == len(report["ranks"])
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        ours = model(ids).logits
        plain = load_plain(out)(ids).logits  # plain transformers: the same model, densely
    assert torch.allclose(ours, plain, atol=1e-3)
    manifest = export_model(str(out), tmp_path / "onnx")  # raises if parity fails
    figures = manifest["parity"]["model.onnx"]
    assert figures["max_abs_logit_diff"] < 1e-2 and figures["top1_agreement"] > 0.99

    refused = subprocess.run([sys.executable, "-m", "edge_c2i.cli", "apply", "--recipe",
                              str(out), "--out", str(tmp_path / "again")],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "compressed model" in refused.stderr
    assert not (tmp_path / "again").exists()


def test_a_file_budget_holds_when_exported(tmp_path):
    """--file-mb: the fp32 export of the result is within the budget and close to it (the
    budget is turned into linear parameters by the bytes each takes in that file)."""
    from edge_c2i.api import save
    from edge_c2i.export.onnx_export import export_model
    from edge_c2i.models import load_model

    model, tok = load_model("smollm2-135m")
    budget = 530.0  # MB; the dense model.onnx is 538.2
    report = C.compress(model, tok, "bundled:continents-open",
                           CompressConfig(file_mb=budget, layers=(18, 19, 20), n_calib=16,
                                          n_test=10), progress=False)
    assert report.mode == "budget" and report.reductions
    estimate = report.budget["file_mb_estimate"]
    assert estimate["fp32"] <= budget and estimate["int8"] < estimate["fp32"] / 3
    save(model, tok, tmp_path / "small", report.to_dict())
    manifest = export_model(str(tmp_path / "small"), tmp_path / "onnx", check=False)
    mb = (manifest["files"]["model.onnx"] + manifest["files"]["model.onnx_data"]) / 1e6
    assert 0.99 * budget <= mb <= budget
    with pytest.raises(EdgeC2IError, match="--file-mb"):  # refused before any work
        C.compress(model, tok, "bundled:continents-open", CompressConfig(file_mb=50.0),
                      progress=False)


def test_an_int4_file_budget_counts_finer_matrices_at_8_bits():
    """A dense matrix the model held on a finer grid than 4 bits stays 8-bit in the int4
    file (export/int4.py FINER): the budget is lowered until the estimate with them fits."""
    spectra = _fake_spectra([(256, 512)] * 6)
    finer = {sp.key for sp in spectra[:3]}
    dense = C.linear_params(spectra)
    extra = 0.5 * dense * (C.FINER_BYTES - C.FILE_BYTES["int4"][0]) / 1e6  # half are finer
    assert C.file_mb(dense, 0, "int4", C.finer_dense(spectra, None, finer)) == \
        pytest.approx(C.file_mb(dense, 0, "int4") + extra)
    assert C.file_mb(dense, 0, "int8", dense) == C.file_mb(dense, 0, "int8")
    target = 0.9 * C.file_mb(dense, 0, "int4", C.finer_dense(spectra, None, finer))
    config = CompressConfig(file_mb=target, file_precision="int4", price="output")
    naive = C.ranks_for(spectra, config, C.params_for_file(target, 0, "int4"))
    assert C.file_mb(C.linear_params(spectra, naive), 0, "int4",
                     C.finer_dense(spectra, naive, finer)) > target
    ranks = C.fit_file(spectra, config, 0, finer)
    mb = C.file_mb(C.linear_params(spectra, ranks), 0, "int4", C.finer_dense(spectra, ranks, finer))
    assert 0.97 * target <= mb <= target


def test_finer_targets_finds_a_q5_0_matrix():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2))
    targets = find_targets(model)
    gate = model.model.layers[0].mlp.gate_proj.weight  # (out, in), blocks of 32 inputs
    d = torch.rand(gate.shape[0], gate.shape[1] // 32, 1) * 1e-2 + 1e-3
    q = torch.randint(0, 32, (gate.shape[0], gate.shape[1] // 32, 32))
    up = model.model.layers[0].mlp.up_proj.weight  # a 4-bit grid (Q4_1-like): not finer
    q4 = torch.randint(0, 16, (up.shape[0], up.shape[1] // 32, 32))
    with torch.no_grad():
        gate.copy_((d * (q - 16)).reshape(gate.shape))
        up.copy_((d * q4 - 0.07 * d).reshape(up.shape))
    assert C.finer_targets(model, targets) == {
        t.key for t in targets if t.name.endswith("mlp.gate_proj")}


def test_no_matrix_of_the_4_bit_smollm2_is_counted_finer():
    """SmolLM2 ships as GGUF Q4_1: every matrix on a 4-bit grid, none kept 8-bit in an int4
    file, so none costs more in an int4 budget."""
    from edge_c2i.models import load_model

    model, _ = load_model("smollm2-135m")
    assert C.finer_targets(model, find_targets(model)) == set()
