"""int4 at accuracy level 4 (the default) against level 1, on the dense packaged models.

    python bench/bench_int4_level.py   # writes bench/results/int4_level.json, prints a table

MatMulNBits at accuracy level 4 rounds its input activations to int8 per block of 32;
level 1 keeps them fp32 (export --int4-accuracy-level 1), and writes a matrix kept in 8 bits
as two 4-bit products (export/int4.py, _nibble_nodes), since ONNX Runtime has no fast
fp32-activation kernel for 8-bit ones.  For SmolLM2-135M (every matrix on a 4-bit grid) and
Gemma-3-270M (45 of its 72 products kept in 8 bits), under --work (made when missing):
``edge-c2i export --int4`` (level 4) and the same model.onnx quantized at level 1.

Measured, one thread, in processes that import no torch:

- agreement: top-1 of every position of the README of this checkout (English prose and
  tables, no download; CHUNKS chunks of 256 tokens, teacher forced) against model.onnx, and
  the mean Pearson correlation of the logits.  The README changes as the project does: the
  JSON keeps the sha256 of the text measured (``text_sha256``), and runs compare within one;
- speed: ms per token of 32 greedy steps after a 128-token prefill, both files loaded in one
  process and decoded in turn PAIRED times, the median of the per-pair ratios; twice, each
  file loaded first once, and the geometric mean of the two (bench_runtime.py's paired
  measure, which found that loading first costs the first model 5-8%);
- size: MB on disk with the external data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, write_result

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m", "gemma3-270m")
FILES = {4: "model_int4.onnx", 1: "model_int4_level1.onnx"}
CHUNKS, CHUNK = 14, 256
PAIRED, PREFILL, NEW_TOKENS = 7, 128, 32
COLUMNS = [("model", "model"), ("level", "accuracy level"), ("mb", "MB"),
           ("matmuls_8bit", "8-bit products"), ("positions", "positions"),
           ("top1_agreement", "top-1 agreement with fp32"), ("logit_corr", "logit corr"),
           ("ms_per_token", "ms/token"), ("vs_level4", "ms/token vs level 4 (paired)")]


# ---------------------------------------------------------------- children (no torch)


def _chunks(lm) -> list[list[int]]:
    ids = lm.encode((ROOT / "README.md").read_text(encoding="utf-8"))
    return [ids[i:i + CHUNK] for i in range(0, CHUNKS * CHUNK, CHUNK)]


def _text_sha256(lm) -> str:
    """sha256 of the text the chunks hold (decoded back from their tokens)."""
    import hashlib

    return hashlib.sha256(lm.decode([i for c in _chunks(lm) for i in c]).encode()).hexdigest()


def agreement_child(folder: str, name: str) -> dict:
    import numpy as np

    from edge_c2i.export.runtime import OnnxLM

    ref = OnnxLM(folder, 1, "model.onnx")
    chunks = _chunks(ref)
    want = [ref.logits(c) for c in chunks]
    del ref
    lm = OnnxLM(folder, 1, name)
    same, corr = [], []
    for c, w in zip(chunks, want):
        got = lm.logits(c)
        same.append(got.argmax(-1) == w.argmax(-1))
        a, b = got - got.mean(-1, keepdims=True), w - w.mean(-1, keepdims=True)
        corr.append((a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1)))
    same = np.concatenate(same)
    return {"positions": int(same.size), "top1_agreement": float(same.mean()),
            "logit_corr": float(np.concatenate(corr).mean()), "text_sha256": _text_sha256(lm)}


def _decode_ms(lm, prefill: list[int]) -> float:
    logits, cache = lm.prefill(prefill)
    token = int(logits.argmax())
    t0 = time.perf_counter()
    for _ in range(NEW_TOKENS):
        logits, cache = lm.step([token], cache, last=True)
        token = int(logits[-1].argmax())
    return (time.perf_counter() - t0) / NEW_TOKENS * 1e3


def paired_child(folder: str, first: str, second: str) -> dict:
    """``first`` loaded first; the median ms/token of each and of first / second."""
    import numpy as np

    from edge_c2i.export.runtime import OnnxLM

    a, b = OnnxLM(folder, 1, first), OnnxLM(folder, 1, second)
    prefill = _chunks(a)[0][:PREFILL]
    _decode_ms(a, prefill), _decode_ms(b, prefill)  # warm-up
    ms_a, ms_b, ratios = [], [], []
    for i in range(PAIRED):
        order = (a, b) if i % 2 == 0 else (b, a)
        times = {id(lm): _decode_ms(lm, prefill) for lm in order}
        ms_a.append(times[id(a)])
        ms_b.append(times[id(b)])
        ratios.append(ms_a[-1] / ms_b[-1])
    return {"first_ms": float(np.median(ms_a)), "second_ms": float(np.median(ms_b)),
            "ratio": float(np.median(ratios))}


def run_child(*args: str) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT,
                         capture_output=True, text=True, check=False,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent


def exports(model: str, work: Path) -> Path:
    from edge_c2i.export.int4 import quantize_int4
    from edge_c2i.export.onnx_export import export_model

    folder = work / model
    if not (folder / FILES[4]).is_file():
        print(f"exporting {model}", file=sys.stderr)
        export_model(model, folder, int4=True, force=True)
    if not (folder / FILES[1]).is_file():
        quantize_int4(folder / "model.onnx", folder / FILES[1], accuracy_level=1)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/edge-c2i/bench_int4_level")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        out = agreement_child(*rest) if kind == "agreement" else paired_child(*rest)
        print(json.dumps(out))
        return
    from edge_c2i.export.files import data_path

    rows, t0 = [], time.perf_counter()
    for model in args.models:
        folder = exports(model, args.work)
        for level, name in FILES.items():
            print(f"{model} level {level}: agreement", file=sys.stderr)
            manifest = json.loads((folder / "edge_c2i_export.json").read_text())
            kept8 = (manifest.get("int4") or {}).get("matmuls_8bit")
            mb = ((folder / name).stat().st_size + data_path(folder / name).stat().st_size) / 1e6
            rows.append({"model": model, "level": level, "file": name, "mb": round(mb, 1),
                         "matmuls_8bit": kept8, **run_child("agreement", str(folder), name)})
        print(f"{model}: paired decode", file=sys.stderr)
        one = run_child("paired", str(folder), FILES[1], FILES[4])  # level 1 loaded first
        four = run_child("paired", str(folder), FILES[4], FILES[1])  # level 4 loaded first
        ratio = (one["ratio"] / four["ratio"]) ** 0.5
        rows[-2].update(ms_per_token=(four["first_ms"] + one["second_ms"]) / 2, vs_level4=1.0)
        rows[-1].update(ms_per_token=(one["first_ms"] + four["second_ms"]) / 2, vs_level4=ratio,
                        paired_loaded_first=one["ratio"], paired_loaded_second=1 / four["ratio"])
        write_result("int4_level", {"text": "README.md", "chunks": CHUNKS, "chunk_tokens": CHUNK,
                                    "paired": PAIRED, "prefill": PREFILL,
                                    "new_tokens": NEW_TOKENS, "threads": 1,
                                    "seconds": round(time.perf_counter() - t0), "rows": rows})
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    main()
