"""Peak memory and time of ``scan``, ``adapt`` and ``compress`` with and without --max-memory.

    python bench/bench_memory.py                      # gemma3-270m, writes bench/results/memory.json
    python bench/bench_memory.py --models smollm2-135m gemma3-270m --baseline 9e9c085

Each command runs in a fresh process started by a small wrapper that reads
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it exits: the peak resident set
of that command as the kernel counts it (file-backed pages of the memory-mapped
weights included).  ``adapt`` runs a reduced grid (--top-k 2 --rates 0.2,0.05
--clusters 1, 200 test examples) so that the run stays short; its peak is set by
the scan, which is the same as the full grid's.  ``compress`` (``--commands compress``)
runs ``--size 0.8`` with 200 test examples.

``none`` runs without --max-memory, that is with the default plan (the weights + 1.5 GB,
budget.default_budget).  ``--baseline REV`` also runs each command without a budget in
the code of git revision REV (installed into a temporary folder, same process layout),
so that the default plan's time is compared with the earlier unbudgeted one in the
same run (#17: at most 1.1x).  Every command runs with the cache of singular vectors off
(``EDGE_C2I_SPECTRA_CACHE=off``): each decomposes its matrices, as the baseline does.  The
baseline keeps its converted models in a cache of its own (``EDGE_C2I_HOME``), filled
before its timed runs: the packaged models' conversion changed since, and in one shared
cache each revision converted them again, timed.  ``--budgets ""`` runs the baseline only.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
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
# Runs edge_c2i.cli from the folder argv[1] (an earlier revision, --baseline): that folder
# first on sys.path, and the editable install's import hook, which would win over any
# path, taken out.
BASELINE = """
import sys
lib = sys.argv.pop(1)
sys.path.insert(0, lib)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
import edge_c2i
assert edge_c2i.__file__.startswith(lib), edge_c2i.__file__
from edge_c2i.cli import main
sys.argv[0] = "edge-c2i"
sys.exit(main())
"""


def measure(cmd: list[str], home: str | None = None) -> dict:
    # every command decomposes its own matrices (the baseline revision predates the cache of
    # singular vectors, and a cache the first command filled would speed up the next ones)
    env = {**os.environ, "EDGE_C2I_SPECTRA_CACHE": "off"}
    if home:
        env["EDGE_C2I_HOME"] = home
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True,
                         check=True, env=env)
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
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also run each command unbudgeted in the code of this git revision")
    ap.add_argument("--retarget", action="store_true",
                    help="recompute the targets of bench/results/memory.json, run nothing")
    args = ap.parse_args()
    if args.retarget:
        data = json.loads((RESULTS / "memory.json").read_text())
        write_result("memory", {**data, "targets": targets(data["rows"])})
        return
    cli = [sys.executable, "-m", "edge_c2i.cli"]
    budgets = [None if b == "none" else b for b in args.budgets.split(",") if b]
    old = _install(args.baseline) if args.baseline else None
    # the earlier revision converts the packaged models in its own format, into its own cache
    # (in the shared one, each revision would convert them again, timed, in turn)
    old_home = tempfile.mkdtemp(prefix="edge-c2i-baseline-home-") if old else None
    if old_home:  # its converted models: GBs
        atexit.register(shutil.rmtree, old_home, True)
    if old:
        budgets.append(f"{args.baseline} unbudgeted")
        for model in args.models:  # untimed: its conversion of the model and the task data
            measure([sys.executable, "-c", BASELINE, old, "eval", "--model", model, "--task",
                     args.task, "--limit", "1"], old_home)
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
                    baseline = budget and budget.endswith(" unbudgeted")
                    prefix = [sys.executable, "-c", BASELINE, old] if baseline else cli
                    cmd = [*prefix, command, "--model", model, "--task", args.task,
                           "--threads", args.threads,
                           "--out", str(out) + (".json" if command == "scan" else "")]
                    if command == "adapt":
                        cmd += ["--top-k", "2", "--rates", "0.2,0.05", "--clusters", "1",
                                "--test-samples", "200", "--force"]
                    if command == "compress":
                        cmd += ["--size", "0.8", "--test-samples", "200", "--force"]
                    if budget and not baseline:
                        cmd += ["--max-memory", budget]
                    res = measure(cmd, old_home if baseline else None)
                    row = {"model": model, "command": command, "budget": budget or "none", **res,
                           "peak_rss_gb": res["peak_rss_bytes"] / 1e9, "threads": args.threads}
                    if command == "scan" and res["rc"] == 0:
                        scan = json.loads(Path(str(out) + ".json").read_text())
                        row["passes"] = scan["timings"].get("passes")
                        row["batch_tokens"] = scan["timings"].get("batch_tokens")
                        row["top5"] = [f"{m['layer']}.{m['type']}" for m in scan["matrices"][:5]]
                        row["plan"] = scan["timings"].get("plan")
                    if command == "compress" and res["rc"] == 0:
                        report = json.loads((out / "report.json").read_text())
                        row["size"] = report["budget"]["size"]
                        row["accuracy"] = report["compressed"]["accuracy"]
                        row["plan"] = report["timings"].get("plan")
                    if command == "adapt" and res["rc"] == 0:
                        report = json.loads((out / "report.json").read_text())
                        row["chosen"] = report["chosen"] and {
                            k: report["chosen"][k] for k in ("layer", "type", "rate")}
                    if budget and not baseline:
                        row["within_budget"] = res["peak_rss_bytes"] <= _bytes(budget)
                    rows.append(row)
                    print(row, flush=True)
                    write_result("memory", {"task": args.task, "runtime_rss_bytes":
                                            runtime["peak_rss_bytes"], "rows": rows,
                                            "targets": targets(rows),
                                            "date": time.strftime("%Y-%m-%d")})
    print(table(rows, [("model", "model"), ("command", "command"), ("budget", "--max-memory"),
                       ("peak_rss_gb", "peak RSS GB"), ("seconds", "s"), ("passes", "passes"),
                       ("batch_tokens", "batch tokens"), ("within_budget", "within budget")]))


def targets(rows: list[dict]) -> list[dict]:
    """#17's default-memory targets, per model and command: the default plan's peak <= the
    stored weights + 1.5 GB, and its time <= 1.1x the earlier revision's unbudgeted time
    (the rows of --baseline, this run's or kept by --append)."""
    from edge_c2i.budget import DEFAULT_HEADROOM
    from edge_c2i.models import resolve

    out = []
    for r in rows:
        if r["budget"] != "none" or r["rc"] != 0 or r["command"] not in ("scan", "adapt"):
            continue
        weights = sum(f.stat().st_size for f in Path(resolve(r["model"])).glob("*.safetensors"))
        t = {"model": r["model"], "command": r["command"], "weights_bytes": weights,
             "peak_limit_bytes": weights + DEFAULT_HEADROOM,
             "peak_met": r["peak_rss_bytes"] <= weights + DEFAULT_HEADROOM}
        old = [b for b in rows if b["budget"].endswith(" unbudgeted") and b["rc"] == 0
               and b["model"] == r["model"] and b["command"] == r["command"]]
        if old:
            t["time_ratio"] = r["seconds"] / old[0]["seconds"]
            t["time_met"] = t["time_ratio"] <= 1.1
        out.append(t)
    out += budgeted_targets(rows)
    return out


def budgeted_targets(rows: list[dict]) -> list[dict]:
    """#17's budgeted target: ``scan --max-memory 2GB`` in <= 1.5x the time without a budget
    (against the default plan's row, and against the earlier revision's unbudgeted row where
    there is one), with the same top 5 of the ranking."""
    out = []
    for r in rows:
        if r["command"] != "scan" or r["budget"] != "2GB" or r["rc"] != 0:
            continue
        same = [b for b in rows if b["model"] == r["model"] and b["command"] == "scan"
                and b["rc"] == 0]
        for label, ref in (("default plan", [b for b in same if b["budget"] == "none"]),
                           ("unbudgeted", [b for b in same
                                           if b["budget"].endswith(" unbudgeted")])):
            if ref:
                ratio = r["seconds"] / ref[0]["seconds"]
                out.append({"model": r["model"], "command": "scan --max-memory 2GB",
                            "against": f"{label} ({ref[0]['budget']})", "time_ratio": ratio,
                            "time_met": ratio <= 1.5,
                            "same_top5": r.get("top5") == ref[0].get("top5")})
    return out


def _install(rev: str) -> str:
    """The package at git revision ``rev``, installed (no dependencies) into a temporary
    folder: the PYTHONPATH that runs it."""
    root = Path(__file__).resolve().parent.parent
    where = Path(tempfile.mkdtemp(prefix=f"edge-c2i-{rev}-"))
    src = where / "src"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(src), rev],
                   check=True, capture_output=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(where / "lib"), str(src)], check=True)
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(src)],
                       check=True)
    return str(where / "lib")


def _bytes(text: str) -> int:
    from edge_c2i.svd import parse_size

    return parse_size(text)


if __name__ == "__main__":
    main()
