import json
import subprocess
import sys

import pytest

from edge_c2i.api import adapt, save
from edge_c2i.evaluate import Result
from edge_c2i.models import load_model
from edge_c2i.search import Trial, c2i_search, pick
from edge_c2i.tasks import load_task, split

REPORT_KEYS = {"model", "task", "method", "n_grad_samples", "n_eval_samples", "timings",
               "evaluations", "candidates", "chosen", "base", "adapted", "params",
               "calibrated_base"}


def test_pick_accepts_only_what_beats_the_base():
    base = Result(0.5, 1.0, None, None, None, 10)
    worse = Trial(1, "out", 0.1, 1, 0.5, 1.1)
    assert pick(base, [worse]) is None  # same accuracy, higher loss
    tie_better_loss = Trial(1, "out", 0.2, 1, 0.5, 0.9)
    assert pick(base, [worse, tie_better_loss]) is tie_better_loss
    better = Trial(2, "in", 0.2, 4, 0.6, 1.5)
    assert pick(base, [worse, tie_better_loss, better]) is better


def test_c2i_search_on_the_real_model_with_a_tiny_grid(smol):
    model, tok = smol
    s = split(load_task("bigbench:epistemic_reasoning"), n_calib=8, n_eval=8)
    res = c2i_search(model, tok, s.calib, s.eval, top_k=2, rates=(0.05,), clusters=(1, 2),
                     progress=False)
    assert len(res.trials) == 4 and len(res.candidates) == 210
    if res.best is None:
        assert all(t.key() <= (res.base.accuracy, -res.base.loss) for t in res.trials)
    else:
        assert res.best.key() > (res.base.accuracy, -res.base.loss)
    # the model is restored after the search
    from edge_c2i.targets import find_targets
    assert all(type(model.get_submodule(t.name)).__name__ == "Linear" for t in find_targets(model))


def test_adapt_report_schema_and_saved_folder(tmp_path):
    model, tok = load_model("smollm2-135m")
    report = adapt(model, tok, "bigbench:fact_checker/fever", n_calib=8, n_eval=8, n_test=8,
                   top_k=1, rates=(0.01,), clusters=(1,), progress=False,
                   model_name="smollm2-135m")
    assert REPORT_KEYS <= set(report)
    assert {"scan_s", "search_s", "total_s"} <= set(report["timings"])
    assert report["evaluations"] == 1
    out = save(model, tok, tmp_path / "a", report)
    saved = json.loads((out / "report.json").read_text())
    assert saved["chosen"] == report["chosen"]
    if report["chosen"] is None:
        assert report["adapted"] == report["base"]
        assert report["params"]["after"] == report["params"]["before"]
    else:
        assert report["params"]["after"] < report["params"]["before"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_c2i.cli", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("args,message", [
    (["adapt", "--rates", "0", "--out", "{tmp}/x"], "rate 0.0 out of range"),
    (["adapt", "--rates", "1.5", "--out", "{tmp}/x"], "rate 1.5 out of range"),
    (["adapt", "--layers", "99", "--out", "{tmp}/x"], "out of range"),
    (["adapt", "--types", "fc9", "--out", "{tmp}/x"], "unknown matrix type"),
    (["adapt", "--out", "{tmp}/exists"], "exists; pass --force"),
    (["adapt", "--out", "/proc/nope/x"], "cannot write"),
    (["eval", "--task", "jsonl:/nonexistent.jsonl"], "no such task file"),
    (["eval", "--model", "/nonexistent/model"], "no such model"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    (tmp_path / "exists").mkdir()
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("edge-c2i: error:") and message in lines[-1], r.stderr[-2000:]
    assert not (tmp_path / "x").exists()


def test_eval_json_on_the_real_model():
    r = run_cli("eval", "--model", "smollm2-135m", "--task", "bigbench:epistemic_reasoning",
                "--limit", "10", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= out["accuracy"] <= 1 and out["loss"] > 0 and out["n"] == 10
