"""The exported models under test.

By default two, each exported with int8, int4 and the ORT format, plus PyTorch reference
outputs, built once (edge-c2i export, make_reference.py) and cached under
$EDGE_C2I_HOME/device_export:
the packaged smollm2-135m with two reductions of the kinds C2I keeps (REDUCTIONS: one
subspace, and four row-clustered ones), and the same model compressed to 0.8 of its
linear parameters on bundled:continents (every matrix two factor products; a task that
ships with edge-c2i, so nothing downloads).  Set EDGE_C2I_DEVICE_DIR to test another
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
# the adapted export: reductions of the kinds C2I's search keeps (factorize.reduce: one
# subspace, and row-clustered subspaces), fixed, so that the export always holds factor
# products; a small search on the bundled task keeps nothing as often as not
REDUCTIONS = [(28, "out", 0.2, 1), (25, "gate", 0.05, 4)]  # layer, type, rate, clusters
REDUCE = f"""
from edge_c2i.adapted import save_adapted
from edge_c2i.factorize import reduce
from edge_c2i.models import load_model
from edge_c2i.targets import get_target
import sys
model, tok = load_model("smollm2-135m")
reds = [reduce(model, get_target(model, layer, kind), rate, clusters=clusters)
        for layer, kind, rate, clusters in {REDUCTIONS!r}]
save_adapted(model, tok, sys.argv[1], reds, {{"base_model": "smollm2-135m",
             "task": "bundled:continents", "method": "device_tests"}})
"""
CACHE_KEY = "smollm2-fixed-v11"  # v11: fixed reductions (was a search on BIG-bench's fever)
COMPRESS = ["--model", "smollm2-135m", "--task", "bundled:continents", "--size", "0.8",
            "--samples", "32", "--test-samples", "20"]
EXPORTS = {"adapted": (CACHE_KEY, "reduce", REDUCE),  # the library, run as a script
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
    if command == "reduce":
        _run("-c", args, str(work / "adapted"))
    else:
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
