"""torch threads that leave the cores other processes hold (the CLI without --threads).

On a machine where another CPU-bound process holds a core, torch's worker threads wait
for the one that was descheduled, and a scan can take several times longer than with
fewer threads (bench/bench_contention.py).  ``enable`` therefore measures, from Linux's
/proc/stat, how many cores the *other* processes keep busy (all busy time minus this
process's own CPU time, over the last interval) and gives torch the rest, at least one.
It looks at the start (over ``FIRST_LOOK_S``) and again, between batches, at most every
``INTERVAL_S``, so a load that starts or ends during a long pass is followed.

Where /proc/stat is missing (macOS, Windows) torch's default count stays.
"""

from __future__ import annotations

import os
import time

FIRST_LOOK_S = 0.2  # the first sample, before any work
INTERVAL_S = 2.0  # later samples: at most this often, between batches
STAT = "/proc/stat"

_state: dict | None = None  # set by enable(): the last sample and the core count


def _busy_and_total() -> tuple[float, float] | None:
    """All cores' busy and total time since boot, in seconds (None without /proc/stat)."""
    try:
        with open(STAT) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    ticks = [int(v) for v in fields[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def _sample() -> dict | None:
    bt = _busy_and_total()
    if bt is None:
        return None
    return {"busy": bt[0], "total": bt[1], "own": time.process_time(),
            "wall": time.monotonic()}


def free_cores(before: dict, after: dict, cores: int) -> int:
    """Cores the other processes left idle between two samples (at least 1)."""
    total = after["total"] - before["total"]
    if total <= 0:
        return cores
    # busy time of all processes, as a fraction of all cores' time, minus our own
    others = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
    others_cores = max(0.0, others / total * cores)
    return max(1, min(cores, cores - round(others_cores)))


def enable() -> int | None:
    """Measure now and set torch's threads to the free cores; later ``rebalance`` calls
    follow the load.  Returns the threads set (None where the load cannot be read)."""
    global _state
    import torch

    first = _sample()
    if first is None:
        return None
    # torch's count before any of ours: the cores this process may use (OMP_NUM_THREADS)
    cores = _state["cores"] if _state is not None else torch.get_num_threads()
    time.sleep(FIRST_LOOK_S)
    now = _sample()
    n = free_cores(first, now, cores)
    torch.set_num_threads(n)
    _state = {"last": now, "cores": cores}
    return n


def cores() -> int | None:
    """The most threads ``enable`` gives torch (torch's default count), once enabled."""
    return None if _state is None else _state["cores"]


def disable() -> None:
    global _state
    _state = None


def rebalance() -> None:
    """Between batches: if ``enable`` was called and ``INTERVAL_S`` has passed, set the
    threads again from the load since the last look.  Costs one file read."""
    if _state is None or time.monotonic() - _state["last"]["wall"] < INTERVAL_S:
        return
    import torch

    now = _sample()
    n = free_cores(_state["last"], now, _state["cores"])
    _state["last"] = now
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
