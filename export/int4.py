"""--int4: 4-bit weights in blocks of 32 inputs (MatMulNBits), exact where the model was 4-bit.

Every MatMul with a constant weight W (K inputs x N outputs) becomes MatMulNBits with 4-bit
codes, one fp32 scale and one 4-bit zero point per block of 32 inputs of one output:
``w = scale * (code - zero_point)``.  Three cases:

- **On a 4-bit grid** (GGUF Q4_1 / Q4_K / Q4_0-style matrices: all of the packaged SmolLM2,
  Gemma-3's attention outputs and half of its MLP down matrices): every block holds
  ``d * q + m`` with q in 0..15, which a 4-bit code reproduces only up to the
  fraction of ``m / d`` that an integer zero point cannot hold.  That remainder is one
  number per block and output, R (K/32 x N), and it multiplies x summed over each block of
  32 inputs, which the graph computes as ``blockmean(x)`` times ``32 R`` (a power of 2:
  exact): one AveragePool (kernel and stride 32), one operator fewer than Reshape +
  ReduceSum, which took SmolLM2's int4 from 9.43 to 8.59 ms/token (bench/results/runtime.json
  committed at bd589aa, then at c57959e).  Two ways to add it back (``remainder``):

  - ``folded`` (default): one MatMulNBits over ``[x, blockmean(x)]`` (K + K/32 inputs), 32 R
    appended to the codes as rows fitted to 4 bits on their own (an error of about a
    thirtieth of a step per block, where rounding the zero point costs up to half a step).
    Two small operators per group of matrices sharing an input (AveragePool, Concat).
    Bits per weight: 4 for the code, 1.125 for the block's fp32 scale and 4-bit zero point,
    about 0.16 for the remainder rows: about 5.3.
  - ``product``: MatMulNBits plus ``blockmean(x) @ 32 R`` with R in fp32: W to float
    rounding (checked per matrix), three small operators per group and a second product per
    matrix, about 6.1 bits per weight (one fp32 remainder per 32 weights on top of 5.125).

  Measured on the dense SmolLM2 (bench/bench_runtime.py, one thread): see the README.
- **On a finer grid** (GGUF Q5_0 / Q5_K / Q6_K / Q8_0 matrices, ``finer_grid``: most of
  the packaged Gemma-3's), by default (``FINER``): 8-bit codes in the same blocks of 32,
  exact for the symmetric Q5_0 and Q8_0 (``codes8``), as llama.cpp's Q4_K_M keeps them
  finer on purpose.  With ``finer="int4"`` they are fitted as below.
- **Anything else** (factors of a reduced matrix, fp16/bf16 checkpoints, finer grids with
  ``finer="int4"``): codes, step and integer zero point fitted per block (``fitted_codes``: a
  few candidate steps, each refined by least squares; never worse than round-to-nearest),
  the factors on their own statistics.  Measured on 936 teacher-forced positions of
  qa_wikidata, Gemma-3's top-1 agreement with fp32 went from 0.63 (ONNX Runtime's
  round-to-nearest quantizer, the Q4_K matrices not yet found on their grid) to 0.72
  (logit correlation 0.967 -> 0.976); the `make demo` adapted SmolLM2's from 0.947 to 0.961
  (its two rounded factors).  ONNX Runtime's HQQ quantizer reached 0.80 on Gemma-3 but
  writes float zero points, which MatMulNBits runs 10x slower (199 vs 21 ms/token).

The LM head and the token embedding share one 8-bit table (``GatherBlockQuantized`` for the
embedding reads the LM head's MatMulNBits codes): the largest matrix of a small model, whose
4-bit rounding costs the most agreement.  Its blocks are 64 wide by default (``HEAD_BLOCK``,
below: the head is most of a large vocabulary's decode); in blocks of 32 a Q8_0 table (both
packaged models) comes back exactly.  A
trial with the table as fitted 4-bit codes (shared the same way, folded remainders) on the
dense SmolLM2: 94 MB instead of 104, top-1 agreement on bench_runtime's 200 prompts 0.725
instead of 0.965, and no clear gain in ms/token.  Where the int4's decode goes
(bench/bench_profile.py -> profile.json, ONNX Runtime's profiler, one thread): on SmolLM2 the
8-bit head 2.75 ms against the builder's 4-bit head 2.04; the other 120 products 9.75 ms
(71.6 MB of weights, the zero points and remainder rows included) against the builder's 150
in 9.0 ms (66.4 MB), read at the same 7.3 GB/s; the block means' AveragePool + Concat 0.95 ms.
``head_refine`` N (export --head-refine, int8 and int4; ``_refined_head_nodes``) reads half
of that table per token: the same bytes as two 4-bit halves, the high ones rank the
vocabulary, and the N best logits come from both, exactly and with fp32 activations; the
others stay 4-bit (what that trades: HEAD_REFINE, bench/results/runtime.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import files

BLOCK = 32
BITS = 4
# Blocks of 8-bit weights.  ONNX Runtime's int8 kernel (accuracy level 4) rounds the
# activations to int8 per block and adds one scale product per block, so larger blocks decode
# faster and round the activations more coarsely (a one-off check with fp32 activations: the
# 64-wide weights alone barely move the logits).  bench/bench_runtime.py times the files of
# both block sizes in one run (runtime.json, rows keyed int8_block / head_block); against
# blocks of 32:
# - the table a tied LM head and the embedding share (export --head-block, int8 and int4):
#   64 by default.  ms/token against the builder's, paired (bench_runtime's measure): int8
#   -5% (SmolLM2, a 49k x 576 table) and -10% (Gemma-3, 262k x 640: the head is most of its
#   decode), int4 -6% and -5% (the runs committed at c57959e and bd589aa, in separate
#   processes: int8 -6% to -12%, int4 -3% to -18%); top-1 agreement with fp32 on 200 prompts
#   the same within 0.01 in every run.  32 brings a GGUF Q8_0 table back exactly.
# - the int8 model's matrices (export --int8-block): 32 by default.  64: -10% (SmolLM2) and
#   -3% (Gemma-3) beyond the head's 64, 0.849x and 0.878x the builder's int8 (its speed
#   target), at agreement 0.925 and 0.915 against 0.965 and 0.93 (the builder's int8: 0.96,
#   0.935).
# What a block buys depends on the CPU's kernels: on an AVX512-VNNI/AMX Xeon (runtime.json
# committed at 5845fe5) the head's 64 gave int8 0.965x / 0.962x against 0.970x / 0.999x at
# 32, the int8 matrices' 64 nothing (0.986x / 0.955x), and Gemma-3's head at 128 0.878x
# (agreement 0.925 against 0.93): an option, on one model's evidence, not the default.
INT8_BLOCKS = (32, 64, 128)
HEAD_BLOCKS = (32, 64, 128)
HEAD_BLOCK = 64
# MatMulNBits compute (``accuracy_level``, as the model builder's ``int4_accuracy_level``):
# 4 = int8 activations (one scale per block of 32), ONNX Runtime's fast path, 2.8x faster than
# level 1 (fp32 activations) on a 576x1536 product, one thread.  The weights stay exact
# either way; rounding the activations moved the top-1 agreement with fp32 over 892
# teacher-forced positions of qa_wikidata from 0.982 to 0.991 on the dense SmolLM2 and from
# 0.962 to 0.935 on the `make demo` adapted one (logit correlation 0.9999 -> 0.9989 and
# 0.9989 -> 0.9980); level 1 is there for whoever wants that last bit of agreement.
# On Gemma-3 it is more than a bit: rounding the activations that its 8-bit products read
# (q/k/v and gate/up read the norms' outputs) is what loses its int4 the agreement with fp32
# (a one-off, 3,584 teacher-forced positions of offline English text, dense Gemma-3: 0.939
# at level 4, 0.960 with those 45 products at level 1, 0.941 with the 27 4-bit ones or the
# head at level 1, 0.968 all at level 1).  ONNX Runtime 1.32 has no fast fp32-activation
# kernel for 8-bit MatMulNBits, so at level 1 those are written as two 4-bit products
# (_nibble_nodes), where the 8-bit slow path had decoded at 6.1x level 4's ms/token.
# bench/bench_int4_level.py (int4_level.json; every position of 3,584 README tokens):
# Gemma-3 0.934 -> 0.959 at 1.36x level 4's ms/token, SmolLM2 0.940 -> 0.950 at 1.28x.
# Dropping the remainder product instead (zero points rounded, as a 4-bit-only format must)
# falls to 0.595 on the dense SmolLM2: the remainders are what keep the grid exact.
ACCURACY_LEVEL = 4
ACCURACY_LEVELS = (1, 4)
REMAINDERS = ("folded", "product")  # how a grid matrix's remainders are added (docstring)
# What --int4 does with a matrix the model held on a finer grid than 4 bits (finer_grid:
# GGUF Q5_0, Q5_1, Q5_K, Q6_K, Q8_0), the default first.  "int8": 8-bit codes (codes8,
# exact for Q5_0 and Q8_0); "int4": 4-bit codes fitted as for any other matrix.  The
# packaged Gemma-3 (Q4_K_M: llama.cpp stores its 640-wide matrices as Q5_0, not Q4_K, and
# half its V and down matrices as Q8_0 / Q6_K) has 45 of its 72 matrices on such grids; on
# bench_runtime's prompts its int4 kept top-1 agreement with fp32 0.935 and task accuracy
# 0.10 with them in 8 bits (fp32: 0.11; int8: 0.93 and 0.11), 0.74 and 0.01 with them
# rounded to 4 bits, for a file of 283 instead of 243 MB and 1.24x instead of 1.11x the
# builder's int4 ms/token (paired);
# the int4 of the model adapted to qa_wikidata (C2I's pick) kept the adaptation (accuracy
# 0.20, fp32 0.20, where the rounded int4 had 0.11 at c57959e; bench/results/runtime.json).
# SmolLM2 (all Q4_1) and models stored in 16 or 32 bits have no such matrix.
FINER = ("int8", "int4")
HEAD_ACCURACY_LEVEL = 4
# A tied head's logits: 0 = one 8-bit product; R > 0 = a 4-bit product of the 8-bit codes'
# high halves ranks the vocabulary and the R best get the 8-bit table's logits, exactly and
# with fp32 activations (_refined_head_nodes); the others keep the 4-bit ranking's values.
# Where the exact best logits fall in the 4-bit ranking (bench/bench_head_refine.py, 1,536
# positions of README text): the best one among its 32 at every position of both models,
# the best 16 all among its 64 at 0.865 (SmolLM2) and 0.947 (Gemma-3), among 128 at 0.983 and
# 1.000 (a one-off centring the low halves' codes did not help).  With R = 64
# (bench/results/runtime.json, paired against the builder): Gemma-3's int8 0.775x where the
# 8-bit head reads 0.953x, int4 1.123x (1.354x); SmolLM2's 0.962x and 1.091x (0.973x,
# 1.135x); top-1 agreement with fp32 up on all four, the files 0.3-1% larger.  Not the
# default: the other logits are 4-bit, and scoring given text reads them (logit correlation
# over the vocabulary 0.977 / 0.988 against 0.999; perplexity of README text 61.5 -> 79.4 on
# SmolLM2, 247 -> 287 on Gemma-3: bench_head_refine.py).
HEAD_REFINE = 0
# a block is on the grid if it is rebuilt within GRID_RTOL of its step, or within float32
# rounding of its values (a few ulps)
GRID_RTOL = 1e-5
GRID_DIVISORS = (1, 2, 3, 4, 5, 6, 7, 8)  # the grid's step: the smallest gap over 1, 2, ...
GRID_PROBE = 64  # outputs checked first: a matrix off a grid fails on them, at little cost
FLOAT32_ULPS = 4 * float(np.finfo(np.float32).eps)


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _weight(node, inits: dict):
    """The 2-D float initializer a MatMul multiplies by (its weight), or None."""
    from onnx import TensorProto

    t = inits.get(node.input[1]) if node.op_type == "MatMul" else None
    ok = t is not None and len(t.dims) == 2 and t.data_type == TensorProto.FLOAT
    return t if ok else None


def grid_codes(w: np.ndarray, block: int = BLOCK, bits: int = BITS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(codes, steps, offsets) if every block of ``block`` inputs of ``w`` (K x N) is
    ``d q + m`` with q in 0..2**bits - 1.

    codes: N x K/block x block uint8; steps d and offsets m: N x K/block (float64).  The
    step is the smallest gap between a block's distinct values or that gap over 2, 3, ...
    (GRID_DIVISORS: a block of 16 weights on a 5-bit grid often has no two neighbours), so a
    block need not use codes 0 and 15: GGUF Q4_1 blocks span their grid (min to max), Q4_K
    blocks (a fitted scale and minimum per 32 weights) often do not.  None if any block is
    off such a grid (by more than GRID_RTOL of its step), or if K is not a multiple of
    ``block`` (a factor's rank).
    """
    k, n = w.shape
    if k % block:
        return None
    if n > GRID_PROBE and grid_codes(w[:, :GRID_PROBE], block, bits) is None:
        return None
    blocks = w.T.reshape(n, k // block, block).astype(np.float64)
    codes, step, on = _grid_fit(blocks, bits)
    return (codes.astype(np.uint8), step, blocks.min(-1)) if on.all() else None


def _grid_fit(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """grid_codes' fit of ``blocks`` (..., block): codes, steps, and which blocks are on a
    grid of at most 2**bits levels."""
    lo, hi = blocks.min(-1), blocks.max(-1)
    ulps = FLOAT32_ULPS * np.maximum(np.abs(lo), np.abs(hi))
    gaps = np.diff(np.sort(blocks, -1), axis=-1)
    gaps = np.where(gaps > 4 * ulps[..., None], gaps, np.inf).min(-1)
    gap = np.where(np.isfinite(gaps), gaps, 0.0)
    codes, step = np.zeros(blocks.shape), np.zeros(gap.shape)
    todo = np.ones(gap.shape, bool)
    for divisor in GRID_DIVISORS:
        if not todo.any():
            break
        idx = np.nonzero(todo)
        b, low, g = blocks[idx], lo[idx], gap[idx] / divisor
        c = np.rint((b - low[:, None]) / np.where(g > 0, g, 1.0)[:, None])
        # the step again, by least squares over the codes: the smallest gap carries rounding
        fit = (c * (b - low[:, None])).sum(-1) / np.maximum((c**2).sum(-1), 1)
        d = np.where(g > 0, fit, 0.0)
        error = np.abs(c * d[:, None] + low[:, None] - b).max(-1)
        ok = (c.max(-1) <= 2**bits - 1) & (error <= np.maximum(GRID_RTOL * d, ulps[idx]))
        hit = tuple(i[ok] for i in idx)
        codes[hit], step[hit], todo[hit] = c[ok], d[ok], False
    return codes, step, ~todo


def finer_grid(w: np.ndarray) -> bool:
    """Whether ``w`` (K x N) is off a 4-bit grid but every block of 32 inputs lies on a grid
    of at most 256 levels, or each of its halves does: a GGUF matrix of 5 to 8 bits (Q5_0,
    Q5_1, Q8_0 in blocks of 32; Q5_K, Q6_K, whose scales change every 16 or 32 weights),
    which 4-bit codes would round."""
    k, n = w.shape
    if k % BLOCK:
        return False
    if n > GRID_PROBE and not finer_grid(w[:, :GRID_PROBE]):
        return False
    if grid_codes(w) is not None:
        return False
    blocks = w.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    on = _grid_fit(blocks, 8)[2]
    if on.all():
        return True
    halves = blocks[~on].reshape(-1, 2, BLOCK // 2)
    return bool(_grid_fit(halves, 8)[2].all())


# candidate steps for a block off any grid, as fractions of (max - min) / 15: a smaller step
# clips the block's extremes and rounds the rest more finely; 1.0 is plain round-to-nearest
FIT_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
FIT_ROUNDS = 2


def fitted_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, steps, zero points) of ``w`` (K x N) in blocks of 32, for a matrix off any
    4-bit grid: ``w ~ step * (code - zero)`` with an integer zero point, as MatMulNBits'
    fast kernel wants.  For each candidate step (FIT_SHRINK) the codes, the step (least
    squares) and the zero point are refined in turn (FIT_ROUNDS), and each block keeps the
    candidate with the smallest squared error: never worse than round-to-nearest, which is
    the first candidate.  K is padded to a multiple of 32 by repeating the last input's row
    (a factor's rank; MatMulNBits reads only K of them).  codes: N x blocks x 32 uint8,
    steps: N x blocks float32, zero points: N x blocks uint8.
    """
    k, n = w.shape
    pad = -k % BLOCK
    if pad:
        w = np.pad(w, ((0, pad), (0, 0)), mode="edge")
    blocks = w.T.reshape(n, -1, BLOCK).astype(np.float64)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    top = 2**BITS - 1
    best = (np.full(lo.shape, np.inf), None, None, None)
    for shrink in FIT_SHRINK:
        step = np.maximum((hi - lo) / top * shrink, 1e-30)
        zero = np.clip(np.rint(-lo / step), 0, top)
        for _ in range(FIT_ROUNDS):
            codes = np.clip(np.rint(blocks / step + zero), 0, top)
            centred = codes - zero
            norm = (centred**2).sum(-1, keepdims=True)
            step = np.where(norm > 0, (blocks * centred).sum(-1, keepdims=True)
                            / np.maximum(norm, 1e-30), step)
            step = np.maximum(step, 1e-30)
            zero = np.clip(np.rint((codes - blocks / step).mean(-1, keepdims=True)), 0, top)
        codes = np.clip(np.rint(blocks / step + zero), 0, top)
        error = (((codes - zero) * step - blocks) ** 2).sum(-1, keepdims=True)
        better = error < best[0]
        best = (np.where(better, error, best[0]),
                *(c if b is None else np.where(better, c, b)
                  for c, b in ((codes, best[1]), (step, best[2]), (zero, best[3]))))
    _, codes, step, zero = best
    return codes.astype(np.uint8), step[..., 0].astype(np.float32), zero[..., 0].astype(np.uint8)


def _pack4(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values (last axis) into bytes, the first in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], -1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _nbits_node(node, w_name: str, codes, step, zero, k: int, n: int, output: str,
                level: int, bits: int = BITS):
    """MatMulNBits (4- or 8-bit codes, fp32 steps, zero points of as many bits) of
    ``node``'s input."""
    from onnx import helper, numpy_helper

    pack = _pack4 if bits == 4 else np.ascontiguousarray
    inits = [numpy_helper.from_array(pack(codes), f"{w_name}_Q{bits}"),
             numpy_helper.from_array(np.ascontiguousarray(step, np.float32).reshape(-1),
                                     f"{w_name}_scales"),
             numpy_helper.from_array(pack(zero).reshape(-1), f"{w_name}_zero_points")]
    base = node.name or w_name
    return helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in inits)], [output],
                            name=f"{base}_MatMulNBits", domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=BLOCK, accuracy_level=level), inits


def _nibble_nodes(node, w_name: str, codes, step, zero, k: int, n: int, level: int):
    """8-bit codes as two 4-bit MatMulNBits added, exactly: ``q - z = 16 (q_hi - z_hi) +
    (q_lo - z_lo)`` with the high and low nibbles of codes and zero points, the high
    product's steps 16 times the low one's.  Why: ONNX Runtime 1.32 computes an 8-bit
    MatMulNBits with fp32 activations (accuracy level 1) by a slow path (2.1 ms against 0.06
    at level 4 for a 640 x 2048 product, one thread), and a 4-bit one by a fast kernel (0.13
    ms); at level 4 the activations are rounded to int8, which is what costs Gemma-3's int4
    its agreement with fp32 (see ACCURACY_LEVEL)."""
    from onnx import helper

    new, inits, outputs = [], [], []
    for part, shift, scale in (("hi", 4, 16.0), ("lo", 0, 1.0)):
        out = f"{node.output[0]}_{part}"
        product, tensors = _nbits_node(node, f"{w_name}_{part}", (codes >> shift) & 15,
                                       step * scale, (zero >> shift) & 15, k, n, out, level)
        product.name += f"_{part}"
        new.append(product)
        inits += tensors
        outputs.append(out)
    base = node.name or w_name
    new.append(helper.make_node("Add", outputs, [node.output[0]], name=f"{base}_nibbles"))
    return new, inits


def codes8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, steps, zero points) of ``w`` (K x N) as 8-bit codes in blocks of 32.

    A block on a grid ``d q`` (GGUF Q5_0, Q8_0: symmetric, so the zero point is an integer)
    comes back exactly; any other block (Q6_K's two scales per 32 weights, Q5_1's minimum)
    is rounded to nearest on 255 steps from its minimum to its maximum (and zero): within
    1/16 of a 5-bit block's step, 1/8 of the coarser step of a Q6_K block's two halves.
    """
    k, n = w.shape
    blocks = w.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
    step = np.maximum((hi - lo) / 255, 1e-30)
    zero = np.clip(np.rint(-lo / step), 0, 255)
    codes = np.clip(np.rint(blocks / step[..., None] + zero[..., None]), 0, 255)
    grid, d, on = _grid_fit(blocks, 8)
    z = -blocks.min(-1) / np.where(d > 0, d, 1.0)
    exact = on & (d > 0) & (np.abs(z - np.rint(z)) < 1e-6) & (z >= 0)
    exact &= np.rint(z) + (grid.max(-1) - np.rint(z)) <= 255
    step = np.where(exact, d, step)
    zero = np.where(exact, np.rint(z), zero)
    codes = np.where(exact[..., None], grid, codes)
    return codes.astype(np.uint8), step.astype(np.float32), zero.astype(np.uint8)


def _zero_and_remainder(step, lo) -> tuple[np.ndarray, np.ndarray]:
    """The integer zero points of a grid's blocks, and what they leave out (R, N x K/32):
    ``w = step * code + lo = step * (code - zero) + (lo + step * zero)``."""
    zero = np.clip(np.rint(-lo / np.where(step > 0, step, 1.0)), 0, 15).astype(np.uint8)
    return zero, (lo + step * zero).astype(np.float32)


def _grid_nodes(node, w_name: str, codes, step, lo, blockmean: str, k: int, n: int,
                level: int = ACCURACY_LEVEL):
    """MatMulNBits with the grid's codes, plus blockmean @ 32 R for the remainders."""
    from onnx import helper, numpy_helper

    zero, remainder = _zero_and_remainder(step, lo)
    base = node.name or w_name
    main = f"{base}_q4_output"
    matmul, inits = _nbits_node(node, w_name, codes, step, zero, k, n, main, level)
    inits.append(numpy_helper.from_array(np.ascontiguousarray(remainder.T * BLOCK),
                                         f"{w_name}_remainder"))
    nodes = [
        matmul,
        helper.make_node("MatMul", [blockmean, inits[3].name], [f"{base}_remainder_output"],
                         name=f"{base}_remainder_MatMul"),
        helper.make_node("Add", [main, f"{base}_remainder_output"], [node.output[0]],
                         name=f"{base}_Add"),
    ]
    return nodes, inits


def _folded_nodes(node, w_name: str, codes, step, lo, augmented: str, k: int, n: int,
                  level: int = ACCURACY_LEVEL):
    """One MatMulNBits over ``[x, blockmean(x)]`` (K + K/32 inputs): the grid's codes for x,
    and the remainders 32 R (K/32 x N) as 4-bit codes fitted on their own per block."""
    zero, remainder = _zero_and_remainder(step, lo)
    r_codes, r_step, r_zero = fitted_codes(np.ascontiguousarray(remainder.T * BLOCK))
    codes = np.concatenate([codes, r_codes], 1)
    step = np.concatenate([step.astype(np.float32), r_step], 1)
    zero = np.concatenate([zero, r_zero], 1)
    matmul, inits = _nbits_node(node, w_name, codes, step, zero, k + k // BLOCK, n,
                                node.output[0], level)
    matmul.input[0] = augmented
    return [matmul], inits


def _augment_nodes(x: str, blockmean: str, tag: str):
    """``[x, blockmean(x)]`` along the last axis."""
    from onnx import helper

    out = f"{tag}_augmented"
    return [helper.make_node("Concat", [x, blockmean], [out], name=f"{tag}_Concat", axis=-1)], out


def _blockmean_nodes(x: str, tag: str):
    """``x`` (batch, positions, K) averaged over each block of 32 inputs -> (..., K/32): one
    AveragePool read with positions as channels."""
    from onnx import helper

    out = f"{tag}_blockmean"
    return [helper.make_node("AveragePool", [x], [out], name=f"{tag}_AveragePool",
                             kernel_shape=[BLOCK], strides=[BLOCK])], out


def _q8_table(table: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit codes (uint8, +128) and scales of ``table`` (rows x H) per ``block``.

    scale = max|w| / 127 per block, as GGUF's Q8_0 stores it, so a Q8_0 table comes back
    exactly in blocks of 32.
    """
    rows, h = table.shape
    blocks = table.reshape(rows, h // block, block).astype(np.float64)
    scale = np.abs(blocks).max(-1) / 127
    codes = np.rint(blocks / np.where(scale > 0, scale, 1.0)[..., None])
    return (codes + 128).astype(np.uint8), scale.astype(np.float32)


def table_block(h: int, block: int) -> int | None:
    """The 8-bit block for a table of width ``h``: ``block``, halved until it divides ``h``
    (576-wide SmolLM2 at 128: 64); None below 16, GatherBlockQuantized's smallest."""
    while block >= 16 and h % block:
        block //= 2
    return block if block >= 16 else None


def _shared_head(graph, block: int = HEAD_BLOCK) -> tuple | None:
    """(LM head node, embedding Gather node, table name, block) if the head reads the
    embedding table, whose width takes 8-bit blocks of ``block`` or a smaller power of 2.

    The head is FusedMatMul(x, E, transB) on the table E a Gather reads, as
    postprocess.share_tied_weights and the fused graph write a tied head; scaling or
    soft-capping may follow it (Granite, Gemma-2).
    """
    inits = _initializers(graph)
    gathers = {n.input[0]: n for n in graph.node
               if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2}
    head = next((n for n in graph.node if n.op_type == "FusedMatMul" and n.input[1] in gathers
                 and any(a.name == "transB" and a.i == 1 for a in n.attribute)), None)
    if head is None:
        return None
    table, gather = head.input[1], gathers[head.input[1]]
    block = table_block(inits[table].dims[1], block)
    return None if block is None else (head, gather, table, block)


def _quantize_shared_head(graph, head, gather, table: str, block: int, refine: int) -> None:
    """LM head -> 8-bit MatMulNBits; the embedding Gather reads the same codes.  With
    ``refine`` > 0 the codes are kept as their two 4-bit halves instead (the same bytes):
    a 4-bit product of the high halves ranks the vocabulary, and the ``refine`` best get
    their logits from both halves, in fp32 (``_refined_head_nodes``)."""
    from onnx import numpy_helper

    inits = _initializers(graph)
    e = numpy_helper.to_array(inits[table])
    h = e.shape[1]
    codes, scale = _q8_table(e, block)
    old_head_weight = head.input[1]
    # one copy of the codes: MatMulNBits reads them as N x K/block x block, and so does
    # GatherBlockQuantized (quantize_axis 2), whose output is reshaped back to rows
    rows_shape = numpy_helper.from_array(np.array([0, 0, h], np.int64), f"{table}_rows_shape")
    if refine:
        head_nodes, embed_nodes, tensors = _refined_head_nodes(head, gather, table, codes,
                                                               scale, block, refine)
    else:
        head_nodes, embed_nodes, tensors = _q8_head_nodes(head, gather, table, codes, scale,
                                                          block)
    embed_nodes.append(_node("Reshape", [embed_nodes[-1].output[0], rows_shape.name],
                             list(gather.output), f"{gather.name}_rows_Reshape"))
    graph.initializer.extend([*tensors, rows_shape])
    _replace(graph, head.name, head_nodes)
    _replace(graph, gather.name, embed_nodes)
    _drop_unused(graph, {table, old_head_weight})


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **attrs):
    """One graph node, in ONNX Runtime's contrib domain where the operator is one of its."""
    from onnx import helper

    domain = "com.microsoft" if op in ("MatMulNBits", "GatherBlockQuantized") else ""
    return helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs)


def _q8_head_nodes(head, gather, table: str, codes, scale, block: int):
    """The head as one 8-bit MatMulNBits; the embedding gathers its codes."""
    from onnx import numpy_helper

    vocab, h = codes.shape[0], codes.shape[1] * codes.shape[2]
    tensors = [numpy_helper.from_array(codes, f"{table}_Q8"),
               numpy_helper.from_array(scale, f"{table}_scales"),
               numpy_helper.from_array(np.array([vocab, h // block, 1], np.int64),
                                       f"{table}_scales_shape")]
    q8, scales, scales_shape = (t.name for t in tensors)
    head_nodes = [_node("MatMulNBits", [head.input[0], q8, scales], list(head.output),
                        f"{head.name}_MatMulNBits", K=h, N=vocab, bits=8, block_size=block,
                        accuracy_level=HEAD_ACCURACY_LEVEL)]
    # only the scales (1/block of the table) are reshaped for the gather, as a constant
    embed_nodes = [
        _node("Reshape", [scales, scales_shape], [f"{scales}_3d"], f"{table}_scales_Reshape"),
        _node("GatherBlockQuantized", [q8, gather.input[1], f"{scales}_3d"],
              [f"{gather.output[0]}_blocks"], f"{gather.name}_GatherBlockQuantized", bits=8,
              block_size=block, gather_axis=0, quantize_axis=2)]
    return head_nodes, embed_nodes, tensors


def _refined_head_nodes(head, gather, table: str, codes, scale, block: int, refine: int):
    """The head ranked in 4 bits, its ``refine`` best logits exact (``HEAD_REFINE``).

    8-bit codes q (zero point 128) are ``16 (q_hi - 8) + q_lo``: their high halves (4-bit's
    default zero point, 8) and low halves (zero point 0), with the table's steps.  One
    MatMulNBits of 16 x (exact: a power of 2) over the high halves gives every logit to
    within the low halves' part ("coarse" logits, from half the bytes an 8-bit head reads);
    TopK picks the ``refine`` largest; GatherBlockQuantized gathers their rows from both
    halves, which rebuild the 8-bit table's rows exactly; one MatMul with the fp32 hidden
    state gives their logits, which ScatterElements writes over the coarse ones.  The
    embedding gathers its rows the same way.
    """
    from onnx import numpy_helper

    vocab, h = codes.shape[0], codes.shape[1] * codes.shape[2]
    x, logits = head.input[0], head.output[0]
    tag = head.name
    tensors = [numpy_helper.from_array(_pack4(codes >> 4), f"{table}_Q4hi"),
               numpy_helper.from_array(_pack4(codes & 15), f"{table}_Q4lo"),
               numpy_helper.from_array(scale.reshape(-1), f"{table}_scales"),
               numpy_helper.from_array(np.array([vocab, h // block, 1], np.int64),
                                       f"{table}_scales_shape"),
               numpy_helper.from_array(np.zeros((vocab, h // block, 1), np.uint8),
                                       f"{table}_lo_zero_points"),
               numpy_helper.from_array(np.array(16.0, np.float32), f"{table}_16"),
               numpy_helper.from_array(np.array([min(refine, vocab)], np.int64), f"{tag}_k"),
               numpy_helper.from_array(np.array([0, 0, -1, h], np.int64), f"{tag}_rows_shape"),
               numpy_helper.from_array(np.array([-1], np.int64), f"{tag}_last_axis")]
    hi, lo, scales, scales_shape, lo_zero, sixteen, k, rows_shape, last = (
        t.name for t in tensors)
    scales_3d = f"{scales}_3d"

    def rows(ids: str, out: str, name: str) -> list:
        """Rows ``ids`` of the 8-bit table, from its two halves, as blocks."""
        quantized = {"bits": 4, "block_size": block, "gather_axis": 0, "quantize_axis": 2}
        return [_node("GatherBlockQuantized", [hi, ids, scales_3d], [f"{out}_hi"],
                      f"{name}_hi", **quantized),
                _node("GatherBlockQuantized", [lo, ids, scales_3d, lo_zero], [f"{out}_lo"],
                      f"{name}_lo", **quantized),
                _node("Mul", [f"{out}_hi", sixteen], [f"{out}_hi16"], f"{name}_Mul"),
                _node("Add", [f"{out}_hi16", f"{out}_lo"], [out], f"{name}_Add")]

    head_nodes = [
        _node("Mul", [x, sixteen], [f"{tag}_x16"], f"{tag}_Mul"),
        _node("MatMulNBits", [f"{tag}_x16", hi, scales], [f"{tag}_coarse"],
              f"{tag}_MatMulNBits", K=h, N=vocab, bits=4, block_size=block,
              accuracy_level=HEAD_ACCURACY_LEVEL),
        _node("TopK", [f"{tag}_coarse", k], [f"{tag}_top", f"{tag}_ids"], f"{tag}_TopK",
              axis=-1),
        *rows(f"{tag}_ids", f"{tag}_blocks", f"{tag}_rows"),
        _node("Reshape", [f"{tag}_blocks", rows_shape], [f"{tag}_rows"], f"{tag}_rows_Reshape"),
        _node("Unsqueeze", [x, last], [f"{tag}_column"], f"{tag}_Unsqueeze"),
        _node("MatMul", [f"{tag}_rows", f"{tag}_column"], [f"{tag}_exact"], f"{tag}_MatMul"),
        _node("Squeeze", [f"{tag}_exact", last], [f"{tag}_refined"], f"{tag}_Squeeze"),
        _node("ScatterElements", [f"{tag}_coarse", f"{tag}_ids", f"{tag}_refined"], [logits],
              f"{tag}_ScatterElements", axis=-1)]
    embed_nodes = [
        _node("Reshape", [scales, scales_shape], [scales_3d], f"{table}_scales_Reshape"),
        *rows(gather.input[1], f"{gather.output[0]}_blocks", f"{gather.name}_rows")]
    return head_nodes, embed_nodes, tensors


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


def quantize_tied_head(graph, block: int = HEAD_BLOCK, refine: int = HEAD_REFINE
                       ) -> int | None:
    """An 8-bit table shared by a tied LM head and the embedding, in blocks of ``block`` (or
    the largest smaller power of 2 that divides the width), the head's ``refine`` best
    logits exact from a 4-bit ranking (0: an 8-bit head); returns the block, None if the
    head is untied (or too narrow)."""
    shared = _shared_head(graph, block)
    if shared is not None:
        _quantize_shared_head(graph, *shared, refine)
    return None if shared is None else shared[-1]


def head_description(block: int | None, refine: int = 0) -> str:
    """What a manifest says of the LM head and embedding after ``quantize_tied_head``."""
    if not block:
        return "not tied (or not found): the head quantized as the other matrices, the embedding fp32"
    if not refine:
        return f"shared 8-bit table, blocks of {block}"
    return (f"shared 8-bit table, blocks of {block}, as two 4-bit halves: the high halves "
            f"rank the vocabulary, the best {refine} logits exact")


def quantize_int4(src: Path, dst: Path,
                  accuracy_level: int = ACCURACY_LEVEL, remainder: str = REMAINDERS[0],
                  head_block: int = HEAD_BLOCK, finer: str = FINER[0],
                  head_refine: int = HEAD_REFINE) -> dict:
    """Write the 4-bit copy of ``src`` to ``dst``; returns what the manifest records of it.
    ``head_block``: the 8-bit blocks of a tied LM head and embedding (``HEAD_BLOCKS``);
    ``head_refine``: how many of its logits are exact after a 4-bit ranking (``HEAD_REFINE``);
    ``finer``: what matrices on a finer grid than 4 bits become (``FINER``)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    graph = model.graph
    shared = quantize_tied_head(graph, head_block, head_refine)
    inits = _initializers(graph)
    nodes, means, on_grid, fitted, kept8, dropped = [], {}, 0, 0, 0, set()
    for node in graph.node:  # one pass, so the new nodes keep the graph's order
        weight = _weight(node, inits)
        if weight is None:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        k, n = w.shape
        grid = grid_codes(w)
        if grid is not None:  # exact: the grid's codes, its remainders by the block means
            x = node.input[0]
            if x not in means:  # matrices that read the same input share its block means
                tag = f"{x.strip('/').replace('/', '_')}_{len(means)}"
                mean_nodes, means[x] = _blockmean_nodes(x, tag)
                if remainder == "folded":
                    more, means[x] = _augment_nodes(x, means[x], tag)
                    mean_nodes += more
                nodes.extend(mean_nodes)
            build = _folded_nodes if remainder == "folded" else _grid_nodes
            new, tensors = build(node, node.input[1], *grid, means[x], k, n, accuracy_level)
            on_grid += 1
        elif finer == "int8" and finer_grid(w):  # a 5- to 8-bit source: 8-bit codes
            if accuracy_level == 1:  # as two 4-bit products: ORT's fp32-activation kernel
                new, tensors = _nibble_nodes(node, node.input[1], *codes8(w), k, n,
                                             accuracy_level)
            else:
                new, tensors = _nbits_node(node, node.input[1], *codes8(w), k, n,
                                           node.output[0], accuracy_level, bits=8)
                new = [new]
            kept8 += 1
        else:  # off any grid (or a finer one, told to): 4-bit codes fitted per block
            new, tensors = _nbits_node(node, node.input[1], *fitted_codes(w), k, n,
                                       node.output[0], accuracy_level)
            new, fitted = [new], fitted + 1
        nodes.extend(new)
        graph.initializer.extend(tensors)
        dropped.add(node.input[1])
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, dropped)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    files.save(model, dst)
    return {"op": "com.microsoft.MatMulNBits", "bits": BITS, "block_size": BLOCK,
            "zero_points": "per block, of the codes' bits", "accuracy_level": accuracy_level,
            "remainder": remainder, "finer": finer,
            "matmuls_exact_grid": on_grid, "matmuls_fitted": fitted, "matmuls_8bit": kept8,
            # the 8-bit ones as two 4-bit products each (_nibble_nodes), at level 1
            "matmuls_8bit_as_two_4bit": kept8 if accuracy_level == 1 else 0,
            "lm_head_and_embedding": head_description(shared, head_refine),
            "head_block": shared, "head_refine": head_refine if shared else None}
