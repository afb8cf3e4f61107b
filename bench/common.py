"""Helpers shared by the benchmarks: thread pinning, result files, markdown tables."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


MODELS = ["smollm2-135m", "gemma3-270m"]
TASKS = ["bigbench:qa_wikidata", "bigbench:fact_checker/fever", "bigbench:epistemic_reasoning",
         "bigbench:truthful_qa"]


def model_task_args(ap, models=tuple(MODELS)) -> None:
    """--models, --tasks and --threads, shared by the per-(model, task) benchmarks."""
    ap.add_argument("--models", nargs="+", default=list(models))
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--threads", type=int, default=2)


def machine() -> dict:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def write_result(name: str, data: dict) -> Path:
    """bench/results/NAME.json, written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    tmp.replace(path)
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table; columns are (key, header); floats get 3 decimals."""
    def fmt(v):
        if isinstance(v, float):
            if v and abs(v) < 0.01:
                return f"{v:.1e}"
            return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


# bench_scan.py's table (also rendered by tables.py, which must not import torch)
SCAN_COLUMNS = [("model", "model"), ("task", "task"), ("tokens", "tokens"),
                ("fb_s", "forward+backward s"), ("svd_s", "SVDs s"), ("grad_s", "scan's pass s"),
                ("scan_s", "scan s"), ("grad_over_fb", "pass / f+b"),
                ("ratio", "scan / (f+b + SVDs)"), ("within_target", "<= 1.5"),
                ("first_scan_s", "first scan, writing them s"),
                ("cached_svd_s", "SVDs read s"), ("cached_scan_s", "scan, vectors kept s"),
                ("cached_over_scan", "kept / scan"), ("spectra_mb", "vectors MB")]

# bench_contention.py's table (also rendered by tables.py)
CONTENTION_COLUMNS = [("setting", "setting"), ("idle_s", "idle s"), ("loaded_s", "loaded s"),
                      ("ratio", "loaded / idle"), ("within_target", "<= 2.5")]
