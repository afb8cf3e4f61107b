"""Peak memory of loading an export's model files: weights beside the graph or inside it.

    python bench/bench_load.py        # writes bench/results/load.json, prints a table

export writes every ``NAME.onnx`` with its weights in ``NAME.onnx_data`` (export/files.py).
For the dense SmolLM2-135M and Gemma-3-270M exports (fp32, int8, int4; made under --work
when missing), each file is also saved as one file (the weights inside the protobuf, as
exports were written before), and each of the two is loaded by ONNX Runtime (one thread,
CPU provider) in a fresh process that imports no torch: peak RSS of the process (VmHWM)
before and after creating the session, and the RSS after it.  Three rounds alternate the
two layouts; the median of each is kept.  bench_runtime.py measures the peak of a whole
decoding run, where the prompts' logits set it.
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
from common import table, write_result

MODELS = ("smollm2-135m", "gemma3-270m")
FILES = ("model.onnx", "model_int8.onnx", "model_int4.onnx")
ROUNDS = 3
COLUMNS = [("model", "model"), ("file", "file"), ("mb", "MB"),
           ("external_peak_mb", "peak MB, weights beside"),
           ("one_file_peak_mb", "peak MB, one file"), ("saved_mb", "saved MB"),
           ("external_load_s", "load s, beside"), ("one_file_load_s", "load s, one file")]


def child(path: str) -> dict:
    import onnxruntime as ort

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    before = status("VmHWM:")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    t0 = time.perf_counter()
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return {"load_s": time.perf_counter() - t0, "before_mb": before,
            "peak_mb": status("VmHWM:"), "rss_mb": status("VmRSS:")}


def run_child(path: Path) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True,
                         text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise RuntimeError(f"{path} failed to load:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def dense_export(model: str, work: Path) -> Path:
    folder = work / model / "dense"
    if not all((folder / f).is_file() for f in FILES):
        from edge_c2i.export.onnx_export import export_model

        print(f"exporting {model}", file=sys.stderr)
        export_model(model, folder, int8=True, int4=True, force=True, check=False)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/edge-c2i/bench_runtime",
                    help="where the exports are (bench_runtime.py's, made when missing)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    import onnx

    from edge_c2i.export.files import data_path, size

    rows = []
    for model in args.models:
        folder = dense_export(model, args.work)
        for name in FILES:
            external = folder / name
            if not data_path(external).is_file():
                sys.exit(f"{external} keeps its weights inside: export it again")
            with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                one_file = Path(tmp) / name
                onnx.save(onnx.load(external), one_file)
                runs = {"external": [], "one_file": []}
                for round_ in range(ROUNDS):
                    print(f"{model} {name} round {round_ + 1}", file=sys.stderr)
                    for key, path in (("external", external), ("one_file", one_file))[
                            ::1 if round_ % 2 == 0 else -1]:
                        runs[key].append(run_child(path))
            med = {key: {m: statistics.median(r[m] for r in runs[key])
                         for m in ("peak_mb", "rss_mb", "load_s", "before_mb")}
                   for key in runs}
            rows.append({"model": model, "file": name, "mb": round(size(external) / 1e6, 1),
                         "runtime_mb": round(med["external"]["before_mb"], 1),
                         **{f"{key}_{m}": round(v, 3 if m == "load_s" else 1)
                            for key, figures in med.items() for m, v in figures.items()
                            if m != "before_mb"},
                         "saved_mb": round(med["one_file"]["peak_mb"]
                                           - med["external"]["peak_mb"], 1)})
            write_result("load", {"rounds": ROUNDS, "threads": 1,
                                  "onnxruntime": _version("onnxruntime"), "rows": rows})
    print(table(rows, COLUMNS))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
