"""Compress to impress: the smallest model that keeps the task, priced by the same gradients.

One calibration pass (forward+backward over the calibration sample, as the scan's)
collects, for every linear matrix y = W x:

- C = sum_t x_t x_t^T over the real tokens of its input (matrices that read the same
  input, q/k/v and gate/up, share one);
- G = dL/dW, the gradient of the task loss (the gold answers');
- D = sum_t |d_t|^2, the squared gradient of the loss w.r.t. its output.

**Whitened truncation** (SVD-LLM).  With S the Cholesky factor of C (C = S S^T,
regularised by a small multiple of its mean diagonal when needed) and W S = U diag(s) V^T,

    W = sum_i s_i u_i b_i^T,    b_i^T = v_i^T S^{-1},

and keeping the first k components leaves an output error on the calibration inputs of
exactly sum_{i>=k} s_i^2: each whitened singular value prices its own removal.  The
factors are A = U_k diag(s_k)^(1/2) and B = diag(s_k)^(1/2) [b_1 .. b_k]^T, two MatMuls
like any reduction (the square root on each side quantizes better than all of s in A).
(``basis="plain"``: W's own SVD; the output error of component i is then
s_i^2 v_i^T C v_i, cross terms aside.)

**Prices** (per component, in the order they are cut: the smallest s first):

- ``output``: e_i / sum_j e_j, the output error as a share of the matrix's output energy;
- ``fisher``: (1/2) h e_i with h = N D / (m T) (N examples, T tokens, m outputs): the
  output error weighted by how much the loss feels that matrix's output (an isotropic
  empirical Fisher);
- ``task``: the fisher price plus the first-order change of the task loss when the
  component goes, -s_i u_i^T G b_i (negative: cutting it helps the task, as LASER's
  reductions do).

The default is ``fisher`` (config.DEFAULT_PRICE), chosen on bench/bench_compress.py's
pairs at 0.8 of the linear parameters (README, "Compress to a size"): it had the lower
test loss than ``output`` on the open task (qa_wikidata, both models) and on
epistemic_reasoning, and kept the base's accuracy there; ``task`` broke SmolLM2 on every
task (loss 10-16): a first-order prediction summed over hundreds of cut components is far
outside the range where it holds.

**Allocation.**  A rank-k pair costs k (m + n) parameters, fewer than W's m n only when
k < k* = m n / (m + n); so each matrix is either dense or below k*.  ``global`` finds,
by bisection on a multiplier lambda, the ranks minimising sum(price of what is cut) +
lambda x parameters, then adds back the best-priced components the budget still has
room for; ``uniform`` keeps the same share of every matrix's rank.  The budget counts
the linear layers' parameters (embeddings and the LM head are not reduced).

**Memory** (budget.plan_compress, ``max_memory``).  The calibration pass holds the Gram
matrices and its batch's activations (no weight gradient unless the ``task`` price asks);
the decompositions hold each matrix's factors up to k* while each Gram matrix goes once the
matrices reading it are done; the evaluations hold the factors (a trial's factor modules are
views of them).  The calibration batch is sized to the budget, and the freed memory of each
phase is handed back to the system before the next (budget.release_freed_memory).

**Modes.**  Budget (``size``, ``params``, or ``file_mb``: the exported file of a precision,
turned into linear parameters by FILE_BYTES, and for an int4 file lowered until the dense
matrices on a finer grid, 8-bit there, fit too: ``fit_file``): the allocation for that
budget.
Keep accuracy (neither): the sizes of ``CompressConfig.sizes``, largest first, each
checked on the evaluation sample; the ladder stops at the first size whose loss rises more
than ``loss_tolerance`` or that is worse than the unmodified model by ``keep_rule``
(``size_kept``: by default a one-sided sign test of the examples that changed, so that a
one-example dip among many changes is not taken for a loss), and the last size before it
is kept.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from . import threads
from .budget import CompressPlan, k_star, plan_compress, release_freed_memory
from .config import KEEP_ALPHA, CompressConfig, Reduction
from .errors import EdgeC2IError
from .evaluate import Result, Scorer, grad_from
from .export.int4 import HEAD_BLOCK, finer_grid
from .factorize import LowRankLinear, count_params, swap
from .targets import Target, find_targets, is_conv1d, weight_matrix
from .tasks import Task, load_task, split
from .verdict import paired_counts, paired_difference, sign_test_p

__all__ = ["Calibration", "CompressReport", "Spectrum", "allocate", "apply_ranks", "calibrate",
           "compress", "compressed", "decompose_all", "linear_params", "per_layer_table",
           "ranks_for", "restore", "spectrum", "uniform"]


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """What one forward+backward over the calibration sample gives each target (by key)."""

    grams: dict[str, torch.Tensor]  # X^T X of the target's input (shared objects when shared)
    grads: dict[str, torch.Tensor] | None  # dL/dW, m x n (only the ``task`` price needs it)
    out_grad_sq: dict[str, float]  # sum over tokens of |dL/dy_t|^2
    tokens: int  # real tokens the sums ran over
    examples: int
    loss: float
    seconds: float
    shared: dict[str, str] = field(default_factory=dict)  # key -> key whose input it reads


def calibrate(model: nn.Module, tokenizer, examples, targets: list[Target],
              progress: bool = True, grads: bool = True,
              plan: CompressPlan | None = None) -> Calibration:
    """One forward+backward over ``examples`` (gold answers), collecting C, D and, with
    ``grads``, G (the weights' gradients: as much memory as the matrices themselves, and
    only the ``task`` price reads them).  ``plan``: batch sizes (budget.plan_compress)."""
    t0 = time.perf_counter()
    if plan is None:
        probe = Scorer(tokenizer, examples, gold_only=True)
        plan = plan_compress(model, targets, probe.longest, None, grads=grads)
    scorer = Scorer(tokenizer, examples, plan.batch_tokens, plan.lm_head_chunk, gold_only=True)
    modules = {t.key: model.get_submodule(t.name) for t in targets}
    grams: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}
    dsq = dict.fromkeys(modules, 0.0)
    last = {"x": None, "key": None}
    tokens = [0]

    def watch(key):
        def hook(module, args, output):
            x = args[0]
            if key not in shared:  # first batch: who reads the same tensor as whom
                shared[key] = last["key"] if x is last["x"] else key
            last["x"], last["key"] = x, shared[key]
            if shared[key] == key:
                valid = scorer.batches[scorer._batch_index]["valid"]
                xs = x.detach()[valid].float()
                if key not in grams:
                    grams[key] = torch.zeros(xs.shape[1], xs.shape[1])
                grams[key].addmm_(xs.T, xs)
                if key == first:
                    tokens[0] += xs.shape[0]

            def on_grad(d):
                dsq[key] += float(d.float().pow(2).sum())

            output.register_hook(on_grad)
        return hook

    first = targets[0].key
    weights = [m.weight for m in modules.values()] if grads else []
    hooks = [m.register_forward_hook(watch(k)) for k, m in modules.items()]
    lowest = min(t.layer for t in targets)
    try:
        for w in weights:
            w.requires_grad_(True)
            w.grad = None
        # without weight gradients the backward starts at the lowest target's block
        with torch.enable_grad(), grad_from(model, lowest):
            loss = scorer.loss_and_backward(model, "calibration pass" if progress else None)
        G = None
        if grads:
            G = {}
            for k, m in modules.items():
                g = m.weight.grad
                G[k] = (g.t() if is_conv1d(m) else g).detach().float().clone()
    finally:
        for h in hooks:
            h.remove()
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
    for k in modules:
        grams[k] = grams[shared[k]]
    return Calibration(grams, G, dsq, tokens[0], len(examples), loss,
                       time.perf_counter() - t0, shared)


# --------------------------------------------------------------------------- decompositions


@dataclass
class Spectrum:
    """One matrix, decomposed: W = sum_i A[:, i] B[i] over its p components (the first
    min(p, k*) stored), and the price of each component (cut from the last)."""

    target: Target
    m: int
    n: int
    s: torch.Tensor  # float64, descending
    A: torch.Tensor  # float32, m x min(p, k*): U diag(s)^(1/2), the columns a factor keeps
    B: torch.Tensor  # float32, min(p, k*) x n: diag(s)^(1/2) [b_1 .. b_p]^T
    error: torch.Tensor  # output error on the calibration inputs when component i is cut
    first_order: torch.Tensor | None  # first-order task-loss change when it is cut (with G)
    scale: float  # h = N D / (m T)
    basis: str

    @property
    def p(self) -> int:
        return len(self.s)

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def dense_params(self) -> int:
        return self.m * self.n

    @property
    def k_star(self) -> int:
        """Ranks below this save parameters: k (m + n) < m n."""
        return k_star(self.m, self.n)

    def params(self, k: int) -> int:
        return self.dense_params if k >= self.p else k * (self.m + self.n)

    def prices(self, rule: str) -> torch.Tensor:
        if rule == "output":
            return self.error / self.error.sum().clamp_min(1e-300)
        quadratic = 0.5 * self.scale * self.error
        if rule == "fisher":
            return quadratic
        if self.first_order is None:
            raise ValueError("the task price needs the weights' gradients: calibrate with "
                             "grads=True")
        return quadratic + self.first_order


def cholesky(C: torch.Tensor, shrink: float = 0.0) -> tuple[torch.Tensor, float]:
    """Lower S with S S^T = C + eps I (float64), eps growing from 0 until it factors.

    ``shrink`` a: C is first pulled toward a multiple of the identity with the same trace,
    (1 - a) C + a tr(C)/n I, as covariance estimates from fewer samples than dimensions
    are (Ledoit-Wolf); a = 1 is plain SVD with isotropic inputs.
    """
    C = C.double()
    if shrink:
        C = (1 - shrink) * C + shrink * float(C.diagonal().mean()) * torch.eye(len(C),
                                                                                 dtype=C.dtype)
    mean = float(C.diagonal().mean()) or 1.0
    eps = 0.0
    while True:
        S, info = torch.linalg.cholesky_ex(C + eps * torch.eye(len(C), dtype=C.dtype))
        if int(info) == 0:
            return S, eps
        eps = mean * 1e-6 if eps == 0 else eps * 10
        if eps > mean:
            raise EdgeC2IError("the calibration inputs' Gram matrix does not factor; use more "
                               "calibration examples")


def spectrum(target: Target, W: torch.Tensor, cal: Calibration, basis: str = "whitened",
             S: torch.Tensor | None = None, shrink: float = 0.0) -> Spectrum:
    """The decomposition and prices of one matrix; ``S``: its input's Cholesky factor."""
    W = W.detach().double()
    m, n = W.shape
    C = cal.grams[target.key].double()
    if basis == "whitened":
        S = cholesky(C, shrink)[0] if S is None else S
        U, s, Vh = torch.linalg.svd(W @ S, full_matrices=False)
        B = torch.linalg.solve_triangular(S, Vh, upper=False, left=False)  # Vh S^{-1}
        error = s * s
    else:
        U, s, B = torch.linalg.svd(W, full_matrices=False)
        error = s * s * ((B @ C) * B).sum(1)
    if cal.grads is None:
        first_order = None
    else:
        G = cal.grads[target.key].double()
        first_order = -s * ((U.T @ G) * B).sum(1)
    scale = cal.examples * cal.out_grad_sq[target.key] / (m * max(cal.tokens, 1))
    # components from k* on are never kept in factor form (a matrix that keeps them stays
    # dense), so only the first k* columns of A and rows of B are stored; sqrt(s) on each
    # side, not all of s in A: the same product, but the rows of A then span a narrower
    # range, which int4's blocks of 32 hold better (a trial on SmolLM2 at 0.8: higher int4
    # top-1 agreement than A = U diag(s) or A = U)
    keep = min(k_star(m, n), len(s))
    half = s[:keep].sqrt()
    return Spectrum(target, m, n, s, (U[:, :keep] * half).float().contiguous(),
                    (B[:keep] * half[:, None]).float().contiguous(), error, first_order,
                    scale, basis)


def decompose_all(model: nn.Module, targets: list[Target], cal: Calibration,
                  basis: str = "whitened", progress: bool = True,
                  shrink: float = 0.0, release: bool = False) -> list[Spectrum]:
    """Every target's Spectrum; one Cholesky per shared input.  ``release``: each input's
    Gram matrix leaves ``cal`` once the last matrix reading it is decomposed (the spectra
    grow as the Gram matrices go: compress's plan counts the larger of the two)."""
    factors: dict[str, torch.Tensor] = {}
    owner = {t.key: cal.shared.get(t.key, t.key) for t in targets}
    last = {owner[t.key]: i for i, t in enumerate(targets)}
    out = []
    for i, t in enumerate(tqdm(targets, desc=f"{basis} decompositions", disable=not progress,
                               leave=False)):
        threads.rebalance()
        S = None
        if basis == "whitened":
            if owner[t.key] not in factors:
                factors[owner[t.key]] = cholesky(cal.grams[t.key], shrink)[0]
            S = factors[owner[t.key]]
        out.append(spectrum(t, weight_matrix(model.get_submodule(t.name)), cal, basis, S))
        if release and last[owner[t.key]] == i:
            factors.pop(owner[t.key], None)
            for key in [k for k in cal.grams if owner.get(k, k) == owner[t.key]]:
                del cal.grams[key]
            release_freed_memory()  # or the spectra would grow beside the freed Grams
    return out


# --------------------------------------------------------------------------- allocation


def linear_params(spectra: list[Spectrum], ranks: dict[str, int] | None = None) -> int:
    """Parameters of the matrices at ``ranks`` (None: all dense)."""
    if ranks is None:
        return sum(sp.dense_params for sp in spectra)
    return sum(sp.params(ranks[sp.key]) for sp in spectra)


def _choose(sp: Spectrum, tail: torch.Tensor, lam: float) -> int:
    """The rank minimising cut price + lam x parameters: dense, or some k < k*."""
    top = min(sp.k_star, sp.p)  # candidates 1 .. top-1, and dense
    if top <= 1:
        return sp.p
    ks = torch.arange(1, top, dtype=torch.float64)
    obj = tail[1:top] + lam * ks * (sp.m + sp.n)
    i = int(torch.argmin(obj))
    return i + 1 if float(obj[i]) < lam * sp.dense_params else sp.p


def allocate(spectra: list[Spectrum], rule: str, budget: int) -> dict[str, int]:
    """Ranks (p: dense) within ``budget`` linear parameters, cheapest cuts first.

    Bisection on the multiplier of the Lagrangian, then the leftover filled with the
    components whose price per parameter is highest.  Raises when even rank 1 everywhere
    does not fit.
    """
    floor_ = sum(sp.params(1) for sp in spectra)
    if budget < floor_:
        raise EdgeC2IError(f"a budget of {budget:,} linear parameters is below rank 1 in every "
                           f"matrix ({floor_:,}): ask for a larger size")
    tails = {}
    for sp in spectra:
        price = sp.prices(rule)
        # tail[k] = price of cutting components k..p-1 (k = 0..p)
        tails[sp.key] = torch.cat([price.flip(0).cumsum(0).flip(0), price.new_zeros(1)])

    def ranks_at(lam):
        return {sp.key: _choose(sp, tails[sp.key], lam) for sp in spectra}

    if linear_params(spectra, ranks_at(0.0)) <= budget:
        ranks = ranks_at(0.0)
    else:
        lo, hi = 0.0, 1e-12
        while linear_params(spectra, ranks_at(hi)) > budget:
            lo, hi = hi, hi * 4
            if hi > 1e30:
                ranks = {sp.key: 1 for sp in spectra}
                break
        else:
            for _ in range(60):
                mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
                if linear_params(spectra, ranks_at(mid)) > budget:
                    lo = mid
                else:
                    hi = mid
            ranks = ranks_at(hi)
    return _fill(spectra, rule, ranks, budget)


def _fill(spectra: list[Spectrum], rule: str, ranks: dict[str, int], budget: int) -> dict:
    """Add components back, best price per parameter first, while the budget has room."""
    left = budget - linear_params(spectra, ranks)
    heap = []
    by_key = {sp.key: sp for sp in spectra}
    prices = {sp.key: sp.prices(rule) for sp in spectra}

    def push(key):
        sp, k = by_key[key], ranks[key]
        if k < min(sp.k_star, sp.p) - 1:  # one more component still saves parameters
            heapq.heappush(heap, (-float(prices[key][k]) / (sp.m + sp.n), key))

    for key in ranks:
        push(key)
    while heap:
        _, key = heapq.heappop(heap)
        sp = by_key[key]
        if sp.m + sp.n <= left:
            ranks[key] += 1
            left -= sp.m + sp.n
            push(key)
    return ranks


def uniform(spectra: list[Spectrum], budget: int) -> dict[str, int]:
    """The same share of every matrix's rank (dense where that share saves nothing), the
    largest share within ``budget``."""
    def ranks_at(share):
        out = {}
        for sp in spectra:
            k = max(1, math.floor(share * sp.p))
            out[sp.key] = k if k < sp.k_star else sp.p
        return out

    if linear_params(spectra, ranks_at(1.0)) <= budget:
        return ranks_at(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if linear_params(spectra, ranks_at(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    ranks = ranks_at(lo)
    if linear_params(spectra, ranks) > budget:
        raise EdgeC2IError(f"a budget of {budget:,} linear parameters is below rank 1 in every "
                           "matrix: ask for a larger size")
    return ranks


def apply_ranks(model: nn.Module, spectra: list[Spectrum], ranks: dict[str, int],
                keep: bool = False) -> tuple[list[Reduction], dict[str, nn.Module]]:
    """Swap in the factors of every matrix below full rank; returns the reductions and the
    replaced modules (``restore`` puts them back).

    The factor modules are views of the spectra (a trial costs no memory); ``keep``: the
    model keeps them, so each gets its own copy and its spectrum lets its A and B go (one
    matrix at a time: the peak stays one matrix above the spectra's)."""
    done, originals = [], {}
    for sp in spectra:
        k = ranks[sp.key]
        if k >= sp.p:
            continue
        old = model.get_submodule(sp.target.name)
        A, B = sp.A[:, :k], sp.B[:k]
        if keep:
            A, B = A.clone(memory_format=torch.contiguous_format), B.clone()
            sp.A = sp.B = None
        new = LowRankLinear(A, B, getattr(old, "bias", None), is_conv1d(old))
        originals[sp.target.name] = swap(model, sp.target.name, new)
        done.append(Reduction(sp.target.layer, sp.target.type, k / sp.p, ranks=[k],
                              group_sizes=[sp.m], name=sp.target.name, basis=sp.basis))
    return done, originals


def restore(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, module in originals.items():
        swap(model, name, module)


@contextlib.contextmanager
def compressed(model: nn.Module, spectra: list[Spectrum], ranks: dict[str, int]):
    """Within the block ``model`` holds the factors at ``ranks``."""
    reductions, originals = apply_ranks(model, spectra, ranks)
    try:
        yield reductions
    finally:
        restore(model, originals)


def ranks_for(spectra: list[Spectrum], config: CompressConfig, budget: int) -> dict[str, int]:
    if config.allocation == "uniform":
        return uniform(spectra, budget)
    return allocate(spectra, config.price, budget)


# --------------------------------------------------------------------------- the verb


@dataclass
class CompressReport:
    """What ``compress`` did; ``to_dict`` is report.json (its ``recipe`` lists the factors)."""

    model: str
    task: str
    config: dict
    mode: str
    splits: dict
    budget: dict  # size, linear_params_before, linear_params_after
    reductions: list[Reduction]
    ladder: list[dict]  # keep mode: each size tried on the evaluation sample
    eval_base: dict
    base: dict  # test split
    compressed: dict
    test_difference: dict | None
    params: dict
    timings: dict
    task_notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "method": "compress",
                "config": self.config, "mode": self.mode, "splits": self.splits,
                "budget": self.budget, "ranks": {r.key: r.ranks[0] for r in self.reductions},
                "ladder": self.ladder, "eval_sample": {"base": self.eval_base},
                "base": self.base, "compressed": self.compressed,
                "test_difference": self.test_difference, "params": self.params,
                "timings": self.timings, "task_notes": self.task_notes,
                "recipe": {"base_model": self.model,
                           "reductions": [r.to_dict() for r in self.reductions]}}


# bytes per parameter in each exported file (export/, with its default blocks): (linear
# layers, everything else).  fp32: 4.  int8: an 8-bit code and 1/32 of an fp32 scale
# (MatMulNBits in blocks of 32), and 1/64 more for the padding of a factor's rank to whole
# blocks (a Gemma-3 compressed to 0.91 came out 0.2% above the estimate without it, one
# run by hand); the embedding and a tied head share one 8-bit table in blocks of
# HEAD_BLOCK.  int4, linear: a 4-bit code, 1/32 of an fp32 scale and of a 4-bit zero
# point, and about 2/32 more for a grid matrix's folded remainder rows and the padding of
# K + K/32 to whole blocks (a factor has neither, so the estimate errs on the large side);
# the table stays 8-bit, and so does a dense matrix the model held on a finer grid
# (export/int4.py FINER: 8-bit codes and 8-bit zero points, FINER_BYTES).  Against the
# packaged models' exports (bench/results/runtime.json, dense): SmolLM2 538.2 / 149.8 / 102.1
# MB, estimated 538.3 / 151.7 / 102.6; Gemma-3 1072.5 / 291.4 / 282.9, estimated 1072.6 /
# 293.1 / 283.3 (with FILE_OVERHEAD_MB).
_TABLE = 1 + 4 / HEAD_BLOCK
FILE_BYTES = {"fp32": (4.0, 4.0), "int8": ((1 + 4 / 32) * (1 + 1 / 64), _TABLE),
              "int4": ((0.5 + 4.5 / 32) * (1 + 2 / 32), _TABLE)}
FINER_BYTES = 1 + 4 / 32 + 1 / 32
FILE_OVERHEAD_MB = 0.25  # the graph itself (nodes, names, small constants): ~0.1 for SmolLM2
FINER_SAMPLE = 64  # outputs of a matrix finer_targets reads (GGUF types are per matrix)


def file_mb(linear: int, other: int, precision: str, finer_dense: int = 0) -> float:
    """Estimated MB (1e6 bytes) of the ``precision`` file of a model with ``linear``
    parameters in its compressible matrices and ``other`` elsewhere; ``finer_dense`` of the
    linear ones are dense matrices on a finer grid than 4 bits (8-bit in the int4 file)."""
    per_linear, per_other = FILE_BYTES[precision]
    extra = finer_dense * (FINER_BYTES - per_linear) if precision == "int4" else 0
    return (linear * per_linear + extra + other * per_other) / 1e6 + FILE_OVERHEAD_MB


def params_for_file(mb: float, other: int, precision: str) -> int:
    """The linear-parameter budget that keeps the ``precision`` file within ``mb`` (matrices
    on a finer grid are counted by the caller: ``fit_file``)."""
    per_linear, per_other = FILE_BYTES[precision]
    budget = int(((mb - FILE_OVERHEAD_MB) * 1e6 - other * per_other) / per_linear)
    if budget < 1:
        floor = file_mb(0, other, precision)
        raise EdgeC2IError(f"the {precision} file cannot be {mb:g} MB: the embedding and the "
                           f"other parts compress does not reduce take {floor:.1f} MB alone; "
                           "give a larger --file-mb")
    return budget


def finer_targets(model: nn.Module, targets: list[Target]) -> set[str]:
    """Keys of the targets whose weight lies on a finer grid than 4 bits (a GGUF Q5/Q6/Q8
    matrix, export/int4.py ``finer_grid``), read on their first FINER_SAMPLE outputs."""
    out = set()
    for t in targets:
        w = weight_matrix(model.get_submodule(t.name))[:FINER_SAMPLE]
        if finer_grid(w.detach().float().T.contiguous().numpy()):
            out.add(t.key)
    return out


def finer_dense(spectra: list[Spectrum], ranks: dict[str, int] | None, finer: set[str]) -> int:
    """Parameters of the matrices in ``finer`` that ``ranks`` leaves dense."""
    return sum(sp.dense_params for sp in spectra
               if sp.key in finer and (ranks is None or ranks[sp.key] >= sp.p))


def fit_file(spectra: list[Spectrum], config: CompressConfig, other: int,
             finer: set[str]) -> dict[str, int]:
    """Ranks whose ``file_precision`` file fits ``file_mb``: the linear budget, lowered while
    the dense matrices on a finer grid (8-bit in an int4 file) push the estimate over, then
    raised again by bisection to the largest budget that fits (a finer matrix that becomes
    factored saves more than its parameters' share, so one step down can overshoot)."""
    def estimate(ranks):
        return file_mb(linear_params(spectra, ranks), other, config.file_precision,
                       finer_dense(spectra, ranks, finer))

    per_linear = FILE_BYTES[config.file_precision][0]
    hi = params_for_file(config.file_mb, other, config.file_precision)
    best = ranks_for(spectra, config, hi)
    over = estimate(best) - config.file_mb
    if over <= 0:
        return best
    lo = hi
    while over > 0 and lo > 1:  # step down until it fits
        hi, lo = lo, max(1, lo - math.ceil(over * 1e6 / per_linear))
        best = ranks_for(spectra, config, lo)
        over = estimate(best) - config.file_mb
    for _ in range(30):  # the largest budget in (lo, hi) that fits
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        ranks = ranks_for(spectra, config, mid)
        if estimate(ranks) <= config.file_mb:
            lo, best = mid, ranks
        else:
            hi = mid
    return best


def size_kept(wins: int, losses: int, loss: float, base_loss: float, tolerance: float,
              rule: str, alpha: float = KEEP_ALPHA) -> bool:
    """Keep-accuracy mode: does a size pass on the evaluation sample?

    ``wins`` / ``losses``: the examples the compressed model gets right and the unmodified
    one wrong, and the reverse (verdict.paired_counts); the loss may rise at most
    ``tolerance`` under every rule.  ``accuracy``: no fewer examples right than the
    unmodified model (wins >= losses).  ``paired``: not significantly worse, by the one-sided
    sign test of the disagreements at ``alpha`` (a one-example dip among many
    disagreements is noise, a run of losses is not).
    """
    if loss > base_loss + tolerance:
        return False
    if rule == "accuracy":
        return wins >= losses
    return sign_test_p(losses, wins) >= alpha


def _kept(res: Result, base: Result, config: CompressConfig) -> tuple[bool, int, int]:
    wins, losses = paired_counts(base, res)
    return (size_kept(wins, losses, res.loss, base.loss, config.loss_tolerance,
                      config.keep_rule), wins, losses)


def compress(model: nn.Module, tokenizer, task: str | Task, config: CompressConfig | None = None,
             *, progress: bool = True, model_name: str = "") -> CompressReport:
    """Compress ``model`` in place (module docstring); returns the report."""
    config = config or CompressConfig()
    t0 = time.perf_counter()
    task = load_task(task) if isinstance(task, str) else task
    splits = split(task, config.n_calib, config.n_eval, config.n_test, config.seed)
    targets = find_targets(model, config.layers, config.types)
    params_before = count_params(model)
    # embedding, norms, matrices not targeted; a file budget too small for them is refused now
    other = params_before - sum(p.numel() for t in targets
                                for p in model.get_submodule(t.name).parameters())
    if config.file_mb is not None:
        params_for_file(config.file_mb, other, config.file_precision)
    finer = finer_targets(model, targets)  # 8-bit in the int4 file while dense
    grads = config.price == "task"  # the other prices need no weight gradient
    longest = Scorer(tokenizer, splits.calib, gold_only=True).longest
    plan = plan_compress(model, targets, longest, config.max_memory, grads=grads)
    if progress:
        print(f"memory plan: {plan.describe()}", file=sys.stderr)
    cal = calibrate(model, tokenizer, splits.calib, targets, progress, grads=grads, plan=plan)
    release_freed_memory()  # the pass's activations: the decompositions come on top
    t_cal = time.perf_counter()
    spectra = decompose_all(model, targets, cal, config.basis, progress, config.shrink,
                            release=True)
    del cal  # the gradients, if any: the spectra hold what is left to use
    release_freed_memory()
    t_dec = time.perf_counter()
    before = linear_params(spectra)
    batch, chunk = plan.eval_batch_tokens, plan.lm_head_chunk
    evals = Scorer(tokenizer, splits.eval, batch, chunk)
    eval_base = evals.run(model, desc="evaluation: base" if progress else None)
    ladder = []
    if config.mode == "budget":
        if config.file_mb is not None:
            ranks = fit_file(spectra, config, other, finer)
        else:
            budget = config.params if config.params is not None else int(config.size * before)
            ranks = ranks_for(spectra, config, budget)
    else:
        ranks = {sp.key: sp.p for sp in spectra}
        for size in config.sizes:
            trial = ranks_for(spectra, config, int(size * before))
            with compressed(model, spectra, trial):
                res = evals.run(model, desc=f"evaluation: size {size}" if progress else None)
            ok, wins, losses = _kept(res, eval_base, config)
            ladder.append({"size": size, "linear_params": linear_params(spectra, trial),
                           "accuracy": res.accuracy, "loss": res.loss, "wins": wins,
                           "losses": losses, "kept": ok})
            if progress:
                print(f"size {size}: evaluation accuracy {res.accuracy:.3f} (base "
                      f"{eval_base.accuracy:.3f}), loss {res.loss:.4f} (base "
                      f"{eval_base.loss:.4f}): {'kept' if ok else 'stop'}", file=sys.stderr)
            if not ok:
                break
            ranks = trial
    t_search = time.perf_counter()
    tests = Scorer(tokenizer, splits.test, batch, chunk)
    base_test = tests.run(model, desc="test: base" if progress else None)
    after = linear_params(spectra, ranks)
    reductions, _ = apply_ranks(model, spectra, ranks, keep=True)
    comp_test = tests.run(model, desc="test: compressed" if progress else None) \
        if reductions else base_test
    timings = {"plan": plan.describe(), "calibration_s": t_cal - t0, "decompose_s": t_dec - t_cal,
               "search_s": t_search - t_dec, "test_s": time.perf_counter() - t_search,
               "total_s": time.perf_counter() - t0}
    return CompressReport(
        model=model_name, task=task.name, config=asdict(config), mode=config.mode,
        splits=splits.sizes,
        budget={"size": after / before, "linear_params_before": before,
                "linear_params_after": after,
                "file_mb_estimate": {p: round(file_mb(after, other, p,
                                                      finer_dense(spectra, ranks, finer)), 1)
                                     for p in FILE_BYTES}},
        reductions=reductions, ladder=ladder, eval_base=eval_base.as_dict(),
        base=base_test.as_dict(), compressed=comp_test.as_dict(),
        test_difference=paired_difference(base_test, comp_test) if reductions else None,
        params={"before": params_before, "after": count_params(model)}, timings=timings,
        task_notes=task.notes)


def per_layer_table(report: dict) -> list[str]:
    """Lines of a console table: each layer's kept rank per matrix type ('-': dense)."""
    ranks = report["ranks"]
    if not ranks:
        return ["no matrix reduced"]
    layers = sorted({int(k.split(".")[0]) for k in ranks})
    types = sorted({k.split(".")[1] for k in ranks})
    lines = ["layer " + " ".join(f"{t:>6}" for t in types)]
    for i in layers:
        lines.append(f"{i:>5} " + " ".join(f"{ranks.get(f'{i}.{t}', '-'):>6}" for t in types))
    return lines

