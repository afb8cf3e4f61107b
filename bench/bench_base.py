"""Base accuracy and loss of the packaged models on four BIG-bench tasks (test split).

    python bench/bench_base.py [--test-samples 300] [--models smollm2-135m gemma3-270m]

Writes bench/results/base.json and prints a table.  The test split is the
c2i protocol's (seed 0), capped at --test-samples examples.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import model_task_args, table, write_result

from edge_c2i.evaluate import evaluate
from edge_c2i.models import load_model
from edge_c2i.tasks import load_task, split


def main() -> None:
    ap = argparse.ArgumentParser()
    model_task_args(ap)
    ap.add_argument("--test-samples", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model, tok = load_model(name)
        for task in args.tasks:
            s = split(load_task(task), n_test=args.test_samples)
            t = time.perf_counter()
            res = evaluate(model, tok, s.test)
            rows.append({"model": name, "task": task, "n": res["n"], "accuracy": res["accuracy"],
                         "loss": res["loss"], "seconds": time.perf_counter() - t})
            print(rows[-1], flush=True)
            # written after every row, so an interrupted run keeps what it measured
            write_result("base", {"test_samples": args.test_samples, "rows": rows})
    print(table(rows, [("model", "model"), ("task", "task"), ("n", "n"),
                       ("accuracy", "accuracy"), ("loss", "loss")]))


if __name__ == "__main__":
    main()
