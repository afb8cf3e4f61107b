"""The three-line API: load, adapt, save.

    model, tokenizer = load_model("smollm2-135m")
    report = adapt(model, tokenizer, "bigbench:epistemic_reasoning")
    save(model, tokenizer, "adapted/", report)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from torch import nn

from .adapted import save_adapted
from .budget import eval_batch_tokens_for, lm_head_chunk_for
from .errors import UserError
from .evaluate import Scorer, calibrated_accuracy, calibration_control
from .factorize import Reduction, count_params, describe, reduce
from .io import OutputDir
from .scan import DEFAULT_SCORE
from .search import (
    DEFAULT_CLUSTERS,
    DEFAULT_RATES,
    DEFAULT_TOP_K,
    SearchResult,
    acceptance,
    c2i_search,
    laser_search,
)
from .targets import LASER_RATES, get_target
from .tasks import Task, load_task, split
from .verdict import paired_difference, verdict


def adapt(model: nn.Module, tokenizer, task: str | Task, method: str = "c2i",
          n_calib: int = 100, n_eval: int = 100, n_test: int | None = 1000, seed: int = 0,
          top_k: int = DEFAULT_TOP_K, rates=None, clusters=DEFAULT_CLUSTERS,
          score: str = DEFAULT_SCORE, clustering: str = "kmeans", layers=None, types=None,
          progress: bool = True, model_name: str = "", protocol: str | None = None,
          max_memory: int | None = None) -> dict:
    """Search a reduction for ``task``, apply the winner to ``model`` in place, return the report.

    ``protocol`` picks the splits (tasks.split); by default LASER uses its own
    (first 20% validation), C2I its seeded calibration/evaluation/test samples.
    ``max_memory`` (bytes) keeps the scan within that budget (budget.plan_scan).
    """
    t0 = time.perf_counter()
    task = load_task(task) if isinstance(task, str) else task
    protocol = protocol or ("laser" if method == "laser" else "c2i")
    splits = split(task, n_calib, n_eval, n_test, seed, protocol)
    params_before = count_params(model)
    if method == "c2i":
        found = c2i_search(model, tokenizer, splits.calib, splits.eval, top_k,
                           tuple(rates or DEFAULT_RATES), tuple(clusters), score, clustering,
                           layers, types, progress, max_memory)
    elif method == "laser":
        found = laser_search(model, tokenizer, splits.eval, tuple(rates or LASER_RATES),
                             layers, types, progress)
    else:
        raise UserError(f"unknown method {method!r}: use c2i or laser")

    t_test = time.perf_counter()
    test_scorer = Scorer(tokenizer, splits.test, eval_batch_tokens_for(max_memory),
                         lm_head_chunk_for(model, max_memory))
    base_test = test_scorer.run(model, desc="test: base" if progress else None)
    eval_base = found.base
    reductions: list[Reduction] = []
    if found.best is not None:
        b = found.best
        reductions.append(reduce(model, get_target(model, b.layer, b.type), b.rate, b.clusters,
                                 clustering))
        adapted_test = test_scorer.run(model, desc="test: adapted" if progress else None)
    else:
        adapted_test = base_test
    calibrated = calibrated_accuracy(eval_base, base_test, splits.eval, splits.test)
    timings = {**found.timings, "test_s": time.perf_counter() - t_test,
               "total_s": time.perf_counter() - t0}
    report = make_report(model_name, task.name, method, splits, found, reductions, base_test,
                         adapted_test, calibrated, params_before, count_params(model), timings,
                         score)
    report["task_notes"] = task.notes  # delimiter and duplicates: what loading did
    return report


def make_report(model_name, task_name, method, splits, found: SearchResult, reductions,
                base_test, adapted_test, calibrated, params_before, params_after, timings,
                score) -> dict:
    chosen = None
    if reductions:
        r = reductions[0]
        chosen = {"layer": r.layer, "type": r.type, "rate": r.rate, "clusters": r.clusters,
                  "clustering": r.clustering, "ranks": r.ranks, "group_sizes": r.group_sizes}
    control = calibration_control(splits.eval + splits.test)
    gate = acceptance(found.base, found.trials)  # why the winner was kept or not
    difference = paired_difference(base_test, adapted_test) if chosen else None  # paired, with CI
    text = verdict(difference, base_test.n, calibrated, adapted_test.accuracy, control, gate)
    return {
        "model": model_name,
        "task": task_name,
        "method": method,
        "score": score if method == "c2i" else None,
        "protocol": splits.protocol,
        "splits": splits.sizes,
        "n_grad_samples": len(splits.calib) if method == "c2i" else 0,
        "n_eval_samples": len(splits.eval),
        "timings": timings,
        "evaluations": len(found.trials),
        "candidates": found.candidates[:20],
        "chosen": chosen,
        "eval_sample": {"base": found.base.as_dict(),
                        "best": None if found.best is None else vars(found.best)},
        "base": base_test.as_dict(),
        "adapted": adapted_test.as_dict(),
        "calibrated_base": None if calibrated is None else {"accuracy": calibrated,
                                                            "control": control},
        "params": {"before": params_before, "after": params_after},
        "acceptance": gate,
        "test_difference": difference,
        "verdict": text,
        "trials": [vars(t) for t in found.trials],
        "rankings": found.rankings,
    }


def save(model: nn.Module, tokenizer, out: str | Path | OutputDir, report: dict,
         force: bool = False) -> Path:
    """Write the adapted folder with report.json, atomically (adapted.py has its layout).

    ``force`` replaces an existing folder only if edge-c2i wrote it.
    """
    reductions = []
    if report.get("chosen"):
        c = report["chosen"]
        t = get_target(model, c["layer"], c["type"])
        reductions.append(describe(t, c["rate"], c["clusters"], c["clustering"],
                                   model.get_submodule(t.name)))
    info = {"base_model": report["model"], "task": report["task"], "method": report["method"]}
    return save_adapted(model, tokenizer, out, reductions, info, force,
                        {"report.json": json.dumps(report, indent=2)})
