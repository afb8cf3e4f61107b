"""C2I vs LASER on the packaged models and BIG-bench tasks, and the evidence for C2I's defaults.

    python bench/bench_search.py                       # smollm2-135m, the four tasks
    python bench/bench_search.py --models gemma3-270m --tasks bigbench:qa_wikidata

For each (model, task), on one seeded split (100 calibration, 100 evaluation,
--test-samples test examples), in one process:

- base: the unmodified model; calibrated: the same with a per-choice bias fitted
  on the evaluation sample (choice tasks; METHOD.md section 5);
- LASER over a documented subset of its grid (the full grid, 30 layers x 7 types
  x 9 rates on SmolLM2, does not fit in one run here): the last 5 layers x
  gate/in/out x rates 0.1/0.05/0.01, the 45 points a practitioner who has read the
  LASER paper runs, every one on the whole evaluation sample with the same
  cached-prefix evaluator as C2I;
- C2I as shipped (``SearchConfig()``: scan, top 4 x 4 rates, one subspace,
  successive halving on a quarter of the evaluation sample), timed on its own: the
  speedups are this run's;
- a wide C2I run with every configuration on the whole evaluation sample (top 4 x
  rates 0.5/0.2/0.05/0.01 x --wide-clusters, default 1): "no screen" is the default
  grid read off it (what halving costs in accuracy), and every smaller grid (K = 1,
  2, fewer rates, clusters when the wide run has them) is a subset of its trials,
  so what C2I with that grid would have picked follows exactly; its cost is read off
  the wide run (the scan, its shared caching and decompositions, the sub-grid's
  timed trials: an upper bound).  The clusters evidence (1/2/4/8) is the wide run of
  2026-11-29, bench/results/search_grid.json;
- the score ablation: where each score ranks the matrix LASER picked, and how
  many of the LASER-subset matrices that beat the base are in each score's top 4.

Times: LASER's are measured on its subset.  The full grid's time is estimated
in a separate column: a cached-prefix evaluation from layer l runs the blocks
l..L-1, so its cost is modelled as base_eval_s x (L - l) / L, scaled by the
ratio measured on the subset, and summed over the full grid.

Writes bench/results/search.json after every pair (a cut-off run keeps what it
measured) and prints a table.  Within a pair, each stage (LASER, the C2I run, each
test-split evaluation) is saved to bench/results/partial/ as it ends, so a pair
longer than a sitting (Gemma-3 truthful_qa: over two hours on 2 cores) runs in
pieces: run the same command again with --resume.  Each stage is timed within
itself, so its figures stay measured; the row's ``resumed_stages`` lists those
that an earlier process ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import torch
from common import RESULTS, TASKS, table, write_result

from edge_c2i import spectra
from edge_c2i.config import DEFAULT_CLUSTERS, DEFAULT_RATES, DEFAULT_TOP_K, SearchConfig
from edge_c2i.evaluate import Result, Scorer, calibrated_accuracy, calibration_control
from edge_c2i.factorize import reduced
from edge_c2i.models import load_model
from edge_c2i.scan import SCORES
from edge_c2i.search import SearchResult, c2i_search, laser_search, pick
from edge_c2i.targets import LASER_RATES, decoder_layers, find_targets
from edge_c2i.tasks import load_task, split

WIDE_K, WIDE_RATES, WIDE_CLUSTERS = 4, (0.5, 0.2, 0.05, 0.01), (1, 2, 4, 8)
# the grids compared for the defaults: (top_k, rates, clusters), each a subset of the wide run
VARIANTS = {
    "K=1": (1, WIDE_RATES, WIDE_CLUSTERS),
    "K=2": (2, WIDE_RATES, WIDE_CLUSTERS),
    "K=4": (4, WIDE_RATES, WIDE_CLUSTERS),
    "clusters 1": (4, WIDE_RATES, (1,)),
    "clusters 1,2": (4, WIDE_RATES, (1, 2)),
    "clusters 1,4": (4, WIDE_RATES, (1, 4)),
    "clusters 1,8": (4, WIDE_RATES, (1, 8)),
    "rates .2,.05,.01": (4, (0.2, 0.05, 0.01), WIDE_CLUSTERS),
    "rates .05,.01": (4, (0.05, 0.01), WIDE_CLUSTERS),
    "rates .5,.2": (4, (0.5, 0.2), WIDE_CLUSTERS),
    "no screen": (DEFAULT_TOP_K, DEFAULT_RATES, DEFAULT_CLUSTERS),
    "default": (DEFAULT_TOP_K, DEFAULT_RATES, DEFAULT_CLUSTERS),  # measured: its own stage
}


def span(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def variant_grids() -> dict:
    return {k: {"top_k": v[0], "rates": v[1], "clusters": v[2]} for k, v in VARIANTS.items()}


def sub_grid(found, top_k, rates, clusters):
    """The trials and the cost of the C2I grid (top_k, rates, clusters) within the wide run
    (every configuration on the whole evaluation sample).  The cost is the scan, the base
    evaluation, the caching passes and decompositions of the whole wide run (shared, not
    split per matrix since caching passes serve several) and the sub-grid's timed trials:
    an upper bound for a sub-grid."""
    keys = [c.key for c in found.candidates[:top_k]]
    trials = [t for t in found.trials if t.reduction.key in keys and t.reduction.rate in rates
              and t.reduction.clusters in clusters]
    prep = found.timings["prep_s"]
    cost = (found.timings["scan_s"] + sum(prep.values()) + sum(t.seconds for t in trials))
    return trials, cost


class Stages:
    """The finished stages of one (model, task) pair, on disk until the pair is done.

    ``settings`` (grids, test size, threads) must match for a stage to be reused:
    a resumed pair never mixes stages of different runs' settings.
    """

    def __init__(self, out: str, name: str, task: str, settings: dict, resume: bool):
        slug = f"{out}__{name}__{task}".replace(":", "_").replace("/", "_")
        self.path = RESULTS / "partial" / f"{slug}.json"
        self.data = {"settings": settings, "stages": {}}
        if resume and self.path.exists():
            old = json.loads(self.path.read_text())
            if old["settings"] != settings:
                raise SystemExit(f"{self.path} was run with other settings ({old['settings']}); "
                                 "rerun with those or delete the file")
            self.data = old
        self.resumed = sorted(self.data["stages"])

    def get(self, key: str):
        return self.data["stages"].get(key)

    def put(self, key: str, value) -> None:
        self.data["stages"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def staged_search(stages: Stages, key: str, run) -> SearchResult:
    if stages.get(key) is None:
        stages.put(key, run().to_dict())
    return SearchResult.from_dict(stages.get(key))


def laser_full_grid_estimate(laser, n_layers: int, n_types: int) -> float:
    """Seconds LASER's full grid would take, from the subset (see the module doc)."""
    base_s = laser.timings["base_eval_s"]
    model = [base_s * (n_layers - t.reduction.layer) / n_layers for t in laser.trials]
    scale = sum(t.seconds for t in laser.trials) / max(sum(model), 1e-9)
    per_layer_rates = n_types * len(LASER_RATES)
    full = sum(base_s * (n_layers - layer) / n_layers for layer in range(n_layers))
    return base_s + scale * full * per_layer_rates


def test_result(model, scorer, trial, stages: Stages) -> Result:
    """Test-split result of one reduction (None: the unmodified model), saved by config."""
    r = trial and trial.reduction
    key = "test base" if r is None else f"test {r.key} rate {r.rate} clusters {r.clusters}"
    if stages.get(key) is None:
        if r is None:
            res = scorer.run(model)
        else:
            with reduced(model, r):
                res = scorer.run(model)
        stages.put(key, dataclasses.asdict(res))
    return Result(**stages.get(key))


def test_accuracy(model, scorer, trial, stages: Stages) -> dict:
    return test_result(model, scorer, trial, stages).as_dict()


def summarize(row: dict) -> dict:
    """The headline fields of a row, from its variants: C2I single (clusters 1), C2I
    multi (clusters 1,4) and C2I as shipped (the default grid), whose cost the speedups
    are measured against.  Rows of a run with other defaults are re-derived exactly when
    the current default grid is one of the variants (--resummarize)."""
    for label, variant in (("c2i_single", "clusters 1"), ("c2i_multi", "clusters 1,4"),
                           ("c2i_full", "no screen"), ("c2i", "default")):
        v = row["variants"].get(variant) or {}  # null: not in this pair's wide run
        row.update({f"{label}_{key}": v.get(field) for key, field in
                    (("acc", "acc"), ("loss", "loss"), ("s", "s"), ("evals", "evals"),
                     ("chosen", "chosen"))})
    row["speedup_vs_laser"] = row["laser_subset_s"] / row["c2i_s"]
    row["speedup_vs_laser_full_grid_estimated"] = row["laser_full_grid_s_estimated"] / row["c2i_s"]
    row["multi_speedup_vs_laser_full_grid_estimated"] = (
        row["c2i_multi_s"] and row["laser_full_grid_s_estimated"] / row["c2i_multi_s"])
    return row


def search_targets(rows: list[dict]) -> dict:
    """#17's search targets over the pairs in ``rows`` (measured, same run): C2I >= 3x faster
    than LASER's subset on 6 of the 8 pairs, test accuracy >= LASER's on half of them, mean
    test gain >= +4.1 points (the earlier default's)."""
    fast = sum(r["speedup_vs_laser"] >= 3 for r in rows)
    as_good = sum(r["c2i_acc"] >= r["laser_acc"] - 1e-9 for r in rows)
    gain = sum(r["c2i_acc"] - r["base_acc"] for r in rows) / max(1, len(rows))
    return {"pairs": len(rows),
            "speedup_3x": {"pairs": fast, "needed": 6, "met": fast >= 6},
            "accuracy_vs_laser": {"pairs": as_good, "needed": 4, "met": as_good >= 4},
            "mean_gain": {"value": gain, "needed": 0.041, "met": gain >= 0.041}}


def recalibrate(path, test_samples: int) -> list[dict]:
    """Fill in the calibration control of rows measured before it covered their task
    (choices that differ per question: a bias per answer token).  Re-scores the
    unmodified model on the pair's evaluation and test splits; its test accuracy must
    equal the row's base accuracy, or the splits are not the row's."""
    rows = json.loads(path.read_text())["rows"]
    todo = [r for r in rows if r["calibrated_acc"] is None]
    for name in sorted({r["model"] for r in todo}):
        model, tok = load_model(name)
        for r in (r for r in todo if r["model"] == name):
            splits = split(load_task(r["task"]), 100, 100, test_samples, 0, "c2i")
            if splits.eval[0].choices is None:
                continue  # open answers: no control
            ev, te = Scorer(tok, splits.eval).run(model), Scorer(tok, splits.test).run(model)
            if abs(te.accuracy - r["base_acc"]) > 1e-9:
                raise SystemExit(f"{name} {r['task']}: base test accuracy {te.accuracy} != "
                                 f"the row's {r['base_acc']}: not the row's splits")
            r["calibrated_acc"] = calibrated_accuracy(ev, te, splits.eval, splits.test)
            r["calibrated_control"] = calibration_control(splits.eval + splits.test)
            print(name, r["task"], "calibrated", r["calibrated_acc"], r["calibrated_control"])
    return rows


def rank_of(ranking: list[str], key: str | None):
    return None if key is None or key not in ranking else ranking.index(key) + 1


def run_pair(model, tok, name, task, args, laser_grid) -> tuple[dict, Stages]:
    t_start = time.perf_counter()
    splits = split(load_task(task), 100, 100, args.test_samples, 0, "c2i")
    layers, types, rates = laser_grid
    wide_clusters = tuple(args.wide_clusters)
    settings = {"laser_grid": [layers, types, rates], "wide_k": WIDE_K,
                "wide_rates": list(WIDE_RATES), "wide_clusters": list(wide_clusters),
                "test_samples": args.test_samples, "threads": args.threads}
    stages = Stages(args.out, name, task, settings, args.resume)
    laser = staged_search(stages, "laser", lambda: laser_search(
        model, tok, splits.eval, SearchConfig("laser", rates=rates, layers=layers, types=types)))
    # C2I as shipped (successive halving), timed on its own
    shipped = staged_search(stages, "c2i", lambda: c2i_search(
        model, tok, splits.calib, splits.eval, SearchConfig()))
    # the wide run: every configuration on the whole sample, for the sub-grids below
    wide = staged_search(stages, "c2i wide", lambda: c2i_search(
        model, tok, splits.calib, splits.eval,
        SearchConfig(top_k=WIDE_K, rates=WIDE_RATES, clusters=wide_clusters, screen=None)))
    scorer = Scorer(tok, splits.test)
    base_result = test_result(model, scorer, None, stages)
    base_test = base_result.as_dict()
    calibrated = calibrated_accuracy(wide.base, base_result, splits.eval, splits.test)
    n_layers = len(decoder_layers(model))
    n_types = len({t.type for t in find_targets(model)})
    laser_test = test_accuracy(model, scorer, laser.best, stages)
    row = {"model": name, "task": task, "n_test": len(splits.test),
           "base_acc": base_test["accuracy"], "base_loss": base_test["loss"],
           "calibrated_acc": calibrated,
           "calibrated_control": calibration_control(splits.eval + splits.test),
           "laser_acc": laser_test["accuracy"], "laser_loss": laser_test["loss"],
           "laser_chosen": laser.best and laser.best.to_dict(),
           "laser_subset_evals": len(laser.trials),
           "laser_subset_s": laser.timings["search_s"],
           "laser_s_per_eval": sum(t.seconds for t in laser.trials) / max(1, len(laser.trials)),
           "laser_full_grid_evals": n_layers * n_types * len(LASER_RATES),
           "laser_full_grid_s_estimated": laser_full_grid_estimate(laser, n_layers, n_types),
           "c2i_scan_s": shipped.timings["scan_s"],
           "c2i_base_eval_s": shipped.timings["base_eval_s"],
           "wide_clusters": list(wide_clusters), "variants": {}}
    res = test_accuracy(model, scorer, shipped.best, stages)
    row["variants"]["default"] = {
        "evals": len(shipped.trials), "full_evals": len(shipped.finalists),
        "s": shipped.timings["scan_s"] + shipped.timings["search_s"],
        "chosen": shipped.best and shipped.best.to_dict(), "acc": res["accuracy"],
        "loss": res["loss"], "gain": res["accuracy"] - base_test["accuracy"], "measured": True}
    row["c2i_timings"] = {k: v for k, v in shipped.timings.items() if k != "plan"}
    for label, (k, rates_v, clusters_v) in VARIANTS.items():
        if label == "default":
            continue
        if not set(clusters_v) <= set(wide_clusters):
            row["variants"][label] = None  # not a sub-grid of this pair's wide run
            continue
        trials, cost = sub_grid(wide, k, rates_v, clusters_v)
        chosen = pick(wide.base, trials)
        res = test_accuracy(model, scorer, chosen, stages)
        row["variants"][label] = {"evals": len(trials), "s": cost,
                                  "chosen": chosen and chosen.to_dict(),
                                  "acc": res["accuracy"], "loss": res["loss"],
                                  "gain": res["accuracy"] - base_test["accuracy"]}
    summarize(row)
    # score ablation
    laser_key = laser.best and laser.best.reduction.key
    helpful = {t.reduction.key for t in laser.trials
               if t.key() > (laser.base.accuracy, -laser.base.loss)}
    row["ablation"] = {score: {"rank_of_laser_choice": rank_of(wide.rankings[score], laser_key),
                               "helpful_in_top4": len(helpful & set(wide.rankings[score][:4])),
                               "top4": wide.rankings[score][:4]}
                       for score in SCORES}
    row["laser_helpful_matrices"] = sorted(helpful)
    # every trial of both searches (evaluation sample), to study other grids offline
    row["c2i_trials"] = [t.to_dict() for t in wide.trials]
    row["c2i_candidates"] = [c.key for c in wide.candidates]
    row["c2i_prep_s"] = wide.timings["prep_s"]
    row["c2i_base_eval"] = {"accuracy": wide.base.accuracy, "loss": wide.base.loss}
    row["laser_trials"] = [t.to_dict() for t in laser.trials]
    row["seconds"] = time.perf_counter() - t_start  # this process only (see resumed_stages)
    row["resumed_stages"] = stages.resumed
    return row, stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--laser-layers", default="-5", help="a range a-b, a list, or -N: the last N")
    ap.add_argument("--laser-types", default="gate,in,out")
    ap.add_argument("--laser-rates", default="0.1,0.05,0.01")
    ap.add_argument("--test-samples", type=int, default=300)
    ap.add_argument("--wide-clusters", type=lambda t: [int(x) for x in t.split(",")],
                    default=[1],
                    help="clusterings of the wide C2I run (fewer: cheaper, fewer variants)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="search")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of other (model, task) pairs already in the result file")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the stages of an unfinished pair saved in bench/results/partial")
    ap.add_argument("--recalibrate", action="store_true",
                    help="only fill in the calibration control of rows that lack it")
    ap.add_argument("--resummarize", action="store_true",
                    help="only re-derive the headline fields of the result file (summarize)")
    args = ap.parse_args()
    if 1 not in args.wide_clusters or not set(DEFAULT_CLUSTERS) <= set(args.wide_clusters):
        ap.error(f"--wide-clusters must hold 1 and the default clusters {DEFAULT_CLUSTERS}")
    torch.set_num_threads(args.threads)
    rows = []
    previous = RESULTS / f"{args.out}.json"
    if args.recalibrate:
        data = json.loads(previous.read_text())
        data["rows"] = recalibrate(previous, data["test_samples"])
        data.pop("machine", None)
        write_result(args.out, data)
        return
    if args.resummarize:
        data = json.loads(previous.read_text())
        data["rows"] = [summarize(r) for r in data["rows"]]
        data["variants"] = variant_grids()
        data["targets"] = search_targets(data["rows"])
        data.pop("machine", None)
        write_result(args.out, data)
        return
    # each model's first C2I scan decomposes every matrix and keeps the singular vectors on
    # disk (spectra.py); its later scans (the wide run, the next tasks) read them, as a user's
    # later runs on one model do.  A fresh cache per process: the first pair pays for them.
    cache = tempfile.TemporaryDirectory(prefix="bench-spectra-")
    os.environ[spectra.ENV] = cache.name
    if args.append and previous.exists():
        rows = [r for r in json.loads(previous.read_text())["rows"]
                if not (r["model"] in args.models and r["task"] in args.tasks)]
    for name in args.models:
        model, tok = load_model(name)
        n = len(decoder_layers(model))
        layers = (list(range(n + int(args.laser_layers), n)) if args.laser_layers.startswith("-")
                  else span(args.laser_layers))
        grid = (layers, args.laser_types.split(","), [float(r) for r in args.laser_rates.split(",")])
        for task in args.tasks:
            row, stages = run_pair(model, tok, name, task, args, grid)
            row["laser_subset"] = {"layers": grid[0], "types": grid[1], "rates": grid[2]}
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("variants", "ablation")}, flush=True)
            write_result(args.out, {"test_samples": args.test_samples, "threads": args.threads,
                                    "wide_grid": {"top_k": WIDE_K, "rates": WIDE_RATES,
                                                  "clusters": WIDE_CLUSTERS},
                                    "variants": variant_grids(),
                                    "targets": search_targets(rows),
                                    "rows": rows})
            stages.done()  # the pair is in the result file: its stages are no longer needed
    print(table(rows, [("model", "model"), ("task", "task"), ("base_acc", "base"),
                       ("calibrated_acc", "calibrated"), ("laser_acc", "LASER (subset)"),
                       ("c2i_single_acc", "C2I single"), ("c2i_multi_acc", "C2I multi"),
                       ("c2i_acc", "C2I (default)"), ("laser_subset_s", "LASER s"),
                       ("c2i_s", "C2I s"),
                       ("speedup_vs_laser", "speedup (subset)"),
                       ("speedup_vs_laser_full_grid_estimated", "speedup (full grid, est.)")]))


if __name__ == "__main__":
    main()
