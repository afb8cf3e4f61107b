"""Benchmark of edge_c2i.svd: time, peak memory and accuracy of the exact and gram methods.

Workloads
  random      one random 4096 x 11008 float32 matrix (Llama-7B MLP shape), saved to a
              temporary .safetensors file that the child processes load;
  gemma3      all 126 target matrices of Gemma-3-270M (q k v o gate up down x 18 layers);
  precision   singular values of exact (float32 LAPACK) and gram (float64 Gram) against
              a float64 SVD, on real SmolLM2 / Gemma-3 matrices and on a synthetic
              matrix whose spectrum runs geometrically from 1 to 1e-12.

Each (workload, method) runs in a fresh subprocess with 2 threads.  Memory is read
from /proc/self/status inside the child: VmHWM is reset ("5" > clear_refs) right
before each SVD, so growth = VmHWM - VmRSS(before) is what the SVD itself added
(the weight is already resident, as a loaded model's weights are).
ru_maxrss is not used: Linux carries the parent's peak across fork + exec into it.

    python bench/bench_svd.py            # writes bench/results/svd.json, prints tables
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

import torch

from edge_c2i import svd as msvd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "svd.json"
MODELS = Path.home() / ".cache" / "edge-c2i" / "models"
GEMMA = MODELS / "gemma3-270m" / "model.safetensors"
SMOL = MODELS / "smollm2-135m" / "model.safetensors"
TYPES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
TYPES += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
THREADS = 2
MB = 1e6


# ---------------------------------------------------------------- child side


def _status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def load_tensor(path: str | Path, name: str) -> torch.Tensor:
    """One weight of a .safetensors file as float32, resident (a copy, not a mapped file)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name).float().clone()


def _run_one(job: dict, path: str, name: str) -> tuple[dict, torch.Tensor]:
    """One SVD as the job says; returns its measurements and S."""
    method, budget = job["method"], job.get("budget")
    W = load_tensor(path, name)
    m, n = W.shape
    _reset_peak()
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    _, S, _ = msvd.svd(W, method, budget=budget)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    estimate = _planned_bytes(m, n, method, budget)
    row = {
        "name": name,
        "shape": [m, n],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "growth_bytes": _status("VmHWM") - before,
        "peak_rss_bytes": _status("VmHWM"),
        "estimate_bytes": estimate,
    }
    return row, S


def _planned_bytes(m: int, n: int, method: str, budget: int | None) -> int:
    """workspace_bytes at the chunk size the budget gives (gram)."""
    if method != "gram":
        return msvd.workspace_bytes(m, n, method)
    rows = msvd.gram_chunk_rows(m, n, None, budget)
    return msvd.workspace_bytes(m, n, "gram", chunk_rows=rows)


def child(job: dict) -> None:
    """Run one method over the job's matrices; save S to job["out"]; print a JSON line."""
    torch.set_num_threads(THREADS)
    torch.linalg.svd(torch.randn(64, 32))  # load LAPACK / MKL before measuring
    torch.linalg.eigh(torch.eye(64, dtype=torch.float64))
    baseline = _status("VmRSS")
    rows, spectra = [], {}
    for name in job["names"]:
        row, S = _run_one(job, job["path"], name)
        rows.append(row)
        spectra[name] = S
    torch.save(spectra, job["out"])
    print(json.dumps({"baseline_rss_bytes": baseline, "rows": rows}))


# ---------------------------------------------------------------- parent side


def run_child(job: dict) -> dict:
    """Run ``child(job)`` in a fresh interpreter and return its report plus S."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    args = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    start = time.perf_counter()
    out = subprocess.run(args, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"child {job['method']} failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = time.perf_counter() - start
    report["spectra"] = torch.load(job["out"])
    return report


def rel_err(S: torch.Tensor, ref: torch.Tensor) -> float:
    """max_i |S_i - ref_i| / ref_i over the entries of S."""
    ref = ref[: S.shape[0]].double()
    return ((S.double() - ref).abs() / ref).max().item()


def summarize(method: str, report: dict, exact: dict | None) -> dict:
    """Totals and worst cases of one method over a workload."""
    rows = report["rows"]
    summary = {
        "method": method,
        "matrices": len(rows),
        "seconds": sum(r["seconds"] for r in rows),
        "cpu_seconds": sum(r["cpu_seconds"] for r in rows),
        "baseline_rss_mb": report["baseline_rss_bytes"] / MB,
        "peak_rss_mb": max(r["peak_rss_bytes"] for r in rows) / MB,
        "max_growth_mb": max(r["growth_bytes"] for r in rows) / MB,
        "max_estimate_mb": max(r["estimate_bytes"] for r in rows) / MB,
        "max_growth_over_estimate": max(r["growth_bytes"] / r["estimate_bytes"] for r in rows),
    }
    if exact is not None:
        errs = []
        for r in rows:
            S, ref = report["spectra"][r["name"]], exact["spectra"][r["name"]]
            errs.append(rel_err(S[: min(r["shape"]) // 2], ref))  # the top 50%
            r["rel_err_top"] = errs[-1]
        summary["max_rel_err_top"] = max(errs)
    summary["rows"] = [_short(r) for r in rows]
    return summary


def _short(row: dict) -> dict:
    """A per-matrix row for the JSON file: MB and rounded numbers."""
    out = {"name": row["name"], "shape": row["shape"]}
    out["seconds"], out["cpu_seconds"] = round(row["seconds"], 4), round(row["cpu_seconds"], 4)
    out["growth_mb"] = round(row["growth_bytes"] / MB, 2)
    out["estimate_mb"] = round(row["estimate_bytes"] / MB, 2)
    if "rel_err_top" in row:
        out["rel_err_top"] = float(f"{row['rel_err_top']:.3g}")
    return out


def bench_workload(path: Path, names: list[str], methods: dict, tmp: Path) -> list[dict]:
    """Every method over one workload, each in its own subprocess; exact is the reference."""
    reports = {}
    for label, job in methods.items():
        job = dict(job, path=str(path), names=names, out=str(tmp / f"{label}.pt"))
        reports[label] = run_child(job)
        print(f"  {label}: {reports[label]['wall_seconds']:.1f} s", flush=True)
    summaries = []
    for label, job in methods.items():
        exact = reports["exact"] if label != "exact" else None
        settings = {key: job[key] for key in ("budget",) if key in job}
        summaries.append(summarize(label, reports[label], exact) | settings)
    return summaries


def random_workload(tmp: Path) -> list[dict]:
    """The random 4096 x 11008 matrix: exact, and gram at 640 MB."""
    from safetensors.torch import save_file

    W = torch.randn(4096, 11008, generator=torch.Generator().manual_seed(0))
    file = tmp / "random.safetensors"
    save_file({"w": W}, str(file))
    del W
    budget = 640 * 10**6  # above gram's floor here: a 4096^2 float64 eigh
    methods = {"exact": {"method": "exact"}, "gram": {"method": "gram", "budget": budget}}
    return bench_workload(file, ["w"], methods, tmp)


def gemma_names() -> list[str]:
    return [f"model.layers.{i}.{t}.weight" for i in range(18) for t in TYPES]


def gemma_workload(tmp: Path, budget: int) -> list[dict]:
    """All Gemma-3-270M targets: exact, and gram at ``budget``."""
    methods = {"exact": {"method": "exact"}, "gram": {"method": "gram", "budget": budget}}
    return bench_workload(GEMMA, gemma_names(), methods, tmp)


# ---------------------------------------------------------------- precision


def precision_real() -> list[dict]:
    """exact and gram singular values against a float64 SVD on real weights."""
    rows = []
    for path, layers in ((SMOL, (0, 15, 29)), (GEMMA, (0, 8, 17))):
        for layer in layers:
            for kind in TYPES:
                name = f"model.layers.{layer}.{kind}.weight"
                W = load_tensor(path, name)
                truth = torch.linalg.svdvals(W.double())
                rows.append(
                    {
                        "model": path.parent.name,
                        "name": name,
                        "condition": (truth[0] / truth[-1]).item(),
                        "exact": rel_err(msvd.svd(W, "exact")[1], truth),
                        "gram": rel_err(msvd.svd(W, "gram")[1], truth),
                    }
                )
    return rows


def precision_synthetic(m: int = 1024, n: int = 512) -> list[dict]:
    """Relative errors per decade of sigma / sigma_max on a spectrum from 1 to 1e-12."""
    gen = torch.Generator().manual_seed(0)
    Q1 = torch.linalg.qr(torch.randn(m, n, generator=gen, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
    s = torch.logspace(0, -12, n, dtype=torch.float64)
    W = (Q1 * s) @ Q2.mT
    W = W.to(torch.float32)
    truth = torch.linalg.svdvals(W.double())  # the float32 matrix's own spectrum
    got = {method: msvd.svd(W, method)[1].double() for method in ("exact", "gram")}
    rows = []
    for decade in range(12):
        hi, lo = 10.0**-decade, 10.0 ** -(decade + 1)
        mask = (truth <= hi * truth[0]) & (truth > lo * truth[0])
        if mask.any():
            row = {"sigma_over_max": f"1e-{decade}..1e-{decade + 1}", "count": int(mask.sum())}
            for method, S in got.items():
                row[method] = ((S[mask] - truth[mask]).abs() / truth[mask]).max().item()
            rows.append(row)
    return rows


def chooser_table() -> list[dict]:
    """What "auto" picks for the 4096 x 11008 matrix at a few budgets and ranks."""
    rows = []
    for k in (None, 409):
        for budget in ("256MB", "640MB", "1GB"):
            try:
                choice = msvd.choose_method(4096, 11008, k, msvd.parse_size(budget))
            except msvd.EdgeC2IError as exc:
                choice = f"EdgeC2IError: {exc}"
            rows.append({"k": k, "budget": budget, "method": choice})
    return rows


# ---------------------------------------------------------------- report


def print_table(title: str, summaries: list[dict]) -> None:
    print(f"\n{title}")
    head = f"{'method':<11}{'time s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'SVD growth MB':>15}"
    head += f"{'estimate MB':>13}{'growth/est':>11}{'max rel err':>13}"
    print(head)
    for s in summaries:
        err = s.get("max_rel_err_top")
        print(
            f"{s['method']:<11}{s['seconds']:>9.2f}{s['cpu_seconds']:>9.2f}"
            f"{s['peak_rss_mb']:>13.0f}{s['max_growth_mb']:>15.1f}{s['max_estimate_mb']:>13.1f}"
            f"{s['max_growth_over_estimate']:>11.2f}"
            f"{'reference' if err is None else f'{err:.1e}':>13}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-random", action="store_true", help="skip the 4096 x 11008 run")
    parser.add_argument("--budget", default="256MB", help="gram budget for Gemma-3 (256MB)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    torch.set_num_threads(THREADS)
    if not GEMMA.exists() or not SMOL.exists():
        sys.exit(f"convert the models first: {GEMMA} / {SMOL} missing")
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": THREADS},
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        budget = msvd.parse_size(args.budget)
        print("Gemma-3-270M targets", flush=True)
        results["gemma3_270m"] = gemma_workload(Path(tmp), budget)
        if not args.skip_random:
            print("random 4096 x 11008", flush=True)
            results["random_4096x11008"] = random_workload(Path(tmp))
    print("precision", flush=True)
    results["precision_real"] = precision_real()
    results["precision_synthetic"] = precision_synthetic()
    results["chooser_4096x11008"] = chooser_table()
    results["load_average_end"] = os.getloadavg()
    results["total_seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(f"Gemma-3-270M, 126 target matrices, budget {args.budget}", results["gemma3_270m"])
    if "random_4096x11008" in results:
        print_table("random 4096 x 11008 float32", results["random_4096x11008"])
    worst = {m: max(r[m] for r in results["precision_real"]) for m in ("exact", "gram")}
    print(f"\nreal weights vs float64 SVD, worst over the spectrum: {worst}")
    print("synthetic spectrum 1 .. 1e-12, max rel err per decade:")
    for row in results["precision_synthetic"]:
        print(f"  {row['sigma_over_max']:<12} exact {row['exact']:.1e}  gram {row['gram']:.1e}")
    print("auto on 4096 x 11008:")
    for row in results["chooser_4096x11008"]:
        print(f"  k={row['k']!s:<5} budget {row['budget']:<6} -> {row['method']}")
    print(f"\nwrote {args.out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
