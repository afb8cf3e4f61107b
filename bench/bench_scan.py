"""What the scan costs, against the issue's target: at most 1.5x one ordinary
forward+backward over the calibration sample plus the SVDs of the targets.

    python bench/bench_scan.py --models smollm2-135m gemma3-270m

For each (model, task), on the calibration split bench_search.py uses (100
examples, seed 0), in one process, with the same batching:

- ``fb_s``: one ordinary training step's forward+backward of the task loss,
  every parameter requiring grad (what any fine-tuning step costs);
- ``scan_s``: edge_c2i's scan, end to end: its hooked forward+backward
  (``grad_s``, the gold answers only) and the eigendecomposition of every target's
  Gram matrix (``svd_s``);
- ``ratio`` = scan_s / (fb_s + svd_s), the target being <= 1.5;
- ``cached_scan_s``: the same scan once an earlier one kept the singular vectors on disk
  (spectra.py: any later scan of the same model, whatever the task), ``cached_svd_s`` its
  time reading them; ``first_scan_s``: the scan that computed and wrote them.  The other
  scans run with the cache off, so ``scan_s`` is a scan that decomposes every matrix.

Each is run twice after a warm-up pass and the faster run is kept (timings on a
shared 2-core machine are noisy).  Writes bench/results/scan.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from common import SCAN_COLUMNS, model_task_args, table, write_result

from edge_c2i import spectra
from edge_c2i.evaluate import Scorer
from edge_c2i.models import load_model
from edge_c2i.scan import singular_value_gradients
from edge_c2i.targets import find_targets
from edge_c2i.tasks import load_task, split


def plain_forward_backward(model, scorer: Scorer) -> float:
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    try:
        t0 = time.perf_counter()
        with torch.enable_grad():
            scorer.loss_and_backward(model)
        return time.perf_counter() - t0
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)


def timed_scan(model, tok, calib, targets, cache: str) -> dict:
    """One scan with the spectra cache at ``cache`` ("off": every basis computed)."""
    os.environ[spectra.ENV] = cache
    t0 = time.perf_counter()
    _, timings = singular_value_gradients(model, tok, calib, targets, progress=False)
    return {**timings, "scan_s": time.perf_counter() - t0}


def run_pair(model, tok, name: str, task: str, repeats: int) -> dict:
    calib = split(load_task(task), 100, 100, None, 0, "c2i").calib
    targets = find_targets(model)
    scorer = Scorer(tok, calib)
    plain_forward_backward(model, scorer)  # warm-up
    with tempfile.TemporaryDirectory(prefix="bench-spectra-") as cache:
        first = timed_scan(model, tok, calib, targets, cache)
        assert first["spectra"]["computed"] == len(targets), first["spectra"]
        fb, scans, cached = [], [], []
        for _ in range(repeats):
            fb.append(plain_forward_backward(model, scorer))
            scans.append(timed_scan(model, tok, calib, targets, "off"))
            cached.append(timed_scan(model, tok, calib, targets, cache))
            assert cached[-1]["spectra"]["read"] == len(targets), cached[-1]["spectra"]
        spectra_mb = first["spectra"]["written_bytes"] / 2**20
    fb_s = min(fb)
    best = min(scans, key=lambda s: s["scan_s"])
    warm = min(cached, key=lambda s: s["scan_s"])
    row = {"model": name, "task": task, "n_calib": len(calib), "n_targets": len(targets),
           "tokens": sum(len(b["input_ids"].view(-1)) for b in scorer.batches),
           "fb_s": fb_s, "svd_s": best["svd_s"], "grad_s": best["grad_s"],
           "scan_s": best["scan_s"], "grad_over_fb": best["grad_s"] / fb_s,
           "ratio": best["scan_s"] / (fb_s + best["svd_s"]),
           "first_scan_s": first["scan_s"], "cached_scan_s": warm["scan_s"],
           "cached_svd_s": warm["svd_s"], "cached_over_scan": warm["scan_s"] / best["scan_s"],
           "spectra_mb": spectra_mb}
    row["within_target"] = row["ratio"] <= 1.5
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    model_task_args(ap)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model, tok = load_model(name)
        for task in args.tasks:
            rows.append(run_pair(model, tok, name, task, args.repeats))
            print(rows[-1], flush=True)
            write_result("scan", {"threads": args.threads, "repeats": args.repeats,
                                  "target_ratio": 1.5, "rows": rows})
    print(table(rows, SCAN_COLUMNS))


if __name__ == "__main__":
    main()
