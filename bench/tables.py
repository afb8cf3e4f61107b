"""Rewrite the README's results section from bench/results/*.json.

    python bench/tables.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common import RESULTS, table

README = Path(__file__).parent.parent / "README.md"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def section_base(d: dict) -> str:
    return (f"### Base accuracy (test split, first {d['test_samples']} examples)\n\n"
            "`python bench/bench_base.py` -> bench/results/base.json\n\n"
            + table(d["rows"], [("model", "model"), ("task", "task"), ("n", "n"),
                                ("accuracy", "accuracy"), ("loss", "loss")]))


def section_search(d: dict) -> str:
    sub = d["laser_subset"]
    rows = []
    for r in d["rows"]:
        rows.append({**r, "laser_grid": f"{r['laser_subset_evals']} of {r['laser_full_grid_evals']}"})
    return (f"### C2I vs LASER (test split, {d['test_samples']} examples)\n\n"
            "`python bench/bench_search.py ...` (arguments in the result file) -> "
            "bench/results/search.json. LASER ran on a subset of its grid: layers "
            f"{sub['layers']}, types {sub['types']}, rates {sub['rates']}; the speedup column is "
            "measured on that subset, the estimate for the full grid (per-evaluation cost x "
            "grid size) is a separate column.\n\n"
            + table(rows, [("model", "model"), ("task", "task"), ("base_acc", "base"),
                           ("calibrated_acc", "calibrated base"), ("laser_acc", "LASER"),
                           ("c2i_single_acc", "C2I single"), ("c2i_multi_acc", "C2I multi"),
                           ("laser_grid", "LASER evals"), ("c2i_multi_evals", "C2I evals"),
                           ("laser_subset_s", "LASER s"), ("c2i_multi_s", "C2I s"),
                           ("speedup_vs_laser", "speedup, measured"),
                           ("speedup_vs_laser_full_grid_estimated", "speedup, full grid est.")]))


def section_generic(name: str, d: dict) -> str:
    rows = d.get("rows") or d.get("results") or []
    if not rows or not isinstance(rows, list) or not isinstance(rows[0], dict):
        return ""
    cols = [(k, k) for k, v in rows[0].items() if isinstance(v, (int, float, str))][:10]
    return f"### {name}\n\n`bench/results/{name}.json`\n\n" + table(rows, cols)


def main() -> None:
    parts = []
    for name, render in (("base", section_base), ("search", section_search)):
        d = load(name)
        if d:
            parts.append(render(d))
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem not in ("base", "search"):
            text = section_generic(path.stem, json.loads(path.read_text()))
            if text:
                parts.append(text)
    body = "\n\n".join(parts) or "(no results yet)"
    readme = README.read_text()
    new = re.sub(r"<!-- tables:start -->.*<!-- tables:end -->",
                 f"<!-- tables:start -->\n{body}\n<!-- tables:end -->", readme, flags=re.DOTALL)
    README.write_text(new)
    print(body)


if __name__ == "__main__":
    main()
