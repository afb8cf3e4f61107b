"""--int4: 4-bit weights in blocks of 32 inputs (MatMulNBits), exact where the model was 4-bit.

Every MatMul with a constant weight W (K inputs x N outputs) becomes MatMulNBits with 4-bit
codes, one fp32 scale and one 4-bit zero point per block of 32 inputs of one output:
``w = scale * (code - zero_point)``.  Two cases:

- **On a 4-bit grid** (GGUF Q4_1 / Q4_0-style models, like the packaged SmolLM2): every
  block holds ``d * q + m`` with q in 0..15, which a 4-bit code reproduces only up to the
  fraction of ``m / d`` that an integer zero point cannot hold.  That remainder is one
  number per block, so it is added back exactly by a second, small product:
  ``y = MatMulNBits(x) + blocksum(x) @ R`` where ``blocksum`` sums x over each block of 32
  inputs and R (K/32 x N, fp32) holds the remainders.  The result equals W to float
  rounding (checked per matrix); it costs one fp32 number per 32 weights (1 bit/weight).
- **Anything else** (factors of a reduced matrix, Q5/Q6/Q8 GGUF matrices, fp16/bf16
  checkpoints): ONNX Runtime's own quantizer (``MatMulNBitsQuantizer``, round to nearest,
  asymmetric), the factors on their own statistics, as any weight.

The LM head and the token embedding share one 8-bit table (``GatherBlockQuantized`` for the
embedding reads the LM head's MatMulNBits codes): the largest matrix of a small model, whose
4-bit rounding costs the most agreement; Q8_0 tables (both packaged models) are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BLOCK = 32
BITS = 4
# MatMulNBits compute (``accuracy_level``, as the model builder's ``int4_accuracy_level``):
# 4 = int8 activations (one scale per block of 32), ONNX Runtime's fast path, 2.8x faster than
# level 1 (fp32 activations) on a 576x1536 product, one thread.  The weights stay exact
# either way; rounding the activations moved the top-1 agreement with fp32 over 892
# teacher-forced positions of qa_wikidata from 0.982 to 0.991 on the dense SmolLM2 and from
# 0.962 to 0.935 on the `make demo` adapted one (logit correlation 0.9999 -> 0.9989 and
# 0.9989 -> 0.9980); level 1 is there for whoever wants that last bit of agreement.
# Dropping the remainder product instead (zero points rounded, as a 4-bit-only format must)
# falls to 0.595 on the dense SmolLM2: the remainders are what keep the grid exact.
ACCURACY_LEVEL = 4
ACCURACY_LEVELS = (1, 4)
HEAD_ACCURACY_LEVEL = 4
# a block is on the grid if it is rebuilt within GRID_RTOL of its step, or within float32
# rounding of its values (a few ulps)
GRID_RTOL = 1e-5
FLOAT32_ULPS = 4 * float(np.finfo(np.float32).eps)


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _weight(node, inits: dict):
    """The 2-D float initializer a MatMul multiplies by (its weight), or None."""
    from onnx import TensorProto

    t = inits.get(node.input[1]) if node.op_type == "MatMul" else None
    ok = t is not None and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT
    return t if ok else None


def grid_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(codes, steps, offsets) if every block of 32 inputs of ``w`` (K x N) is ``d q + m``.

    codes: N x K/32 x 32 uint8 in 0..15; steps d and offsets m: N x K/32 (float64).
    None if any block is off a 4-bit grid (by more than GRID_RTOL of its step), or if K is
    not a multiple of 32 (a factor's rank).
    """
    k, n = w.shape
    if k % BLOCK:
        return None
    blocks = w.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    lo, hi = blocks.min(-1), blocks.max(-1)
    step = (hi - lo) / (2**BITS - 1)
    safe = np.where(step > 0, step, 1.0)
    codes = np.rint((blocks - lo[..., None]) / safe[..., None])
    error = np.abs(codes * step[..., None] + lo[..., None] - blocks).max(-1)
    tolerance = np.maximum(GRID_RTOL * step, FLOAT32_ULPS * np.maximum(np.abs(lo), np.abs(hi)))
    if np.any(error > tolerance):
        return None
    return codes.astype(np.uint8), step, lo


def _pack4(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values (last axis) into bytes, the first in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], -1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _grid_nodes(node, w_name: str, codes, step, lo, blocksum: str, k: int, n: int,
                level: int = ACCURACY_LEVEL):
    """MatMulNBits with the grid's codes, plus blocksum @ R for the remainders."""
    from onnx import helper, numpy_helper

    zero = np.clip(np.rint(-lo / np.where(step > 0, step, 1.0)), 0, 15).astype(np.uint8)
    # w = step * code + lo = step * (code - zero) + (lo + step * zero): the last term is R
    remainder = (lo + step * zero).astype(np.float32)  # N x K/32
    base = node.name or w_name
    inits = [
        numpy_helper.from_array(_pack4(codes), f"{w_name}_Q4"),
        numpy_helper.from_array(step.astype(np.float32).reshape(-1), f"{w_name}_scales"),
        numpy_helper.from_array(_pack4(zero).reshape(-1), f"{w_name}_zero_points"),
        numpy_helper.from_array(np.ascontiguousarray(remainder.T), f"{w_name}_remainder"),
    ]
    main = f"{base}_q4_output"
    nodes = [
        helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in inits[:3])], [main],
                         name=f"{base}_MatMulNBits", domain="com.microsoft", K=k, N=n,
                         bits=BITS, block_size=BLOCK, accuracy_level=level),
        helper.make_node("MatMul", [blocksum, inits[3].name], [f"{base}_remainder_output"],
                         name=f"{base}_remainder_MatMul"),
        helper.make_node("Add", [main, f"{base}_remainder_output"], [node.output[0]],
                         name=f"{base}_Add"),
    ]
    return nodes, inits


def _blocksum_nodes(x: str, k: int, tag: str):
    """Nodes summing ``x`` (..., K) over each block of 32 inputs -> (..., K/32)."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64),
                                    f"{tag}_block_shape")
    axes = numpy_helper.from_array(np.array([-1], np.int64), f"{tag}_block_axes")
    blocks, out = f"{tag}_blocks", f"{tag}_blocksum"
    nodes = [helper.make_node("Reshape", [x, shape.name], [blocks], name=f"{tag}_Reshape"),
             helper.make_node("ReduceSum", [blocks, axes.name], [out], name=f"{tag}_ReduceSum",
                              keepdims=0)]
    return nodes, [shape, axes], out


def _q8_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit codes (uint8, +128) and scales of ``table`` (rows x H) in blocks of 32.

    scale = max|w| / 127 per block, as GGUF's Q8_0 stores it, so a Q8_0 table comes back
    exactly.
    """
    rows, h = table.shape
    blocks = table.reshape(rows, h // BLOCK, BLOCK).astype(np.float64)
    scale = np.abs(blocks).max(-1) / 127
    codes = np.rint(blocks / np.where(scale > 0, scale, 1.0)[..., None])
    return (codes + 128).astype(np.uint8), scale.astype(np.float32)


def _shared_head(graph) -> tuple | None:
    """(LM head node, embedding Gather node, table name) if the head reads the embedding table.

    The head is the node producing ``logits``, FusedMatMul(x, E, transB) as
    postprocess.share_tied_weights writes a tied head.
    """
    inits = _initializers(graph)
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None or head.op_type != "FusedMatMul" or head.input[1] not in inits:
        return None
    table = head.input[1]
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] == table), None)
    if gather is None or len(inits[table].dims) != 2 or inits[table].dims[1] % BLOCK:
        return None
    return head, gather, table


def _quantize_shared_head(graph, head, gather, table: str) -> None:
    """LM head -> 8-bit MatMulNBits; the embedding Gather reads the same codes."""
    from onnx import helper, numpy_helper

    inits = _initializers(graph)
    e = numpy_helper.to_array(inits[table])
    vocab, h = e.shape
    codes, scale = _q8_table(e)
    # one copy of the codes: MatMulNBits reads them as N x K/32 x 32, and so does
    # GatherBlockQuantized (quantize_axis 2), whose output is reshaped back to rows; only the
    # scales (1/32 of the table) are reshaped as a constant
    tensors = [numpy_helper.from_array(codes, f"{table}_Q8"),
               numpy_helper.from_array(scale, f"{table}_scales"),
               numpy_helper.from_array(np.array([vocab, h // BLOCK, 1], np.int64),
                                       f"{table}_scales_shape"),
               numpy_helper.from_array(np.array([0, 0, h], np.int64), f"{table}_rows_shape")]
    old_head_weight = head.input[1]
    q8, scales, scales_shape, rows_shape = (t.name for t in tensors)
    nodes = [
        helper.make_node("MatMulNBits", [head.input[0], q8, scales], list(head.output),
                         name=f"{head.name}_MatMulNBits", domain="com.microsoft", K=h, N=vocab,
                         bits=8, block_size=BLOCK, accuracy_level=HEAD_ACCURACY_LEVEL),
        helper.make_node("Reshape", [scales, scales_shape], [f"{scales}_3d"],
                         name=f"{table}_scales_Reshape"),
        helper.make_node("GatherBlockQuantized", [q8, gather.input[1], f"{scales}_3d"],
                         [f"{gather.output[0]}_blocks"],
                         name=f"{gather.name}_GatherBlockQuantized", domain="com.microsoft",
                         bits=8, block_size=BLOCK, gather_axis=0, quantize_axis=2),
        helper.make_node("Reshape", [f"{gather.output[0]}_blocks", rows_shape],
                         list(gather.output), name=f"{gather.name}_rows_Reshape"),
    ]
    graph.initializer.extend(tensors)
    _replace(graph, head.name, nodes[:1])
    _replace(graph, gather.name, nodes[1:])
    _drop_unused(graph, {table, old_head_weight})


def _replace(graph, name: str, new: list) -> None:
    """Put the nodes ``new`` where the node called ``name`` was."""
    at = next(i for i, n in enumerate(graph.node) if n.name == name)
    del graph.node[at]
    for i, n in enumerate(new):
        graph.node.insert(at + i, n)


def _drop_unused(graph, names: set[str]) -> None:
    """Remove the initializers named in ``names`` that no node reads any more."""
    used = {name for n in graph.node for name in n.input}
    for t in [t for t in graph.initializer if t.name in names and t.name not in used]:
        graph.initializer.remove(t)


def quantize_tied_head(graph) -> bool:
    """An 8-bit table shared by a tied LM head and the embedding; False if the head is untied."""
    shared = _shared_head(graph)
    if shared is not None:
        _quantize_shared_head(graph, *shared)
    return shared is not None


def quantize_int4(src: Path, dst: Path, large: bool = False,
                  accuracy_level: int = ACCURACY_LEVEL) -> dict:
    """Write the 4-bit copy of ``src`` to ``dst``; returns what the manifest records of it."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(src)
    graph = model.graph
    shared = quantize_tied_head(graph)
    inits = _initializers(graph)
    nodes, blocksums, on_grid, dropped = [], {}, 0, set()
    for node in graph.node:  # one pass, so the new nodes keep the graph's order
        weight = _weight(node, inits)
        w = numpy_helper.to_array(weight) if weight is not None else None
        grid = grid_codes(w) if w is not None else None
        if grid is None:
            nodes.append(node)
            continue
        k, n = w.shape
        x = node.input[0]
        if x not in blocksums:  # q/k/v and gate/up share their input's sums
            tag = f"{x.strip('/').replace('/', '_')}_{len(blocksums)}"
            sum_nodes, sum_inits, blocksums[x] = _blocksum_nodes(x, k, tag)
            nodes.extend(sum_nodes)
            graph.initializer.extend(sum_inits)
        new, tensors = _grid_nodes(node, node.input[1], *grid, blocksums[x], k, n,
                                   accuracy_level)
        nodes.extend(new)
        graph.initializer.extend(tensors)
        dropped.add(node.input[1])
        on_grid += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, dropped)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    inits = _initializers(graph)
    remainders = [n.name for n in graph.node if n.name.endswith("_remainder_MatMul")]
    rest = [n.name for n in graph.node if _weight(n, inits) is not None
            and n.name not in remainders]
    if rest:  # everything off a grid: ONNX Runtime's round-to-nearest, asymmetric
        # (nodes_to_include does not narrow op_types_to_quantize: the remainder products,
        # which keep the grid matrices exact, must be excluded by name or they are rounded)
        quantizer = MatMulNBitsQuantizer(model, bits=BITS, block_size=BLOCK, is_symmetric=False,
                                         accuracy_level=accuracy_level,
                                         op_types_to_quantize=("MatMul",),
                                         nodes_to_include=rest, nodes_to_exclude=remainders)
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, dst, save_as_external_data=large, all_tensors_to_one_file=True,
              location=dst.name + "_data")
    return {"op": "com.microsoft.MatMulNBits", "bits": BITS, "block_size": BLOCK,
            "zero_points": "4-bit, per block", "accuracy_level": accuracy_level,
            "matmuls_exact_grid": on_grid,
            "matmuls_round_to_nearest": len(rest),
            "lm_head_and_embedding": "shared 8-bit table" if shared else "fp32 (not tied)"}
