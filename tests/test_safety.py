"""Bad input and faults through the real command line: exit 2, one line, nothing of the user's touched.

Each case runs ``edge-c2i`` in a subprocess inside a scratch folder that holds user
files; the folder's checksums must be the same afterwards.  The kill -9 tests stop a
run while it writes its output and check that ``--out`` is still the old complete
folder and that the next run leaves no temporary behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_c2i.errors import EdgeC2IError
from edge_c2i.io import OutputDir, has_manifest

CLI = [sys.executable, "-m", "edge_c2i.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
# adapt on the real SmolLM2, as small as it gets (one configuration tried)
SMALL = ["--task", "bundled:continents-open", "--samples", "8", "--eval-samples", "8",
         "--test-samples", "8", "--top-k", "1", "--rates", "0.2", "--layers", "29",
         "--types", "out", "--threads", "1", "--quiet"]


def run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600, check=False, **kw)


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def scratch(tmp_path):
    """A user's folder: a data file, a notes folder, a small JSONL task."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("do not lose me\n")
    (tmp_path / "notes" / "summary.json").write_text('{"total": 3}')  # a name the demo uses
    (tmp_path / "data.jsonl").write_text("".join(
        json.dumps({"prompt": f"Question {i}: is {i} even?", "answer": ["no", "yes"][i % 2 == 0],
                    "choices": ["yes", "no"]}) + "\n" for i in range(40)))
    return tmp_path


def assert_refused(res: subprocess.CompletedProcess, message: str = "") -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(lines) == 1 and lines[0].startswith("edge-c2i: error: "), res.stderr
    assert message in lines[0], lines[0]
    assert res.stdout == ""


# --------------------------------------------------------------------------- data loss

DATA_LOSS = {
    "adapt --out . --force": (["adapt", *SMALL, "--out", ".", "--force"], "current folder"),
    "adapt --out user folder --force": (["adapt", *SMALL, "--out", "notes", "--force"],
                                        "not an adapted model folder"),
    "adapt --out user file --force": (["adapt", *SMALL, "--out", "data.jsonl", "--force"],
                                      "is a file"),
    "export --out . --force": (["export", "smollm2-135m", "--out", ".", "--force"],
                               "current folder"),
    "export --out user folder --force": (["export", "smollm2-135m", "--out", "notes",
                                          "--force"], "not an ONNX export folder"),
    "demo --out a user's folder holding summary.json --force": (["demo", "--out", "notes", "--force"],
                                       "not a demo folder"),
    "scan --out the task file": (["scan", "--task", "jsonl:data.jsonl", "--out", "data.jsonl"],
                                 "exists; pass --force"),
    "scan --out the task file --force": (["scan", "--task", "jsonl:data.jsonl", "--out",
                                          "data.jsonl", "--force"], "not a scan result"),
    "scan --out a folder": (["scan", "--out", "notes"], "is a folder"),
    "adapt --out inside a file": (["adapt", *SMALL, "--out", "data.jsonl/x"], "cannot write"),
}


def test_python_save_refuses_the_current_folder(scratch, monkeypatch, smol):
    from edge_c2i import save

    model, tok = smol
    monkeypatch.chdir(scratch)
    before = checksums(scratch)
    with pytest.raises(EdgeC2IError, match="current folder"):
        save(model, tok, ".", {"model": "m", "task": "t", "method": "c2i", "chosen": None},
             force=True)
    assert checksums(scratch) == before


# --------------------------------------------------------------------------- bad arguments

BAD_ARGS = {
    "--clusters=": (["adapt", "--out", "o", "--clusters="], "--clusters"),
    "--rates=": (["adapt", "--out", "o", "--rates="], "--rates"),
    "--layers=": (["adapt", "--out", "o", "--layers="], "--layers"),
    "--test-samples 0": (["adapt", "--out", "o", "--test-samples", "0"], "--test-samples"),
    "--test-samples -1": (["adapt", "--out", "o", "--test-samples", "-1"], "--test-samples"),
    "--threads -1": (["adapt", "--out", "o", "--threads", "-1"], "--threads"),
    "--rates 2": (["adapt", "--out", "o", "--rates", "2"], "rate"),
    "--clusters 0": (["adapt", "--out", "o", "--clusters", "0"], "clusters"),
    "--limit 0": (["eval", "--limit", "0"], "--limit"),
    "unknown option": (["eval", "--nope"], "--nope"),
    "model typo": (["eval", "--model", "smollm2-135M"], "did you mean smollm2-135m"),
    "no such model folder": (["eval", "--model", "./nowhere"], "no such model"),
    "not a model folder": (["eval", "--model", "notes"], "not a model folder"),
    "no such task file": (["eval", "--task", "jsonl:nowhere.jsonl"], "nowhere.jsonl"),
    "unknown bundled task": (["eval", "--task", "bundled:no_such_task"], "no_such_task"),
    "--max-memory nonsense": (["scan", "--max-memory", "lots"], "lots"),
    "compress --size 0": (["compress", "--out", "o", "--size", "0"], "--size"),
    "eval --onnx with --model": (["eval", "--onnx", "notes", "--model", "gemma3-270m"],
                                 "drop --model"),
    "compress --loss-tolerance nan": (["compress", "--out", "o", "--loss-tolerance", "nan"],
                                      "--loss-tolerance"),
    "compress --size 1.5": (["compress", "--out", "o", "--size", "1.5"], "--size"),
    "compress --size and --params": (["compress", "--out", "o", "--size", "0.8", "--params",
                                      "1000"], "--size"),
    "compress --file-mb 0": (["compress", "--out", "o", "--file-mb", "0"], "--file-mb"),
    "compress --file-mb and --size": (["compress", "--out", "o", "--file-mb", "100", "--size",
                                       "0.8"], "--size"),
    "compress --file-mb too small": (["compress", "--out", "o", "--file-mb", "20", "--task", "bundled:continents-open"],
                                     "--file-mb"),
    "compress --out user folder --force": (["compress", "--out", "notes", "--force"],
                                           "notes"),
}


@pytest.mark.parametrize("case", {**DATA_LOSS, **BAD_ARGS})
def test_bad_input_gets_one_line_and_touches_nothing(scratch, case):
    args, message = {**DATA_LOSS, **BAD_ARGS}[case]
    before, entries = checksums(scratch), sorted(scratch.rglob("*"))
    assert_refused(run(args, scratch), message)
    assert checksums(scratch) == before
    assert sorted(scratch.rglob("*")) == entries  # no output, no temporary left


BAD_TASKS = {  # file content -> what the one line must name
    "not UTF-8": (b'{"prompt": "a", "answer": "b"}\n{"prompt": "\xff", "answer": "b"}\n',
                  "bad.jsonl:2"),
    "not JSON": (b'{"prompt": "a", "answer": "b"}\n{"prompt": "a"\n', "bad.jsonl:2"),
    "a choice twice": (b'{"prompt": "a", "answer": "b", "choices": ["b", "b"]}\n', "bad.jsonl:1"),
    "answer not a choice": (b'{"prompt": "a", "answer": "c", "choices": ["a", "b"]}\n',
                            "bad.jsonl:1"),
    "10 MB prompt": (('{"prompt": "' + "word " * 2_000_000 + '", "answer": "x"}\n').encode(),
                     "context"),
    "empty file": (b"", "bad.jsonl"),
}


@pytest.mark.parametrize("case", BAD_TASKS)
def test_a_bad_task_file_gets_one_line(scratch, case):
    content, message = BAD_TASKS[case]
    (scratch / "bad.jsonl").write_bytes(content)
    before = checksums(scratch)
    assert_refused(run(["eval", "--task", "jsonl:bad.jsonl", "--split", "all", "--quiet"],
                       scratch), message)
    assert checksums(scratch) == before


def test_adapt_refuses_a_task_too_small_to_split(scratch):
    (scratch / "tiny.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    assert_refused(run(["adapt", "--task", "jsonl:tiny.jsonl", "--out", "o"], scratch),
                   "too few")
    assert not (scratch / "o").exists()


def _gguf(folder: Path, kind: str) -> Path:
    from edge_c2i.models import packaged_gguf

    path = folder / f"{kind}.gguf"
    real = packaged_gguf("smollm2-135m").read_bytes()
    path.write_bytes({"empty": b"", "truncated": real[: len(real) // 3],
                      "random": os.urandom(4096)}[kind])
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated", "random"])
def test_a_broken_gguf_gets_one_line(scratch, tmp_path_factory, kind):
    home = tmp_path_factory.mktemp("home")  # the converted cache must not be touched either
    path = _gguf(scratch, kind)
    before = checksums(scratch)
    res = subprocess.run(CLI + ["eval", "--model", str(path), "--task", "jsonl:data.jsonl",
                                "--split", "all", "--quiet"], cwd=scratch, env={**ENV, "EDGE_C2I_HOME": str(home)},
                         capture_output=True, text=True, timeout=600, check=False)
    assert_refused(res, "GGUF")
    assert checksums(scratch) == before


def test_a_damaged_adapted_folder_gets_one_line(scratch):
    ok = run(["adapt", *SMALL, "--out", "ad"], scratch)
    assert ok.returncode == 0, ok.stderr
    (scratch / "ad" / "edge_c2i_factors.safetensors").unlink()
    assert_refused(run(["eval", "--model", "ad", "--limit", "1", "--task", "bundled:continents-open"], scratch), "missing")


# --------------------------------------------------------------------------- the swap


def _writer(out: Path, rounds: int) -> subprocess.Popen:
    """A child that replaces ``out`` again and again, each version a complete folder."""
    code = f"""
import sys
from pathlib import Path
from edge_c2i.io import OutputDir, has_manifest
for i in range({rounds}):
    with OutputDir({str(out)!r}, True, has_manifest("m.json"), "a test folder") as tmp:
        for j in range(20):
            (tmp / f"part{{j}}").write_text(str(i) * 1000)
        (tmp / "m.json").write_text('{{"version": %d}}' % i)
"""
    return subprocess.Popen([sys.executable, "-c", code], env=ENV)


def _complete(out: Path) -> bool:
    version = json.loads((out / "m.json").read_text())["version"]
    return all((out / f"part{j}").read_text() == str(version) * 1000 for j in range(20))


def test_killed_writer_leaves_old_or_new_complete_folder(tmp_path):
    out = tmp_path / "out"
    first = _writer(out, 1)
    assert first.wait() == 0 and _complete(out)
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7):
        child = _writer(out, 10_000)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert _complete(out)  # never half-deleted, never missing
    last = _writer(out, 1)
    assert last.wait() == 0 and _complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # stale temps cleaned


def test_a_live_writer_blocks_a_second_one_and_a_dead_one_is_cleaned(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from edge_c2i.io import OutputDir, has_manifest
OutputDir({str(out)!r}, False, has_manifest("m.json"), "a test folder").claim()
print("claimed", flush=True)
time.sleep(600)
"""], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    ours = has_manifest("m.json")
    with pytest.raises(EdgeC2IError, match=f"pid {holder.pid}.* is writing"):
        OutputDir(out, False, ours, "a test folder")
    holder.kill()
    holder.wait()
    assert len(list(tmp_path.iterdir())) == 1  # the dead run's temporary
    OutputDir(out, False, ours, "a test folder")
    assert list(tmp_path.iterdir()) == []  # cleaned by the next run


def _write(out: Path, force: bool, version: int) -> None:
    with OutputDir(out, force, has_manifest("m.json"), "a test folder") as tmp:
        (tmp / "part").write_text(str(version))
        (tmp / "m.json").write_text(json.dumps({"version": version}))


def test_force_refuses_a_folder_holding_files_edge_c2i_did_not_write(tmp_path):
    """A user's notes (or an app's assets) put inside an edge-c2i folder are not deleted by
    --force: the folder records what it was written with."""
    out = tmp_path / "out"
    _write(out, False, 1)
    _write(out, True, 2)  # edge-c2i's own folder: replaced
    assert json.loads((out / "m.json").read_text())["version"] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgeC2IError, match="notes.txt, which edge-c2i did not write"):
        _write(out, True, 3)
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "m.json").read_text())["version"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_every_file_of_a_folder_is_as_readable_as_python_writes_it(tmp_path):
    """safetensors and onnx create owner-only files; an output folder's files all get the
    mode of a file Python writes (the user's umask), as an app's packaging expects."""
    out = tmp_path / "out"
    with OutputDir(out, False, has_manifest("m.json"), "a test folder") as tmp:
        (tmp / "m.json").write_text("{}")
        (tmp / "sub").mkdir()
        for path in (tmp / "weights", tmp / "sub" / "weights"):
            path.write_bytes(b"0")
            path.chmod(0o600)
    plain = tmp_path / "plain"
    plain.write_text("")
    modes = {p.stat().st_mode for p in out.rglob("*") if p.is_file()}
    assert modes == {plain.stat().st_mode}


def test_force_looks_inside_the_subfolders_and_knows_files_edge_c2i_added(tmp_path):
    """A user's file inside a subfolder (the demo's onnx/) is refused as one at the top; an
    ONNX file edge-c2i writes into a finished folder (a bench's quantized variant, through
    export/files.py) is recorded, and --force replaces the folder with it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edge_c2i.export import files

    out = tmp_path / "out"
    with OutputDir(out, False, has_manifest("m.json"), "a test folder") as tmp:
        (tmp / "m.json").write_text("{}")
        (tmp / "onnx").mkdir()
        (tmp / "onnx" / "model.onnx").write_text("graph")
    weight = onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [weight])
    files.save(helper.make_model(graph), out / "variant.onnx")
    assert (out / "variant.onnx_data").is_file()
    _write(out, True, 2)  # the variant is edge-c2i's: replaced
    assert not (out / "variant.onnx").exists() and not (out / "variant.onnx_data").exists()
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(EdgeC2IError, match="sub, sub/notes.txt, which edge-c2i did not write"):
        _write(out, True, 3)
    assert (out / "sub" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("force", [False, True])
def test_an_output_that_appears_while_writing_is_kept(tmp_path, force):
    """A folder made at --out while the run works (by the user, or changed by them under
    --force) is not replaced at the end: the run refuses and keeps its result beside it."""
    out = tmp_path / "out"
    if force:
        _write(out, False, 1)
    dest = OutputDir(out, force, has_manifest("m.json"), "a test folder")
    with pytest.raises(EdgeC2IError, match="left as it is.*result is at"), dest as tmp:
        (tmp / "m.json").write_text(json.dumps({"version": 2}))
        out.mkdir(exist_ok=True)
        (out / "important.txt").write_text("user data")
    assert (out / "important.txt").read_text() == "user data"
    [kept] = tmp_path.glob("out.new-*")
    assert json.loads((kept / "m.json").read_text())["version"] == 2


def _kill_when(proc: subprocess.Popen, parent: Path, name: str, file: str) -> None:
    """SIGKILL ``proc`` as soon as its temporary folder for ``name`` holds ``file``."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        for tmp in parent.glob(f".{name}.edge-c2i-{proc.pid}-*"):
            if (tmp / file).exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
        time.sleep(0.01)
    pytest.fail(f"the run ended before it wrote {file} (rc {proc.poll()})")


@pytest.mark.slow
def test_kill_during_adapt_save_keeps_the_old_folder(scratch):
    from edge_c2i.models import load_model

    assert run(["adapt", *SMALL, "--out", "ad"], scratch).returncode == 0
    old = checksums(scratch / "ad")
    proc = subprocess.Popen(CLI + ["adapt", *SMALL, "--seed", "1", "--out", "ad", "--force"],
                            cwd=scratch, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(proc, scratch, "ad", "model.safetensors")
    assert checksums(scratch / "ad") == old
    load_model(str(scratch / "ad"))
    res = run(["adapt", *SMALL, "--seed", "1", "--out", "ad", "--force"], scratch)
    assert res.returncode == 0, res.stderr
    assert json.loads((scratch / "ad" / "report.json").read_text())["splits"]
    assert not list(scratch.glob(".ad.edge-c2i-*"))


@pytest.mark.slow
def test_kill_during_export_keeps_the_old_folder(scratch):
    from edge_c2i.models import load_model

    _, tok = load_model("smollm2-135m")
    src = scratch / "tiny"
    _tiny_llama(tok).save_pretrained(src)
    tok.save_pretrained(src)
    args = ["export", "tiny", "--out", "onnx", "--no-check", "--quiet"]
    assert run(args, scratch).returncode == 0
    old = checksums(scratch / "onnx")
    proc = subprocess.Popen(CLI + args + ["--force"], cwd=scratch, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, scratch, "onnx", "model.onnx")
    assert checksums(scratch / "onnx") == old
    res = run(args + ["--force"], scratch)
    assert res.returncode == 0, res.stderr
    assert not list(scratch.glob(".onnx.edge-c2i-*"))


def _tiny_llama(tok):
    """A 2-layer Llama with SmolLM2's vocabulary: an export of a few MB, in seconds."""
    import transformers

    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=2, vocab_size=len(tok),
                                      tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config)


def _small_disk():
    """In the child: files may not grow past 50 MB (EFBIG, as a full disk gives ENOSPC)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000_000, 50_000_000))


@pytest.mark.slow
def test_a_full_disk_while_saving_leaves_nothing_behind(scratch):
    before = checksums(scratch)
    res = subprocess.run(CLI + ["adapt", *SMALL, "--out", "ad"], cwd=scratch, env=ENV,
                         capture_output=True, text=True, timeout=600, check=False,
                         preexec_fn=_small_disk)
    assert_refused(res, "File too large")
    assert checksums(scratch) == before
    assert sorted(p.name for p in scratch.iterdir()) == ["data.jsonl", "notes"]


def test_eval_json_on_a_natural_jsonl_file(tmp_path):
    """Answers written without a leading space (the delimiter adds it); stdout is one JSON."""
    from test_evaluate import CAPITALS

    (tmp_path / "capitals.jsonl").write_text("".join(
        json.dumps({"prompt": f"The capital of {c} is", "answer": a}) + "\n"
        for c, a in CAPITALS.items()))
    res = run(["eval", "--task", "jsonl:capitals.jsonl", "--json", "--threads", "1"], tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["delimited"] == len(CAPITALS) == 30
    assert out["accuracy"] >= 0.5  # 0.00 when the answer was glued to the prompt


def test_eval_on_an_adapted_folder_scores_the_run_s_own_test_split(scratch):
    """adapt with a seed and sample sizes of its own: `eval` on the folder (and on its export)
    scores the test split the report scored, not a default split that holds the examples the
    search chose on."""
    small = [a for a in SMALL if a != "--quiet"]
    res = run(["adapt", *small, "--seed", "3", "--out", "ad"], scratch)
    assert res.returncode == 0, res.stderr
    report = json.loads((scratch / "ad" / "report.json").read_text())
    assert report["split_args"]["seed"] == 3
    res = run(["eval", "--model", "ad", "--task", "bundled:continents-open", "--json",
               "--threads", "1"], scratch)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert (got["n"], got["accuracy"]) == (report["adapted"]["n"], report["adapted"]["accuracy"])
    assert abs(got["loss"] - report["adapted"]["loss"]) < 1e-4
    res = run(["eval", "--model", "ad", "--task", "bundled:continents-open", "--json",
               "--threads", "1", "--seed", "5"], scratch)  # asked for: another split, said so
    assert res.returncode == 0 and "holds examples the run chose on" in res.stderr
    assert json.loads(res.stdout)["n"] != report["adapted"]["n"]


@pytest.mark.parametrize("command", ["scan", "adapt", "laser", "compress"])
def test_commands_that_start_from_a_base_model_refuse_an_adapted_folder(scratch, command):
    """An adapted folder's factors have no dense weight to scan or search (a traceback
    before), and laser's record of it would lose them: one line that names the base."""
    folder = scratch / "ad"
    folder.mkdir()
    (folder / "edge_c2i.json").write_text(json.dumps(
        {"format": 2, "reductions": [], "base_model": "smollm2-135m"}))
    before = checksums(scratch)
    out = ["--out", "o"] if command != "scan" else ["--out", "o.json"]
    assert_refused(run([command, "--model", "ad", *out], scratch), "run it on smollm2-135m")
    assert checksums(scratch) == before


def test_a_failed_run_removes_the_folders_it_made_for_out(tmp_path):
    """--out a/b/out: a run that fails (or is interrupted) leaves no empty a/b behind, and
    never removes a folder that was there before or that holds something."""
    (tmp_path / "kept").mkdir()
    dest = OutputDir(tmp_path / "kept" / "a" / "b" / "out", False, has_manifest("m.json"), "x")
    with pytest.raises(RuntimeError), dest as tmp:
        (tmp / "m.json").write_text("{}")
        raise RuntimeError("the run failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []
