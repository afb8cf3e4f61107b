"""The three-line API: load, adapt, save; and the verbs adapt is made of.

    model, tokenizer = load_model("smollm2-135m")
    report = adapt(model, tokenizer, "bigbench:epistemic_reasoning")
    save(model, tokenizer, "adapted/", report)

``adapt`` = ``search`` (the model unchanged) + ``apply_`` (in place) + scoring on the
test split + the report.  The search's knobs are a ``SearchConfig``; ``adapt`` also takes
them as keyword arguments (``adapt(model, tok, task, top_k=2)``).
"""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

from torch import nn

from .adapted import FACTOR_TYPES, save_adapted
from .budget import eval_batch_tokens_for, lm_head_chunk_for
from .config import AdaptReport, Reduction, SearchConfig, report_reductions
from .errors import EdgeC2IError
from .evaluate import Scorer, calibrated_accuracy, calibration_control
from .factorize import apply_, count_params, reduced
from .io import OutputDir
from .search import SearchResult, acceptance, search
from .targets import get_target
from .tasks import Task, load_task
from .verdict import paired_difference, verdict

__all__ = ["adapt", "apply_", "make_report", "reduced", "save", "search"]


def adapt(model: nn.Module, tokenizer, task: str | Task, config: SearchConfig | None = None,
          *, progress: bool = True, model_name: str = "", **overrides) -> AdaptReport:
    """Search a reduction for ``task``, apply the winner to ``model`` in place, return the report.

    ``overrides`` are SearchConfig fields (``top_k=2``, ``method="laser"``) that replace
    those of ``config``.  ``model_name`` is recorded as the report's (and recipe's) model.
    """
    unknown = sorted(set(overrides) - {f.name for f in fields(SearchConfig)})
    if unknown:
        raise EdgeC2IError(f"unknown parameter(s) {', '.join(unknown)}: adapt takes the fields "
                           "of SearchConfig")
    config = replace(config or SearchConfig(), **overrides)
    t0 = time.perf_counter()
    task = load_task(task) if isinstance(task, str) else task
    params_before = count_params(model)
    found = search(model, tokenizer, task, config, progress)
    splits = found.splits

    t_test = time.perf_counter()
    test_scorer = Scorer(tokenizer, splits.test, eval_batch_tokens_for(config.max_memory),
                         lm_head_chunk_for(model, found.timings.get("budget", config.max_memory)))
    base_test = test_scorer.run(model, desc="test: base" if progress else None)
    reductions: list[Reduction] = []
    if found.best is not None:
        reductions = apply_(model, [found.best.reduction], found.svd_budget)
        adapted_test = test_scorer.run(model, desc="test: adapted" if progress else None)
    else:
        adapted_test = base_test
    calibrated = calibrated_accuracy(found.base, base_test, splits.eval, splits.test)
    timings = {**found.timings, "test_s": time.perf_counter() - t_test,
               "total_s": time.perf_counter() - t0}
    report = make_report(model_name, task.name, config.method, splits, found, reductions,
                         base_test, adapted_test, calibrated, params_before, count_params(model),
                         timings, config.score)
    report.task_notes = task.notes  # delimiter and duplicates: what loading did
    return report


def make_report(model_name, task_name, method, splits, found: SearchResult,
                reductions: list[Reduction], base_test, adapted_test, calibrated, params_before,
                params_after, timings, score) -> AdaptReport:
    control = calibration_control(splits.eval + splits.test)
    gate = acceptance(found.base, found.finalists)  # why the winner was kept or not
    difference = paired_difference(base_test, adapted_test) if reductions else None  # with CI
    text = verdict(difference, base_test.n, calibrated, adapted_test.accuracy, control, gate)
    c2i = method == "c2i"
    return AdaptReport(
        model=model_name, task=task_name, method=method, score=score if c2i else None,
        protocol=splits.protocol, splits=splits.sizes,
        n_grad_samples=len(splits.calib) if c2i else 0, n_eval_samples=len(splits.eval),
        timings=timings, evaluations=len(found.trials), candidates=found.candidates[:20],
        reductions=list(reductions), eval_base=found.base.as_dict(), eval_best=found.best,
        base=base_test.as_dict(), adapted=adapted_test.as_dict(),
        calibrated_base=None if calibrated is None else {"accuracy": calibrated,
                                                         "control": control},
        params={"before": params_before, "after": params_after}, acceptance=gate,
        test_difference=difference, verdict=text, trials=found.trials,
        rankings=found.rankings, split_args=splits.args)


def split_args_of(report: dict) -> dict | None:
    """The arguments of tasks.split that made a report's samples (None: not recorded)."""
    if report.get("split_args"):
        return report["split_args"]
    config = report.get("config") or {}  # compress: its CompressConfig
    if all(k in config for k in ("seed", "n_calib", "n_eval", "n_test")):
        return {**{k: config[k] for k in ("n_calib", "n_eval", "n_test", "seed")},
                "protocol": "c2i"}
    return None


def base_fingerprint(name: str) -> str | None:
    """sha256 of the base model's weights, when it is a local or packaged model."""
    from .models import resolve
    from .recipe import fingerprint

    if not name:
        return None
    try:
        return fingerprint(resolve(name))
    except EdgeC2IError:  # e.g. a folder since moved: the recipe then names the model only
        return None


def save(model: nn.Module, tokenizer, out: str | Path | OutputDir,
         report: AdaptReport | dict, force: bool = False) -> Path:
    """Write the adapted folder with report.json, atomically (adapted.py has its layout).

    ``force`` replaces an existing folder only if edge-c2i wrote it.  The manifest lists the
    report's reductions, which must be the factor modules ``model`` holds; a dict report
    (a report.json read back) is written as it is.
    """
    data = report.to_dict() if isinstance(report, AdaptReport) else report
    reductions = []
    for r in report_reductions(data):
        name = get_target(model, r.layer, r.type).name
        if not isinstance(model.get_submodule(name), FACTOR_TYPES):
            raise EdgeC2IError(f"the report lists a reduction of {r.key} that the model does not "
                               "hold: save the model adapt reduced")
        reductions.append(replace(r, name=name))
    info = {"base_model": data["model"], "task": data["task"], "method": data["method"],
            "base_sha256": base_fingerprint(data["model"]),  # the recipe's check (recipe.py)
            "split": split_args_of(data)}  # what `eval` on the folder scores (cli.cmd_eval)
    return save_adapted(model, tokenizer, out, reductions, info, force,
                        {"report.json": json.dumps(data, indent=2)})
