import pytest
import torch
from conftest import tiny_model

from edge_c2i.config import Reduction
from edge_c2i.errors import EdgeC2IError
from edge_c2i.factorize import (
    LowRankLinear,
    MultiSubspaceLinear,
    build_module,
    cluster_rows,
    factorization,
    rank_for,
)
from edge_c2i.targets import get_target, weight_matrix


def test_rank_for_follows_laser():
    assert rank_for(0.01, 576, 1536) == 5 and rank_for(0.001, 576, 1536) == 1
    assert rank_for(1.0, 576, 192) == 192
    for bad in (0, -0.1, 1.5):
        with pytest.raises(EdgeC2IError, match="out of range"):
            rank_for(bad, 10, 10)


def test_low_rank_matches_the_truncated_svd_and_saves_parameters(smol):
    model, _ = smol
    lin = model.get_submodule(get_target(model, 10, "out").name)
    W = lin.weight.detach()
    new = build_module(lin, Reduction(10, "out", 0.2))
    assert isinstance(new, LowRankLinear) and new.rank == 115
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    ref = (U[:, :115] * S[:115]) @ Vh[:115]
    assert torch.allclose(new.dense(), ref, atol=1e-4)
    x = torch.randn(3, 7, 1536)
    assert torch.allclose(new(x), x @ ref.t(), atol=1e-3)
    assert new.A.numel() + new.B.numel() < W.numel()


@pytest.mark.parametrize("method", ["kmeans", "blocks"])
def test_multi_subspace_keeps_row_order_and_balanced_groups(smol, method):
    model, _ = smol
    lin = model.get_submodule(get_target(model, 12, "in").name)  # 1536 x 576
    W = lin.weight.detach()
    groups = cluster_rows(W, 4, method)
    sizes = sorted(len(g) for g in groups)
    assert sum(sizes) == 1536 and sizes[0] >= 1536 // 4 - 1  # no degenerate outlier groups
    assert torch.equal(torch.sort(torch.cat(groups)).values, torch.arange(1536))
    new = build_module(lin, Reduction(12, "in", 0.3, 4, method))
    assert isinstance(new, MultiSubspaceLinear)
    # the dense equivalent: each group's own truncated SVD, rows back in place
    ref = torch.empty_like(W)
    for idx in groups:
        U, S, Vh = torch.linalg.svd(W[idx], full_matrices=False)
        k = rank_for(0.3, len(idx), 576)
        ref[idx] = (U[:, :k] * S[:k]) @ Vh[:k]
    assert torch.allclose(new.dense(), ref, atol=1e-4)
    x = torch.randn(2, 5, 576)
    assert torch.allclose(new(x), x @ ref.t(), atol=1e-3)
    # for the same number of stored parameters, several subspaces fit the rows at least as well
    n_params = sum(a.numel() for a in new.As) + new.B.numel()
    single = build_module(lin, Reduction(12, "in", (n_params // (1536 + 576)) / 576))
    assert (W - new.dense()).norm() <= (W - single.dense()).norm()


def test_kmeans_is_deterministic(smol):
    model, _ = smol
    W = model.get_submodule(get_target(model, 3, "q").name).weight.detach()
    a, b = cluster_rows(W, 8, seed=0), cluster_rows(W, 8, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_gpt2_conv1d_is_reduced_with_its_transposed_weight():
    model = tiny_model("gpt2")
    t = get_target(model, 1, "in")
    conv = model.get_submodule(t.name)
    x = torch.randn(2, 3, 32)
    dense_out = conv(x)
    full = build_module(conv, Reduction(1, "in", 1.0))  # full rank: same map
    assert torch.allclose(full(x), dense_out, atol=1e-5)
    multi = build_module(conv, Reduction(1, "in", 1.0, clusters=2))
    assert torch.allclose(multi(x), dense_out, atol=1e-5)
    assert tuple(full.dense().shape) == tuple(weight_matrix(conv).shape)


def test_more_clusters_than_rows_is_refused():
    with pytest.raises(EdgeC2IError, match="cannot split 4 rows into 5"):
        cluster_rows(torch.randn(4, 3), 5)


def test_a_factorization_serves_every_rate_and_the_scan_svd_is_reused(smol):
    model, _ = smol
    lin = model.get_submodule(get_target(model, 5, "gate").name)
    W = weight_matrix(lin)
    fact = factorization(W, 2, "kmeans")
    for rate in (0.5, 0.05):
        red = Reduction(5, "gate", rate, 2)
        assert torch.equal(build_module(lin, red, fact).dense(), build_module(lin, red).dense())
    U, S, V = torch.linalg.svd(W.detach(), full_matrices=False)
    given = factorization(W, svd=(U, S, V.mT))
    assert given.svds[0][0] is U  # not decomposed again


def test_reduction_checks_its_fields():
    assert Reduction(1, "out", 0.5, 1, "kmeans").clustering == "none"  # moot for one subspace
    with pytest.raises(EdgeC2IError, match="rate 0 out of range"):
        Reduction(1, "out", 0)
    with pytest.raises(EdgeC2IError, match="clusters must be >= 1"):
        Reduction(1, "out", 0.5, 0)
    with pytest.raises(EdgeC2IError, match="unknown clustering"):
        Reduction(1, "out", 0.5, 2, "spectral")
