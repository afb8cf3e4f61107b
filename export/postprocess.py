"""What happens to the exported model.onnx: a tied LM head without a copy, int8, ORT format."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections import Counter
from pathlib import Path

from edge_c2i.config import INT8_SCHEMES
from edge_c2i.errors import EdgeC2IError

from . import files
from .int4 import HEAD_BLOCK, HEAD_REFINE, head_description, quantize_tied_head

BLOCK_SIZE = 32  # blockwise int8: one scale per 32 weights along the input dimension (default)

def share_tied_weights(path: Path) -> int:
    """Turn MatMul(x, W^T) on a 2-D weight W into FusedMatMul(x, W, transB=1).

    optimum exports a tied LM head either as a Transpose of the embedding matrix (SmolLM2)
    or as a transposed copy of it (Gemma-3: 671 MB).  ONNX Runtime folds a Transpose into a
    transposed copy at load time and stores the copy in every .ort file.  FusedMatMul (an
    ONNX Runtime contrib op) reads W transposed in place.  Returns the number of MatMuls
    rewritten; the file is saved again either way, its weights beside it (export/files.py).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2}
    producer = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    # the embedding tables (Gather'ed 2-D weights) by their transposed shape
    tables = {tuple(weights[n.input[0]].dims[::-1]): n.input[0] for n in graph.node
              if n.op_type == "Gather" and n.input[0] in weights}
    done, copies = [], []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        t = producer.get(node.input[1])
        if t is not None and t.op_type == "Transpose" and t.input[0] in weights \
                and uses[t.output[0]] == 1:
            source = t.input[0]
            done.append(t)
        elif node.input[1] in weights and uses[node.input[1]] == 1 \
                and tuple(weights[node.input[1]].dims) in tables:
            source = tables[tuple(weights[node.input[1]].dims)]
            copy = numpy_helper.to_array(weights[node.input[1]])
            if not np.array_equal(copy.T, numpy_helper.to_array(weights[source])):
                continue
            copies.append(weights[node.input[1]])
        else:
            continue
        node.op_type, node.domain = "FusedMatMul", "com.microsoft"
        node.input[1] = source
        node.attribute.extend([helper.make_attribute("alpha", 1.0),
                               helper.make_attribute("transB", 1)])
    for t in done:
        graph.node.remove(t)
    for w in copies:
        graph.initializer.remove(w)
    if (done or copies) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    files.save(model, path)  # rewritten or not: its weights go beside it (export/files.py)
    return len(done) + len(copies)


@contextlib.contextmanager
def _quiet_logging():
    """onnxruntime's quantizers and converter log every step at INFO or DEBUG: hold them down."""
    names = ("onnxruntime.quantization", "ort_format_model.utils")
    loggers = [logging.getLogger(), *map(logging.getLogger, names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def out_matmul_prefixes(model) -> list[str]:
    """ONNX node-name prefixes of the MLP output matrices (down_proj and the like)."""
    from edge_c2i.targets import find_targets

    # the tracer names nodes by module path, "/model/layers.20/mlp/down_proj/MatMul"
    return ["/" + re.sub(r"\.(?!\d)", "/", t.name) + "/"
            for t in find_targets(model) if t.type == "out"]


def quantize_int8(src: Path, dst: Path, scheme: str = "blockwise",
                  exclude_prefixes: list[str] | None = None, block_size: int = BLOCK_SIZE,
                  head_block: int = HEAD_BLOCK, head_refine: int = HEAD_REFINE) -> dict:
    """Write an 8-bit-weight copy of ``src``; returns how it was made.

    ``blockwise`` (default): weight-only int8 with one scale per ``block_size`` inputs
    (MatMulNBits, bits=8, accuracy level 4: int8 compute with per-block activation scales;
    int4.INT8_BLOCKS says what the block size trades); a tied LM head and the embedding
    share one 8-bit table in blocks of ``head_block``, the head's ``head_refine`` best logits
    exact after a 4-bit ranking (int4.quantize_tied_head).
    ``dynamic``: ``quantize_dynamic``, per-channel uint8 weights (int8 weights overflow the
    u8 x s8 kernels of CPUs without VNNI) and per-tensor dynamic activations; the MatMuls
    named by ``exclude_prefixes`` (the MLP output matrices) stay fp32 because their inputs
    carry outlier activations that one scale per tensor cannot represent.
    Only MatMuls with constant weights change: the factors stay separate MatMuls.
    """
    if scheme not in INT8_SCHEMES:
        raise EdgeC2IError(f"unknown int8 scheme {scheme!r}: use {' or '.join(INT8_SCHEMES)}")
    with _quiet_logging():
        if scheme == "blockwise":
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(str(src), bits=8, block_size=block_size,
                                             is_symmetric=True, accuracy_level=4,
                                             op_types_to_quantize=("MatMul",))
            quantizer.process()
            shared = quantize_tied_head(quantizer.model.model.graph, head_block, head_refine)
            quantizer.model.topological_sort()
            files.save(quantizer.model.model, dst)
            return {"scheme": scheme, "op": "com.microsoft.MatMulNBits", "bits": 8,
                    "block_size": block_size, "accuracy_level": 4,
                    "lm_head_and_embedding": head_description(shared, head_refine),
                    "head_block": shared, "head_refine": head_refine if shared else None}
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(src, load_external_data=False).graph
        excluded = [n.name for n in graph.node if n.op_type == "MatMul"
                    and any(n.name.startswith(p) for p in exclude_prefixes or ())]
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QUInt8, nodes_to_exclude=excluded,
                         use_external_data_format=True,  # no 2 GB limit
                         # the fused graph's contrib ops (GroupQueryAttention, ...) stop ONNX
                         # shape inference: the untyped tensors it leaves are float32
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        theirs = dst.with_name(dst.name + ".data")  # where quantize_dynamic puts the weights
        files.save(onnx.load(dst), dst)  # ours: NAME.onnx_data, as every export file
        theirs.unlink(missing_ok=True)
    return {"scheme": scheme, "op": "MatMulInteger", "weights": "uint8 per channel",
            "activations": "uint8 per tensor, dynamic", "fp32_matmuls": len(excluded)}


def convert_to_ort(folder: Path) -> dict:
    """ORT-format copies of every .onnx in ``folder``, plus required_operators.config."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    log = io.StringIO()
    with contextlib.redirect_stdout(log), _quiet_logging():
        convert_onnx_models_to_ort(folder, optimization_styles=[OptimizationStyle.Fixed])
    config = folder / "required_operators.config"
    if not config.is_file():
        raise EdgeC2IError(f"the ORT conversion wrote no {config.name}:\n{log.getvalue()}")
    # its comments name the models by path: keep the names only (the folder is renamed)
    config.write_text(config.read_text().replace(f"{folder.resolve()}/", ""))
    return {"optimization": "fixed, level all", "config": config.name,
            "models": sorted(p.name for p in folder.glob("*.ort"))}
