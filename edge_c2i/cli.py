"""The edge-c2i command line: argument parsing only; the work is in the library functions.

Conventions, as optimum-cli and lm-eval have them: every option has a help string
that shows its default; arguments are checked before any model is loaded; results go
to stdout (``--json`` for machine-readable ones), progress and notes to stderr; a
bad input ends with one line ``edge-c2i: error: ...`` and exit code 2.  Nothing here
imports torch: each command imports its module when it runs, so ``generate`` and
``eval --onnx`` work where only ONNX Runtime is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import errors
from .config import (
    BASES,
    CLUSTERINGS,
    DEFAULT_CLUSTERS,
    DEFAULT_LOSS_TOLERANCE,
    DEFAULT_MODEL,
    DEFAULT_PRICE,
    DEFAULT_SCORE,
    DEFAULT_SCREEN,
    DEFAULT_TASK,
    DEFAULT_TOP_K,
    DEMO_FALLBACK_TASK,
    FILE_PRECISIONS,
    KEEP_RULES,
    PRICES,
    SCORES,
)
from .errors import EdgeC2IError, note
from .tasks import bundled_tasks

# --------------------------------------------------------------------------- argument types


def _list(text: str, convert, example: str) -> list:
    parts = text.replace(",", " ").split()
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a list like {example}, got nothing")
    try:
        return [convert(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like {example}, not {text!r}") from None


def _floats(text: str) -> list[float]:
    return _list(text, float, "0.5,0.2")


def _screen(text: str) -> float | None:
    """A share in (0, 1), or "none"."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share like 0.25 or none, not {text!r}") \
            from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1) or none, not {text}")
    return value


def _share(text: str) -> float:
    """A share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share like 0.8, not {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], not {text}")
    return value


def _positive(text: str) -> float:
    """A positive finite number (a size in MB)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 120, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive size, not {text}")
    return value


def _ints(text: str) -> list[int]:
    return _list(text, int, "1,4")


def _words(text: str) -> list[str]:
    return _list(text, str, "gate,out")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``edge-c2i: error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"edge-c2i: error: {self.prog.removeprefix('edge-c2i ')}: {message} "
                     f"(see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- helpers


def _threads(n: int | None) -> None:
    """``--threads N``: N; no flag: the cores other processes leave free, followed
    between batches (threads.py)."""
    from . import threads

    if n:
        import torch

        threads.disable()
        torch.set_num_threads(n)
        return
    got = threads.enable()
    if got is not None and got < threads.cores():
        note(f"threads: {got} of {threads.cores()}: other processes keep the rest busy "
             "(followed as the run goes; --threads N fixes the count)")


def _budget(text: str | None) -> int | None:
    from .svd import parse_size

    return None if text is None else parse_size(text)


def _task(args, max_memory: int | None = None):
    """The task, loaded after the model's checks (models.check_model): a typo in --model is
    refused before a BIG-bench task downloads."""
    from .models import check_model
    from .tasks import load_task

    check_model(args.model, max_memory)
    return load_task(args.task, getattr(args, "target_delimiter", None))


def describe_choice(chosen: dict | None) -> str:
    """The chosen reduction in words, for people (the report keeps the dict)."""
    if chosen is None:
        return "nothing (the model is left as it was)"
    subspaces = f"{chosen['clusters']} subspaces ({chosen['clustering']})" \
        if chosen["clusters"] > 1 else "1 subspace"
    return (f"layer {chosen['layer']} {chosen['type']} at rate {chosen['rate']} "
            f"(rank {sum(chosen['ranks'])}, {subspaces})")


# --------------------------------------------------------------------------- commands


def cmd_eval(args) -> int:
    if args.onnx:
        from .export.cli import eval_onnx_command

        if args.model != DEFAULT_MODEL:  # the export is the model: one or the other
            raise EdgeC2IError(f"--onnx {args.onnx} is the model to score; drop --model "
                               f"{args.model} (or --onnx, to score the PyTorch model)")

        return eval_onnx_command(args)
    if args.int8 or args.int4:
        raise EdgeC2IError("--int8 and --int4 choose an exported model file: use them with --onnx")
    from .evaluate import evaluate
    from .models import load_model
    from .tasks import examples_for

    task = _task(args)
    examples = examples_for(task, args.split, **_split_args(args))
    if args.limit is not None:
        examples = examples[: args.limit]
    _threads(args.threads)
    model, tok = load_model(args.model)
    res = evaluate(model, tok, examples, generation=args.generation)
    res.update({"model": args.model, "task": args.task, "split": args.split, **task.notes})
    if args.json:
        print(json.dumps(res))
    else:
        extra = f"  generation_acc {res['generation_acc']:.3f}" if "generation_acc" in res else ""
        print(f"{args.model} on {args.task} ({args.split}, n={res['n']}): "
              f"accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f}{extra}")
    return 0


def _split_args(args) -> dict:
    """How ``eval`` splits the task: as the run that adapted (or compressed) the folder did,
    on its task (tasks.split_args_for)."""
    from .adapted import is_adapted, read_manifest
    from .tasks import split_args_for

    folder = Path(args.model).expanduser()
    manifest = read_manifest(folder) if folder.is_dir() and is_adapted(folder) else {}
    return split_args_for(manifest, args.task, args.seed, args.split, str(folder))


SCAN_KEYS = ("matrices", "score", "n_grad_samples")  # what marks a scan result edge-c2i wrote


def _not_adapted(args, command: str) -> None:
    """scan, adapt, laser and compress start from a base model: an adapted folder's factors
    have no dense weight to take the gradient or the SVD of, and its record would lose them."""
    from .adapted import is_adapted, read_manifest

    folder = Path(args.model).expanduser()
    if folder.is_dir() and is_adapted(folder):
        base = read_manifest(folder).get("base_model") or "its base model"
        raise EdgeC2IError(f"{args.model} is an adapted folder; {command} starts from a base "
                           f"model: run it on {base}")


def cmd_scan(args) -> int:
    from .io import check_output, json_with_keys, write_output_file

    _not_adapted(args, "scan")
    ours = json_with_keys(SCAN_KEYS)
    check_output(args.out, args.force, ours, "a scan result", is_dir=False)
    budget = _budget(args.max_memory)
    task = _task(args, budget)

    from .models import load_model
    from .scan import rank_targets, singular_value_gradients
    from .targets import find_targets
    from .tasks import split

    _threads(args.threads)
    splits = split(task, args.samples, 1, None, args.seed)
    model, tok = load_model(args.model, max_memory=budget)
    scans, timings = singular_value_gradients(model, tok, splits.calib, find_targets(model),
                                              progress=not args.quiet, max_memory=budget)
    ranked = rank_targets(scans, args.score)
    rows = [{"layer": sc.target.layer, "type": sc.target.type, "score": sc.benefit(args.score),
             "best_rate": sc.best_rate(args.score),
             "scores": {k: {str(r): v for r, v in t.items()} for k, t in sc.scores.items()}}
            for sc in ranked]
    result = {"model": args.model, "task": args.task, "score": args.score,
              "n_grad_samples": len(splits.calib), **task.notes, "timings": timings,
              "matrices": rows}
    out = write_output_file(args.out, json.dumps(result, indent=2), args.force, ours,
                            "a scan result")
    print(f"{'rank':>4} {'layer':>5} {'type':>5} {args.score:>12} {'best rate':>9}")
    for i, r in enumerate(rows[:10], 1):
        print(f"{i:>4} {r['layer']:>5} {r['type']:>5} {r['score']:>12.4g} {r['best_rate']:>9}")
    print(f"scan: {len(rows)} matrices in {timings['svd_s'] + timings['grad_s']:.1f}s -> {out}")
    if budget is not None:
        print(f"  within --max-memory {args.max_memory}: {timings['plan']}")
    return 0


def _summary(report: dict, out: Path) -> None:
    b, a, c = report["base"], report["adapted"], report["calibrated_base"]
    print(f"{report['method']} on {report['task']}: {report['evaluations']} configurations "
          f"in {report['timings']['total_s']:.1f}s")
    print(f"  chosen: {describe_choice(report['chosen'])}")
    print(f"  test accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, loss {b['loss']:.4f} "
          f"-> {a['loss']:.4f}" + (f" (calibrated base {c['accuracy']:.3f}, {c['control']})"
                                   if c else ""))
    print(f"  params {report['params']['before']:,} -> {report['params']['after']:,}")
    print(f"  {report['verdict']}")
    print(f"  written: {out} (report.json inside)")


def cmd_adapt(args, method: str = "c2i") -> int:
    from .adapted import output

    _not_adapted(args, "laser" if method == "laser" else "adapt")
    dest = output(args.out, args.force)  # refused now, not after the search
    budget = _budget(getattr(args, "max_memory", None))
    from .config import SearchConfig

    knobs = {"method": method, "n_eval": args.eval_samples, "n_test": args.test_samples,
             "seed": args.seed, "layers": args.layers, "types": args.types, "rates": args.rates}
    if method == "c2i":
        knobs.update(n_calib=args.samples, top_k=args.top_k, clusters=args.clusters,
                     score=args.score, clustering=args.clustering, max_memory=budget,
                     screen=args.screen)
    config = SearchConfig(**knobs)  # checked now, before the model loads
    task = _task(args, budget)
    from .api import adapt, save
    from .models import load_model

    dest.claim()  # a second run on the same --out is refused from here on
    try:
        _threads(args.threads)
        model, tok = load_model(args.model, max_memory=budget)
        report = adapt(model, tok, task, config, model_name=args.model,
                       progress=not args.quiet)
        out = save(model, tok, dest, report)
    finally:
        dest.abort()  # nothing left behind if the run failed; no-op after the save
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _summary(report.to_dict(), out)
    return 0


def cmd_compress(args) -> int:
    """compress.py: whitened truncation of every matrix, priced by the calibration pass."""
    from .adapted import output

    _not_adapted(args, "compress")
    dest = output(args.out, args.force)  # refused now, not after the work
    from .config import CompressConfig

    config = CompressConfig(size=args.size, params=args.params, file_mb=args.file_mb,
                            file_precision=args.file_precision, price=args.price,
                            basis=args.basis, allocation=args.allocation,
                            loss_tolerance=args.loss_tolerance, keep_rule=args.keep_rule,
                            n_calib=args.samples,
                            n_eval=args.eval_samples, n_test=args.test_samples, seed=args.seed,
                            layers=args.layers, types=args.types,
                            max_memory=_budget(args.max_memory))
    task = _task(args, config.max_memory)
    from .api import save
    from .compress import compress, per_layer_table
    from .models import load_model

    dest.claim()
    try:
        _threads(args.threads)
        model, tok = load_model(args.model, max_memory=config.max_memory)
        report = compress(model, tok, task, config, model_name=args.model,
                          progress=not args.quiet).to_dict()
        out = save(model, tok, dest, report)
    finally:
        dest.abort()
    if args.json:
        print(json.dumps(report))
        return 0
    b, c, bud = report["base"], report["compressed"], report["budget"]
    print(f"compress ({report['mode']}) on {report['task']}: linear parameters "
          f"{bud['linear_params_before']:,} -> {bud['linear_params_after']:,} "
          f"({bud['size']:.3f}) in {report['timings']['total_s']:.1f}s")
    print(f"  test accuracy {b['accuracy']:.3f} -> {c['accuracy']:.3f}, loss {b['loss']:.4f} -> "
          f"{c['loss']:.4f}")
    files = bud.get("file_mb_estimate") or {}
    print("  estimated export: " + ", ".join(f"{p} {mb:.1f} MB" for p, mb in files.items()))
    for line in per_layer_table(report):
        print("  " + line)
    print(f"  written: {out} (report.json inside)")
    return 0


def cmd_apply(args) -> int:
    """Rebuild an adapted folder from its base model and a recipe (recipe.py)."""
    from .adapted import output
    from .recipe import read_recipe

    dest = output(args.out, args.force)
    recipe = read_recipe(args.recipe)
    base = args.model or recipe.get("base_model")
    if not base:
        raise EdgeC2IError("the recipe does not name its base model: pass --model")
    from .adapted import save_adapted
    from .models import load_model, resolve
    from .recipe import apply_recipe, check_base, fingerprint

    dest.claim()
    try:
        where = resolve(base)
        check_base(recipe, where)
        _threads(args.threads)
        model, tok = load_model(base)
        reductions = apply_recipe(model, recipe)
        info = {"base_model": base, "base_sha256": fingerprint(where),
                "task": recipe.get("task"), "method": "apply", "recipe": str(args.recipe)}
        out = save_adapted(model, tok, dest, reductions, info)
    finally:
        dest.abort()
    print(f"applied {len(reductions)} reduction(s) of {args.recipe} to {base} -> {out}")
    return 0


def cmd_demo(args) -> int:
    """The main job on the packaged default: adapt, export, run in ONNX Runtime."""
    from .export.cli import main_demo

    return main_demo(args)


# --------------------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-c2i")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from .export.cli import quantized  # torch-free, like the rest of export/cli.py

    p = Parser(prog="edge-c2i", description=__doc__.split("\n")[0], formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"edge-c2i {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=Parser)

    def command(name: str, help: str) -> Parser:
        sp = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
        sp.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes on stderr (errors still show)")
        return sp

    task_help = ("bigbench:NAME (nested: bigbench:fact_checker/fever; $EDGE_C2I_BIGBENCH: a "
                 "BIG-bench sdist or checkout where PyPI does not serve it), bundled:NAME "
                 f"({', '.join(bundled_tasks())}: no download) or jsonl:PATH")

    def common(sp, model=True, threads=True, task=DEFAULT_TASK):
        if model:
            sp.add_argument("--model", default=DEFAULT_MODEL,
                            help="packaged name (smollm2-135m, gemma3-270m), Hugging Face "
                                 "folder, .gguf file, hub id or adapted folder")
        sp.add_argument("--task", default=task,
                        help=task_help if task else
                        f"{task_help} (default: {DEFAULT_TASK}, or {DEMO_FALLBACK_TASK} where "
                        "BIG-bench cannot be downloaded)")
        sp.add_argument("--target-delimiter", default=None, metavar="TEXT",
                        help="JSONL tasks: put between a prompt and its answer when neither "
                             "has whitespace there (default: one space, as lm-eval; a line's "
                             "\"target_delimiter\" key overrides it)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the sample splits")
        if threads:
            sp.add_argument("--threads", type=_at_least(1), default=None,
                            help="torch threads (default: the cores that other processes "
                                 "leave free, measured at the start and again between "
                                 "batches, at least 1)")

    e = command("eval", "accuracy and loss of a model on a task")
    common(e)
    e.add_argument("--onnx", default=None, metavar="DIR",
                   help="evaluate a folder written by `edge-c2i export` instead (no torch)")
    e.add_argument("--split", choices=["test", "eval", "calib", "all"], default="test",
                   help="which examples (a task too small to split is evaluated whole)")
    e.add_argument("--limit", type=_at_least(1), default=None,
                   help="only the first N examples of the split")
    e.add_argument("--generation", action="store_true",
                   help="open tasks: also the gold answer in an 8-token greedy continuation")
    quantized(e)  # --int8 / --int4: with --onnx, the quantized model
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(func=cmd_eval)

    s = command("scan", "rank the matrices by their singular-value gradients")
    common(s)
    s.add_argument("--samples", type=_at_least(1), default=100,
                   help="examples in the gradient (calibration) sample")
    s.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE,
                   help="how a matrix is scored from its gradients")
    s.add_argument("--out", default="scan.json", help="the JSON file to write")
    s.add_argument("--force", action="store_true",
                   help="replace --out if it is a scan result edge-c2i wrote (never "
                        "another file)")
    s.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="peak memory budget, e.g. 2GB: batches and passes are planned to fit "
                        "(default: the model's weights + 1.5 GB, or less if the machine has "
                        "less)")
    s.set_defaults(func=cmd_scan)

    for name, method in (("adapt", "c2i"), ("laser", "laser")):
        a = command(name, "C2I: one gradient scan, then a quick search" if method == "c2i"
                    else "LASER's exhaustive search (the baseline)")
        common(a)
        a.add_argument("--out", required=True, help="the adapted model folder to write")
        a.add_argument("--force", action="store_true",
                       help="replace --out if it is an adapted folder edge-c2i wrote (never "
                            "another folder)")
        a.add_argument("--eval-samples", type=_at_least(1), default=100,
                       help="examples the candidates are compared on")
        a.add_argument("--test-samples", type=_at_least(1), default=1000,
                       help="at most this many held-out examples score the result")
        a.add_argument("--rates", type=_floats, default=None,
                       help="fractions of rank kept to try, e.g. 0.5,0.05 (default: "
                            + ("0.5,0.2,0.05,0.01" if method == "c2i" else "LASER's 9 rates")
                            + ")")
        a.add_argument("--layers", type=_ints, default=None,
                       help="only these layers, e.g. 20,25,29 (default: all)")
        a.add_argument("--types", type=_words, default=None,
                       help="only these matrix types, e.g. gate,in,out (default: all)")
        a.add_argument("--json", action="store_true",
                       help="print the report as one JSON object on stdout")
        if method == "c2i":
            a.add_argument("--samples", type=_at_least(1), default=100,
                           help="examples in the gradient (calibration) sample")
            a.add_argument("--top-k", type=_at_least(1), default=DEFAULT_TOP_K,
                           help="matrices tried, best-scored first")
            a.add_argument("--clusters", type=_ints, default=list(DEFAULT_CLUSTERS),
                           help="subspace counts to try, e.g. 1,2 (row-clustered factors)")
            a.add_argument("--clustering", choices=CLUSTERINGS, default=CLUSTERINGS[0],
                           help="how rows are grouped into subspaces")
            a.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE,
                           help="how a matrix is scored from its gradients")
            a.add_argument("--screen", type=_screen, default=DEFAULT_SCREEN,
                           help="successive halving: every configuration on this share of "
                                "the evaluation sample, the best same share of them on all "
                                "of it (default %(default)s; none: all on all of it)")
            a.add_argument("--max-memory", default=None, metavar="SIZE",
                           help="peak memory budget of the scan, e.g. 2GB (default: the "
                                "model's weights + 1.5 GB, or less if the machine has less)")
        a.set_defaults(func=lambda args, m=method: cmd_adapt(args, m))

    c = command("compress", "the smallest model that keeps the task, or the best one within "
                "a budget (whitened low-rank factors priced by one calibration pass)")
    common(c)
    c.add_argument("--out", required=True, help="the compressed model folder to write")
    c.add_argument("--force", action="store_true",
                   help="replace --out if it is a model folder edge-c2i wrote (never another "
                        "folder)")
    c.add_argument("--size", type=_share, default=None,
                   help="budget mode: keep this share of the linear layers' parameters, e.g. "
                        "0.8 (default: keep-accuracy mode, the smallest size that keeps the "
                        "evaluation accuracy)")
    c.add_argument("--params", type=_at_least(1), default=None,
                   help="budget mode: at most this many linear-layer parameters")
    c.add_argument("--file-mb", type=_positive, default=None,
                   help="budget mode: the exported file (--file-precision) at most this many "
                        "MB, estimated from the bytes per parameter of that file")
    c.add_argument("--file-precision", choices=FILE_PRECISIONS, default="fp32",
                   help="the file --file-mb budgets: fp32 (model.onnx), int8 or int4 "
                        "(default: fp32)")
    c.add_argument("--price", choices=PRICES, default=DEFAULT_PRICE,
                   help="how each singular component is priced (compress.py)")
    c.add_argument("--basis", choices=BASES, default="whitened",
                   help="truncate in the calibration inputs' basis, or W's own SVD")
    c.add_argument("--allocation", choices=("global", "uniform"), default="global",
                   help="ranks by price over all matrices, or one rank share for all")
    c.add_argument("--loss-tolerance", type=float, default=DEFAULT_LOSS_TOLERANCE,
                   help="keep-accuracy mode: the evaluation loss may rise this much")
    c.add_argument("--keep-rule", choices=KEEP_RULES, default=KEEP_RULES[0],
                   help="keep-accuracy mode: a size passes when not significantly worse on "
                        "the evaluation sample (paired sign test, the default) or with no fewer "
                        "examples right (accuracy)")
    c.add_argument("--samples", type=_at_least(1), default=100,
                   help="calibration examples (inputs and gradients)")
    c.add_argument("--eval-samples", type=_at_least(1), default=100,
                   help="keep-accuracy mode: examples each size is checked on")
    c.add_argument("--test-samples", type=_at_least(1), default=1000,
                   help="at most this many held-out examples score the result")
    c.add_argument("--layers", type=_ints, default=None,
                   help="only these layers (default: all)")
    c.add_argument("--types", type=_words, default=None,
                   help="only these matrix types, e.g. gate,in,out (default: all)")
    c.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="peak memory budget, e.g. 2GB: the calibration batch shrinks to fit, "
                        "or compress says what it needs before any heavy work (default: the "
                        "model's weights + 1.5 GB where that fits)")
    c.add_argument("--json", action="store_true",
                   help="print the report as one JSON object on stdout")
    c.set_defaults(func=cmd_compress)

    r = command("apply", "rebuild an adapted folder from its base model and a recipe")
    r.add_argument("--recipe", required=True, metavar="PATH",
                   help="an adapted folder, its edge_c2i.json, or a report.json")
    r.add_argument("--model", default=None,
                   help="the base model (default: the one the recipe names)")
    r.add_argument("--out", required=True, help="the adapted model folder to write")
    r.add_argument("--force", action="store_true",
                   help="replace --out if it is an adapted folder edge-c2i wrote (never "
                        "another folder)")
    r.add_argument("--threads", type=_at_least(1), default=None, help="torch threads")
    r.set_defaults(func=cmd_apply)

    d = command("demo", "adapt the packaged model, export it, run it in ONNX Runtime")
    common(d, task=None)
    d.add_argument("--out", default="out/demo", help="the folder to write")
    d.add_argument("--force", action="store_true",
                   help="replace --out if it is a demo folder edge-c2i wrote")
    d.set_defaults(func=cmd_demo)

    from .export.cli import register

    register(sub, command)
    return p


# The library names its parameters; a message that starts with one gets the flag that sets it.
PARAMETER_FLAGS = {"top_k": "--top-k", "n_calib": "--samples", "n_eval": "--eval-samples",
                   "n_test": "--test-samples", "max_memory": "--max-memory",
                   "clusters": "--clusters", "rate": "--rates", "rates": "--rates",
                   "layers": "--layers", "types": "--types", "score": "--score",
                   "clustering": "--clustering", "target_delimiter": "--target-delimiter",
                   "screen": "--screen", "size": "--size", "params": "--params",
                   "file_mb": "--file-mb",
                   "price": "--price", "loss_tolerance": "--loss-tolerance"}


def with_flag(message: str) -> str:
    """``top_k must be at least 1`` -> ``--top-k: top_k must be at least 1``."""
    flag = PARAMETER_FLAGS.get(message.split(" ", 1)[0])
    return f"{flag}: {message}" if flag else message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep = os.environ.get("EDGE_C2I_OMP_WAIT_POLICY") == "keep"
    if not keep and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
        # Before torch starts OpenMP: a waiting thread spins briefly, then sleeps, so a
        # busy machine does not slow the scan down several times over; idle it costs
        # little (bench/bench_contention.py).  Values the user set are kept.
        os.environ["GOMP_SPINCOUNT"] = "10000"
    # transformers' own warnings (a tokenizer's "legacy behaviour", "Token indices sequence
    # length is longer than ...", which edge-c2i refuses in its own line) only on request
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if getattr(args, "quiet", False):
        errors.QUIET = True
        os.environ["TQDM_DISABLE"] = "1"
    elif not sys.stderr.isatty():  # a log file: a few plain lines, not hundreds of frames
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    try:
        return args.func(args)
    except EdgeC2IError as e:
        print(f"edge-c2i: error: {with_flag(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note("interrupted; nothing was written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
