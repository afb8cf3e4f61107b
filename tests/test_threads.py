"""--threads auto: torch gets the cores other processes leave free (edge_c2i/threads.py)."""

import os
import subprocess
import sys
import time

import pytest
import torch

from edge_c2i import threads


def sample(busy, total, own, wall=0.0):
    return {"busy": busy, "total": total, "own": own, "wall": wall}


def test_free_cores_subtracts_our_own_time():
    # 2 cores, 1 s of wall time = 2 s of core time
    idle = (sample(0, 0, 0), sample(0.1, 2, 0))
    assert threads.free_cores(*idle, cores=2) == 2
    # we used 1.9 core-seconds ourselves: nobody else is busy
    assert threads.free_cores(sample(0, 0, 0), sample(1.9, 2, 1.9), cores=2) == 2
    # one other process held a core while we ran on the other
    assert threads.free_cores(sample(0, 0, 0), sample(2.0, 2, 1.0), cores=2) == 1
    # both cores taken by others: still one thread
    assert threads.free_cores(sample(0, 0, 0), sample(2.0, 2, 0.0), cores=2) == 1
    # 8 cores, 3 held by others
    assert threads.free_cores(sample(0, 0, 0), sample(3.0, 8, 0.0), cores=8) == 5


@pytest.mark.skipif(not os.path.exists(threads.STAT), reason="needs Linux's /proc/stat")
def test_auto_threads_leave_the_cores_busy_loops_hold():
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: nothing to leave")
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    loops = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # the loops are running
        assert threads.enable() == 1
        assert torch.get_num_threads() == 1 and threads.cores() == cores
    finally:
        for p in loops:
            p.kill()
            p.wait()
        threads.disable()
        torch.set_num_threads(before)


def test_rebalance_follows_the_load(monkeypatch):
    """Between batches the count follows the other processes' load, at most every
    INTERVAL_S (the machine's load replaced by a script: 4 cores)."""
    before = torch.get_num_threads()
    clock = {"wall": 100.0, "busy": 0.0, "total": 0.0, "own": 0.0}

    def advance(seconds, others_cores, own_cores):
        clock["wall"] += seconds
        clock["total"] += 4 * seconds
        clock["own"] += own_cores * seconds
        clock["busy"] += (others_cores + own_cores) * seconds

    monkeypatch.setattr(threads, "_busy_and_total", lambda: (clock["busy"], clock["total"]))
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "sleep", lambda s: advance(s, 3, 0))
    torch.set_num_threads(4)
    try:
        assert threads.enable() == 1  # three cores busy at the start
        advance(1.0, 0, 1)
        threads.rebalance()  # too soon to look again
        assert torch.get_num_threads() == 1
        advance(2.0, 0, 1)  # the others stopped
        threads.rebalance()
        assert torch.get_num_threads() == 4
        advance(3.0, 2, 2)  # two cores taken again
        threads.rebalance()
        assert torch.get_num_threads() == 2 and threads.cores() == 4
    finally:
        threads.disable()
        torch.set_num_threads(before)
