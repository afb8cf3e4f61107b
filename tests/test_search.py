import json
import subprocess
import sys
from dataclasses import replace

import pytest

from edge_c2i.api import adapt, save
from edge_c2i.config import Reduction, SearchConfig, Trial
from edge_c2i.evaluate import Result
from edge_c2i.models import load_model
from edge_c2i.search import SearchResult, acceptance, c2i_search, gate, pick
from edge_c2i.tasks import load_task, split


def trial(layer, type_, rate, clusters, accuracy, loss, seconds=0.0, wins=None, losses=None):
    return Trial(Reduction(layer, type_, rate, clusters), accuracy, loss, seconds, wins, losses)


REPORT_KEYS = {"schema_version", "recipe", "model", "task", "method", "n_grad_samples", "n_eval_samples", "timings",
               "evaluations", "candidates", "chosen", "base", "adapted", "params",
               "calibrated_base", "acceptance", "test_difference", "verdict"}


def test_pick_accepts_only_a_gain_beyond_noise():
    base = Result(0.5, 1.0, None, None, None, 100)
    assert pick(base, []) is None
    worse = trial(1, "out", 0.1, 1, 0.5, 1.1)
    tie_better_loss = trial(1, "out", 0.2, 1, 0.5, 0.9)
    assert pick(base, [worse, tie_better_loss]) is None  # a lower loss alone changes no answer
    # the margin is in net examples of the evaluation sample: 5 of 100
    plus3 = trial(2, "in", 0.2, 1, 0.53, 1.5)
    plus5 = trial(2, "in", 0.5, 1, 0.55, 1.5)
    assert pick(base, [worse, plus3]) is None
    assert pick(base, [worse, plus5]) is plus5
    # with counts, flips both ways still count by their net (measured: such picks gained on
    # test); the sign test's p is reported beside the decision
    clean = trial(3, "in", 0.2, 1, 0.55, 1.0, 0.0, 5, 0)
    flips = trial(3, "in", 0.5, 1, 0.55, 1.0, 0.0, 30, 25)
    assert pick(base, [clean]) is clean and pick(base, [flips]) is flips
    assert gate(base, flips)["p"] > 0.05 and gate(base, clean)["p"] == 1 / 32
    assert gate(base, plus5)["p"] is None  # no counts saved
    assert pick(base, [flips], min_net=6) is None
    decision = acceptance(base, [flips, worse])
    assert decision["candidate"]["layer"] == 3 and decision["net"] == 5 and decision["accepted"]


def test_c2i_search_on_the_real_model_with_a_tiny_grid(smol):
    model, tok = smol
    s = split(load_task("bundled:continents"), n_calib=8, n_eval=8)
    config = SearchConfig(top_k=2, rates=(0.05,), clusters=(1, 2))
    res = c2i_search(model, tok, s.calib, s.eval, config, progress=False)
    assert len(res.trials) == 4 and len(res.candidates) == 210
    # every trial's reduction says what was applied; multi-subspace ones their clustering
    assert {(t.reduction.clusters, t.reduction.clustering) for t in res.trials} == {
        (1, "none"), (2, "kmeans")}
    assert all(len(t.reduction.ranks) == len(t.reduction.group_sizes) == t.reduction.clusters
               for t in res.trials)
    again = SearchResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.trials == res.trials and again.candidates == res.candidates
    # successive halving: the 4 configurations on 2 of the 8 examples, the best one on all 8
    assert [t.n for t in res.finalists] == [8] and res.base.n == 8
    assert sorted(t.n for t in res.trials) == [2, 2, 2, 8]
    assert res.timings["screened_out"] == 3
    for t in res.finalists:  # wins and losses against the base add up to the accuracy change
        assert t.wins - t.losses == round((t.accuracy - res.base.accuracy) * res.base.n)
    winner = max(res.finalists, key=Trial.key)
    assert res.best is (winner if gate(res.base, winner)["accepted"] else None)
    # without screening every configuration is scored on the whole sample, and the one the
    # screen kept scores the same (the screen and the rest are the same examples)
    full = c2i_search(model, tok, s.calib, s.eval, replace(config, screen=None), progress=False)
    assert [t.n for t in full.trials] == [8] * 4 and full.base.accuracy == res.base.accuracy
    same = next(t for t in full.trials if t.reduction == winner.reduction)
    assert same.accuracy == winner.accuracy and same.loss == pytest.approx(winner.loss, rel=1e-4)
    # the model is restored after the search
    from edge_c2i.targets import find_targets
    assert all(type(model.get_submodule(t.name)).__name__ == "Linear" for t in find_targets(model))


def test_adapt_report_schema_and_saved_folder(tmp_path):
    model, tok = load_model("smollm2-135m")
    report = adapt(model, tok, "bundled:continents", n_calib=8, n_eval=8, n_test=8,
                   top_k=1, rates=(0.01,), clusters=(1,), progress=False,
                   model_name="smollm2-135m").to_dict()
    assert REPORT_KEYS <= set(report)
    assert report["recipe"]["base_model"] == "smollm2-135m"
    assert report["recipe"]["reductions"] == ([report["chosen"]] if report["chosen"] else [])
    assert {"scan_s", "search_s", "total_s"} <= set(report["timings"])
    assert report["evaluations"] == 1
    assert ("Warning: only 8 test examples" in report["verdict"]) == (report["chosen"] is not None)
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
                          text=True, timeout=600, check=False)


@pytest.mark.parametrize("args,message", [
    (["adapt", "--rates", "0", "--out", "{tmp}/x"], "rate 0.0 out of range"),
    (["adapt", "--rates", "1.5", "--out", "{tmp}/x"], "rate 1.5 out of range"),
    # checked on the loaded model: a task that needs no download
    (["adapt", "--layers", "99", "--out", "{tmp}/x", "--task", "bundled:continents-open"], "out of range"),
    (["adapt", "--types", "fc9", "--out", "{tmp}/x", "--task", "bundled:continents-open"], "unknown matrix type"),
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
    r = run_cli("eval", "--model", "smollm2-135m", "--task", "bundled:continents",
                "--limit", "10", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= out["accuracy"] <= 1 and out["loss"] > 0 and out["n"] == 10
