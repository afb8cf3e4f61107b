"""The exported model, run as a device runs it: ONNX Runtime only, 1 thread, a memory cap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_c2i.export.runtime import MANIFEST

HERE = Path(__file__).parent
# Address-space cap for the device process (RLIMIT_AS), sized for a small board: ONNX Runtime
# maps the model plus its arenas; the measured peak RSS of each run is in the report.
# int8/int4: the host's first greedy token is among the top 3 of the quantized logits
QUANTIZED_MAX_RANK = 3
CAP_MB = int(os.environ.get("EDGE_C2I_DEVICE_CAP_MB", "3072"))
FILES = {"model.onnx": "fp32", "model.ort": "fp32", "model_int8.onnx": "int8",
         "model_int4.onnx": "int4"}
REPORT = Path(os.environ.get("EDGE_C2I_DEVICE_REPORT", HERE / "report.json"))
_results: dict = {}


def device_run(onnx_dir: Path, model_file: str) -> dict:
    key = f"{onnx_dir.parent.name}/{model_file}"
    if key not in _results:
        r = subprocess.run([sys.executable, str(HERE / "device_run.py"), str(onnx_dir), model_file,
                            "--threads", "1", "--max-memory-mb", str(CAP_MB)],
                           check=False, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        _results[key] = json.loads(r.stdout.strip().splitlines()[-1])
        report = {"machine": platform.machine(), "runs": _results}
        REPORT.write_text(json.dumps(report, indent=2))
    return _results[key]


def reference(onnx_dir: Path) -> dict:
    return json.loads((onnx_dir / "device_reference.json").read_text())


def tolerances(onnx_dir: Path) -> dict:
    """The bounds the exporter kept this export under (export/parity.py, recorded in the
    manifest): on the device it must stay within them of the host."""
    parity = json.loads((onnx_dir / MANIFEST).read_text()).get("parity")
    if not parity:
        pytest.fail(f"{onnx_dir} was exported with --no-check: its manifest records no parity "
                    "tolerances; export it again without --no-check")
    return parity


@pytest.mark.parametrize("model_file", list(FILES))
def test_device_run_never_imports_torch_and_fits_the_cap(onnx_dir, model_file):
    out = device_run(onnx_dir, model_file)
    assert out["torch_imported"] is False
    assert out["peak_rss_mb"] < CAP_MB
    assert out["prefill_128_s"] > 0 and out["per_token_s"] > 0


@pytest.mark.parametrize("model_file", list(FILES))
def test_outputs_match_the_host_reference(onnx_dir, model_file):
    out, ref, tol = device_run(onnx_dir, model_file), reference(onnx_dir), tolerances(onnx_dir)
    for got, want in zip(out["prompts"], ref["prompts"]):
        if FILES[model_file] == "fp32":
            assert got["max_abs_diff"] <= tol["fp32_atol"], got
            assert got["greedy"] == want["greedy"], got["prompt"]
        else:  # quantized: the logits move, their shape must not; near-ties may swap the top
            assert got["corr"] >= tol[f"{FILES[model_file]}_min_corr"], got
            assert got["host_first_token_rank"] <= QUANTIZED_MAX_RANK, got


@pytest.mark.parametrize("model_file", list(FILES))
def test_task_accuracy_matches_the_host(onnx_dir, model_file):
    out, ref = device_run(onnx_dir, model_file), reference(onnx_dir)
    tolerance = 0.01 if FILES[model_file] == "fp32" else 0.05
    assert abs(out["task"]["accuracy"] - ref["host"]["accuracy"]) <= tolerance + 1e-9
    assert np.isfinite(out["task"]["loss"])


def test_the_exports_hold_factor_products(onnx_dir):
    """What these tests are for: reduced matrices as two products each (the adapted export's
    two reductions, every matrix of the compressed one), not a dense model."""
    from conftest import GIVEN

    if GIVEN:
        pytest.skip("EDGE_C2I_DEVICE_DIR: an export given to test as it is")
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    assert manifest["adapted"] and len(manifest["reductions"]) >= 2
