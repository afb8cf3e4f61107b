"""Does the exported graph compute what the PyTorch model computes?

For a few prompts, PyTorch runs greedy decoding with its KV cache and keeps its logits at
every prompt position and every generated step.  ONNX Runtime then

- runs the same tokens teacher-forced through its own KV cache (prefill once, then one token
  a step), so the logits are compared position by position;
- would decode greedily to the same tokens iff its argmax equals every reference token
  along that path (by induction over the steps), so one teacher-forced run checks both.

fp32 (``model.onnx``, ``model.ort``): max |logit difference| <= ``FP32_ATOL`` and the same
greedy tokens; a divergence is only forgiven at a near-tie (the PyTorch top-2 logits closer
than ``FP32_ATOL``), where rounding legitimately decides.  ``FP32_ATOL`` is the one fp32
tolerance: the manifest records it, and device_tests hold an export's device run to it.
int8: the logits are no longer equal, so the check is statistical: mean Pearson correlation
of the logit vectors >= ``INT8_MIN_CORR`` and top-1 token agreement >= ``INT8_MIN_TOP1``
(measured figures are in the export manifest and the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .runtime import OnnxLM

PROMPTS = (
    "The capital of France is",
    "Q: Is a tomato a fruit or a vegetable?\nA:",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "Translate to French: I like green apples.\n",
)
NEW_TOKENS = 12
# ONNX Runtime fuses and reorders float32 sums, so fp32 logits differ from PyTorch's by
# rounding only; the fp32 figures in bench/results (export.json, device_*.json) sit an order
# of magnitude below this, and an adapted 30-layer model once measured just over 1e-3.  The
# exporter refuses past it and device_tests read the same value from the export's manifest.
FP32_ATOL = 2e-3
INT8_MIN_CORR = 0.98
INT8_MIN_TOP1 = 0.85
# int4 of a model that was not 4-bit to begin with (Gemma-3's Q5/Q6 GGUF matrices, or a
# model whose factors carry near-ties everywhere) loses far more (bench/results/runtime.json,
# export.json); these bounds catch a broken graph (correlation near 0), not a lossy one: the
# figures themselves go to the manifest and the console.
INT4_MIN_CORR = 0.9
INT4_MIN_TOP1 = 0.25
# A head that ranks the vocabulary in 4 bits and computes only its best logits exactly
# (export --head-refine) gives the others to 4 bits: over the whole vocabulary its int8
# correlates with fp32 below INT8_MIN_CORR (0.977 on the dense SmolLM2, 0.988 on Gemma-3,
# against 0.999 for the 8-bit head: bench/results/runtime.json), while its top-1 agreement
# goes up; such files are held to INT4_MIN_CORR, the bound that catches a broken graph.


@dataclass
class Reference:
    """PyTorch's greedy run of one prompt."""

    ids: list[int]
    tokens: list[int]  # greedy continuation
    logits: np.ndarray  # (len(ids) + len(tokens) - 1) x vocab: prompt positions, then steps


@torch.no_grad()
def torch_reference(model, ids: list[int], new_tokens: int, eos: set[int]) -> Reference:
    """Greedy decoding in PyTorch with its KV cache; the logits of every position it scored."""
    out = model(torch.tensor([ids]), use_cache=True)
    rows, tokens = [out.logits[0].float()], []
    past, last = out.past_key_values, out.logits[0, -1]
    for _ in range(new_tokens):
        tokens.append(int(last.argmax()))
        if tokens[-1] in eos or len(tokens) == new_tokens:
            break
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
        past, last = out.past_key_values, out.logits[0, -1]
        rows.append(out.logits[0].float())
    return Reference(ids, tokens, torch.cat(rows).numpy())


def references(model, lm: OnnxLM, prompts: tuple[str, ...] | None = None,
               new_tokens: int | None = None) -> list[Reference]:
    """PyTorch references for ``prompts``, tokenized as the ONNX runtime tokenizes them."""
    n = new_tokens or NEW_TOKENS
    return [torch_reference(model, lm.encode(p), n, lm.eos_ids) for p in prompts or PROMPTS]


def teacher_forced(lm: OnnxLM, ref: Reference) -> np.ndarray:
    """ONNX logits at the reference's positions: prefill, then the reference tokens one by one."""
    logits, cache = lm.step(ref.ids)
    rows = [logits]
    for token in ref.tokens[:-1]:
        logits, cache = lm.step([token], cache)
        rows.append(logits)
    return np.concatenate(rows)


def greedy_agreement(ref: Reference, ours: np.ndarray) -> str:
    """"same", "tie" or "differ": would greedy decoding on ``ours`` give the reference tokens?

    Along the reference path, an ONNX argmax equal to every reference token means its own
    greedy run produces exactly these tokens.  A first mismatch where PyTorch's best two
    logits are closer than FP32_ATOL is a near-tie that rounding legitimately decides.
    """
    start = len(ref.ids) - 1
    for j, token in enumerate(ref.tokens):
        if int(ours[start + j].argmax()) != token:
            top2 = np.sort(ref.logits[start + j])[-2:]
            return "tie" if top2[1] - top2[0] < FP32_ATOL else "differ"
    return "same"


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def compare(lm: OnnxLM, refs: list[Reference]) -> dict:
    """Figures of one ONNX model against the PyTorch references."""
    diffs, corrs, top1, greedy = [], [], [], []
    for ref in refs:
        ours = teacher_forced(lm, ref)
        diffs.append(float(np.abs(ours - ref.logits).max()))
        corrs.append(_correlations(ours.astype(np.float64), ref.logits.astype(np.float64)))
        top1.append(ours.argmax(1) == ref.logits.argmax(1))
        greedy.append(greedy_agreement(ref, ours))
    corr = np.concatenate(corrs)
    return {
        "prompts": len(refs),
        "positions": int(corr.size),
        "max_abs_logit_diff": max(diffs),
        "logit_corr_mean": float(corr.mean()),
        "logit_corr_min": float(corr.min()),
        "top1_agreement": float(np.concatenate(top1).mean()),
        "greedy_identical": greedy.count("same") / len(refs),
        "greedy_same": greedy.count("same"),
        "greedy_near_ties": greedy.count("tie"),
    }


def failure(figures: dict, precision: str = "fp32", refined: bool = False) -> str | None:
    """Why ``figures`` of a ``precision`` (fp32, int8, int4) model are out of tolerance, or
    None; ``refined``: its head computes only its best logits exactly (INT4_MIN_CORR)."""
    if precision != "fp32":
        min_corr, min_top1 = {"int8": (INT8_MIN_CORR, INT8_MIN_TOP1),
                              "int4": (INT4_MIN_CORR, INT4_MIN_TOP1)}[precision]
        min_corr = min(min_corr, INT4_MIN_CORR) if refined else min_corr
        if figures["logit_corr_mean"] < min_corr:
            return f"logit correlation {figures['logit_corr_mean']:.4f} < {min_corr}"
        if figures["top1_agreement"] < min_top1:
            return f"top-1 agreement {figures['top1_agreement']:.3f} < {min_top1}"
        return None
    if figures["max_abs_logit_diff"] > FP32_ATOL:
        return f"max |logit difference| {figures['max_abs_logit_diff']:.2e} > {FP32_ATOL}"
    if figures["greedy_same"] + figures["greedy_near_ties"] < figures["prompts"]:
        return "greedy tokens differ from PyTorch's"
    return None
