"""``edge-c2i generate`` and ``eval --onnx`` through the real CLI, in a subprocess.

The export is a tiny random Llama (2 layers, a 300-token byte-level BPE that has
multi-byte characters, a 64-token context), exported once per session in about a second,
so every case runs the real graph and tokenizer.  Bad input must give exit code 2 and one
``edge-c2i: error:`` line, never a traceback; generation streams and stops where it should.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import byte_bpe_tokenizer

from edge_c2i.export.runtime import MANIFEST, OnnxLM, TextStream, clean_up_spaces

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 64
TEXT = "The capital of France is Paris. Grüße aus Köln, 東京 and café ☕."
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a trained byte-level BPE, exported by edge-c2i (no EOS, so
    generation runs until --max-new-tokens or the context)."""
    import torch
    import transformers

    from edge_c2i.export.onnx_export import export_model

    fast = byte_bpe_tokenizer(TEXT)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=len(fast), max_position_embeddings=CONTEXT,
        bos_token_id=0, eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    src = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(src)
    fast.save_pretrained(src)
    out = src.parent / "onnx"
    export_model(str(src), out)
    return out


def copy_export(export_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(export_dir, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def cli(*args: str | bytes, timeout: float = 120) -> subprocess.CompletedProcess:
    """``edge-c2i ARGS`` in a fresh interpreter; stdout and stderr as text."""
    run = subprocess.run([sys.executable, "-m", "edge_c2i.cli", *args], cwd=ROOT, env=ENV,
                         capture_output=True, timeout=timeout, check=False)
    run.stdout, run.stderr = run.stdout.decode(), run.stderr.decode()
    return run


def generate(folder: Path, *args: str | bytes, prompt: str | bytes = "The capital"):
    return cli("generate", "--onnx", str(folder), "--prompt", prompt, "--threads", "1", *args)


def assert_one_line_error(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-c2i: error: "), run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert run.stdout == ""


# ----------------------------------------------------------------------- broken exports


def _truncate(folder: Path, name: str = "model.onnx") -> None:
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])


def _random_bytes(folder: Path) -> None:
    size = (folder / "model.onnx").stat().st_size
    (folder / "model.onnx").write_bytes(random.Random(0).randbytes(size))


BROKEN = {
    "truncated model.onnx": (_truncate, "truncated"),
    "empty model.onnx": (lambda f: (f / "model.onnx").write_bytes(b""), "model.onnx"),
    "random model.onnx": (_random_bytes, "corrupt"),
    "no model.onnx": (lambda f: (f / "model.onnx").unlink(), "no model.onnx"),
    "truncated model.onnx_data": (lambda f: _truncate(f, "model.onnx_data"),
                                  "model.onnx_data is"),
    "no model.onnx_data": (lambda f: (f / "model.onnx_data").unlink(), "model.onnx_data"),
    "no manifest": (lambda f: (f / MANIFEST).unlink(), "not an edge-c2i export"),
    "truncated manifest": (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text()[:99]),
                           MANIFEST),
    "manifest not an object": (lambda f: (f / MANIFEST).write_text("[1, 2]"), MANIFEST),
    "corrupt tokenizer.json": (lambda f: (f / "tokenizer.json").write_text("{garbage"),
                               "tokenizer.json"),
    "corrupt config.json": (lambda f: (f / "config.json").write_text("{garbage"), "config.json"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_export_is_a_one_line_error(export_dir, tmp_path, case):
    folder = copy_export(export_dir, tmp_path)
    damage, word = BROKEN[case]
    damage(folder)
    assert_one_line_error(generate(folder), word)


@pytest.mark.parametrize("case", ["truncated model.onnx", "no manifest"])
def test_eval_onnx_on_a_broken_export_is_a_one_line_error(export_dir, tmp_path, case):
    folder = copy_export(export_dir, tmp_path)
    damage, word = BROKEN[case]
    damage(folder)
    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n')
    assert_one_line_error(cli("eval", "--onnx", str(folder), "--task", f"jsonl:{task}",
                              "--split", "all", "--threads", "1"), word)


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_precision_that_was_not_exported_says_so(export_dir, precision):
    run = generate(export_dir, f"--{precision}")
    assert_one_line_error(run, f"model_{precision}.onnx", f"without --{precision}")


def test_head_refine_on_an_untied_head_says_it_is_not_applied(export_dir, tmp_path):
    """The tiny Llama's head is its own matrix: --head-refine (which refines a head sharing the
    embedding's table) is not applied, and the console and the manifest say so."""
    out = tmp_path / "refined"
    run = cli("export", str(export_dir.parent / "model"), "--out", str(out), "--int8",
              "--head-refine", "4")
    assert run.returncode == 0, run.stderr
    assert "--head-refine 4 not applied" in run.stdout
    int8 = json.loads((out / MANIFEST).read_text())["int8"]
    assert int8["head_refine"] is None
    assert int8["lm_head_and_embedding"].startswith("not tied")


def test_a_context_too_short_for_the_parity_check_says_so(tmp_path):
    """A model whose context cannot hold parity's prompts: one line naming both lengths and
    --no-check, not a parity failure; nothing written."""
    import transformers

    fast = byte_bpe_tokenizer(TEXT)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=len(fast), max_position_embeddings=8, bos_token_id=0)
    src = tmp_path / "short"
    transformers.LlamaForCausalLM(config).save_pretrained(src)
    fast.save_pretrained(src)
    run = cli("export", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(run, "context is 8 tokens", "--no-check")
    assert not (tmp_path / "out").exists()


def test_a_folder_that_does_not_exist(tmp_path):
    assert_one_line_error(generate(tmp_path / "nowhere"), "no such folder")


# ----------------------------------------------------------------------- bad arguments


BAD_ARGS = {
    "threads 0": (["--threads", "0"], "--threads"),
    "threads -1": (["--threads", "-1"], "--threads"),
    "max-new-tokens 0": (["--max-new-tokens", "0"], "--max-new-tokens"),
    "max-new-tokens -5": (["--max-new-tokens", "-5"], "--max-new-tokens"),
    "prompt over the context": (["--prompt", "word " * CONTEXT], "context is 64 tokens"),
    "non-UTF-8 prompt": (["--prompt", b"caf\xe9"], "UTF-8"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_are_refused_before_the_model_loads(export_dir, tmp_path, case):
    """On an export whose model.onnx is corrupt, the argument's error must come first."""
    folder = copy_export(export_dir, tmp_path)
    _truncate(folder)
    args, word = BAD_ARGS[case]
    assert_one_line_error(generate(folder, *args), word)


def test_an_empty_prompt_starts_from_bos(export_dir):
    run = generate(export_dir, "--max-new-tokens", "5", prompt="")
    assert run.returncode == 0, run.stderr
    lm = OnnxLM(export_dir)
    assert run.stdout == lm.decode(lm.greedy([0], 5)) + "\n"
    assert "BOS" in run.stderr and "Traceback" not in run.stderr


def test_an_empty_prompt_without_bos_is_refused(export_dir, tmp_path):
    folder = copy_export(export_dir, tmp_path)
    edit_json(folder / MANIFEST, bos_token_id=None)
    assert_one_line_error(generate(folder, prompt=""), "empty")


# ----------------------------------------------------------------------- generation


def test_text_stream_matches_decoding_the_whole_sequence(export_dir):
    """Byte-level pieces of one character arrive together, whatever the token sequence."""
    lm = OnnxLM(export_dir, load=False)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(lm.tokenizer.get_vocab_size()) for _ in range(rng.randrange(1, 30))]
        stream = lm.text_stream()
        assert "".join(map(stream.push, ids)) + stream.flush() == lm.decode(ids)
    stream = lm.text_stream()
    pieces = [stream.push(t) for t in lm.encode(TEXT, special=False)]
    assert "".join(pieces) == TEXT and not any("\ufffd" in p for p in pieces)


def test_text_stream_cleans_up_spaces_as_decoding_the_whole_sequence_does():
    """A tokenizer asking for clean_up_tokenization_spaces (GPT-2's does; edge-c2i's converted
    SmolLM2 no longer does): " ." -> "." even when the space came in
    an earlier piece, which therefore waits; never a character lost or doubled."""
    vocab = [*" 'ntsmvre.?!,x", " '", "' ", " ' ", " n", "'t", "ve", "  "]
    rng = random.Random(0)
    for _ in range(20000):
        ids = [rng.randrange(len(vocab)) for _ in range(rng.randrange(1, 16))]
        stream = TextStream(lambda ids: "".join(vocab[i] for i in ids), clean_up=True)
        got = "".join(map(stream.push, ids)) + stream.flush()
        assert got == clean_up_spaces("".join(vocab[i] for i in ids)), ids


def test_generate_prints_the_greedy_continuation_and_only_that(export_dir):
    run = generate(export_dir, "--max-new-tokens", "12", prompt="Grüße aus")
    lm = OnnxLM(export_dir)
    want = lm.decode(lm.greedy(lm.encode("Grüße aus"), 12))
    assert (run.returncode, run.stdout, run.stderr) == (0, want + "\n", "")


def test_generate_stops_at_the_context_length(export_dir):
    run = generate(export_dir, "--max-new-tokens", "100000")
    assert run.returncode == 0, run.stderr
    lm = OnnxLM(export_dir)
    ids = lm.encode("The capital")
    tokens = lm.greedy(ids, 100000)
    assert len(tokens) == CONTEXT - len(ids)
    assert run.stdout == lm.decode(tokens) + "\n"
    assert "context length (64 tokens)" in run.stderr and "Traceback" not in run.stderr


def test_generate_stops_at_eos(export_dir, tmp_path):
    lm = OnnxLM(export_dir)
    tokens = lm.greedy(lm.encode("The capital"), 10)
    folder = copy_export(export_dir, tmp_path)
    edit_json(folder / MANIFEST, eos_token_id=[tokens[2]])
    run = generate(folder, "--max-new-tokens", "10")
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout == lm.decode(tokens[: tokens.index(tokens[2]) + 1]) + "\n"


@pytest.fixture
def endless(export_dir, tmp_path) -> Path:
    """The export with a context of a million tokens: generation runs until interrupted."""
    folder = copy_export(export_dir, tmp_path)
    edit_json(folder / "config.json", max_position_embeddings=1_000_000)
    return folder


def _start(folder: Path) -> tuple[subprocess.Popen, bytes]:
    """Start a --max-new-tokens 100000 run and wait for its first bytes on stdout."""
    # A suite started in the background (`cmd &`) inherits SIGINT ignored, an ignored
    # signal stays ignored across exec, and Python then leaves it so: while the child
    # starts, catch it here (a caught signal is reset to the default in the child).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_c2i.cli", "generate", "--onnx", str(folder),
             "--prompt", "The capital", "--max-new-tokens", "100000", "--threads", "1"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, before)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    if not ready:
        proc.kill()
        pytest.fail("nothing on stdout after 60 s")
    first = os.read(proc.stdout.fileno(), 4096)
    assert first and proc.poll() is None  # streamed: text came while it still runs
    return proc, first


def test_ctrl_c_keeps_what_was_printed(endless):
    proc, first = _start(endless)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        rest, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave it running for the rest of the suite
        raise
    err = err.decode()
    assert proc.returncode == 130, err
    out = (first + rest).decode()
    assert out.endswith("\n") and len(out) > 1
    assert "interrupted after" in err and "Traceback" not in err
    lm = OnnxLM(endless)  # what was printed is the greedy continuation, but for a last
    n = int(err.split("interrupted after ")[1].split()[0])  # half-decoded character
    full = lm.decode(lm.greedy(lm.encode("The capital"), n))
    assert full.startswith(out[:-1]) and set(full[len(out) - 1:]) <= {"\ufffd"}


def test_a_closed_pipe_ends_it_quietly(endless):
    proc, _ = _start(endless)
    proc.stdout.close()  # as `| head -c 100` does once it has read enough
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 141 and err == ""


# ----------------------------------------------------------------------- eval --onnx


def test_eval_json_prints_one_json_object(export_dir, tmp_path):
    task = tmp_path / "capitals.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"The capital of {c} is", "answer": a}) + "\n"
                            for c, a in (("France", "Paris"), ("Germany", "Berlin"),
                                         ("Japan", "Tokyo"))))
    run = cli("eval", "--onnx", str(export_dir), "--task", f"jsonl:{task}", "--split", "all",
              "--threads", "1", "--json")
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["n"] == 3 and 0 <= res["accuracy"] <= 1 and res["model_file"] == "model.onnx"
    assert "Traceback" not in run.stderr


def test_eval_onnx_refuses_an_example_longer_than_the_context(export_dir, tmp_path):
    task = tmp_path / "long.jsonl"
    task.write_text(json.dumps({"prompt": "word " * CONTEXT, "answer": "end"}) + "\n")
    assert_one_line_error(cli("eval", "--onnx", str(export_dir), "--task", f"jsonl:{task}",
                              "--split", "all", "--threads", "1"), "context is 64")


def test_the_runtime_commands_do_not_import_torch(export_dir, tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n')
    code = f"""if True:
        import sys
        from edge_c2i.cli import main
        assert main(["generate", "--onnx", {str(export_dir)!r}, "--prompt", "Hi",
                     "--max-new-tokens", "2", "--threads", "1"]) == 0
        assert main(["eval", "--onnx", {str(export_dir)!r}, "--task", "jsonl:{task}",
                     "--split", "all", "--threads", "1"]) == 0
        print("HEAVY", sorted(m for m in ("torch", "transformers", "optimum")
                              if m in sys.modules))
    """
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
