"""The export side of the edge-c2i command line: ``export``, ``generate``, ``eval --onnx``, ``demo``.

``register(subparsers)`` adds ``export`` and ``generate`` to edge_c2i.cli's parser; each
handler takes the parsed arguments and returns an exit code.  ``generate`` and
``eval --onnx`` run on ONNX Runtime without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_c2i.errors import EdgeC2IError

from .files import DATA_SUFFIX

SPLITS = ("test", "eval", "calib", "all")


def register(subparsers, command=None) -> None:
    """Add the ``export`` and ``generate`` subcommands (``command(name, help)`` makes one)."""
    from edge_c2i.config import INT8_SCHEMES

    from .int4 import FINER, HEAD_BLOCK, HEAD_BLOCKS, HEAD_REFINE, INT8_BLOCKS, REMAINDERS

    command = command or (lambda name, help: subparsers.add_parser(name, help=help))

    e = command("export", "export a model or adapted folder to ONNX Runtime")
    e.add_argument("source", help="packaged name, HF folder, .gguf file or adapted folder")
    e.add_argument("--out", required=True, help="the folder to write (model.onnx, manifest, ...)")
    e.add_argument("--int8", action="store_true", help="also write model_int8.onnx")
    e.add_argument("--int4", action="store_true",
                   help="also write model_int4.onnx: 4-bit weights in blocks of 32 (exact where "
                        "the model was 4-bit, 8-bit where it was finer: --int4-finer), LM head "
                        "and embedding sharing one 8-bit table")
    e.add_argument("--int4-accuracy-level", type=int, choices=(1, 4), default=4,
                   help="MatMulNBits compute for --int4: 4 (default) rounds activations to int8 "
                        "per block, ONNX Runtime's fast path; 1 keeps them fp32 (slower)")
    e.add_argument("--int4-remainder", choices=REMAINDERS, default=REMAINDERS[0],
                   help="how --int4 keeps a 4-bit model's grid: folded (default) adds each "
                        "block's offset inside the 4-bit product (near exact, smaller, faster); "
                        "product adds it in fp32 by a second product (exact)")
    e.add_argument("--int4-finer", choices=FINER, default=FINER[0],
                   help="what --int4 does with matrices the model held on a finer grid than "
                        "4 bits (GGUF Q5_0, Q6_K, Q8_0: most of a Q4_K_M Gemma-3's): int8 "
                        "(default) keeps them as 8-bit codes, exactly or nearly; int4 rounds "
                        "them to 4 bits (a smaller file that may lose the task)")
    e.add_argument("--int8-block", type=int, choices=INT8_BLOCKS, default=INT8_BLOCKS[0],
                   help="block size of --int8's 8-bit matrices: 32 (default) keeps the most "
                        "agreement with fp32; 64 or 128 decode faster with less (ONNX "
                        "Runtime's int8 kernel rounds activations per block)")
    e.add_argument("--head-block", type=int, choices=HEAD_BLOCKS, default=HEAD_BLOCK,
                   help=f"block size of the 8-bit table a tied LM head and the embedding "
                        f"share in --int8 and --int4 (default {HEAD_BLOCK}: faster than 32 for "
                        f"large vocabularies; 32 keeps a GGUF Q8_0 table exactly)")
    e.add_argument("--head-refine", type=int, default=HEAD_REFINE, metavar="N",
                   help=f"in --int8 and --int4, rank the vocabulary with a 4-bit product of "
                        f"that table's high halves and compute the N best logits exactly "
                        f"(same file size, less to read per token; the other logits stay "
                        f"4-bit); 0 keeps one 8-bit product (default {HEAD_REFINE})")
    e.add_argument("--int8-scheme", choices=INT8_SCHEMES, default=INT8_SCHEMES[0],
                   help="blockwise: weight-only int8 (MatMulNBits); dynamic: quantize_dynamic")
    e.add_argument("--ort", action="store_true",
                   help="also write .ort files and required_operators.config (ORT Mobile)")
    e.add_argument("--graph", choices=("auto", "fused", "optimum"), default="auto",
                   help="fused: ONNX Runtime's fused attention and norms, built from the model "
                        "(Llama-style, Gemma-3); optimum: optimum's trace (any architecture it "
                        "knows); auto (default): fused where supported")
    e.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: 17 for the fused graph, optimum's otherwise)")
    e.add_argument("--no-check", action="store_true", help="skip the PyTorch parity check")
    e.add_argument("--force", action="store_true",
                   help="replace --out if it is an export folder edge-c2i wrote (never "
                        "another folder)")
    e.set_defaults(func=export_command)

    g = command("generate", "greedy generation with an exported model, streamed to stdout")
    g.description = ("Greedy continuation of --prompt, printed as the tokens come. It stops at "
                     "EOS, after --max-new-tokens or at the model's context length; Ctrl-C "
                     "keeps what was printed. Only the generated text goes to stdout.")
    g.add_argument("--onnx", required=True, help="a folder written by edge-c2i export")
    g.add_argument("--prompt", required=True,
                   help="the text to continue (empty: start from the model's BOS token)")
    g.add_argument("--max-new-tokens", type=int, default=32,
                   help="stop after this many new tokens")
    quantized(g)
    g.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads (default: all cores)")
    g.set_defaults(func=generate_command)


def quantized(parser) -> None:
    """--int8 / --int4: which exported model file to run (one of them, or neither: fp32)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--int8", action="store_true",
                       help="run model_int8 instead of model (export with --int8)")
    group.add_argument("--int4", action="store_true",
                       help="run model_int4 instead of model (export with --int4)")


def precision(args) -> str:
    """fp32, int8 or int4 from the parsed --int8 / --int4."""
    if getattr(args, "int4", False):
        return "int4"
    return "int8" if getattr(args, "int8", False) else "fp32"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def export_command(args) -> int:
    from .onnx_export import export_model

    m = export_model(args.source, Path(args.out), int8=args.int8, ort=args.ort, force=args.force,
                     opset=args.opset, check=not args.no_check, int8_scheme=args.int8_scheme,
                     int4=args.int4, graph=args.graph,
                     int4_accuracy_level=args.int4_accuracy_level,
                     int4_remainder=args.int4_remainder, int8_block=args.int8_block,
                     head_block=args.head_block, int4_finer=args.int4_finer,
                     head_refine=args.head_refine)
    print(f"exported {args.source} -> {args.out} ({m['graph']['kind']} graph, "
          f"{m['graph']['nodes']} nodes, opset {m['opset']}, {m['num_layers']} layers, KV cache)")
    if m.get("context_cut_from"):
        print(f"  context: {m['max_position_embeddings']} tokens, not {m['context_cut_from']}: "
              "past it the model's rotary switches to its long factors, which the graph does not")
    for name, size in m["files"].items():
        data = m["files"].get(name + DATA_SUFFIX)  # an .onnx file's weights (export/files.py)
        if name.endswith((".onnx", ".ort")):
            print(f"  {name:<22} {_size(size + (data or 0)):>10}"
                  + (f"  (weights in {name + DATA_SUFFIX})" if data is not None else ""))
    if m.get("int4"):
        q = m["int4"]
        print(f"  int4 matrices: {q['matmuls_exact_grid']} on a 4-bit grid (exact), "
              f"{q['matmuls_8bit']} on a finer grid kept in 8 bits"
              + (" (each as two 4-bit products)" if q.get("matmuls_8bit_as_two_4bit") else "")
              + f", {q['matmuls_fitted']} rounded to 4 bits")
    refined = next((m[p]["head_refine"] for p in ("int8", "int4")
                    if (m.get(p) or {}).get("head_refine")), 0)
    if refined:
        print(f"  LM head: ranked in 4 bits, its best {refined} logits exact (the others to 4 "
              f"bits: parity's correlation reads them)")
    elif args.head_refine and any(str((m.get(p) or {}).get("lm_head_and_embedding"))
                                  .startswith("not tied") for p in ("int8", "int4")):
        print(f"  LM head: --head-refine {args.head_refine} not applied: it refines a head that "
              "shares the embedding's table, and this model's does not (quantized as the other "
              "matrices)")
    for name, fig in (m["parity"] or {}).items():
        if isinstance(fig, dict):
            print(f"  parity {name:<15} max|dlogit| {fig['max_abs_logit_diff']:.2e}  "
                  f"corr {fig['logit_corr_mean']:.5f}  top-1 {fig['top1_agreement']:.3f}  "
                  f"greedy same {fig['greedy_same']}/{fig['prompts']}")
    if m["parity"] is None:
        print("  parity not checked (--no-check)")
    return 0


def _threads(n: int | None) -> int:
    """ONNX Runtime's intra-op threads: all cores unless --threads says otherwise."""
    import os

    if n is not None and n < 1:
        raise EdgeC2IError(f"--threads must be at least 1 (got {n})")
    return n or os.cpu_count() or 1


def generate_command(args) -> int:
    """``edge-c2i generate``: print a greedy continuation as its tokens come.

    Everything that can be refused is refused before the graph loads (seconds for a
    500 MB model).  stdout carries only the generated text; why generation stopped early
    goes to stderr.  Ctrl-C keeps what was printed, ends the line and exits 130.
    """
    import os
    import sys

    from edge_c2i.errors import note

    from .runtime import OnnxLM, check_prompt, model_file

    if args.max_new_tokens < 1:
        raise EdgeC2IError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    threads = _threads(args.threads)
    check_prompt(args.prompt)
    lm = OnnxLM(args.onnx, threads, model_file(args.onnx, precision(args)), load=False)
    ids = lm.prompt_ids(args.prompt)
    if not args.prompt:
        note("the prompt is empty: generating from the BOS token")
    lm.load()
    text, out, n, token = lm.text_stream(), sys.stdout, 0, None
    try:
        for n, token in enumerate(lm.tokens(ids, args.max_new_tokens), 1):
            out.write(text.push(token))
            out.flush()
        out.write(text.flush() + "\n")
        out.flush()
    except KeyboardInterrupt:  # what is printed stays; a half-decoded character is dropped
        out.write("\n")
        out.flush()
        note(f"interrupted after {n} new tokens")
        return 130
    except BrokenPipeError:  # the reader has gone (`| head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # no second error at exit
        return 141
    room = lm.room(ids)
    if room is not None and n == room < args.max_new_tokens and token not in lm.eos_ids:
        note(f"stopped at the model's context length ({lm.context} tokens)")
    return 0


def eval_onnx_command(args) -> int:
    """``edge-c2i eval --onnx DIR``: task accuracy and loss of an exported model.

    Arguments and the export's files are checked before the task is read and the graph
    loaded; stdout carries only the result (one JSON object with --json).
    """
    from edge_c2i.tasks import examples_for, load_task, split_args_for

    from .runtime import OnnxLM, model_file, score_examples

    if args.split not in SPLITS:
        raise EdgeC2IError(f"unknown split {args.split!r}: use one of {', '.join(SPLITS)}")
    if args.limit is not None and args.limit < 1:
        raise EdgeC2IError(f"--limit must be at least 1 (got {args.limit})")
    if getattr(args, "generation", False):
        raise EdgeC2IError("--generation needs the PyTorch model: use it without --onnx")
    threads = _threads(getattr(args, "threads", None))
    name = model_file(args.onnx, precision(args))
    lm = OnnxLM(args.onnx, threads, name, load=False)
    task = load_task(args.task, getattr(args, "target_delimiter", None))
    examples = examples_for(task, args.split,
                            **split_args_for(lm.spec, args.task, args.seed, args.split, args.onnx))
    if args.limit is not None:
        examples = examples[: args.limit]
    lm.load()
    res = score_examples(lm, examples)
    res.update({"onnx": str(args.onnx), "model_file": name, "task": args.task,
                "split": args.split, **task.notes})
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.onnx}/{name} on {args.task} ({args.split}, n={res['n']}): "
              f"accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f}")
    return 0


DEMO_SUMMARY = "summary.json"  # marks a demo folder edge-c2i wrote


def demo_task(spec: str | None, target_delimiter: str | None):
    """The demo's task: ``spec``, else DEFAULT_TASK, else (BIG-bench not downloadable) the
    bundled DEMO_FALLBACK_TASK, said on stderr."""
    from edge_c2i.config import DEFAULT_TASK, DEMO_FALLBACK_TASK
    from edge_c2i.errors import note
    from edge_c2i.tasks import BigBenchUnavailable, load_task

    if spec is not None:
        return load_task(spec, target_delimiter)
    try:
        return load_task(DEFAULT_TASK, target_delimiter)
    except BigBenchUnavailable as e:
        note(str(e))
        note(f"the demo runs on {DEMO_FALLBACK_TASK} instead")
        return load_task(DEMO_FALLBACK_TASK, target_delimiter)


def main_demo(args) -> int:
    """``edge-c2i demo``: adapt the model to the task, export it (int8, .ort), run it in ORT.

    The whole folder (adapted/, onnx/, summary.json) is written aside and swapped in at
    the end, so --out is always either the previous demo or the new one.
    """
    from edge_c2i.api import adapt, save
    from edge_c2i.cli import describe_choice
    from edge_c2i.io import OutputDir, json_with_keys
    from edge_c2i.models import load_model
    from edge_c2i.tasks import examples_for

    from .onnx_export import export_model
    from .runtime import OnnxLM, evaluate_onnx, model_file

    ours = json_with_keys(("adapted", "onnx", "onnx_runtime"))  # a summary.json of ours
    dest = OutputDir(args.out, args.force, lambda folder: ours(folder / DEMO_SUMMARY),
                     "a demo folder")
    threads = _threads(args.threads)
    task = demo_task(args.task, args.target_delimiter)
    out = dest.out
    with dest as tmp:
        model, tok = load_model(args.model)
        report = adapt(model, tok, task, seed=args.seed, model_name=args.model,
                       progress=not args.quiet)
        adapted = save(model, tok, tmp / "adapted", report)
        del model
        export_model(str(adapted), tmp / "onnx", int8=True, ort=True)
        test = examples_for(task, "test", args.seed)[:100]
        summary = {"adapted": str(out / "adapted"), "onnx": str(out / "onnx"),
                   "report": report["verdict"], "chosen": report["chosen"],
                   "torch": {"base": report["base"], "adapted": report["adapted"]},
                   "onnx_runtime": {}, "generations": []}
        for kind in ("fp32", "int8"):
            name = model_file(tmp / "onnx", kind)
            summary["onnx_runtime"][name] = evaluate_onnx(tmp / "onnx", test, name, threads)
        lm = OnnxLM(tmp / "onnx", threads, model_file(tmp / "onnx", "int8"))
        for ex in test[:3]:
            # a trailing space token derails greedy decoding
            answer = lm.generate(ex.prompt.rstrip(" "), 8)
            summary["generations"].append({"prompt": ex.prompt, "gold": ex.answer,
                                           "int8": answer})
        (tmp / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2))

    print(f"\n{report['method']} chose {describe_choice(report['chosen'])} -> {out / 'adapted'}; "
          f"exported to {out / 'onnx'}")
    print(f"  verdict: {report['verdict']}")
    control = report["calibrated_base"]
    control = f"{control['accuracy']:.3f}" if control else "n/a (open answers)"
    print(f"  PyTorch test accuracy {report['base']['accuracy']:.3f} -> "
          f"{report['adapted']['accuracy']:.3f} (n={report['adapted']['n']}; calibration "
          f"control {control})")
    for name, res in summary["onnx_runtime"].items():
        print(f"  ONNX Runtime {name:<16} accuracy {res['accuracy']:.3f}  loss {res['loss']:.4f} "
              f"(first {res['n']} test examples)")
    for g in summary["generations"]:
        print(f"  {g['prompt'].strip()!r} -> {g['int8']!r} (gold {g['gold']!r})")
    print(f"  summary: {out / DEMO_SUMMARY}")
    return 0
