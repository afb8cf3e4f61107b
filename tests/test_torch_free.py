"""``edge-c2i generate`` and ``eval --onnx`` on a board: a virtual environment without torch.

The venv gets what the README's board install gives it: this package installed with
``pip install --no-deps`` (built from a copy of the checkout, so nothing is written into it)
plus onnxruntime, tokenizers and numpy pinned to this environment's versions.  Both commands
then run through the venv's ``edge-c2i`` console script, from a folder outside the checkout,
on the tiny export of test_runtime_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from test_runtime_cli import export_dir  # noqa: F401  (the tiny export, a session fixture)

from edge_c2i.export.runtime import OnnxLM

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("onnxruntime", "tokenizers", "numpy")
# what the package's build needs (pyproject's build-system), installed with the runtime so
# the package itself builds without build isolation
BUILD = ("setuptools",)


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding edge-c2i (--no-deps), onnxruntime, tokenizers and numpy: no torch."""
    base = tmp_path_factory.mktemp("torch_free")
    src = base / "src"  # the checkout's files that make the package, nothing else
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("edge_c2i", "export"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = base / "venv"
    python = env / "bin" / "python"
    steps = [
        (sys.executable, "-m", "venv", env),
        (python, "-m", "pip", "install", "--quiet", "--only-binary", ":all:",
         *(f"{name}=={version(name)}" for name in RUNTIME + BUILD)),
        (python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", src),
    ]
    for step in steps:
        r = run(*step, cwd=base)
        assert r.returncode == 0, f"{' '.join(map(str, step))}:\n{r.stderr[-3000:]}"
    return env


def test_generate_and_eval_onnx_run_without_torch(venv, export_dir, tmp_path):  # noqa: F811
    python, cli = venv / "bin" / "python", venv / "bin" / "edge-c2i"
    # no torch, no top-level `export`; the runtime is edge_c2i.export.runtime from the venv
    probe = run(python, "-c", "import importlib.util as u, edge_c2i.export.runtime as r; "
                "print(u.find_spec('torch'), u.find_spec('transformers'), "
                "u.find_spec('export'), r.__file__)", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    no_torch, no_transformers, no_export, runtime = probe.stdout.split()
    assert (no_torch, no_transformers, no_export) == ("None", "None", "None"), probe.stdout
    assert Path(runtime).is_relative_to(venv), runtime
    blocked = run(python, "-c", "import torch", cwd=tmp_path)
    assert blocked.returncode == 1 and "No module named 'torch'" in blocked.stderr

    gen = run(cli, "generate", "--onnx", export_dir, "--prompt", "Grüße aus",
              "--max-new-tokens", "8", "--threads", "1", cwd=tmp_path, timeout=120)
    assert gen.returncode == 0, gen.stderr
    lm = OnnxLM(export_dir)
    want = lm.decode(lm.greedy(lm.encode("Grüße aus"), 8))
    assert want.strip() and (gen.stdout, gen.stderr) == (want + "\n", "")

    task = tmp_path / "capitals.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"The capital of {c} is", "answer": a}) + "\n"
                            for c, a in (("France", "Paris"), ("Japan", "Tokyo"))))
    ev = run(cli, "eval", "--onnx", export_dir, "--task", f"jsonl:{task}", "--split", "all",
             "--threads", "1", "--json", cwd=tmp_path, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert "Traceback" not in ev.stderr
    res = json.loads(ev.stdout)  # one JSON object, nothing else on stdout
    assert isinstance(res, dict) and res["n"] == 2 and 0 <= res["accuracy"] <= 1, res
