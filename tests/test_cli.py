"""Command-line behaviour that is not about bad input: the OpenMP wait default."""

import os
import subprocess
import sys

CODE = """
import os
from edge_c2i.cli import main
main(["eval", "--task", "jsonl:/nonexistent.jsonl", "--quiet"])
print(os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"))
"""


def _env_after_main(**env) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "EDGE_C2I_OMP_WAIT_POLICY")}
    res = subprocess.run([sys.executable, "-c", CODE], env={**base, **env}, capture_output=True,
                         text=True, timeout=120, check=True)
    return res.stdout.strip()


def test_threads_spin_briefly_unless_the_user_chose():
    assert _env_after_main() == "10000 None"  # bench/bench_contention.py: short spin
    assert _env_after_main(OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"
    assert _env_after_main(GOMP_SPINCOUNT="5") == "5 None"
