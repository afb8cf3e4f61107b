"""Export a model to an ONNX decoder with KV cache; optionally int8 and ORT format.

Two graphs (``graph=``): ``fused`` (export/graph.py, the default where the architecture is
supported: Llama-style and Gemma-3) builds the decoder from the model's modules with ONNX
Runtime's fused operators (GroupQueryAttention with rotary embedding, RMS norms with the
residual add); ``optimum`` traces the loaded model with ``onnx_export_from_model`` (task
``text-generation-with-past``), for every architecture optimum knows.  ``auto`` takes the
fused graph where it can.  An adapted folder loads with its factor modules in place, so a
reduced matrix is exported as the MatMuls of its factors (multi-subspace: one MatMul with
the stacked B's, one per group with A_g, a Gather back to the original row order), never as
a dense product.

The output folder is written to a temp folder next to it and swapped in at the end
(edge_c2i.io.OutputDir):

    model.onnx               fp32 decoder: input_ids, attention_mask, (optimum: position_ids,)
                             past_key_values.{i}.key/value -> logits, present.{i}.key/value
                             (every NAME.onnx keeps its weights in NAME.onnx_data: files.py)
    model_int8.onnx          --int8: 8-bit weights, on top of the factors
    model_int4.onnx          --int4: 4-bit weights (export/int4.py), on top of the factors
    model.ort, model_int8.ort, required_operators.config
                             --ort: ORT format and the operator list for a reduced build
    tokenizer files, config.json, generation_config.json
    genai_config.json        onnxruntime-genai's config (export/genai.py): og.Model(folder) runs it
    edge_c2i_export.json     the manifest read by export.runtime and the Android app
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from edge_c2i.adapted import is_adapted, read_manifest
from edge_c2i.arch import arch, context_length, export_context
from edge_c2i.errors import EdgeC2IError
from edge_c2i.gguf_tokenizer import fix_byte_level_bpe
from edge_c2i.io import OutputDir

from . import graph as fused
from . import parity
from .genai import write_genai_config
from .int4 import (
    ACCURACY_LEVEL,
    ACCURACY_LEVELS,
    FINER,
    HEAD_BLOCK,
    HEAD_BLOCKS,
    HEAD_REFINE,
    INT8_BLOCKS,
    REMAINDERS,
    quantize_int4,
)
from .postprocess import (
    INT8_SCHEMES,
    convert_to_ort,
    out_matmul_prefixes,
    quantize_int8,
    share_tied_weights,
)
from .runtime import MANIFEST, OnnxLM

EXPORT_TASK = "text-generation-with-past"
GRAPHS = ("auto", "fused", "optimum")
REPORT = "report.json"  # written by edge-c2i adapt beside the manifest


def export_model(source: str, out: str | Path | OutputDir, int8: bool = False, ort: bool = False,
                 force: bool = False, opset: int | None = None, check: bool = True,
                 int8_scheme: str = "blockwise", int4: bool = False, graph: str = "auto",
                 int4_accuracy_level: int = ACCURACY_LEVEL,
                 int4_remainder: str = REMAINDERS[0], int8_block: int = INT8_BLOCKS[0],
                 head_block: int = HEAD_BLOCK, int4_finer: str = FINER[0],
                 head_refine: int = HEAD_REFINE) -> dict:
    """Export ``source`` (packaged name, HF folder, .gguf or adapted folder) to ``out``.

    ``int8_block``: the block size of the int8 model's 8-bit matrices; ``head_block``: of the
    8-bit table a tied LM head and the embedding share in the int8 and int4 models (what
    each trades: export/int4.py, INT8_BLOCKS); ``int4_finer``: what the int4 model does with
    matrices on a finer grid than 4 bits (export/int4.py, FINER); ``head_refine``: how many
    of a tied head's logits are exact after a 4-bit ranking, 0 for an 8-bit head
    (export/int4.py, HEAD_REFINE).

    Returns the manifest.  Raises EdgeC2IError if ``out`` exists without ``force`` (or is
    not an export folder edge-c2i wrote), if ``source`` is not a model, or if a parity
    check fails; then nothing is left behind and ``out`` is untouched.
    """
    from edge_c2i.io import has_manifest
    from edge_c2i.models import load_model, resolve

    if int8_scheme not in INT8_SCHEMES:
        raise EdgeC2IError(f"unknown int8 scheme {int8_scheme!r}: use {' or '.join(INT8_SCHEMES)}")
    if int4_accuracy_level not in ACCURACY_LEVELS:
        raise EdgeC2IError(f"int4 accuracy level {int4_accuracy_level} is not one of "
                           f"{', '.join(map(str, ACCURACY_LEVELS))}")
    if int4_remainder not in REMAINDERS:
        raise EdgeC2IError(f"unknown int4 remainder {int4_remainder!r}: use "
                           f"{' or '.join(REMAINDERS)}")
    if int4_finer not in FINER:
        raise EdgeC2IError(f"unknown int4 finer {int4_finer!r}: use {' or '.join(FINER)}")
    if not isinstance(head_refine, int) or head_refine < 0:
        raise EdgeC2IError(f"--head-refine {head_refine}: use 0 (an 8-bit head) or a positive "
                           f"count of exact logits")
    if graph not in GRAPHS:
        raise EdgeC2IError(f"unknown graph {graph!r}: use {', '.join(GRAPHS)}")
    for what, block, allowed in (("int8", int8_block, INT8_BLOCKS),
                                 ("head", head_block, HEAD_BLOCKS)):
        if block not in allowed:
            raise EdgeC2IError(f"{what} block size {block} is not one of "
                               f"{', '.join(map(str, allowed))}")
    dest = out if isinstance(out, OutputDir) else OutputDir(
        out, force, has_manifest(MANIFEST), "an ONNX export folder")
    out = dest.out
    clock = _Clock()
    where = resolve(source)
    if isinstance(where, Path) and where.resolve() in (out.resolve(), *out.resolve().parents):
        raise EdgeC2IError(f"--out {out} would replace the model it exports; choose another folder")
    with dest as tmp:  # claimed now: a second run on the same --out is refused
        model, tokenizer = load_model(source)
        clock.lap("load")
        opset, built = export_graph(model, tokenizer, tmp, opset, graph)
        manifest = describe(source, where, model, tokenizer, tmp, opset)
        manifest["graph"] = built
        clock.lap("export")
        manifest["timings"] = clock.laps  # filled in as the stages finish
        _write_manifest(tmp, manifest)
        if int8:
            manifest["int8"] = quantize_int8(tmp / "model.onnx", tmp / "model_int8.onnx",
                                             int8_scheme, out_matmul_prefixes(model),
                                             block_size=int8_block, head_block=head_block,
                                             head_refine=head_refine)
            clock.lap("int8")
        if int4:
            manifest["int4"] = quantize_int4(tmp / "model.onnx", tmp / "model_int4.onnx",
                                             accuracy_level=int4_accuracy_level,
                                             remainder=int4_remainder, head_block=head_block,
                                             finer=int4_finer, head_refine=head_refine)
            clock.lap("int4")
        if ort:
            manifest["ort"] = convert_to_ort(tmp)
            clock.lap("ort")
        manifest["genai"] = write_genai_config(tmp, manifest)
        refined = any((manifest.get(p) or {}).get("head_refine") for p in ("int8", "int4"))
        manifest["parity"] = check_parity(model, tokenizer, tmp, refined) if check else None
        clock.lap("parity")
        manifest["files"] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())
                             if f.is_file() and f.name != MANIFEST}  # (its own size: unknown yet)
        _write_manifest(tmp, manifest)
    return manifest


def export_graph(model, tokenizer, folder: Path, opset: int | None = None,
                 graph: str = "auto") -> tuple[int, dict]:
    """The decoder-with-past of ``model`` and its tokenizer into ``folder``.

    Returns the opset and what the manifest records of the graph (``kind``: fused or optimum,
    its node count).  ``graph="fused"`` on an architecture export/graph.py does not build is
    an EdgeC2IError naming why; ``auto`` falls back to optimum then.
    """
    import onnx

    why = fused.unsupported(model) if graph != "optimum" else "optimum was asked for"
    if why and graph == "fused":
        raise EdgeC2IError(f"no fused graph for this model: {why}; use --graph optimum")
    if why:
        opset = _optimum_export(model, folder, opset)
        share_tied_weights(folder / "model.onnx")
        proto = onnx.load(folder / "model.onnx", load_external_data=False)
        built = {"kind": "optimum", "nodes": len(proto.graph.node),
                 "why_not_fused": why if graph == "auto" else None}
    else:
        if opset is not None and opset < fused.OPSET:
            raise EdgeC2IError(f"the fused graph needs opset >= {fused.OPSET}; drop --opset or "
                               "use --graph optimum")
        built = fused.write(model, folder / "model.onnx", opset or fused.OPSET)
        opset = opset or fused.OPSET
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
    # the fused graph reads a batch padded on the right (GroupQueryAttention's layout, as
    # onnxruntime-genai pads it): a tokenizer loaded from the folder pads so
    write_tokenizer(tokenizer, folder, None if built["kind"] == "optimum" else "right")
    return opset, built


def write_tokenizer(tokenizer, folder: Path, padding_side: str | None = None) -> None:
    """The tokenizer files of an export (an adapted model has no hub name to fetch them from).

    A byte-level BPE is written without byte fallback, as onnxruntime-genai's tokenizer reads
    it (same ids in transformers); ``padding_side``, where given, is the side the graph reads
    a padded batch from.
    """
    fix_byte_level_bpe(tokenizer)
    side, kwargs = tokenizer.padding_side, dict(tokenizer.init_kwargs)
    if padding_side:  # tokenizer_config.json is written from init_kwargs
        tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = padding_side
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.padding_side, tokenizer.init_kwargs = side, kwargs
    _drop_null_chat_template(folder / "tokenizer_config.json")
    if not (folder / "tokenizer.json").is_file():
        raise EdgeC2IError("the model's tokenizer has no tokenizer.json (a fast tokenizer is needed)")


def _optimum_export(model, folder: Path, opset: int | None) -> int:
    """optimum's trace of ``model`` into ``folder``/model.onnx (+ config files); the opset."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils import logging as optimum_logging

    verbosity = optimum_logging.get_verbosity()
    optimum_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow
            onnx_export_from_model(model, folder, task=EXPORT_TASK, opset=opset,
                                   do_validation=False)  # parity.py checks more strictly
    except ValueError as e:  # optimum's word for an unsupported architecture or task
        raise EdgeC2IError(f"optimum cannot export this model: {e}") from None
    finally:
        optimum_logging.set_verbosity(verbosity)
    graph = onnx.load(folder / "model.onnx", load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _drop_null_chat_template(path: Path) -> None:
    """transformers writes ``"chat_template": null`` for a tokenizer without one (the Gemma
    .gguf rebuild); onnxruntime-genai's tokenizer refuses that file, so the key goes."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if "chat_template" in config and config["chat_template"] is None:
        del config["chat_template"]
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


class _Clock:
    """Seconds spent in each stage."""

    def __init__(self):
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[f"{name}_s"] = round(now - self.t, 1)
        self.t = now


def _context_cut(config) -> dict:
    """Manifest keys for a context shorter than config.json's (e.g. longrope's original length);
    the runtime and onnxruntime-genai's config read them before config.json. Nothing when the
    export runs the model's whole context."""
    full, cut = context_length(config), export_context(config)
    return {} if cut == full else {"max_position_embeddings": cut, "context_cut_from": full}


def describe(source: str, where, model, tokenizer, folder: Path, opset: int) -> dict:
    """The manifest: where the model came from and what a runtime needs to drive it."""
    from importlib.metadata import version

    import onnx

    facts = arch(model.config, getattr(model, "generation_config", None))
    with_special = tokenizer("Hello")["input_ids"]
    add_bos = len(with_special) > len(tokenizer("Hello", add_special_tokens=False)["input_ids"])
    add_bos = add_bos and with_special[0] == tokenizer.bos_token_id
    bos = with_special[0] if add_bos else facts.bos_token_id
    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    return {
        "format": 1,
        "source": str(source),
        **_adapted_info(where),
        "export_task": EXPORT_TASK,
        "opset": opset,
        "model_type": facts.model_type,
        "num_layers": facts.num_layers,
        "num_kv_heads": facts.num_kv_heads,
        "head_dim": facts.head_dim,
        "vocab_size": facts.vocab_size,
        "eos_token_id": facts.eos_token_ids,
        "bos_token_id": bos,
        "add_bos_token": bool(add_bos),
        "clean_up_tokenization_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces",
                                                     False)),
        **_context_cut(model.config),
        "input_names": [i.name for i in graph.input],
        "output_names": [o.name for o in graph.output],
        "int8": None,
        "int4": None,
        "ort": None,
        "genai": None,
        "versions": {p: version(p) for p in ("torch", "transformers", "optimum", "optimum-onnx",
                                             "onnx", "onnxruntime")},
    }


def _adapted_info(where) -> dict:
    """Task, method and reductions of an adapted folder (edge_c2i.json, report.json)."""
    info = {"adapted": False, "base_model": None, "task": None, "method": None,
            "chosen": None, "reductions": []}
    if not isinstance(where, Path) or not is_adapted(where):
        return info
    manifest = read_manifest(where)
    info.update(adapted=True, base_model=manifest.get("base_model"), task=manifest.get("task"),
                method=manifest.get("method"), reductions=manifest.get("reductions", []),
                split=manifest.get("split"))  # what `eval --onnx` scores (tasks.split_args_for)
    if (where / REPORT).is_file():
        try:
            report = json.loads((where / REPORT).read_text())
        except ValueError:
            raise EdgeC2IError(f"{where}/{REPORT} is damaged; re-run adapt") from None
        info["chosen"] = report.get("chosen")
        info["test_accuracy"] = {k: (report.get(k) or {}).get("accuracy")
                                 for k in ("base", "adapted")}
    elif info["reductions"]:
        info["chosen"] = info["reductions"][0]
    return info


def check_parity(model, tokenizer, folder: Path, refined: bool = False) -> dict:
    """Figures of every model file in ``folder`` against PyTorch; EdgeC2IError out of
    tolerance.  ``refined``: the int8 / int4 heads compute only their best logits exactly
    (export --head-refine; parity.failure)."""
    import torch

    threads = torch.get_num_threads()
    files = [f for f in ("model.onnx", "model.ort", "model_int8.onnx", "model_int8.ort",
                         "model_int4.onnx", "model_int4.ort") if (folder / f).is_file()]
    refs, figures = None, {}
    for name in files:
        lm = OnnxLM(folder, threads, name)
        if refs is None:
            need = max(len(lm.encode(p)) for p in parity.PROMPTS) + parity.NEW_TOKENS
            if lm.context is not None and need > lm.context:
                raise EdgeC2IError(f"the model's context is {lm.context} tokens, shorter than "
                                   f"the parity check's longest prompt and its "
                                   f"{parity.NEW_TOKENS} new tokens ({need}): export it with "
                                   "--no-check; nothing was written")
            _check_tokenizer(lm, tokenizer)
            refs = parity.references(model, lm)
        figures[name] = parity.compare(lm, refs)
        why = parity.failure(figures[name], precision=next(
            (p for p in ("int8", "int4") if p in name), "fp32"), refined=refined)
        if why:
            raise EdgeC2IError(f"parity check failed for {name}: {why} (PyTorch vs ONNX Runtime "
                               f"on {len(refs)} prompts); nothing was written")
        del lm
    return {"prompts": list(parity.PROMPTS), "new_tokens": parity.NEW_TOKENS,
            "fp32_atol": parity.FP32_ATOL, "int8_min_corr": parity.INT8_MIN_CORR,
            "int8_min_top1": parity.INT8_MIN_TOP1, "int4_min_corr": parity.INT4_MIN_CORR,
            "int4_min_top1": parity.INT4_MIN_TOP1, **figures}


def _check_tokenizer(lm: OnnxLM, tokenizer) -> None:
    """The runtime's tokenizer.json must give the ids the transformers tokenizer gives."""
    for prompt in parity.PROMPTS:
        if lm.encode(prompt) != tokenizer(prompt)["input_ids"]:
            raise EdgeC2IError(f"tokenizer.json encodes {prompt!r} differently from the model's "
                               "tokenizer; nothing was written")


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
