"""C2I vs LASER on the packaged models and BIG-bench tasks, measured in one run.

    python bench/bench_search.py --models smollm2-135m --tasks bigbench:fact_checker/fever \\
        --laser-layers 24-29 --laser-types in,out,gate --laser-rates 0.2,0.05,0.01

For each (model, task): the unmodified model, the calibration control, LASER
over the given grid (the full grid is 30 layers x 7 types x 9 rates = 1890
evaluations on SmolLM2, too long for one run here: the subset is documented
in the result file, and the cost per LASER evaluation is reported so the full
grid's time can be estimated in a separate column), C2I single-subspace and
C2I multi-subspace.  Both searches use the same evaluation sample size, the
same cached-prefix evaluator and the same test split.
Writes bench/results/search.json and prints a table.
"""

from __future__ import annotations

import argparse

import torch
from common import table, write_result

from edge_c2i.api import adapt
from edge_c2i.models import load_model
from edge_c2i.targets import find_targets


def span(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--tasks", nargs="+", default=["bigbench:fact_checker/fever"])
    ap.add_argument("--laser-layers", default="24-29")
    ap.add_argument("--laser-types", default="in,out,gate")
    ap.add_argument("--laser-rates", default="0.2,0.05,0.01")
    ap.add_argument("--test-samples", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers, types = span(args.laser_layers), args.laser_types.split(",")
    rates = [float(r) for r in args.laser_rates.split(",")]
    rows = []
    for name in args.models:
        for task in args.tasks:
            common = dict(n_eval=100, n_test=args.test_samples, progress=False, model_name=name)
            runs = {}
            model, tok = load_model(name)
            full_grid = len(find_targets(model)) * 9
            # LASER: validation = the same 100-example evaluation sample as C2I, for a fair cost
            runs["laser"] = adapt(model, tok, task, method="laser", protocol="c2i",
                                  layers=layers, types=types, rates=rates, **common)
            for label, clusters in (("c2i_single", (1,)), ("c2i_multi", (1, 4))):
                model, tok = load_model(name)
                runs[label] = adapt(model, tok, task, clusters=clusters, **common)
            laser = runs["laser"]
            per_eval = laser["timings"]["search_s"] / max(1, laser["evaluations"])
            row = {"model": name, "task": task,
                   "base_acc": runs["c2i_single"]["base"]["accuracy"],
                   "calibrated_acc": (runs["c2i_single"]["calibrated_base"] or {}).get("accuracy"),
                   "laser_subset_evals": laser["evaluations"],
                   "laser_subset_s": laser["timings"]["total_s"],
                   "laser_s_per_eval": per_eval,
                   "laser_full_grid_evals": full_grid,
                   "laser_full_grid_s_estimated": per_eval * full_grid}
            for label, rep in runs.items():
                row[f"{label}_acc"] = rep["adapted"]["accuracy"]
                row[f"{label}_loss"] = rep["adapted"]["loss"]
                row[f"{label}_s"] = rep["timings"]["total_s"]
                row[f"{label}_evals"] = rep["evaluations"]
                row[f"{label}_chosen"] = rep["chosen"]
            row["speedup_vs_laser"] = row["laser_subset_s"] / row["c2i_multi_s"]
            row["speedup_vs_laser_full_grid_estimated"] = (
                row["laser_full_grid_s_estimated"] / row["c2i_multi_s"])
            rows.append(row)
            print(row, flush=True)
            write_result("search", {"laser_subset": {"layers": layers, "types": types,
                                                     "rates": rates},
                                    "test_samples": args.test_samples, "rows": rows})
    write_result("search", {"laser_subset": {"layers": layers, "types": types, "rates": rates},
                            "test_samples": args.test_samples, "rows": rows})
    print(table(rows, [("model", "model"), ("task", "task"), ("base_acc", "base"),
                       ("calibrated_acc", "calibrated"), ("laser_acc", "LASER (subset)"),
                       ("c2i_single_acc", "C2I single"), ("c2i_multi_acc", "C2I multi"),
                       ("laser_subset_s", "LASER s"), ("c2i_multi_s", "C2I s"),
                       ("speedup_vs_laser", "speedup (subset, measured)")]))


if __name__ == "__main__":
    main()
