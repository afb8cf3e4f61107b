"""Peak memory and time of ``scan`` and ``adapt`` with and without --max-memory.

    python bench/bench_memory.py                      # gemma3-270m, writes bench/results/memory.json
    python bench/bench_memory.py --models smollm2-135m gemma3-270m

Each command runs in a fresh process started by a small wrapper that reads
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits: the peak resident set
of that command as the kernel counts it (file-backed pages of the memory-mapped
weights included).  ``adapt`` runs a reduced grid (--top-k 2 --rates 0.2,0.05
--clusters 1, 200 test examples) so that the run stays short; its peak is set by
the scan, which is the same as the full grid's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, table, write_result

WRAPPER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": rc.returncode, "seconds": time.perf_counter() - t0,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                  "stderr_tail": rc.stderr.strip().splitlines()[-1:] }))
"""
RUNTIME_PROBE = "import edge_c2i.cli, torch, transformers"


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["gemma3-270m"])
    ap.add_argument("--task", default="bigbench:epistemic_reasoning")
    ap.add_argument("--budgets", default="none,2GB", help="comma-separated; none = no budget")
    ap.add_argument("--commands", default="scan,adapt")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in bench/results/memory.json for other runs")
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "edge_c2i.cli"]
    budgets = [None if b == "none" else b for b in args.budgets.split(",")]
    commands = args.commands.split(",")
    rows = []
    previous = RESULTS / "memory.json"
    if args.append and previous.exists():
        rows = [r for r in json.loads(previous.read_text())["rows"]
                if not (r["model"] in args.models and r["command"] in commands
                        and (None if r["budget"] == "none" else r["budget"]) in budgets)]
    runtime = measure([sys.executable, "-c", RUNTIME_PROBE])
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for command in commands:
                for budget in budgets:
                    out = Path(tmp) / f"{model}-{command}-{budget}"
                    cmd = [*cli, command, "--model", model, "--task", args.task,
                           "--threads", args.threads,
                           "--out", str(out) + (".json" if command == "scan" else "")]
                    if command == "adapt":
                        cmd += ["--top-k", "2", "--rates", "0.2,0.05", "--clusters", "1",
                                "--test-samples", "200", "--force"]
                    if budget:
                        cmd += ["--max-memory", budget]
                    res = measure(cmd)
                    row = {"model": model, "command": command, "budget": budget or "none", **res,
                           "peak_rss_gb": res["peak_rss_bytes"] / 1e9}
                    if command == "scan" and res["rc"] == 0:
                        scan = json.loads(Path(str(out) + ".json").read_text())
                        row["passes"] = scan["timings"].get("passes")
                        row["batch_tokens"] = scan["timings"].get("batch_tokens")
                        row["top5"] = [f"{m['layer']}.{m['type']}" for m in scan["matrices"][:5]]
                    if command == "adapt" and res["rc"] == 0:
                        report = json.loads((out / "report.json").read_text())
                        row["chosen"] = report["chosen"] and {
                            k: report["chosen"][k] for k in ("layer", "type", "rate")}
                    if budget:
                        row["within_budget"] = res["peak_rss_bytes"] <= _bytes(budget)
                    rows.append(row)
                    print(row, flush=True)
                    write_result("memory", {"task": args.task, "runtime_rss_bytes":
                                            runtime["peak_rss_bytes"], "rows": rows,
                                            "date": time.strftime("%Y-%m-%d")})
    print(table(rows, [("model", "model"), ("command", "command"), ("budget", "--max-memory"),
                       ("peak_rss_gb", "peak RSS GB"), ("seconds", "s"), ("passes", "passes"),
                       ("batch_tokens", "batch tokens"), ("within_budget", "within budget")]))


def _bytes(text: str) -> int:
    from edge_c2i.svd import parse_size

    return parse_size(text)


if __name__ == "__main__":
    main()
