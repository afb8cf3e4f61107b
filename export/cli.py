"""The export side of the edge-c2i command line: ``export``, ``generate``, ``eval --onnx``, ``demo``.

``register(subparsers)`` adds ``export`` and ``generate`` to edge_c2i.cli's parser; each
handler takes the parsed arguments and returns an exit code.  ``generate`` and
``eval --onnx`` run on ONNX Runtime without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_c2i.errors import UserError

SPLITS = ("test", "eval", "calib", "all")


def register(subparsers) -> None:
    """Add the ``export`` and ``generate`` subcommands."""
    from .postprocess import INT8_SCHEMES

    e = subparsers.add_parser("export", help="export a model or adapted folder to ONNX Runtime")
    e.add_argument("source", help="packaged name, HF folder, .gguf file or adapted folder")
    e.add_argument("--out", required=True, help="the folder to write (model.onnx, manifest, ...)")
    e.add_argument("--int8", action="store_true", help="also write model_int8.onnx")
    e.add_argument("--int8-scheme", choices=INT8_SCHEMES, default=INT8_SCHEMES[0],
                   help="blockwise: weight-only int8 (MatMulNBits); dynamic: quantize_dynamic")
    e.add_argument("--ort", action="store_true",
                   help="also write .ort files and required_operators.config (ORT Mobile)")
    e.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's)")
    e.add_argument("--no-check", action="store_true", help="skip the PyTorch parity check")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=export_command)

    g = subparsers.add_parser("generate", help="greedy generation with an exported model")
    g.add_argument("--onnx", required=True, help="a folder written by edge-c2i export")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--int8", action="store_true", help="run model_int8 instead of model")
    g.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    g.set_defaults(func=generate_command)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def export_command(args) -> int:
    from .onnx_export import export_model

    m = export_model(args.source, Path(args.out), int8=args.int8, ort=args.ort, force=args.force,
                     opset=args.opset, check=not args.no_check, int8_scheme=args.int8_scheme)
    print(f"exported {args.source} -> {args.out} (opset {m['opset']}, "
          f"{m['num_layers']} layers, KV cache)")
    for name, size in m["files"].items():
        if name.endswith((".onnx", ".ort", "_data")):
            print(f"  {name:<22} {_size(size):>10}")
    for name, fig in (m["parity"] or {}).items():
        if isinstance(fig, dict):
            print(f"  parity {name:<15} max|dlogit| {fig['max_abs_logit_diff']:.2e}  "
                  f"corr {fig['logit_corr_mean']:.5f}  top-1 {fig['top1_agreement']:.3f}  "
                  f"greedy same {fig['greedy_same']}/{fig['prompts']}")
    if m["parity"] is None:
        print("  parity not checked (--no-check)")
    return 0


def _threads(n: int | None) -> int:
    import os

    if n is not None and n < 1:
        raise UserError("--threads must be at least 1")
    return n or os.cpu_count() or 1


def generate_command(args) -> int:
    from .runtime import OnnxLM, model_file

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    lm = OnnxLM(args.onnx, _threads(args.threads), model_file(args.onnx, args.int8))
    print(lm.generate(args.prompt, args.max_new_tokens))
    return 0


def eval_onnx_command(args) -> int:
    """``edge-c2i eval --onnx DIR``: task accuracy and loss of an exported model."""
    from edge_c2i.tasks import load_task, split

    from .runtime import evaluate_onnx, model_file

    splits = split(load_task(args.task), seed=args.seed)
    if args.split not in SPLITS:
        raise UserError(f"unknown split {args.split!r}: use one of {', '.join(SPLITS)}")
    examples = {"test": splits.test, "eval": splits.eval, "calib": splits.calib,
                "all": splits.calib + splits.eval + splits.test}[args.split]
    if args.limit is not None:
        if args.limit < 1:
            raise UserError("--limit must be at least 1")
        examples = examples[: args.limit]
    name = model_file(args.onnx, getattr(args, "int8", False))
    res = evaluate_onnx(args.onnx, examples, name, _threads(getattr(args, "threads", None)))
    res.update({"onnx": str(args.onnx), "model_file": name, "task": args.task,
                "split": args.split})
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.onnx}/{name} on {args.task} ({args.split}, n={res['n']}): "
              f"accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f}")
    return 0


def main_demo(args) -> int:
    """``edge-c2i demo``: adapt the model to the task, export it (int8, .ort), run it in ORT."""
    from edge_c2i.api import adapt, check_out_dir, save
    from edge_c2i.models import load_model
    from edge_c2i.tasks import load_task, split

    from .onnx_export import export_model
    from .runtime import OnnxLM, evaluate_onnx, model_file

    out = check_out_dir(args.out, args.force)
    model, tok = load_model(args.model)
    report = adapt(model, tok, args.task, seed=args.seed, model_name=args.model)
    adapted = save(model, tok, out / "adapted", report, force=args.force)
    del model
    onnx_dir = out / "onnx"
    export_model(str(adapted), onnx_dir, int8=True, ort=True, force=args.force)
    test = split(load_task(args.task), seed=args.seed).test[:100]
    threads = _threads(args.threads)
    print(f"\n{report['method']} chose {report['chosen']} -> {adapted}; exported to {onnx_dir}")
    print(f"  verdict: {report['verdict']}")
    control = report["calibrated_base"]
    control = f"{control['accuracy']:.3f}" if control else "n/a (open answers)"
    print(f"  PyTorch test accuracy {report['base']['accuracy']:.3f} -> "
          f"{report['adapted']['accuracy']:.3f} (n={report['adapted']['n']}; calibration "
          f"control {control})")
    summary = {"adapted": str(adapted), "onnx": str(onnx_dir), "report": report["verdict"],
               "chosen": report["chosen"], "torch": {"base": report["base"],
                                                     "adapted": report["adapted"]},
               "onnx_runtime": {}, "generations": []}
    for int8 in (False, True):
        name = model_file(onnx_dir, int8)
        res = evaluate_onnx(onnx_dir, test, name, threads)
        summary["onnx_runtime"][name] = res
        print(f"  ONNX Runtime {name:<16} accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f} "
              f"(first {res['n']} test examples)")
    lm = OnnxLM(onnx_dir, threads, model_file(onnx_dir, True))
    for ex in test[:3]:
        answer = lm.generate(ex.prompt.rstrip(" "), 8)  # a trailing space token derails greedy decoding
        summary["generations"].append({"prompt": ex.prompt, "gold": ex.answer, "int8": answer})
        print(f"  {ex.prompt.strip()!r} -> {answer!r} (gold {ex.answer!r})")
    path = out / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    print(f"  summary: {path}")
    return 0
