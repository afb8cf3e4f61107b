"""The edge-c2i command line: argument parsing only; the work is in the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError

DEFAULT_TASK = "bigbench:qa_wikidata"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,0.2 not {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4 not {text!r}") from None


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temp name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _budget(text: str | None) -> int | None:
    from .svd import parse_size

    return None if text is None else parse_size(text)


# --------------------------------------------------------------------------- commands


def cmd_eval(args) -> int:
    from .tasks import load_task, split

    if args.onnx:
        from export.cli import eval_onnx_command

        return eval_onnx_command(args)
    from .evaluate import evaluate
    from .models import load_model

    _threads(args.threads)
    splits = split(load_task(args.task), seed=args.seed)
    examples = {"test": splits.test, "eval": splits.eval, "calib": splits.calib,
                "all": splits.calib + splits.eval + splits.test}[args.split]
    if args.limit is not None:
        if args.limit < 1:
            raise UserError("--limit must be at least 1")
        examples = examples[: args.limit]
    model, tok = load_model(args.model)
    res = evaluate(model, tok, examples, generation=args.generation)
    res.update({"model": args.model, "task": args.task, "split": args.split})
    if args.json:
        print(json.dumps(res))
    else:
        extra = f"  generation_acc {res['generation_acc']:.3f}" if "generation_acc" in res else ""
        print(f"{args.model} on {args.task} ({args.split}, n={res['n']}): "
              f"accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f}{extra}")
    return 0


def cmd_scan(args) -> int:
    from .models import load_model
    from .scan import rank_targets, singular_value_gradients
    from .targets import find_targets
    from .tasks import load_task, split

    _threads(args.threads)
    budget = _budget(args.max_memory)
    out = Path(args.out)
    splits = split(load_task(args.task), args.samples, 1, None, args.seed)
    model, tok = load_model(args.model, max_memory=budget)
    scans, timings = singular_value_gradients(model, tok, splits.calib, find_targets(model),
                                              max_memory=budget)
    ranked = rank_targets(scans, args.score)
    rows = [{"layer": sc.target.layer, "type": sc.target.type, "score": sc.benefit(args.score),
             "best_rate": sc.best_rate(args.score),
             "scores": {k: {str(r): v for r, v in t.items()} for k, t in sc.scores.items()}}
            for sc in ranked]
    _write_json(out, {"model": args.model, "task": args.task, "score": args.score,
                      "n_grad_samples": len(splits.calib), "timings": timings, "matrices": rows})
    print(f"{'rank':>4} {'layer':>5} {'type':>5} {args.score:>12} {'best rate':>9}")
    for i, r in enumerate(rows[:10], 1):
        print(f"{i:>4} {r['layer']:>5} {r['type']:>5} {r['score']:>12.4g} {r['best_rate']:>9}")
    print(f"scan: {len(rows)} matrices in {timings['svd_s'] + timings['grad_s']:.1f}s -> {out}")
    if budget is not None:
        print(f"  within --max-memory {args.max_memory}: {timings['plan']}")
    return 0


def _summary(report: dict, out: Path) -> None:
    b, a, c = report["base"], report["adapted"], report["calibrated_base"]
    print(f"\n{report['method']} on {report['task']}: {report['evaluations']} configurations "
          f"in {report['timings']['total_s']:.1f}s")
    print(f"  chosen: {report['chosen']}")
    print(f"  test accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, loss {b['loss']:.4f} "
          f"-> {a['loss']:.4f}" + (f" (calibrated base {c['accuracy']:.3f}, {c['control']})" if c else ""))
    print(f"  params {report['params']['before']:,} -> {report['params']['after']:,}")
    print(f"  {report['verdict']}")
    print(f"  written: {out} (report.json inside)")


def cmd_adapt(args, method: str = "c2i") -> int:
    from .api import adapt, check_out_dir, save
    from .models import load_model
    from .search import check_grid

    _threads(args.threads)
    check_grid(args.rates or (), getattr(args, "clusters", None) or ())  # before any heavy work
    budget = _budget(getattr(args, "max_memory", None))
    out = check_out_dir(args.out, args.force)
    model, tok = load_model(args.model, max_memory=budget)
    kwargs = {"n_eval": args.eval_samples, "n_test": args.test_samples, "seed": args.seed,
              "layers": args.layers, "types": args.types, "rates": args.rates,
              "model_name": args.model}
    if method == "c2i":
        kwargs.update(n_calib=args.samples, top_k=args.top_k, clusters=args.clusters,
                      score=args.score, clustering=args.clustering, max_memory=budget)
    report = adapt(model, tok, args.task, method=method, **kwargs)
    save(model, tok, out, report, force=args.force)
    _summary(report, out)
    return 0


def cmd_demo(args) -> int:
    """The main job on the packaged default: adapt, export, run in ONNX Runtime."""
    from export.cli import main_demo

    return main_demo(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .models import DEFAULT_MODEL
    from .scan import DEFAULT_SCORE, SCORES
    from .search import DEFAULT_CLUSTERS, DEFAULT_TOP_K

    p = argparse.ArgumentParser(prog="edge-c2i", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model=True):
        if model:
            sp.add_argument("--model", default=DEFAULT_MODEL,
                            help="packaged name, HF folder, .gguf file, hub id or adapted folder")
        sp.add_argument("--task", default=DEFAULT_TASK, help="bigbench:NAME or jsonl:PATH")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--threads", type=int, default=None, help="torch threads")

    e = sub.add_parser("eval", help="accuracy and loss of a model on a task")
    common(e)
    e.add_argument("--onnx", default=None, help="evaluate an exported ONNX folder instead")
    e.add_argument("--split", choices=["test", "eval", "calib", "all"], default="test")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--generation", action="store_true", help="open tasks: also gold-in-generation")
    e.add_argument("--int8", action="store_true", help="with --onnx: the int8 model")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("scan", help="rank the matrices by their singular-value gradients")
    common(s)
    s.add_argument("--samples", type=int, default=100)
    s.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE)
    s.add_argument("--out", default="scan.json")
    s.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="peak memory budget, e.g. 2GB: batches and passes are planned to fit")
    s.set_defaults(func=cmd_scan)

    for name, method in (("adapt", "c2i"), ("laser", "laser")):
        a = sub.add_parser(name, help="C2I: scan + quick search" if method == "c2i"
                           else "LASER's exhaustive search (the baseline)")
        common(a)
        a.add_argument("--out", required=True)
        a.add_argument("--eval-samples", type=int, default=100)
        a.add_argument("--test-samples", type=int, default=1000)
        a.add_argument("--rates", type=_floats, default=None)
        a.add_argument("--layers", type=_ints, default=None)
        a.add_argument("--types", type=_words, default=None)
        a.add_argument("--force", action="store_true")
        if method == "c2i":
            a.add_argument("--samples", type=int, default=100, help="gradient (calibration) sample")
            a.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
            a.add_argument("--clusters", type=_ints, default=list(DEFAULT_CLUSTERS))
            a.add_argument("--clustering", choices=["kmeans", "blocks"], default="kmeans")
            a.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE)
            a.add_argument("--max-memory", default=None, metavar="SIZE",
                           help="peak memory budget of the scan, e.g. 2GB")
        a.set_defaults(func=lambda args, m=method: cmd_adapt(args, m))

    d = sub.add_parser("demo", help="adapt the packaged model, export it, run it in ONNX Runtime")
    common(d)
    d.add_argument("--out", default="out/demo")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_demo)

    try:
        from export.cli import register
    except ImportError:  # export/ not installed
        pass
    else:
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"edge-c2i: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-c2i: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
