"""Low-rank modules that replace a Linear (or GPT-2 Conv1D) and keep the factors.

``LowRankLinear``: W (m x n) ~ A B with A = U_k diag(s_k) (m x k), B = V_k^T (k x n);
k (m + n) numbers instead of m n.

``MultiSubspaceLinear``: the rows of W are split into c groups that each get
their own subspace, W[rows_g] ~ A_g B_g with rank max(1, floor(rate * min(m_g, n))).
The forward pass is one matmul with the stacked B's, one per group with A_g,
and one gather that puts the rows back in their original order.

``apply_`` swaps them in place for the original modules; ``reduced`` does it for the
length of a ``with`` block (the search's swap-score-restore); ``dense_module`` turns one
back into a plain Linear (or Conv1D) holding A B, for the folder transformers loads
(adapted.py).  The decompositions come from svd.svd: exact, or within a memory budget.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .config import Reduction
from .errors import EdgeC2IError
from .targets import Target, get_target, is_conv1d, weight_matrix

__all__ = ["Factorization", "LowRankLinear", "MultiSubspaceLinear", "Reduction", "apply_",
           "build_module", "cluster_rows", "count_params", "dense_module", "empty_factors",
           "factorization", "rank_for", "reduce", "reduced", "swap"]


def rank_for(rate: float, m: int, n: int) -> int:
    """Singular triplets kept at ``rate``: max(1, floor(rate * min(m, n)))."""
    if not 0 < rate <= 1:
        raise EdgeC2IError(f"rate {rate} out of range: a rate is the fraction of rank kept, in (0, 1]")
    return max(1, math.floor(rate * min(m, n)))


def truncated_factors(svd, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U_k diag(s_k), B = V_k^T of the best rank-k approximation, from W's (U, S, V)."""
    U, S, V = svd
    return (U[:, :k] * S[:k]).contiguous(), V[:, :k].t().contiguous()


def decompose(W: torch.Tensor, budget: int | None = None):
    """(U, S, V) of W by svd.svd: exact, unless ``budget`` (bytes) asks for the Gram path."""
    from .svd import svd

    return svd(W.detach().float(), budget=budget)


class LowRankLinear(nn.Module):
    """y = (x B^T) A^T + bias."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None,
                 conv1d: bool = False):
        super().__init__()
        self.conv1d = conv1d  # replaces a GPT-2 Conv1D: its dense form is stored transposed
        self.A = nn.Parameter(A, requires_grad=False)
        self.B = nn.Parameter(B, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = B.shape[1], A.shape[0]

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(nn.functional.linear(x, self.B), self.A)
        return y if self.bias is None else y + self.bias

    def dense(self) -> torch.Tensor:
        return self.A @ self.B


class MultiSubspaceLinear(nn.Module):
    """Rows in c groups, each with its own low-rank factors; outputs in the original row order."""

    def __init__(self, As: list[torch.Tensor], Bs: list[torch.Tensor], rows: list[torch.Tensor],
                 bias: torch.Tensor | None, conv1d: bool = False):
        super().__init__()
        self.conv1d = conv1d
        self.B = nn.Parameter(torch.cat(Bs), requires_grad=False)  # (sum k_g) x n
        self.As = nn.ParameterList([nn.Parameter(a, requires_grad=False) for a in As])
        order = torch.cat(rows)  # position p of the grouped output holds row order[p]
        self.register_buffer("inverse", torch.argsort(order))  # original row r sits at inverse[r]
        self.ranks = [a.shape[1] for a in As]
        self.group_sizes = [len(r) for r in rows]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = self.B.shape[1], len(order)

    @property
    def rank(self) -> int:
        return sum(self.ranks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(x, self.B)
        parts = torch.split(z, self.ranks, dim=-1)
        y = torch.cat([nn.functional.linear(p, a) for p, a in zip(parts, self.As)], dim=-1)
        y = torch.index_select(y, -1, self.inverse)
        return y if self.bias is None else y + self.bias

    def dense(self) -> torch.Tensor:
        starts = [0]
        for k in self.ranks:
            starts.append(starts[-1] + k)
        blocks = [a @ self.B[s:e] for a, s, e in zip(self.As, starts, starts[1:])]
        return torch.cat(blocks)[self.inverse]


# --------------------------------------------------------------------------- row clustering


def cluster_rows(W: torch.Tensor, c: int, method: str = "kmeans", seed: int = 0,
                 iters: int = 20) -> list[torch.Tensor]:
    """Split the rows of W into ``c`` groups of (nearly) equal size.

    ``kmeans``: spherical k-means (rows normalized to unit length, so a row's
    scale does not decide its group) with a balanced assignment: each group
    takes at most ceil(m / c) rows, filled greedily by cosine similarity.  A
    pilot found that plain k-means on raw rows makes one big group plus a few
    outlier rows, which is plain truncation in disguise.
    ``blocks``: contiguous row blocks.
    """
    m = W.shape[0]
    if not 1 <= c <= m:
        raise EdgeC2IError(f"cannot split {m} rows into {c} clusters: use 1..{m}")
    if method == "blocks" or c == 1:
        return [t.clone() for t in torch.arange(m).tensor_split(c)]
    if method != "kmeans":
        raise EdgeC2IError(f"unknown clustering {method!r}: use kmeans or blocks")
    X = nn.functional.normalize(W.detach().float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centers = X[torch.randperm(m, generator=gen)[:c]].clone()
    cap = math.ceil(m / c)
    for _ in range(iters):
        assign = _balanced_assign(X @ centers.t(), cap)
        new = torch.stack([X[assign == j].mean(0) for j in range(c)])
        new = nn.functional.normalize(new, dim=1)
        if torch.allclose(new, centers, atol=1e-6):
            break
        centers = new
    assign = _balanced_assign(X @ centers.t(), cap)
    return [torch.nonzero(assign == j)[:, 0] for j in range(c)]


def _balanced_assign(sim: torch.Tensor, cap: int) -> torch.Tensor:
    """Greedy: the most similar (row, group) pairs first, no group above ``cap`` rows."""
    m, c = sim.shape
    order = torch.argsort(sim.flatten(), descending=True)
    assign = torch.full((m,), -1, dtype=torch.long)
    count = [0] * c
    left = m
    for flat in order.tolist():
        r, j = divmod(flat, c)
        if assign[r] < 0 and count[j] < cap:
            assign[r] = j
            count[j] += 1
            left -= 1
            if left == 0:
                break
    return assign


# --------------------------------------------------------------------------- reductions


@dataclass
class Factorization:
    """The costly part of reducing one matrix, shared by every rate: the row groups (None:
    one subspace) and the (U, S, V) of the matrix or of each group."""

    groups: list[torch.Tensor] | None
    svds: list[tuple]


def factorization(W: torch.Tensor, clusters: int = 1, clustering: str = "kmeans",
                  budget: int | None = None, svd=None) -> Factorization:
    """Cluster the rows of W (clusters > 1) and decompose each part; ``svd``: W's own, if known
    (the scan's), ``budget``: bytes one decomposition may use."""
    W = W.detach().float()
    if clusters == 1:
        return Factorization(None, [svd if svd is not None else decompose(W, budget)])
    groups = cluster_rows(W, clusters, clustering)
    return Factorization(groups, [decompose(W[idx], budget) for idx in groups])


def build_module(module: nn.Module, reduction: Reduction, fact: Factorization | None = None,
                 budget: int | None = None) -> nn.Module:
    """The low-rank replacement of ``module`` (nn.Linear or Conv1D) for ``reduction``."""
    W = weight_matrix(module).detach().float()
    n = W.shape[1]
    if fact is None:
        fact = factorization(W, reduction.clusters, reduction.clustering, budget)
    bias, conv1d = getattr(module, "bias", None), is_conv1d(module)
    if fact.groups is None:
        k = rank_for(reduction.rate, *W.shape)
        return LowRankLinear(*truncated_factors(fact.svds[0], k), bias, conv1d)
    factors = [truncated_factors(svd, rank_for(reduction.rate, len(idx), n))
               for idx, svd in zip(fact.groups, fact.svds)]
    return MultiSubspaceLinear([a for a, _ in factors], [b for _, b in factors], fact.groups,
                               bias, conv1d)


def swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name``; return the module it replaced."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, child)
    setattr(owner, child, new)
    return old


def _dense_target(model: nn.Module, reduction: Reduction) -> tuple[str, nn.Module]:
    name = get_target(model, reduction.layer, reduction.type).name
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear) and not is_conv1d(module):
        raise EdgeC2IError(f"{name} is already reduced or not a linear map")
    return name, module


def _filled(reduction: Reduction, name: str, module: nn.Module) -> Reduction:
    """``reduction`` with what applying it gave: ranks, rows per subspace, module path."""
    multi = isinstance(module, MultiSubspaceLinear)
    return replace(reduction, name=name,
                   ranks=list(module.ranks) if multi else [module.rank],
                   group_sizes=list(module.group_sizes) if multi else [module.out_features])


def apply_(model: nn.Module, reductions: list[Reduction],
           budget: int | None = None) -> list[Reduction]:
    """Replace each reduction's matrix of ``model`` by its factors, in place.

    Returns the reductions as applied (ranks, group sizes and module names filled in).
    The decompositions are deterministic, so the same reductions on the same base model
    give the same factors.  ``budget``: bytes one decomposition may use (svd.svd).
    """
    done = []
    for r in reductions:
        name, module = _dense_target(model, r)
        new = build_module(module, r, budget=budget)
        swap(model, name, new)
        done.append(_filled(r, name, new))
    return done


@contextlib.contextmanager
def reduced(model: nn.Module, reduction: Reduction, fact: Factorization | None = None):
    """Within the block ``model`` has ``reduction`` applied; after it, the original module
    (the same object) is back.  Yields the reduction as applied.  ``fact``: the matrix's
    decomposition, when the caller tries it at several rates."""
    name, original = _dense_target(model, reduction)
    new = build_module(original, reduction, fact)
    swap(model, name, new)
    try:
        yield _filled(reduction, name, new)
    finally:
        swap(model, name, original)


def reduce(model: nn.Module, target: Target, rate: float, clusters: int = 1,
           clustering: str = "kmeans") -> Reduction:
    """Replace one target matrix of ``model`` in place by its factors (``apply_`` of one)."""
    return apply_(model, [Reduction(target.layer, target.type, rate, clusters, clustering)])[0]


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied weights once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def dense_module(module: LowRankLinear | MultiSubspaceLinear) -> nn.Module:
    """A plain nn.Linear (or GPT-2 Conv1D) computing the same map as the factors, densely."""
    W = module.dense().detach()
    m, n = W.shape
    has_bias = module.bias is not None
    if module.conv1d:
        from transformers.pytorch_utils import Conv1D

        new = Conv1D(m, n)
        new.weight.data = W.t().contiguous()
    else:
        new = nn.Linear(n, m, bias=has_bias)
        new.weight.data = W.contiguous()
    if has_bias:
        new.bias.data = module.bias.detach().clone()
    return new.requires_grad_(False)


def empty_factors(module: nn.Module, ranks: list[int], group_sizes: list[int]) -> nn.Module:
    """A factor module of the given ranks for ``module``, to be filled by load_state_dict."""
    m, n = weight_matrix(module).shape
    bias = getattr(module, "bias", None)
    conv1d = is_conv1d(module)
    if len(ranks) == 1:
        return LowRankLinear(torch.zeros(m, ranks[0]), torch.zeros(ranks[0], n), bias, conv1d)
    As = [torch.zeros(s, k) for s, k in zip(group_sizes, ranks)]
    Bs = [torch.zeros(k, n) for k in ranks]
    rows = list(torch.arange(m).split(group_sizes))
    return MultiSubspaceLinear(As, Bs, rows, bias, conv1d)
