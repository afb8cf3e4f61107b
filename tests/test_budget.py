"""--max-memory: the plan, the refusals, and that a budgeted scan changes nothing but the cost."""

import subprocess
import sys

import pytest

from edge_c2i import budget as budget_module
from edge_c2i.budget import DEFAULT_HEADROOM, check_weights_fit, model_bytes, plan_scan
from edge_c2i.errors import EdgeC2IError
from edge_c2i.evaluate import Scorer
from edge_c2i.models import resolve
from edge_c2i.scan import rank_targets, singular_value_gradients
from edge_c2i.targets import find_targets
from edge_c2i.tasks import load_task, split

LAYERS = list(range(22, 30))


@pytest.fixture(scope="module")
def calib(smol):
    return split(load_task("bundled:continents"), n_calib=8, n_eval=4).calib


def _tight_budget(model, targets, longest):
    """The smallest budget (to 5 MB) the plan accepts: one or two layers' factors per pass."""
    budget = model_bytes(model)
    while True:
        try:
            plan_scan(model, targets, longest, budget)
            return budget
        except EdgeC2IError:
            budget += 5 * 10**6


def test_budgeted_scan_has_the_same_gradients_and_ranking(smol, calib):
    model, tok = smol
    targets = find_targets(model, layers=LAYERS)
    longest = Scorer(tok, calib, gold_only=True).longest  # as the scan sees them
    budget = _tight_budget(model, targets, longest)
    plan = plan_scan(model, targets, longest, budget)
    assert plan.passes >= 3 and plan.batch_tokens < 2048
    assert sum(plan.estimate.values()) <= budget
    with pytest.raises(EdgeC2IError, match="the scan needs at least"):
        plan_scan(model, targets, longest, budget - 5 * 10**6)
    assert sorted(t.key for g in plan.groups for t in g) == sorted(t.key for t in targets)

    free, timings_free = singular_value_gradients(model, tok, calib, targets, progress=False)
    tight, timings = singular_value_gradients(model, tok, calib, targets, progress=False,
                                              max_memory=budget)
    assert timings["passes"] == plan.passes and timings_free["passes"] == 1
    # the same sums split over other batch shapes: float32 matmuls round differently (the
    # forward differs by ~1e-6 per layer); 1e-3 relative is far below what moves a ranking
    for key, scan in free.items():
        rel = (tight[key].g - scan.g).norm() / scan.g.norm()
        assert rel <= 1e-3, (key, float(rel))
    for score in ("first_order", "tail_grad"):
        assert ([s.target.key for s in rank_targets(free, score)][:10]
                == [s.target.key for s in rank_targets(tight, score)][:10])


def test_a_budget_below_the_least_need_is_refused_with_the_estimate(smol):
    model, _ = smol
    targets = find_targets(model)
    with pytest.raises(EdgeC2IError, match=r"the scan needs at least ~.*weights 538 MB.*raise it"):
        plan_scan(model, targets, 60, model_bytes(model))


def test_weights_that_cannot_fit_are_refused_before_loading():
    where = resolve("smollm2-135m")
    with pytest.raises(EdgeC2IError, match="weights alone need"):
        check_weights_fit(where, 300 * 10**6)
    check_weights_fit(where, 2 * 10**9)  # fits: no error


@pytest.mark.parametrize("size, message", [("abc", "bad memory size"),
                                           ("300MB", "weights alone need"),
                                           ("0GB", "must be positive")])
def test_cli_refuses_bad_or_unmeetable_budgets_in_one_line(tmp_path, size, message):
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, "-m", "edge_c2i.cli", "scan", "--max-memory", size,
                           "--out", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_without_a_budget_the_scan_plans_for_the_weights_plus_headroom(smol, monkeypatch):
    model, _ = smol
    targets = find_targets(model)
    plan = plan_scan(model, targets, 60, None)
    assert plan.default.startswith("default budget") and "weights 538 MB + 1.5 GB" in plan.default
    assert plan.budget == model_bytes(model) + DEFAULT_HEADROOM
    assert sum(plan.estimate.values()) <= plan.budget and plan.passes == 1
    assert plan.describe().startswith("default budget")
    # a machine with less available: 90% of it
    monkeypatch.setattr(budget_module, "available_bytes", lambda: 2 * 10**9)
    small = plan_scan(model, targets, 60, None)
    assert small.budget == int(0.9 * 2 * 10**9) and "available" in small.default
    assert small.batch_tokens < plan.batch_tokens
    # a machine that cannot hold the scan at all: the unbudgeted plan, said so
    monkeypatch.setattr(budget_module, "available_bytes", lambda: 10**9)
    none = plan_scan(model, targets, 60, None)
    assert none.budget is None and none.default.startswith("unbudgeted")


def test_the_default_budget_is_raised_rather_than_scanning_twice(smol):
    model, _ = smol
    targets = find_targets(model)
    default = model_bytes(model) + DEFAULT_HEADROOM
    assert plan_scan(model, targets, 300, default).passes > 1  # 300 tokens: several passes
    with pytest.raises(EdgeC2IError):  # 700 tokens do not fit at all
        plan_scan(model, targets, 700, default)
    for longest in (300, 700):
        plan = plan_scan(model, targets, longest, None)
        assert plan.passes == 1 and plan.budget > default and "in one pass" in plan.default


def test_compress_plan_shrinks_the_calibration_batch_or_refuses_with_its_need(smol,
                                                                               monkeypatch):
    from edge_c2i.budget import plan_compress

    model, _ = smol
    targets = find_targets(model)
    default = model_bytes(model) + DEFAULT_HEADROOM
    free = plan_compress(model, targets, 150, None)
    assert free.default.startswith("default budget") and free.budget is None
    assert "raised" not in free.default
    assert 150 <= free.batch_tokens < 2048 and free.peak <= 0.92 * default
    assert "estimated peak" in free.describe()
    # the weights' gradients (only the task price reads them) cost as much as the matrices
    linear = sum(model.get_submodule(t.name).weight.numel() for t in targets) * 4
    with_grads = plan_compress(model, targets, 150, None, grads=True)
    assert with_grads.phases["calibration"]["grads"] == linear
    assert free.phases["calibration"]["grads"] == 0
    # every matrix's factors up to k*: about the matrices' own size
    assert 0.8 * linear < free.phases["evaluation"]["factors"] <= 1.01 * linear
    assert free.phases["calibration"]["tokenizer"] > 49152 * 1000  # 49k entries
    tight = plan_compress(model, targets, 150, 2 * 10**9)
    assert tight.budget == 2 * 10**9 and 150 <= tight.batch_tokens <= free.batch_tokens
    assert tight.peak <= 0.92 * 2 * 10**9 and tight.eval_batch_tokens == 512
    with pytest.raises(EdgeC2IError, match=r"compress needs at least ~.*raise it"):
        plan_compress(model, targets, 200, 2 * 10**9)  # 200 tokens do not fit at 2 GB
    # a long example: the default budget is raised rather than refused
    long = plan_compress(model, targets, 300, None)
    assert "raised to" in long.default and long.batch_tokens >= 300
    assert long.peak > 0.92 * default
    # a machine that cannot hold it: unbudgeted, said so
    monkeypatch.setattr(budget_module, "available_bytes", lambda: 10**9)
    none = plan_compress(model, targets, 200, None)
    assert none.default.startswith("unbudgeted") and none.batch_tokens == 2048


def test_compress_cli_refuses_a_budget_it_cannot_meet_in_one_line(tmp_path):
    out = tmp_path / "small"
    proc = subprocess.run([sys.executable, "-m", "edge_c2i.cli", "compress", "--size", "0.8",
                           "--max-memory", "1.2GB", "--out", str(out), "--task", "bundled:continents-open"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("edge-c2i: error")]
    assert len(lines) == 1 and "compress needs at least" in lines[0] and "--max-memory" in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()
