"""One forward+backward pass -> the gradient of the task loss w.r.t. every singular value.

For a target y = W x (+ b) with W = U diag(s) V^T, dL/dW = G = sum_t d_t x_t^T
(d_t = dL/dy_t), so

    g_i = dL/ds_i = u_i^T G v_i = sum_t (U^T d_t)_i (V^T x_t)_i.

A forward hook keeps each target's input x; a hook on its output gradient
projects d and x onto the singular vectors and adds up g.  No weight needs a
.grad, and G never exists.

Scores of cutting the tail (the singular values i >= k that rate keeps out):

- ``first_order``: -sum_{i>=k} s_i g_i, the first-order change of the loss when
  those s_i go to 0 (negative: cutting helps);
- ``tail_grad``: sum_{i>=k} g_i (positive: a gradient step shrinks them).

A matrix is ranked by its best score over the rate grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from .config import DEFAULT_SCORE, SCORES
from .evaluate import Scorer
from .factorize import decompose, rank_for
from .targets import LASER_RATES, Target, decoder_layers, weight_matrix


@dataclass
class MatrixScan:
    target: Target
    s: torch.Tensor  # singular values, descending
    g: torch.Tensor  # dL/ds
    scores: dict[str, dict[float, float]] = field(default_factory=dict)  # score -> rate -> value

    def benefit(self, score: str) -> float:
        """Higher is better: the predicted gain of the best rate under ``score``."""
        vals = self.scores[score].values()
        return max(-v for v in vals) if score == "first_order" else max(vals)

    def best_rate(self, score: str) -> float:
        table = self.scores[score]
        if score == "first_order":
            return min(table, key=table.get)
        return max(table, key=table.get)


def tail_scores(s: torch.Tensor, g: torch.Tensor, rates=LASER_RATES, shape=None) -> dict:
    m, n = shape if shape is not None else (len(s), len(s))
    out = {name: {} for name in SCORES}
    for rate in rates:
        k = rank_for(rate, m, n)
        out["first_order"][rate] = float(-(s[k:] * g[k:]).sum())
        out["tail_grad"][rate] = float(g[k:].sum())
    return out


def singular_value_gradients(model: nn.Module, tokenizer, examples, targets: list[Target],
                             progress: bool = True, svds: dict | None = None,
                             max_memory: int | None = None) -> tuple[dict[str, MatrixScan], dict]:
    """g = dL/ds for every target, from one forward+backward over ``examples``.

    Returns the scans keyed by ``target.key`` and timings.  ``svds`` (key ->
    (U, S, V)) is filled with the decompositions when given, for reuse (not under a
    budget: they would all be resident).  ``max_memory`` (bytes) plans batches and
    passes with budget.plan_scan, or raises EdgeC2IError before any heavy work; the plan's
    budget for one decomposition is ``timings["svd_budget"]``, so that the search
    decomposes its candidates again within it.
    """
    from .budget import plan_scan

    scorer = Scorer(tokenizer, examples)
    plan = plan_scan(model, targets, scorer.longest, max_memory)
    scorer = Scorer(tokenizer, examples, plan.batch_tokens, plan.lm_head_chunk)
    timings = {"svd_s": 0.0, "grad_s": 0.0, "loss": 0.0, "passes": plan.passes,
               "batch_tokens": plan.batch_tokens, "plan": plan.describe(),
               "svd_budget": plan.svd_budget}
    scans = {}
    for group in plan.groups:
        keep = svds if max_memory is None else None
        scans.update(_scan_group(model, scorer, group, plan.svd_budget, keep, progress, timings))
    return scans, timings


def _scan_group(model, scorer: Scorer, targets: list[Target], svd_budget, svds, progress,
                timings) -> dict[str, MatrixScan]:
    """One forward+backward for ``targets``; blocks below the lowest one run without autograd."""
    t0 = time.perf_counter()
    factors = {}
    for t in tqdm(targets, desc="svd", disable=not progress, leave=False):
        factors[t.key] = decompose(weight_matrix(model.get_submodule(t.name)), svd_budget)
        if svds is not None:
            svds[t.key] = factors[t.key]
    timings["svd_s"] += time.perf_counter() - t0

    g = {t.key: torch.zeros_like(factors[t.key][1], dtype=torch.float64) for t in targets}
    hooks = []

    def watch(key):
        U, _, V = factors[key]

        def forward_hook(module, args, output):
            x = args[0].detach()

            def on_grad(d):
                xs = x.reshape(-1, x.shape[-1]).float() @ V
                ds = d.reshape(-1, d.shape[-1]).float() @ U
                g[key].add_((ds * xs).sum(0).double())

            output.register_hook(on_grad)
        return forward_hook

    for t in targets:
        hooks.append(model.get_submodule(t.name).register_forward_hook(watch(t.key)))
    # all weights are frozen: the gradient flows from the hidden states entering the lowest
    # target block on (the blocks below keep no activations)
    lowest = min(t.layer for t in targets)

    def start_grad(module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"].detach().requires_grad_(True)
        return args, kwargs

    hooks.append(decoder_layers(model)[lowest].register_forward_pre_hook(start_grad,
                                                                         with_kwargs=True))
    t1 = time.perf_counter()
    try:
        with torch.enable_grad():
            desc = f"gradients (layers {lowest}-{max(t.layer for t in targets)})"
            timings["loss"] = scorer.loss_and_backward(model, desc if progress else None)
    finally:
        for h in hooks:
            h.remove()
    timings["grad_s"] += time.perf_counter() - t1

    scans = {}
    for t in targets:
        _, S, _ = factors.pop(t.key)
        shape = tuple(weight_matrix(model.get_submodule(t.name)).shape)
        gg = g[t.key].float()
        scans[t.key] = MatrixScan(t, S, gg, tail_scores(S, gg, shape=shape))
    return scans


def rank_targets(scans: dict[str, MatrixScan], score: str = DEFAULT_SCORE) -> list[MatrixScan]:
    if score not in SCORES:
        from .errors import EdgeC2IError

        raise EdgeC2IError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    return sorted(scans.values(), key=lambda sc: sc.benefit(score), reverse=True)
