"""The exported models under test.

By default two, each exported with int8, int4 and the ORT format, plus PyTorch reference
outputs, built once with the edge-c2i CLI and cached under $EDGE_C2I_HOME/device_export:
the packaged smollm2-135m adapted by C2I to bundled:continents (a small search, so CI
stays quick; a task that ships with edge-c2i, so nothing downloads), and the same model
compressed to 0.8 of its linear parameters on that task (every matrix two factor products).  Set EDGE_C2I_DEVICE_DIR to test another
export (it needs device_reference.json: python device_tests/make_reference.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ADAPT = ["--model", "smollm2-135m", "--task", "bundled:continents", "--samples", "32",
         "--eval-samples", "32", "--top-k", "2", "--rates", "0.2,0.05", "--clusters", "1,4",
         "--test-samples", "20"]
CACHE_KEY = "smollm2-continents-c2i-v11"  # v11: bundled:continents (was BIG-bench's fever)
COMPRESS = ["--model", "smollm2-135m", "--task", "bundled:continents", "--size", "0.8",
            "--samples", "32", "--test-samples", "20"]
EXPORTS = {"adapted": (CACHE_KEY, "adapt", ADAPT),
           "compressed": ("smollm2-continents-compress-v5", "compress", COMPRESS)}


def _run(*args: str) -> None:
    r = subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")


def build_export(kind: str = "adapted") -> Path:
    from edge_c2i.paths import home

    key, command, args = EXPORTS[kind]
    final = home() / "device_export" / key
    if (final / "onnx" / "device_reference.json").is_file():
        return final / "onnx"
    work = final.with_name(final.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = ["-m", "edge_c2i.cli"]
    _run(*cli, command, *args, "--out", str(work / "adapted"))
    _run(*cli, "export", str(work / "adapted"), "--out", str(work / "onnx"), "--int8", "--int4",
         "--ort")
    _run(str(HERE / "make_reference.py"), str(work / "onnx"), "--model", str(work / "adapted"))
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return final / "onnx"


GIVEN = os.environ.get("EDGE_C2I_DEVICE_DIR")


@pytest.fixture(scope="session", params=["given"] if GIVEN else list(EXPORTS))
def onnx_dir(request) -> Path:
    return Path(GIVEN) if GIVEN else build_export(request.param)
