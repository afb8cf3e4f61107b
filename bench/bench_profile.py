"""Where a decode step's time goes: edge-c2i's int8 / int4 against the builder's, part by part.

    python bench/bench_runtime.py        # makes the files (once)
    python bench/bench_profile.py        # writes bench/results/profile.json, prints a table

bench_runtime.py measures whole steps; this says which part of a step makes the difference.
For each model, the dense files bench_runtime.py wrote (int8, int4, and both with
``--head-refine 64``) and the builder's int8 / int4 run in onnxruntime-genai with ONNX
Runtime's profiler on: one thread, a fresh process each that imports no torch, bench_runtime's
128-token prefill, then 32 greedy steps.  The kernel time of each decode step (the prefill and
the first step left out) is summed by part of the graph:

- ``head``: the LM head (for ``--head-refine``: its 4-bit ranking, TopK, the rows it gathers
  and their product);
- ``products``: every other MatMulNBits / MatMul (the weight matrices of the layers);
- ``block_means``: int4's AveragePool + Concat (the remainders of a 4-bit grid, export/int4.py);
- ``attention``: GroupQueryAttention; ``norms``: the fused RMS norms; ``rest``: the others;

the median over steps, then over ``--repeats`` processes (the files in turn each time).  The
bytes of weights the products and the head read per step (their initializers; a refined
head's ranking only, the rows it gathers being a few) give the rate they are read at.  The
profiler's own cost makes a step slower than bench_runtime's unprofiled ms/token (more so
for SmolLM2's many small operators): compare parts within this run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime import FILES, MODELS, NEW_TOKENS, REFINE_FILES, file_mb
from common import table, write_result

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5
PARTS = ("head", "products", "block_means", "attention", "norms", "rest")
PRODUCTS = ("MatMulNBits", "MatMul", "FusedMatMul")
COLUMNS = [("model", "model"), ("tool", "tool"), ("precision", "precision"),
           ("head_refine", "head refine"), ("mb", "MB"), ("step_ms", "step ms (profiled)"),
           ("head_ms", "head ms"), ("products_ms", "products ms"),
           ("block_means_ms", "block means ms"), ("attention_ms", "attention ms"),
           ("norms_ms", "norms ms"), ("rest_ms", "rest ms"), ("n_products", "products"),
           ("products_mb", "products' weights MB"), ("products_gbps", "products GB/s"),
           ("head_mb", "head's weights MB"), ("head_gbps", "head GB/s"),
           ("products_vs_builder", "products ms vs builder"),
           ("head_vs_builder", "head ms vs builder"), ("step_vs_builder", "step vs builder")]


# ---------------------------------------------------------------- child (no torch)


def child(folder: str, filename: str, prefix: str, ids_path: str) -> None:
    """Prefill and decode NEW_TOKENS steps with the profiler on; the profile is written when
    the process ends."""
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {"filename": filename, "session_options": {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1, "enable_profiling": prefix}}}}))
    model = og.Model(config)
    prefill = json.loads(Path(ids_path).read_text())["prefill"]
    params = og.GeneratorParams(model)
    params.set_search_options(min_length=len(prefill) + NEW_TOKENS + 1,
                              max_length=max(1024, len(prefill) + NEW_TOKENS + 1))
    generator = og.Generator(model, params)
    generator.append_tokens(prefill)
    for _ in range(NEW_TOKENS):
        generator.generate_next_token()


# ---------------------------------------------------------------- parent


def graph_parts(path: Path) -> tuple[set[str], dict[str, float]]:
    """The names of the block means' nodes, and MB of weights the products / head read."""
    import numpy as np
    import onnx
    from onnx import helper

    graph = onnx.load(path, load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
             .itemsize for t in graph.initializer}
    means, mb = set(), {"head": 0.0, "products": 0.0}
    for node in graph.node:
        if node.op_type == "AveragePool" or (node.op_type == "Concat"
                                             and node.output[0].endswith("_augmented")):
            means.add(node.name)
        elif node.op_type in PRODUCTS:
            part = "head" if "/lm_head/" in node.name else "products"
            mb[part] += sum(sizes.get(i, 0) for i in node.input) / 1e6
    return means, mb


def part_of(name: str, op: str, means: set[str]) -> str:
    if "/lm_head/" in name:
        return "head"
    if name in means:
        return "block_means"
    if op in PRODUCTS:
        return "products"
    if "Attention" in op:
        return "attention"
    if "LayerNormalization" in op:
        return "norms"
    return "rest"


def profile(folder: Path, filename: str, ids: Path, means: set[str]) -> dict:
    """One process's profile: per decode step (after the first), ms by part; the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "profile")
        run = subprocess.run([sys.executable, __file__, "--child", str(folder), filename, prefix,
                              str(ids)], cwd=ROOT, capture_output=True, text=True, check=False,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        if run.returncode != 0:
            raise RuntimeError(f"{folder / filename} failed:\n{run.stderr[-3000:]}")
        [path] = Path(tmp).glob("profile*.json")
        events = json.loads(path.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    steps = runs[2:]  # the prefill and the first decode step left out
    per_step = [dict.fromkeys(PARTS, 0.0) for _ in steps]
    products = [0] * len(steps)
    starts = [s["ts"] for s in steps]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        i = next((j for j in range(len(steps) - 1, -1, -1) if e["ts"] >= starts[j]), None)
        if i is None or e["ts"] > starts[i] + steps[i]["dur"]:
            continue
        part = part_of(e["name"][:-len("_kernel_time")], e["args"]["op_name"], means)
        per_step[i][part] += e["dur"] / 1e3
        products[i] += part == "products"
    out = {f"{p}_ms": statistics.median(s[p] for s in per_step) for p in PARTS}
    out["step_ms"] = statistics.median(s["dur"] / 1e3 for s in steps)
    out["n_products"] = statistics.median(products)
    return out


def files(model: str, work: Path, builder: Path) -> list[dict]:
    dense = work / model / "dense"
    out = [{"tool": "edge-c2i", "precision": p, "head_refine": 0, "folder": dense,
            "file": FILES[p]} for p in ("int8", "int4")]
    out += [{"tool": "edge-c2i", "precision": p, "head_refine": int(name.split("refine")[1]
                                                                    .split(".")[0]),
             "folder": dense, "file": name} for name, p in REFINE_FILES.items()]
    out += [{"tool": "genai-builder", "precision": p, "head_refine": None,
             "folder": builder / model / p, "file": "model.onnx"} for p in ("int8", "int4")]
    missing = [str(f["folder"] / f["file"]) for f in out if not (f["folder"] / f["file"]).is_file()]
    if missing:
        sys.exit(f"bench_profile: missing {', '.join(missing)}: run bash bench/genai_builder.sh "
                 "and python bench/bench_runtime.py first")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/edge-c2i/bench_runtime")
    ap.add_argument("--builder", type=Path, default=Path("/work/builder"))
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--repeats", type=int, default=REPEATS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    started = time.time()
    rows = []
    for model in args.models:
        ids = args.work / model / "ids.json"
        todo = files(model, args.work, args.builder)
        for f in todo:
            f["means"], f["weights"] = graph_parts(f["folder"] / f["file"])
        runs = {id(f): [] for f in todo}
        for r in range(args.repeats):
            for f in todo:
                print(f"{model} {f['tool']} {f['file']} ({r + 1}/{args.repeats})",
                      file=sys.stderr)
                runs[id(f)].append(profile(f["folder"], f["file"], ids, f["means"]))
        for f in todo:
            got = {k: statistics.median(p[k] for p in runs[id(f)]) for k in runs[id(f)][0]}
            row = {"model": model, "tool": f["tool"], "precision": f["precision"],
                   "head_refine": f["head_refine"], "file": f["file"],
                   "mb": round(file_mb(f["folder"], f["file"]), 1), **got,
                   "products_mb": f["weights"]["products"], "head_mb": f["weights"]["head"]}
            for part in ("products", "head"):  # MB per ms = GB/s
                row[f"{part}_gbps"] = row[f"{part}_mb"] / row[f"{part}_ms"]
            rows.append(row)
    builder = {(r["model"], r["precision"]): r for r in rows if r["tool"] == "genai-builder"}
    for r in rows:
        b = builder.get((r["model"], r["precision"]))
        for key in ("products", "head", "step"):
            r[f"{key}_vs_builder"] = r[f"{key}_ms"] / b[f"{key}_ms"] if b else None
    import onnxruntime

    write_result("profile", {"onnxruntime": onnxruntime.__version__, "threads": 1,
                             "repeats": args.repeats, "prefill_tokens": len(json.loads(
                                 (args.work / args.models[0] / "ids.json").read_text())["prefill"]),
                             "new_tokens": NEW_TOKENS, "seconds": round(time.time() - started),
                             "rows": rows})
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    main()
