"""One forward+backward pass -> the gradient of the task loss w.r.t. every singular value.

For a target y = W x (+ b) with W = U diag(s) V^T, dL/dW = G = sum_t d_t x_t^T
(d_t = dL/dy_t), so

    g_i = dL/ds_i = u_i^T G v_i = sum_t (U^T d_t)_i (V^T x_t)_i.

The scores need s_i g_i, and since s_i v_i = W^T u_i and s_i u_i = W v_i,

    s_i g_i = sum_t (u_i^T d_t)(u_i^T W x_t)       (W wide, m <= n: left vectors)
            = sum_t (v_i^T W^T d_t)(v_i^T x_t)     (W tall, m > n: right vectors)

which needs the singular vectors of one side only: the eigenvectors of the p x p Gram
matrix W W^T or W^T W (p = min(m, n)), in float64 still several times faster
than the SVD (bench/results/scan.json, "svd_s").  Hooks add up, over tokens,
the p x p matrix M = sum_t d_t (W x_t)^T (or sum_t (W^T d_t) x_t^T), and
s_i g_i = q_i^T M q_i: the pass needs no singular vector, and only M (p x p) per
matrix stays resident.  No weight needs a .grad and G never exists.  The bases depend on
the weights only: ``cached_spectral_basis`` keeps them on disk (spectra.py), so a model's
later scans, on any task, read them instead of decomposing every matrix again.  The scan scores
the gold answer only (Scorer's ``gold_only``): the other choices change nothing in its
loss.

Scores of cutting the tail (the singular values i >= k that rate keeps out):

- ``first_order``: -sum_{i>=k} s_i g_i, the first-order change of the loss when
  those s_i go to 0 (negative: cutting helps);
- ``tail_grad``: sum_{i>=k} g_i (positive: a gradient step shrinks them).

A matrix is ranked by its best score over the rate grid.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from . import threads
from .budget import release_freed_memory
from .config import DEFAULT_SCORE, SCORES
from .evaluate import Scorer, grad_from
from .factorize import rank_for
from .targets import LASER_RATES, Target, weight_matrix


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


def tail_scores(s: torch.Tensor, g: torch.Tensor, rates=LASER_RATES, shape=None,
                sg: torch.Tensor | None = None) -> dict:
    """The scores of every rate; ``sg``: s * g when known directly (the scan's)."""
    m, n = shape if shape is not None else (len(s), len(s))
    sg = s * g if sg is None else sg
    out = {name: {} for name in SCORES}
    for rate in rates:
        k = rank_for(rate, m, n)
        out["first_order"][rate] = float(-sg[k:].sum())
        out["tail_grad"][rate] = float(g[k:].sum())
    return out


def spectral_basis(W: torch.Tensor) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """(left, Q, s): the singular vectors of W's smaller side (left: U, m <= n; else V),
    as the columns of Q (p x p), and the singular values s, both in descending order.

    From the eigendecomposition of the p x p Gram matrix, in float64: the Gram squares the
    singular values, and in float32 those below ~1e-3 of the largest (SmolLM2's q
    projections have them) lose their digits (svd.py, "Precision").  Eigenvectors of
    nearly equal singular values may come out as any basis of their span; the tail sums
    the scores take do not depend on that choice.
    """
    W = W.detach().double()
    left = W.shape[0] <= W.shape[1]
    lam, Q = torch.linalg.eigh(W @ W.T if left else W.T @ W)
    return (left, Q.flip(1).float().contiguous(),
            lam.flip(0).clamp_min(0).sqrt().float())


def cached_spectral_basis(W: torch.Tensor, counts: dict | None = None,
                          out: torch.Tensor | None = None
                          ) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """``spectral_basis(W)``, read from the disk cache when an earlier run stored it
    (spectra.py), else computed and stored.  ``counts`` tallies "read", "computed" and
    "written_bytes"; ``out`` (p x p float32) is where a basis read from disk goes."""
    from . import spectra

    counts = {} if counts is None else counts
    directory = spectra.cache_dir()
    name = spectra.key(W) if directory is not None else None
    if name is not None:
        found = spectra.load(directory, name, min(W.shape), out)
        if found is not None:
            counts["read"] = counts.get("read", 0) + 1
            return found
    basis = spectral_basis(W)
    counts["computed"] = counts.get("computed", 0) + 1
    if name is not None:
        counts["written_bytes"] = counts.get("written_bytes", 0) + spectra.save(
            directory, name, *basis)
    return basis


def singular_value_gradients(model: nn.Module, tokenizer, examples, targets: list[Target],
                             progress: bool = True,
                             max_memory: int | None = None) -> tuple[dict[str, MatrixScan], dict]:
    """g = dL/ds for every target, from one forward+backward over ``examples``.

    Returns the scans keyed by ``target.key`` and timings.  ``max_memory`` (bytes) plans
    batches and passes with budget.plan_scan, or raises EdgeC2IError before any heavy work;
    without it the plan fits budget.default_budget.  The budget planned for is
    ``timings["budget"]``, and the plan's budget for one decomposition
    ``timings["svd_budget"]``, so that the search decomposes its candidates within it.
    """
    from .budget import plan_scan

    scorer = Scorer(tokenizer, examples, gold_only=True)
    plan = plan_scan(model, targets, scorer.longest, max_memory)
    scorer = Scorer(tokenizer, examples, plan.batch_tokens, plan.lm_head_chunk, gold_only=True)
    timings = {"svd_s": 0.0, "grad_s": 0.0, "loss": 0.0, "passes": plan.passes,
               "batch_tokens": plan.batch_tokens, "plan": plan.describe(),
               "budget": plan.budget, "svd_budget": plan.svd_budget,
               "spectra": {"read": 0, "computed": 0, "written_bytes": 0}}
    if progress:
        print(f"memory plan: {timings['plan']}", file=sys.stderr)
    scans = {}
    for group in plan.groups:
        scans.update(_scan_group(model, scorer, group, progress, timings))
    if progress:
        print(_spectra_note(timings["spectra"]), file=sys.stderr)
    return scans, timings


def _spectra_note(counts: dict) -> str:
    """One line on where the singular vectors came from (spectra.py's cache)."""
    from . import spectra

    directory = spectra.cache_dir()
    if directory is None:
        return f"singular vectors: {counts['computed']} computed ({spectra.ENV}=off: not kept)"
    line = f"singular vectors: {counts['read']} read from {directory}"
    if counts["computed"]:
        line += (f", {counts['computed']} computed and kept there "
                 f"({counts['written_bytes'] / 2**20:.0f} MB; {spectra.ENV}=off skips)")
    return line


def _scan_group(model, scorer: Scorer, targets: list[Target], progress,
                timings) -> dict[str, MatrixScan]:
    """One forward+backward for ``targets``; blocks below the lowest one run without autograd.

    The pass adds up, per target, the p x p matrix M = sum_t a_t b_t^T of the two sides of
    the formula (wide W: a = d, b = W x; tall W: a = W^T d, b = x): one outer product per
    token, and no singular vector is needed during the pass.  After it, each matrix's
    basis Q gives s_i g_i = q_i^T M q_i, one matrix at a time.
    """
    shapes = {t.key: tuple(weight_matrix(model.get_submodule(t.name)).shape) for t in targets}
    M = {t.key: torch.zeros(min(shapes[t.key]), min(shapes[t.key])) for t in targets}
    hooks = []

    def watch(key):
        left = shapes[key][0] <= shapes[key][1]

        def forward_hook(module, args, output):
            if left:  # the output W x, the bias taken off
                bias = getattr(module, "bias", None)
                b = output.detach() if bias is None else output.detach() - bias
            else:
                b = args[0].detach()
            b = b.reshape(-1, b.shape[-1])
            W = weight_matrix(module).detach()

            def on_grad(d):
                d = d.reshape(-1, d.shape[-1])
                a = d if left else d @ W
                M[key].addmm_(a.float().T, b.float())

            output.register_hook(on_grad)
        return forward_hook

    for t in targets:
        hooks.append(model.get_submodule(t.name).register_forward_hook(watch(t.key)))
    # all weights are frozen: the gradient flows from the hidden states entering the lowest
    # target block on (the blocks below keep no activations)
    lowest = min(t.layer for t in targets)
    t1 = time.perf_counter()
    try:
        with torch.enable_grad(), grad_from(model, lowest):
            desc = f"gradients (layers {lowest}-{max(t.layer for t in targets)})"
            timings["loss"] = scorer.loss_and_backward(model, desc if progress else None)
    finally:
        for h in hooks:
            h.remove()
    timings["grad_s"] += time.perf_counter() - t1

    t0 = time.perf_counter()
    release_freed_memory()  # the pass's activations: not resident under the bases
    scans = {}
    # one set of p x p buffers per size, reused by every matrix of that size: a fresh block
    # per matrix left the heap fragmented (glibc carves small lasting allocations out of
    # each freed block, and the next block no longer fits in what is left), and a cached
    # scan's resident set grew by up to 4 MB per matrix (SmolLM2 at 1.2 GB: 2.1 GB)
    buffers: dict[int, tuple[torch.Tensor, ...]] = {}
    for t in tqdm(targets, desc="singular vectors", disable=not progress, leave=False):
        threads.rebalance()
        p = min(shapes[t.key])
        if p not in buffers:
            buffers[p] = (torch.empty(p, p),) + tuple(
                torch.empty(p, p, dtype=torch.float64) for _ in range(3))
        read, Q, M64, QtM = buffers[p]
        _, Q32, S = cached_spectral_basis(weight_matrix(model.get_submodule(t.name)),
                                          timings["spectra"], out=read)
        Q.copy_(Q32)  # float64, as M: s_i g_i = q_i^T M q_i
        del Q32
        M64.copy_(M.pop(t.key))
        sg = torch.matmul(Q.T, M64, out=QtM).mul_(Q.T).sum(1)
        shape = shapes[t.key]
        # g = (s g) / s; a singular value that is 0 to float precision gets g = 0
        tiny = S <= S[0] * torch.finfo(torch.float32).eps * max(shape)
        gg = torch.where(tiny, 0.0, sg / S.double().clamp_min(1e-300)).float()
        scans[t.key] = MatrixScan(t, S, gg, tail_scores(S, gg, shape=shape, sg=sg.float()))
    del buffers
    release_freed_memory()
    timings["svd_s"] += time.perf_counter() - t0
    return scans


def rank_targets(scans: dict[str, MatrixScan], score: str = DEFAULT_SCORE) -> list[MatrixScan]:
    if score not in SCORES:
        from .errors import EdgeC2IError

        raise EdgeC2IError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    return sorted(scans.values(), key=lambda sc: sc.benefit(score), reverse=True)
