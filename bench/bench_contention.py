"""`edge-c2i scan` on a busy machine: idle vs with one CPU-bound process per core beside it.

    python bench/bench_contention.py                 # SmolLM2, qa_wikidata, 100 examples

A laptop always runs something else.  With OpenMP's default wait policy torch's worker
threads spin while they wait for each other; when another process holds a core, a
spinning thread burns the time slice its partner needed, and one matrix product can
take 100x longer.  Each setting runs the real command (`python -m edge_c2i.cli scan`)
in a fresh process, idle and then beside `os.cpu_count()` busy loops
(`python -c "while 1: pass"`), alone on the machine otherwise:

- ``spin``: OMP_WAIT_POLICY=ACTIVE, torch's default threads: the worst case;
- ``libgomp default``: neither variable set (``EDGE_C2I_OMP_WAIT_POLICY=keep`` tells
  the CLI not to set its own);
- ``passive``: OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once;
- ``short spin``: libgomp's policy with GOMP_SPINCOUNT=10000 (spin briefly, then
  sleep): what the CLI sets when the user has set neither variable;
- ``1 thread``: ``--threads 1``, no OpenMP team at all;
- ``auto (CLI default)``: no flag and no variable: the short spin, and as many threads
  as the cores other processes leave free, measured at the start and between batches
  (edge_c2i/threads.py).

The first four pin ``--threads`` to the core count (torch's default) so that they show
the wait policy alone.

The figure of merit is loaded / idle wall time (target: <= 2.5x).  Writes
bench/results/contention.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CONTENTION_COLUMNS, table, write_result

ALL_CORES = ["--threads", str(os.cpu_count() or 1)]
SETTINGS = {  # name -> (environment changes, extra CLI arguments)
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, ALL_CORES),
    "libgomp default": ({"EDGE_C2I_OMP_WAIT_POLICY": "keep"}, ALL_CORES),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ALL_CORES),
    "short spin": ({"EDGE_C2I_OMP_WAIT_POLICY": "keep", "GOMP_SPINCOUNT": "10000"}, ALL_CORES),
    "1 thread": ({}, ["--threads", "1"]),
    "auto (CLI default)": ({}, []),
}
DEFAULT = "auto (CLI default)"  # the setting #17's target is about


def run_scan(env_changes: dict, extra: list[str], args, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                             "OMP_NUM_THREADS")}
    env.update(env_changes, TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "edge_c2i.cli", "scan", "--model", args.model, "--task",
           args.task, "--samples", str(args.samples), "--out", str(out), "--force", "--quiet",
           *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=args.timeout)
    return time.perf_counter() - t0


def busy_loops() -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            for _ in range(os.cpu_count() or 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="bigbench:qa_wikidata")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scan.json"
        run_scan({}, ["--threads", "1"], args, out)  # warm-up: caches, converted model
        for name in args.settings:
            changes, extra = SETTINGS[name]
            idle = run_scan(changes, extra, args, out)
            loops = busy_loops()
            try:
                loaded = run_scan(changes, extra, args, out)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
            rows.append({"setting": name, "env": changes, "args": extra, "idle_s": idle,
                         "loaded_s": loaded, "ratio": loaded / idle,
                         "within_target": loaded / idle <= 2.5})
            print(f"{name}: idle {idle:.1f}s, loaded {loaded:.1f}s", file=sys.stderr)
    default = next((r for r in rows if r["setting"] == DEFAULT), None)
    targets = None if default is None else {"setting": DEFAULT, "ratio": default["ratio"],
                                             "limit": 2.5, "met": default["within_target"]}
    write_result("contention", {"model": args.model, "task": args.task,
                                "samples": args.samples, "busy_processes": os.cpu_count(),
                                "rows": rows, "targets": targets})
    print(table(rows, CONTENTION_COLUMNS))


if __name__ == "__main__":
    main()
