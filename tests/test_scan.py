from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from edge_c2i.evaluate import Scorer
from edge_c2i.scan import rank_targets, singular_value_gradients, tail_scores
from edge_c2i.targets import get_target
from edge_c2i.tasks import load_task, split


def test_singular_value_gradients_match_autograd_on_the_real_model(smol):
    model, tok = smol
    examples = split(load_task("bundled:continents"), n_calib=8, n_eval=8).calib
    targets = [get_target(model, 5, "out"), get_target(model, 27, "q")]
    scans, _ = singular_value_gradients(model, tok, examples, targets, progress=False)
    for t in targets:
        # reference: W = U diag(s) V^T with s a leaf that requires grad, through autograd
        module = model.get_submodule(t.name)
        U, S, Vh = torch.linalg.svd(module.weight.detach(), full_matrices=False)
        param = _FromSingularValues(U, S, Vh)
        parametrize.register_parametrization(module, "weight", param)
        try:
            with torch.enable_grad():
                Scorer(tok, examples).loss_and_backward(model)  # every choice packed
        finally:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        ref, got = param.s.grad, scans[t.key].g
        # u_i^T G v_i does not depend on the signs.  The scan's singular vectors come from
        # the Gram matrix (spectral_basis), not this SVD: where singular values nearly
        # coincide the two pick different vectors in their span, so single g_i differ more
        # (5e-4) than the tail sums the scores add up (1e-4), which do not depend on that pick
        rel = (got - ref).norm() / ref.norm()
        assert rel <= 5e-4, (t.key, float(rel))
        # a tail sum adds hundreds of terms of both signs: its error is measured against the
        # size of those terms (sum |s_i g_i|), not against the sum, which can be far smaller
        # (layer 27's q at rate 0.005 on one CPU: 1.9e-4 of the sum, 3.2e-7 absolute, where
        # sum |s_i g_i| is 0.95)
        scale = float((S * ref).abs().sum())
        for rate, value in tail_scores(S, ref, shape=tuple(S.shape) * 2)["first_order"].items():
            assert scans[t.key].scores["first_order"][rate] == pytest.approx(
                value, rel=1e-4, abs=1e-6 * scale), (t.key, rate, scale)


class _FromSingularValues(torch.nn.Module):
    def __init__(self, U, S, Vh):
        super().__init__()
        self.U, self.Vh = U, Vh
        self.s = torch.nn.Parameter(S.clone())

    def forward(self, _original):
        return self.U @ torch.diag(self.s) @ self.Vh


def test_scores_follow_the_formulas():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    g = torch.tensor([0.1, -0.2, 0.3, 0.5])
    sc = tail_scores(s, g, rates=(0.5, 0.25), shape=(4, 8))
    assert sc["first_order"][0.5] == pytest.approx(-(2 * 0.3 + 1 * 0.5))  # k = 2: cut s_2, s_3
    assert sc["tail_grad"][0.25] == pytest.approx(0.6)  # k = 1: cut g_1..g_3


def test_ranking_orders_by_predicted_benefit(smol):
    model, tok = smol
    examples = split(load_task("bundled:continents"), n_calib=4, n_eval=4).calib
    targets = [get_target(model, i, "o") for i in (1, 15, 28)]
    scans, timings = singular_value_gradients(model, tok, examples, targets, progress=False)
    ranked = rank_targets(scans, "first_order")
    benefits = [sc.benefit("first_order") for sc in ranked]
    assert benefits == sorted(benefits, reverse=True)
    assert timings["grad_s"] > 0 and timings["loss"] > 0


def test_a_second_scan_reads_the_singular_vectors_the_first_kept(smol, tmp_path, monkeypatch):
    """spectra.py: the second scan reads every basis from disk and scores exactly as the
    first; a matrix that changed is computed again; a damaged file is replaced; off writes
    nothing."""
    from edge_c2i import spectra

    model, tok = smol
    examples = split(load_task("bundled:continents"), n_calib=4, n_eval=4).calib
    targets = [get_target(model, 3, "out"), get_target(model, 20, "k")]
    monkeypatch.setenv(spectra.ENV, str(tmp_path / "cache"))
    first, t1 = singular_value_gradients(model, tok, examples, targets, progress=False)
    assert t1["spectra"]["computed"] == 2 and t1["spectra"]["read"] == 0
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2 and t1["spectra"]["written_bytes"] == sum(
        f.stat().st_size for f in files)
    second, t2 = singular_value_gradients(model, tok, examples, targets, progress=False)
    assert t2["spectra"] == {"read": 2, "computed": 0, "written_bytes": 0}
    for t in targets:
        assert torch.equal(first[t.key].s, second[t.key].s)
        assert torch.equal(first[t.key].g, second[t.key].g)
        assert first[t.key].scores == second[t.key].scores

    damaged = tmp_path / "cache" / f"{spectra.key(model.get_submodule(targets[0].name).weight)}.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    weight = model.get_submodule(targets[1].name).weight
    with torch.no_grad():
        saved = weight[0, 0].item()
        weight[0, 0] += 1e-3  # another matrix: another name
        try:
            _, t3 = singular_value_gradients(model, tok, examples, targets, progress=False)
        finally:
            weight[0, 0] = saved
    assert t3["spectra"]["read"] == 0 and t3["spectra"]["computed"] == 2
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
    assert spectra.load(damaged.parent, damaged.stem, 576) is not None  # replaced
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary left

    monkeypatch.setenv(spectra.ENV, "off")
    _, t4 = singular_value_gradients(model, tok, examples, targets, progress=False)
    assert t4["spectra"] == {"read": 0, "computed": 2, "written_bytes": 0}
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3


def test_a_cached_basis_is_read_into_memory_of_its_own(tmp_path):
    """spectra.load reads into tensors of this process (or the buffer it is given), not
    views of a mapping of the file: a scan keeps every s it read, and with mapped files each
    kept its whole file resident.  A file that is not a p x p basis reads as None."""
    from edge_c2i import spectra

    Q, s = torch.randn(8, 8), torch.rand(8)
    spectra.save(tmp_path, "basis", True, Q, s)
    out = torch.empty(8, 8)
    left, Q2, s2 = spectra.load(tmp_path, "basis", 8, out)
    assert left is True and Q2 is out and torch.equal(Q2, Q) and torch.equal(s2, s)
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert "basis.safetensors" not in maps.read_text()
    assert spectra.load(tmp_path, "basis", 4) is None  # another size
    assert spectra.load(tmp_path, "absent", 8) is None
    (tmp_path / "short.safetensors").write_bytes((tmp_path / "basis.safetensors").read_bytes()[:-9])
    assert spectra.load(tmp_path, "short", 8) is None
