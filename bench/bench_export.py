"""Benchmark of the ONNX export: size, ONNX Runtime latency, peak memory and task accuracy.

Variants of SmolLM2-135M
  dense              the packaged model, fp32
  adapted            one reduced matrix (layer 20 down_proj, rate 0.2), fp32
  int8               dense, 8-bit weights (blockwise MatMulNBits, the default scheme)
  int8-dynamic       dense, quantize_dynamic (the alternative scheme, MLP down_proj kept fp32)
  int4               dense, 4-bit weights (--int4: exact on the GGUF Q4_1 grid)
  adapted+int8       adapted, 8-bit weights
  adapted+int4       adapted, 4-bit weights
  compressed         every MLP matrix (gate, up, down) of every layer at rate 0.25, fp32
  compressed+int8    compressed, 8-bit weights
  compressed+int4    compressed, 4-bit weights

For each: bytes of the model file on disk; latency of a 128-token prefill and the mean
time per generated token over 32 greedy steps with the KV cache, at 1 and 2 threads;
the peak resident memory of that ONNX Runtime process (latencies: best of 3 repeats); accuracy and loss on 100 examples
of bigbench:epistemic_reasoning (the eval split), in ONNX Runtime and in PyTorch.

Every measurement runs in a fresh subprocess that imports no torch (edge_c2i.export.runtime only).
Peak memory is VmHWM from /proc/self/status inside the child: a fresh address space
after exec, so unlike ru_maxrss it does not carry the parent's peak into the child.

    python bench/bench_export.py       # writes bench/results/export.json, prints a table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "export.json"
MODEL = "smollm2-135m"
TASK = "bigbench:epistemic_reasoning"
N_EXAMPLES = 100
PREFILL, NEW_TOKENS = 128, 32
THREADS = (1, 2)
REPEATS = 3  # latency: the best of 3 (other jobs share the cores; the minimum is the signal)
ONE_MATRIX = (20, "out", 0.2)  # layer, type, rate of the "adapted" variant
COMPRESS_TYPES, COMPRESS_RATE = ("gate", "in", "out"), 0.25
MB = 1e6


# ---------------------------------------------------------------- child side (no torch)


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def child_latency(job: dict) -> dict:
    """Load, prefill PREFILL tokens, then NEW_TOKENS greedy steps; timings and peak memory."""
    import numpy as np

    from edge_c2i.export.runtime import OnnxLM

    t0 = time.perf_counter()
    lm = OnnxLM(job["dir"], job["threads"], job["file"])
    load = time.perf_counter() - t0
    ids = np.random.default_rng(0).integers(100, 40000, PREFILL).tolist()
    lm.step(ids[:8])  # warm-up
    prefill, per_token = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        logits, cache = lm.step(ids)
        prefill.append(time.perf_counter() - t0)
        token = int(logits[-1].argmax())
        t0 = time.perf_counter()
        for _ in range(NEW_TOKENS):
            logits, cache = lm.step([token], cache)
            token = int(logits[-1].argmax())
        per_token.append((time.perf_counter() - t0) / NEW_TOKENS)
    return {"load_s": load, "prefill_ms": min(prefill) * 1e3,
            "per_token_ms": min(per_token) * 1e3, "peak_rss_bytes": _peak_rss()}


def child_accuracy(job: dict) -> dict:
    from edge_c2i.export.runtime import evaluate_onnx
    from edge_c2i.tasks import load_task, split

    examples = split(load_task(TASK)).eval[:N_EXAMPLES]
    t0 = time.perf_counter()
    res = evaluate_onnx(job["dir"], examples, job["file"], job["threads"])
    return {**res, "seconds": time.perf_counter() - t0, "peak_rss_bytes": _peak_rss()}


def run_child(job: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": str(job["threads"])})
    if run.returncode != 0:
        raise RuntimeError(f"child {job} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent side


def build_sources(work: Path) -> dict[str, str]:
    """The adapted and compressed folders (dense is the packaged name)."""
    from edge_c2i.adapted import save_adapted
    from edge_c2i.factorize import reduce
    from edge_c2i.models import load_model
    from edge_c2i.targets import find_targets, get_target

    sources = {"dense": MODEL}
    layer, kind, rate = ONE_MATRIX
    for name in ("adapted", "compressed"):
        folder = work / f"src-{name}"
        sources[name] = str(folder)
        if (folder / "edge_c2i.json").is_file():
            continue
        model, tok = load_model(MODEL)
        if name == "adapted":
            targets, rate_used = [get_target(model, layer, kind)], rate
        else:
            targets = [t for t in find_targets(model) if t.type in COMPRESS_TYPES]
            rate_used = COMPRESS_RATE
        reductions = [reduce(model, t, rate_used) for t in targets]
        save_adapted(model, tok, folder, reductions, info={"base_model": MODEL, "method": name})
    return sources


def torch_accuracy(source: str) -> dict:
    import torch

    from edge_c2i.evaluate import evaluate
    from edge_c2i.models import load_model
    from edge_c2i.tasks import load_task, split

    torch.set_num_threads(2)
    model, tok = load_model(source)
    return evaluate(model, tok, split(load_task(TASK)).eval[:N_EXAMPLES])


def export_all(sources: dict[str, str], work: Path) -> dict[str, tuple[Path, str, dict]]:
    """variant -> (export folder, model file, parity figures); exports are reused if present."""
    from edge_c2i.export.onnx_export import export_model

    out = {}
    for source in ("dense", "adapted", "compressed"):
        folder = work / f"onnx-{source}"
        if not (folder / "model_int4.onnx").is_file():
            t0 = time.perf_counter()
            export_model(sources[source], folder, int8=True, int4=True, force=True)
            print(f"exported {source} in {time.perf_counter() - t0:.0f}s", flush=True)
        manifest = json.loads((folder / "edge_c2i_export.json").read_text())
        out[source] = (folder, "model.onnx", manifest["parity"]["model.onnx"])
        for bits in ("int8", "int4"):
            name = bits if source == "dense" else f"{source}+{bits}"
            out[name] = (folder, f"model_{bits}.onnx", manifest["parity"][f"model_{bits}.onnx"])
    out["int8-dynamic"] = dynamic_int8(work / "onnx-dense")
    order = ("dense", "adapted", "int8", "int8-dynamic", "int4", "adapted+int8", "adapted+int4",
             "compressed", "compressed+int8", "compressed+int4")
    return {k: out[k] for k in order}


def dynamic_int8(folder: Path) -> tuple[Path, str, dict]:
    """The dense export quantized with the other scheme, and its parity figures."""
    from edge_c2i.export import parity
    from edge_c2i.export.postprocess import out_matmul_prefixes, quantize_int8
    from edge_c2i.export.runtime import OnnxLM
    from edge_c2i.models import load_model

    file = "model_int8_dynamic.onnx"
    model, _ = load_model(MODEL)
    if not (folder / file).is_file():
        quantize_int8(folder / "model.onnx", folder / file, "dynamic", out_matmul_prefixes(model))
    refs = parity.references(model, OnnxLM(folder, 2))
    return folder, file, parity.compare(OnnxLM(folder, 2, file), refs)


def measure(variants: dict, sources: dict[str, str]) -> list[dict]:
    rows = []
    torch_acc = {}
    for name, (folder, file, figures) in variants.items():
        base = name.split("+")[0]
        base = "dense" if base in ("int8", "int8-dynamic", "int4") else base
        if base not in torch_acc:
            torch_acc[base] = torch_accuracy(sources[base])
        size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith(file))
        row = {"variant": name, "folder": folder.name, "file": file, "bytes": size,
               "parity_vs_pytorch": figures, "latency": {}, "accuracy_torch": torch_acc[base]}
        for threads in THREADS:
            row["latency"][str(threads)] = run_child(
                {"kind": "latency", "dir": str(folder), "file": file, "threads": threads})
        row["accuracy_onnx"] = run_child(
            {"kind": "accuracy", "dir": str(folder), "file": file, "threads": 2})
        rows.append(row)
        print(f"measured {name}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| variant | file MB | prefill 128 ms (1t / 2t) | ms/token (1t / 2t) | "
            "peak RSS MB (1t) | accuracy ORT | accuracy PyTorch | loss ORT |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lat = r["latency"]
        lines.append(
            f"| {r['variant']} | {r['bytes'] / MB:.0f} | "
            f"{lat['1']['prefill_ms']:.0f} / {lat['2']['prefill_ms']:.0f} | "
            f"{lat['1']['per_token_ms']:.1f} / {lat['2']['per_token_ms']:.1f} | "
            f"{lat['1']['peak_rss_bytes'] / MB:.0f} | {r['accuracy_onnx']['accuracy']:.2f} | "
            f"{r['accuracy_torch']['accuracy']:.2f} | {r['accuracy_onnx']['loss']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the exports here and reuse them (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps((child_latency if job["kind"] == "latency" else child_accuracy)(job)))
        return
    import onnxruntime

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sources = build_sources(work)
        rows = measure(export_all(sources, work), sources)
    result = {
        "model": MODEL, "task": TASK, "n_examples": N_EXAMPLES, "split": "eval",
        "prefill_tokens": PREFILL, "new_tokens": NEW_TOKENS,
        "adapted": {"layer": ONE_MATRIX[0], "type": ONE_MATRIX[1], "rate": ONE_MATRIX[2]},
        "compressed": {"types": COMPRESS_TYPES, "rate": COMPRESS_RATE},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "onnxruntime": onnxruntime.__version__},
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"\n{args.out} written in {result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
