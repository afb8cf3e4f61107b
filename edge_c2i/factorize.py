"""Low-rank modules that replace a Linear (or GPT-2 Conv1D) and keep the factors.

``LowRankLinear``: W (m x n) ~ A B with A = U_k diag(s_k) (m x k), B = V_k^T (k x n);
k (m + n) numbers instead of m n.

``MultiSubspaceLinear``: the rows of W are split into c groups that each get
their own subspace, W[rows_g] ~ A_g B_g with rank max(1, floor(rate * min(m_g, n))).
The forward pass is one matmul with the stacked B's, one per group with A_g,
and one gather that puts the rows back in their original order.

Both swap in place for the original module (``reduce``); ``dense_module`` turns one
back into a plain Linear (or Conv1D) holding A B, for the folder transformers loads
(adapted.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError
from .targets import Target, is_conv1d, weight_matrix


def rank_for(rate: float, m: int, n: int) -> int:
    """Singular triplets kept at ``rate``: max(1, floor(rate * min(m, n)))."""
    if not 0 < rate <= 1:
        raise UserError(f"rate {rate} out of range: a rate is the fraction of rank kept, in (0, 1]")
    return max(1, math.floor(rate * min(m, n)))


def truncated_factors(W: torch.Tensor, k: int, svd=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A = U_k diag(s_k), B = V_k^T of the best rank-k approximation of W."""
    U, S, V = svd if svd is not None else _svd(W)
    return (U[:, :k] * S[:k]).contiguous(), V[:, :k].t().contiguous()


def _svd(W: torch.Tensor):
    U, S, Vh = torch.linalg.svd(W.detach().float(), full_matrices=False)
    return U, S, Vh.t()


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
        raise UserError(f"cannot split {m} rows into {c} clusters: use 1..{m}")
    if method == "blocks" or c == 1:
        return [t.clone() for t in torch.arange(m).tensor_split(c)]
    if method != "kmeans":
        raise UserError(f"unknown clustering {method!r}: use kmeans or blocks")
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
class Reduction:
    """One reduced matrix: where, how much, how."""

    layer: int
    type: str
    name: str
    rate: float
    clusters: int = 1
    clustering: str = "kmeans"
    ranks: list[int] | None = None
    group_sizes: list[int] | None = None


def build_module(module: nn.Module, rate: float, clusters: int = 1, clustering: str = "kmeans",
                 svd=None, groups: list[torch.Tensor] | None = None, group_svds=None) -> nn.Module:
    """The low-rank replacement of ``module`` (nn.Linear or Conv1D) at ``rate``."""
    W = weight_matrix(module).detach().float()
    m, n = W.shape
    bias = getattr(module, "bias", None)
    if clusters == 1:
        k = rank_for(rate, m, n)
        return LowRankLinear(*truncated_factors(W, k, svd), bias, is_conv1d(module))
    rows = groups if groups is not None else cluster_rows(W, clusters, clustering)
    As, Bs = [], []
    for g, idx in enumerate(rows):
        Wg = W[idx]
        k = rank_for(rate, len(idx), n)
        A, B = truncated_factors(Wg, k, group_svds[g] if group_svds else None)
        As.append(A)
        Bs.append(B)
    return MultiSubspaceLinear(As, Bs, rows, bias, is_conv1d(module))


def swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name``; return the module it replaced."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, child)
    setattr(owner, child, new)
    return old


def reduce(model: nn.Module, target: Target, rate: float, clusters: int = 1,
           clustering: str = "kmeans") -> Reduction:
    """Replace one target matrix of ``model`` in place by its factors."""
    module = model.get_submodule(target.name)
    if not isinstance(module, nn.Linear) and not is_conv1d(module):
        raise UserError(f"{target.name} is already reduced or not a linear map")
    new = build_module(module, rate, clusters, clustering)
    swap(model, target.name, new)
    return describe(target, rate, clusters, clustering, new)


def describe(target: Target, rate: float, clusters: int, clustering: str, module: nn.Module) -> Reduction:
    ranks = module.ranks if isinstance(module, MultiSubspaceLinear) else [module.rank]
    sizes = module.group_sizes if isinstance(module, MultiSubspaceLinear) else [module.out_features]
    return Reduction(target.layer, target.type, target.name, rate, clusters,
                     clustering if clusters > 1 else "none", ranks, sizes)


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
