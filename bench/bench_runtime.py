"""edge-c2i's exports against ONNX Runtime GenAI's model builder, in one runtime, side by side.

    bash bench/genai_builder.sh          # the builder's fp32/int8/int4 folders (own venv)
    python bench/bench_runtime.py        # writes bench/results/runtime.json, prints a table

For SmolLM2-135M and Gemma-3-270M, every model file runs in onnxruntime-genai (the runtime
both tools target; one thread), each in a fresh process that imports no torch:

- edge-c2i: ``edge-c2i export --int8 --int4`` of the packaged model (variant ``dense``) and of
  the model adapted to qa_wikidata with C2I's pick in bench/results/search.json
  (``adapted``), the dense model's int4 with ``--int4-remainder product`` (exact; the
  default folds the remainders into the 4-bit product), the dense model's int8 and int4 with
  ``--head-block 32`` (the shared LM head / embedding table in 8-bit blocks of 32, where the
  default is 64), its int8 with ``--head-block 128`` and with ``--int8-block 64`` (the int8
  matrices in blocks of 64); keys ``int8_block``, ``head_block``; the dense model's int4
  saved as one file (key ``weights``: ``one file``, where every export keeps its weights in
  ``NAME.onnx_data``, ``external``: export/files.py); where the model has matrices on a finer grid than 4
  bits (Gemma-3's Q5_0 / Q6_K / Q8_0), the dense model's int4 with ``--int4-finer int4``
  (those rounded to 4 bits, where the default keeps them in 8), key ``int4_finer``; the
  dense model's int8 and int4 with ``--head-refine 64`` (the head ranks the vocabulary in 4
  bits and computes its 64 best logits exactly), key ``head_refine``;
- genai-builder: ``onnxruntime_genai.models.builder -p fp32/int8/int4 -e cpu`` of the same
  converted model (bench/genai_builder.sh), when its folder exists.

Measured per file: size on disk (MB, with external data), prefill of a 128-token prompt
(ms), mean ms per token over 32 greedy steps (best of 3 in each of ``--rounds`` rounds that
run every file of a model in turn, so a slow spell of a noisy machine hits all of them;
after a warm-up), peak RSS of the
process (VmHWM) after those timed decodes (``peak_rss_mb``: the model, its prefill and
decode; ``peak_rss_all_mb``, at the end, adds the harness's own arrays of 200 prompts'
logits and the reference they are compared with), the next-token logits on 200 task prompts against the same tool's fp32 of
the same variant (top-1 agreement, mean Pearson correlation), and task accuracy on 100
qa_wikidata test examples (top-1 first token, LASER's metric for open tasks).  All files of
a model get the same token ids (edge-c2i's fp32 export tokenizes them), so only the graphs
differ.  Runs are interleaved by model; compare within a run, as ratios.  ``--task`` measures
on another task's prompts and examples (a ``bundled:`` one where the BIG-bench sdist cannot be
had; the adapted variant stays the model adapted to qa_wikidata).

Separate processes of the same file can differ by 10-20% on a shared machine, so the speed
targets read a paired measurement instead (``paired_vs_builder``): each dense int8 / int4
file of ours and the builder's file of the same precision load in one process and their
32-token decodes alternate PAIRED times (order swapped each time), the median of the
per-pair ratios; the model loaded first decoded up to 7% slower than the same file loaded
second, so the pair runs twice, each file loaded first once, and the geometric mean of the
two medians is the ratio (each order's is kept).  The control (``paired_control``): our int8
paired with itself the same way (``paired`` should be 1; ``first_over_second`` is what
loading first cost).  ``--paired-only`` measures the pairs again on the last run's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "runtime.json"
MODELS = ("smollm2-135m", "gemma3-270m")
TASK = "bigbench:qa_wikidata"  # the adapted variant's task (C2I's pick in search.json)
# the prompts measured on (--task): TASK by default; where the BIG-bench sdist cannot be had,
# a bundled task (bundled:continents-open) measures the same files on other prompts
N_PROMPTS, N_ACCURACY, PREFILL, NEW_TOKENS, REPEATS = 200, 100, 128, 32, 3
# paired timing (``paired_vs_builder``): our file and the builder's of the same precision in
# one process, their 32-token decodes alternated this many times (the order swapped each time)
PAIRED = 9
PAIRED_PRECISIONS = ("int8", "int4")
MAX_LENGTH = 1024
FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "int4": "model_int4.onnx"}
# the dense model's int4 with the grid's remainders in an fp32 product (export
# --int4-remainder product: exact), beside the default folded one, in the same run
PRODUCT_FILE = "model_int4_product.onnx"
# the dense model's files with other 8-bit blocks: name -> (precision, --int8-block,
# --head-block); the defaults' are DEFAULT_BLOCKS
BLOCK_FILES = {"model_int8_head32.onnx": ("int8", 32, 32),
               "model_int4_head32.onnx": ("int4", None, 32),
               "model_int8_block64.onnx": ("int8", 64, 64),
               "model_int8_head128.onnx": ("int8", 32, 128)}
DEFAULT_BLOCKS = {"int8": (32, 64), "int4": (None, 64)}  # export's INT8_BLOCKS[0], HEAD_BLOCK
# the dense model's int8 and int4 with the head's REFINE best logits exact after a 4-bit
# ranking (export --head-refine; the default is int4.HEAD_REFINE): name -> precision
REFINE = 64
REFINE_FILES = {f"model_int8_refine{REFINE}.onnx": "int8",
                f"model_int4_refine{REFINE}.onnx": "int4"}
# the dense model's int4 with its finer grids rounded to 4 bits (export --int4-finer int4),
# made only where the default int4 keeps some matrix in 8 bits (int4.FINER)
FINER4_FILE = "model_int4_finer4.onnx"
# the dense model's default int4 saved as one file, its weights inside the .onnx (as exports
# wrote them before export/files.py): what external data changes in load time and peak RSS
ONEFILE_FILE = "model_int4_onefile.onnx"


# ---------------------------------------------------------------- child side (no torch)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _model(folder: str, filename: str):
    import onnxruntime_genai as og

    config = og.Config(folder)
    config.overlay(json.dumps({"model": {"decoder": {
        "filename": filename, "session_options": {"intra_op_num_threads": 1,
                                                  "inter_op_num_threads": 1}}}}))
    return og, og.Model(config)


def _last_logits(og, model, ids: list[int], room: int = 1):
    """Prefill ``ids`` in a new generator: its last logits, and the generator (``room`` more
    tokens can follow, EOS suppressed until then, so every timed run decodes the same count)."""
    import numpy as np

    params = og.GeneratorParams(model)
    if room > 1:
        params.set_search_options(min_length=len(ids) + room)
    # the builder's Gemma-3 keeps a 512-slot sliding-window cache: max_length must cover it
    params.set_search_options(max_length=max(MAX_LENGTH, len(ids) + room))
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"))[0, -1].astype(np.float32), generator


def _decode_ms(og, model, prefill: list[int]) -> float:
    """ms per token of NEW_TOKENS greedy steps after ``prefill`` (the prefill not timed)."""
    _, generator = _last_logits(og, model, prefill, NEW_TOKENS + 1)
    t0 = time.perf_counter()
    for _ in range(NEW_TOKENS):
        generator.generate_next_token()
    return (time.perf_counter() - t0) / NEW_TOKENS * 1e3


def paired_child(job: dict) -> dict:
    """Our file and the builder's in one process, their decodes alternated PAIRED times: the
    median of the per-pair ratios (a slow spell of the machine hits both of a pair)."""
    import numpy as np

    og, ours = _model(job["dir"], job["file"])
    _, theirs = _model(job["dir_b"], job["file_b"])
    prefill = json.loads(Path(job["ids"]).read_text())["prefill"]
    for model in (ours, theirs):
        _last_logits(og, model, prefill[:8])  # warm-up
    ratios, a_ms, b_ms = [], [], []
    for i in range(PAIRED):
        order = (ours, theirs) if i % 2 == 0 else (theirs, ours)
        times = {id(m): _decode_ms(og, m, prefill) for m in order}
        a_ms.append(times[id(ours)])
        b_ms.append(times[id(theirs)])
        ratios.append(a_ms[-1] / b_ms[-1])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"paired_vs_builder": float(median), "paired_iqr": [float(q1), float(q3)],
            "paired_ms": float(np.median(a_ms)), "paired_builder_ms": float(np.median(b_ms))}


def child(job: dict) -> dict:
    import numpy as np

    if job.get("dir_b"):
        return paired_child(job)
    og, model = _model(job["dir"], job["file"])
    data = json.loads(Path(job["ids"]).read_text())
    _last_logits(og, model, data["prefill"][:8])  # warm-up
    prefill, per_token = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        _, generator = _last_logits(og, model, data["prefill"], NEW_TOKENS + 1)
        prefill.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(NEW_TOKENS):
            generator.generate_next_token()
        per_token.append((time.perf_counter() - t0) / NEW_TOKENS)
    timing = {"prefill_ms": min(prefill) * 1e3, "ms_per_token": min(per_token) * 1e3}
    if job.get("timing_only"):
        return timing
    # the decode's peak: the model, a 128-token prefill and 32 steps; what follows holds this
    # harness's own arrays (200 prompts' logits, a reference as large, their products)
    timing["peak_rss_mb"] = _peak_rss_mb()
    logits = np.stack([_last_logits(og, model, ids)[0] for ids in data["prompts"]])
    figures = {}
    if job.get("reference"):
        ref = np.load(job["reference"])
        a = logits - logits.mean(1, keepdims=True)
        b = ref - ref.mean(1, keepdims=True)
        corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        figures = {"top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
                   "logit_corr": float(corr.mean())}
    else:
        np.save(job["save"], logits)
    correct = sum(int(_last_logits(og, model, ex["context"])[0].argmax()) in ex["firsts"]
                  for ex in data["accuracy"])
    return {**timing, "peak_rss_all_mb": _peak_rss_mb(),
            "accuracy": correct / len(data["accuracy"]),
            **figures}


def _pair(a: tuple[Path, str], b: tuple[Path, str], ids: Path) -> dict:
    """Decodes of ``a`` over ``b``, paired (paired_child) in two processes, each file loaded
    first in one of them: the geometric mean of the two medians cancels what loading first
    costs (the control measures that), and each order's median is kept."""
    def run(x, y):
        return run_child({"dir": str(x[0]), "file": x[1], "ids": str(ids),
                          "dir_b": str(y[0]), "file_b": y[1]})

    first, second = run(a, b), run(b, a)
    a_first, b_first = first["paired_vs_builder"], 1 / second["paired_vs_builder"]
    return {"paired_vs_builder": (a_first * b_first) ** 0.5,
            "paired_ours_loaded_first": a_first, "paired_builder_loaded_first": b_first}


def paired(model: str, runs: list, rows: list[dict], dense: Path, ids: Path,
           controls: dict) -> None:
    """The paired ratios of ``model``'s dense int8 / int4 rows (in place), and the control."""
    builder_files = {precision: (folder, name) for tool, _, precision, folder, name in runs
                     if tool == "genai-builder"}
    for (tool, variant, precision, folder, name), row in zip(runs, rows):
        if tool != "edge-c2i" or variant != "dense" or precision not in PAIRED_PRECISIONS \
                or precision not in builder_files or row.get("int4_remainder") == "product" \
                or name == ONEFILE_FILE:
            continue
        print(f"{model} paired: {name} and the builder's {precision}", file=sys.stderr)
        for key in [k for k in row if k.startswith("paired_")]:
            del row[key]
        row.update(_pair((folder, name), builder_files[precision], ids))
    # the control: our int8 paired with itself; the two orders' ratios show the cost of
    # loading first, their geometric mean should be 1
    print(f"{model} paired control: our int8 with itself", file=sys.stderr)
    control = _pair((dense, FILES["int8"]), (dense, FILES["int8"]), ids)
    controls[model] = {"paired": control["paired_vs_builder"],
                       "first_over_second": control["paired_ours_loaded_first"],
                       "second_over_first": control["paired_builder_loaded_first"]}


def run_child(job: dict) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], cwd=ROOT,
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"{job['dir']}/{job['file']} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent side


def c2i_pick(model: str) -> dict:
    """C2I's default pick for (model, qa_wikidata) in bench/results/search.json."""
    rows = json.loads((ROOT / "bench" / "results" / "search.json").read_text())["rows"]
    return next(r["c2i_chosen"] for r in rows if r["model"] == model and r["task"] == TASK)


def _graph_kind(folder: Path) -> str | None:
    """The graph an export folder holds (fused, optimum; None for an older export)."""
    return (_manifest(folder).get("graph") or {}).get("kind")


def _manifest(folder: Path) -> dict:
    manifest = folder / "edge_c2i_export.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def _head_block(folder: Path) -> int | None:
    """The block of the shared head table in an export folder's int4 file (None: older)."""
    return (_manifest(folder).get("int4") or {}).get("head_block")


def _blocks(name: str, precision: str) -> dict:
    """int8_block and head_block of an edge-c2i file (None where they do not apply)."""
    if precision == "fp32":
        return {"int8_block": None, "head_block": None}
    _, int8_block, head_block = BLOCK_FILES.get(name, (precision, *DEFAULT_BLOCKS[precision]))
    return {"int8_block": int8_block, "head_block": head_block}


def _refine(name: str, precision: str) -> int | None:
    """How many logits an edge-c2i int8 / int4 file's head computes exactly after a 4-bit
    ranking (0: an 8-bit head; None for fp32)."""
    from edge_c2i.export.int4 import HEAD_REFINE

    if precision == "fp32":
        return None
    return REFINE if name in REFINE_FILES else HEAD_REFINE


def _finer(folder: Path, name: str) -> str | None:
    """What an edge-c2i int4 file did with matrices on a finer grid (int8, int4)."""
    if name == FINER4_FILE:
        return "int4"
    if name in (FILES["int4"], ONEFILE_FILE):  # the default int4, or it saved as one file
        return (_manifest(folder).get("int4") or {}).get("finer")
    if name == PRODUCT_FILE or (name in BLOCK_FILES and BLOCK_FILES[name][0] == "int4") \
            or REFINE_FILES.get(name) == "int4":
        from edge_c2i.export.int4 import FINER

        return FINER[0]  # written with export's default
    return None


def _remainder(folder: Path, name: str) -> str | None:
    """How an edge-c2i int4 file adds a 4-bit grid's remainders (folded, product)."""
    if name == PRODUCT_FILE:
        return "product"
    if name == FINER4_FILE or (name in BLOCK_FILES and BLOCK_FILES[name][0] == "int4") \
            or REFINE_FILES.get(name) == "int4":
        from edge_c2i.export.int4 import REMAINDERS

        return REMAINDERS[0]  # written with export's default
    return (_manifest(folder).get("int4") or {}).get("remainder") \
        if name in (FILES["int4"], ONEFILE_FILE) else None


def edge_exports(model: str, work: Path, graph: str = "auto") -> dict[str, Path]:
    """edge-c2i's exports (fp32, int8, int4) of the dense and the adapted model, made again
    when the folder holds another graph than ``graph`` asks for."""
    from edge_c2i.adapted import save_adapted
    from edge_c2i.export import files
    from edge_c2i.export.graph import KEEP_INPUT
    from edge_c2i.export.int4 import (
        FINER,
        HEAD_BLOCK,
        INT8_BLOCKS,
        REMAINDERS,
        quantize_int4,
        table_block,
    )
    from edge_c2i.export.onnx_export import export_model
    from edge_c2i.export.postprocess import quantize_int8
    from edge_c2i.factorize import reduce
    from edge_c2i.models import load_model
    from edge_c2i.targets import get_target

    folders = {"dense": work / model / "dense", "adapted": work / model / "adapted"}
    source = work / model / "adapted-src"
    if not (source / "edge_c2i.json").is_file():
        pick = c2i_pick(model)
        net, tok = load_model(model)
        reduction = reduce(net, get_target(net, pick["layer"], pick["type"]), pick["rate"],
                           clusters=pick["clusters"])
        save_adapted(net, tok, source, [reduction], info={"base_model": model, "task": TASK,
                                                          "method": "c2i"})
    for variant, folder in folders.items():
        kind = _graph_kind(folder)
        if (not (folder / FILES["int4"]).is_file() or kind is None
                or graph not in ("auto", kind)
                or _remainder(folder, FILES["int4"]) != REMAINDERS[0]
                or _head_block(folder) != HEAD_BLOCK
                or _finer(folder, FILES["int4"]) != FINER[0]
                or not files.data_path(folder / FILES["int4"]).is_file()
                or (kind == "fused" and KEEP_INPUT not in _manifest(folder)["input_names"])):
            print(f"exporting {model} {variant} ({graph} graph)", file=sys.stderr)
            for name in (PRODUCT_FILE, FINER4_FILE, ONEFILE_FILE, *BLOCK_FILES,
                         *REFINE_FILES):  # older
                for old in (folder / name, files.data_path(folder / name)):
                    old.unlink(missing_ok=True)
            export_model(model if variant == "dense" else str(source), folder, int8=True,
                         int4=True, force=True, graph=graph)
    dense = folders["dense"]
    if not (dense / PRODUCT_FILE).is_file():
        quantize_int4(dense / "model.onnx", dense / PRODUCT_FILE, remainder="product")
    kept8 = (_manifest(dense).get("int4") or {}).get("matmuls_8bit")
    if kept8 and not (dense / FINER4_FILE).is_file():
        quantize_int4(dense / "model.onnx", dense / FINER4_FILE, finer="int4")
    assert DEFAULT_BLOCKS == {"int8": (INT8_BLOCKS[0], HEAD_BLOCK), "int4": (None, HEAD_BLOCK)}
    width = json.loads((dense / "config.json").read_text())["hidden_size"]
    for name, (precision, int8_block, head_block) in BLOCK_FILES.items():
        if (dense / name).is_file() or table_block(width, head_block) != head_block:
            continue  # made, or the same as a smaller block (SmolLM2's 576-wide table at 128)
        if precision == "int8":
            quantize_int8(dense / "model.onnx", dense / name, block_size=int8_block,
                          head_block=head_block)
        else:
            quantize_int4(dense / "model.onnx", dense / name, head_block=head_block)
    for name, precision in REFINE_FILES.items():
        if not (dense / name).is_file():
            quantize = quantize_int8 if precision == "int8" else quantize_int4
            quantize(dense / "model.onnx", dense / name, head_refine=REFINE)
    if not (dense / ONEFILE_FILE).is_file():
        import onnx

        onnx.save(onnx.load(dense / FILES["int4"]), dense / ONEFILE_FILE)
    return folders


def token_ids(model: str, folder: Path, path: Path, task: str = TASK) -> Path:
    """The ids every file of ``model`` runs: prompts, a 128-token prefill, accuracy examples
    (of ``task``)."""
    from edge_c2i.export.runtime import OnnxLM
    from edge_c2i.tasks import load_task, split

    lm = OnnxLM(folder, 1, "model.onnx", load=False)
    test = split(load_task(task)).test
    prompts = [lm.prompt_ids(ex.prompt)[-256:] for ex in test[:N_PROMPTS]]
    long = [i for ids in prompts for i in ids]
    accuracy = []
    for ex in test[:N_ACCURACY]:
        ctx, answer = lm.context_and_answer(ex.prompt, ex.answer)
        firsts = {answer[0]} | {lm.context_and_answer(ex.prompt, a)[1][0] for a in ex.aliases}
        accuracy.append({"context": ctx, "firsts": sorted(firsts)})
    path.write_text(json.dumps({"prompts": prompts, "prefill": long[:PREFILL],
                                "accuracy": accuracy}))
    return path


def file_mb(folder: Path, name: str) -> float:
    """MB of an ONNX file with its external data (``name``.onnx_data, the builder's .data)."""
    return sum(p.stat().st_size for p in folder.glob(name + "*")) / 1e6


def _weights(folder: Path, name: str) -> str:
    """Where an ONNX file keeps its weights: "external" (a data file beside it) or "one file"."""
    return "external" if any(folder.glob(name + "?data")) else "one file"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/edge-c2i/bench_runtime")
    ap.add_argument("--builder", type=Path, default=Path("/work/builder"),
                    help="bench/genai_builder.sh's output: BUILDER/MODEL/PRECISION")
    ap.add_argument("--graph", choices=("auto", "fused", "optimum"), default="auto",
                    help="edge-c2i's graph (export --graph)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timing rounds over all files of a model (the first also measures "
                         "agreement, RSS and accuracy); ms figures are the best of all rounds")
    ap.add_argument("--paired-only", action="store_true",
                    help="measure only the paired ratios again, on the rows of the last run "
                         "in runtime.json (the same files)")
    ap.add_argument("--task", default=TASK,
                    help="the prompts and accuracy examples measured on (the adapted variant "
                         f"stays the model adapted to {TASK})")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows, controls, t_start = [], {}, time.perf_counter()
    if args.paired_only:
        data = json.loads(RESULTS.read_text())
        rows, seconds, controls = data["rows"], data["seconds"], data.get("paired_control", {})
    for model in args.models:
        folders = edge_exports(model, args.work, args.graph)
        ids = token_ids(model, folders["dense"], args.work / model / "ids.json", args.task)
        runs = [("edge-c2i", variant, precision, folder, FILES[precision])
                for variant, folder in folders.items() for precision in FILES]
        runs.append(("edge-c2i", "dense", "int4", folders["dense"], PRODUCT_FILE))
        if (folders["dense"] / FINER4_FILE).is_file():
            runs.append(("edge-c2i", "dense", "int4", folders["dense"], FINER4_FILE))
        runs += [("edge-c2i", "dense", precision, folders["dense"], name)
                 for name, (precision, _, _) in BLOCK_FILES.items()
                 if (folders["dense"] / name).is_file()]
        runs += [("edge-c2i", "dense", precision, folders["dense"], name)
                 for name, precision in REFINE_FILES.items()]
        runs.append(("edge-c2i", "dense", "int4", folders["dense"], ONEFILE_FILE))
        builder = [("genai-builder", "dense", precision, args.builder / model / precision,
                    "model.onnx") for precision in FILES]
        builder = [r for r in builder if (r[3] / "model.onnx").is_file()]
        runs += builder
        if len(builder) < len(FILES):
            print(f"no builder folders under {args.builder / model}: run "
                  "bench/genai_builder.sh first", file=sys.stderr)
        mine = [r for r in rows if r["model"] == model]
        if args.paired_only:
            if len(mine) != len(runs):
                sys.exit(f"{RESULTS} holds another set of {model} files: run without "
                         "--paired-only")
            paired(model, runs, mine, folders["dense"], ids, controls)
            write(rows, args, seconds, controls, paired_date=time.strftime("%Y-%m-%d"))
            continue
        for tool, variant, precision, folder, name in runs:
            ref = args.work / model / f"{tool}-{variant}-fp32.npy"
            job = {"dir": str(folder), "file": name, "ids": str(ids)}
            job.update({"save": str(ref)} if precision == "fp32" else {"reference": str(ref)})
            print(f"{model} {tool} {variant} {precision}", file=sys.stderr)
            row = {"model": model, "tool": tool, "precision": precision, "variant": variant,
                   "graph": _graph_kind(folder) if tool == "edge-c2i" else "builder",
                   "int4_remainder": _remainder(folder, name) if tool == "edge-c2i" else None,
                   "int4_finer": _finer(folder, name) if tool == "edge-c2i" else None,
                   **(_blocks(name, precision) if tool == "edge-c2i" else {}),
                   "head_refine": _refine(name, precision) if tool == "edge-c2i" else None,
                   "weights": _weights(folder, name),
                   "mb": round(file_mb(folder, name), 1), **run_child(job)}
            if precision == "fp32":
                row.update(top1_agreement=1.0, logit_corr=1.0)
            rows.append(row)
            write(rows, args, time.perf_counter() - t_start, controls)
        mine = [r for r in rows if r["model"] == model]
        for round_ in range(2, args.rounds + 1):
            for (tool, variant, precision, folder, name), row in zip(runs, mine):
                print(f"{model} round {round_}: {tool} {variant} {precision}", file=sys.stderr)
                again = run_child({"dir": str(folder), "file": name, "ids": str(ids),
                                   "timing_only": True})
                for key in ("prefill_ms", "ms_per_token"):
                    row[key] = min(row[key], again[key])
            write(rows, args, time.perf_counter() - t_start, controls)
        paired(model, runs, mine, folders["dense"], ids, controls)
        write(rows, args, time.perf_counter() - t_start, controls)
    print(table(rows))


def targets(rows: list[dict]) -> list[dict]:
    """Issue #16's targets, met or not, from the dense rows of one run (per model): the
    default files, then the int8 speed target again with --int8-block 64 and with
    --head-block 128, the int4 targets with --int4-finer int4 where that file was made, and
    the int8 and int4 targets with --head-refine REFINE (``option``).  Speed is the
    paired median (``paired_vs_builder``) where the row has one."""
    def ratio(key):
        return lambda ours, builder: ours[key] / builder[key]

    def paired(ours, builder):  # the paired median where measured, else the two rows' ratio
        return ours.get("paired_vs_builder") or ratio("ms_per_token")(ours, builder)

    checks = [  # (target, precision, measured(ours, builder), ">=" or "<=", bound)
        ("int4 top-1 agreement with fp32", "int4", lambda o, b: o["top1_agreement"], ">=", 0.95),
        ("int8 ms/token vs the builder's int8", "int8", paired, "<=", 0.9),
        ("int4 ms/token vs the builder's int4", "int4", paired, "<=", 0.9),
        ("int4 file MB vs the builder's int4", "int4", ratio("mb"), "<=", 1.0),
        ("int4 peak RSS vs the builder's int4", "int4", ratio("peak_rss_mb"), "<=", 1.0)]

    def blocks(r):
        if r["tool"] != "edge-c2i":
            return None
        finer = r.get("int4_finer")
        return (r.get("int8_block"), r.get("head_block"), *((finer,) if finer == "int4" else ()),
                *((r["weights"],) if r.get("weights") == "one file" else ()),
                *((("refine", r["head_refine"]),) if r.get("head_refine") else ()))

    dense = {(r["model"], r["tool"], r["precision"], blocks(r)): r for r in rows
             if r["variant"] == "dense" and r.get("int4_remainder") != "product"}
    fast, wide = BLOCK_FILES["model_int8_block64.onnx"], BLOCK_FILES["model_int8_head128.onnx"]
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for option, precision_blocks in (("", DEFAULT_BLOCKS),
                                         (f"--int8-block {fast[1]}", {"int8": fast[1:]}),
                                         (f"--head-block {wide[2]}", {"int8": wide[1:]}),
                                         ("--int4-finer int4",
                                          {"int4": (*DEFAULT_BLOCKS["int4"], "int4")}),
                                         (f"--head-refine {REFINE}",
                                          {p: (*DEFAULT_BLOCKS[p], ("refine", REFINE))
                                           for p in REFINE_FILES.values()})):
            for name, precision, measured, op, bound in checks:
                if precision not in precision_blocks:
                    continue
                ours = dense.get((model, "edge-c2i", precision, precision_blocks[precision]))
                builder = dense.get((model, "genai-builder", precision, None))
                if ours is None or builder is None:
                    continue
                v = measured(ours, builder)
                out.append({"model": model, "target": name, "bound": f"{op} {bound}",
                            "option": option, "value": round(v, 3),
                            "met": v >= bound if op == ">=" else v <= bound})
    return out


def write(rows: list[dict], args, seconds: float, controls: dict | None = None,
          paired_date: str | None = None) -> None:
    import onnxruntime

    counts = [json.loads((args.work / model / "ids.json").read_text()) for model in
              dict.fromkeys(r["model"] for r in rows)]
    data = {"task": args.task, "adapted_task": TASK, "rounds": args.rounds,
            "n_prompts": N_PROMPTS, "n_accuracy": N_ACCURACY,
            # what the task held of them (a bundled task has fewer test prompts than 200)
            "n_prompts_measured": min((len(c["prompts"]) for c in counts), default=None),
            "n_accuracy_measured": min((len(c["accuracy"]) for c in counts), default=None),
            "prefill_tokens": PREFILL, "new_tokens": NEW_TOKENS, "threads": 1,
            "runtime": "onnxruntime-genai " + _version("onnxruntime-genai"),
            "onnxruntime": onnxruntime.__version__, "machine": {"cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds), "rows": rows,
            "paired_repeats": PAIRED, "paired_control": controls or {},
            "paired_date": paired_date or time.strftime("%Y-%m-%d"),
            "targets": targets(rows)}
    tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(RESULTS)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


COLUMNS = ("model", "tool", "precision", "int4_remainder", "int4_finer", "int8_block",
           "head_block", "head_refine", "weights", "variant", "graph", "mb", "prefill_ms", "ms_per_token",
           "peak_rss_mb", "top1_agreement", "logit_corr", "accuracy", "paired_vs_builder")


def table(rows: list[dict]) -> str:
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else \
            f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
