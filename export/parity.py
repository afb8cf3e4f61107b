"""Does the exported graph compute what the PyTorch model computes?

For a few prompts, PyTorch runs greedy decoding with its KV cache and keeps its logits at
every prompt position and every generated step.  ONNX Runtime then

- runs the same tokens teacher-forced through its own KV cache (prefill once, then one token
  a step), so the logits are compared position by position;
- decodes greedily on its own, so the generated tokens are compared.

fp32 (``model.onnx``, ``model.ort``): max |logit difference| <= ``FP32_ATOL`` and the same
greedy tokens; a divergence is only forgiven at a near-tie (the PyTorch top-2 logits closer
than ``FP32_ATOL``), where rounding legitimately decides.
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
FP32_ATOL = 1e-3
INT8_MIN_CORR = 0.99
INT8_MIN_TOP1 = 0.9


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


def references(model, lm: OnnxLM, prompts=PROMPTS, new_tokens: int = NEW_TOKENS) -> list[Reference]:
    """PyTorch references for ``prompts``, tokenized as the ONNX runtime tokenizes them."""
    return [torch_reference(model, lm.encode(p), new_tokens, lm.eos_ids) for p in prompts]


def teacher_forced(lm: OnnxLM, ref: Reference) -> np.ndarray:
    """ONNX logits at the reference's positions: prefill, then the reference tokens one by one."""
    logits, cache = lm.step(ref.ids)
    rows = [logits]
    for token in ref.tokens[:-1]:
        logits, cache = lm.step([token], cache)
        rows.append(logits)
    return np.concatenate(rows)


def _near_tie(ref: Reference, tokens: list[int]) -> bool:
    """Do the greedy runs part where PyTorch's best two logits are closer than FP32_ATOL?"""
    for j, (a, b) in enumerate(zip(ref.tokens, tokens)):
        if a != b:
            top2 = np.sort(ref.logits[len(ref.ids) - 1 + j])[-2:]
            return bool(top2[1] - top2[0] < FP32_ATOL)
    return len(ref.tokens) == len(tokens)


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def compare(lm: OnnxLM, refs: list[Reference]) -> dict:
    """Figures of one ONNX model against the PyTorch references."""
    diffs, corrs, top1, same, ties = [], [], [], 0, 0
    for ref in refs:
        ours = teacher_forced(lm, ref)
        diffs.append(float(np.abs(ours - ref.logits).max()))
        corrs.append(_correlations(ours.astype(np.float64), ref.logits.astype(np.float64)))
        top1.append(ours.argmax(1) == ref.logits.argmax(1))
        tokens = lm.greedy(ref.ids, len(ref.tokens))[0]
        if tokens == ref.tokens:
            same += 1
        elif _near_tie(ref, tokens):
            ties += 1
    corr = np.concatenate(corrs)
    return {
        "prompts": len(refs),
        "positions": int(corr.size),
        "max_abs_logit_diff": max(diffs),
        "logit_corr_mean": float(corr.mean()),
        "logit_corr_min": float(corr.min()),
        "top1_agreement": float(np.concatenate(top1).mean()),
        "greedy_identical": same / len(refs),
        "greedy_same": same,
        "greedy_near_ties": ties,
    }


def failure(figures: dict, int8: bool) -> str | None:
    """Why ``figures`` are out of tolerance, or None."""
    if int8:
        if figures["logit_corr_mean"] < INT8_MIN_CORR:
            return f"logit correlation {figures['logit_corr_mean']:.4f} < {INT8_MIN_CORR}"
        if figures["top1_agreement"] < INT8_MIN_TOP1:
            return f"top-1 agreement {figures['top1_agreement']:.3f} < {INT8_MIN_TOP1}"
        return None
    if figures["max_abs_logit_diff"] > FP32_ATOL:
        return f"max |logit difference| {figures['max_abs_logit_diff']:.2e} > {FP32_ATOL}"
    if figures["greedy_same"] + figures["greedy_near_ties"] < figures["prompts"]:
        return "greedy tokens differ from PyTorch's"
    return None
