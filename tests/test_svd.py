"""edge_c2i.svd on real SmolLM2-135M and Gemma-3-270M weights (skipped when not converted)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edge_c2i import svd as msvd
from edge_c2i.errors import EdgeC2IError
from edge_c2i.svd import parse_size, svd, workspace_bytes

MODELS = Path.home() / ".cache" / "edge-c2i" / "models"
SMOL = MODELS / "smollm2-135m" / "model.safetensors"
GEMMA = MODELS / "gemma3-270m" / "model.safetensors"

# tall, wide and square matrices; the SmolLM2 q_proj has condition number ~3e3
CASES = [
    (SMOL, "model.layers.5.mlp.up_proj.weight"),  # 1536 x 576
    (SMOL, "model.layers.5.mlp.down_proj.weight"),  # 576 x 1536
    (SMOL, "model.layers.5.self_attn.q_proj.weight"),  # 576 x 576
    (GEMMA, "model.layers.3.self_attn.k_proj.weight"),  # 256 x 640
    (GEMMA, "model.layers.3.self_attn.o_proj.weight"),  # 640 x 1024
    (GEMMA, "model.layers.9.mlp.gate_proj.weight"),  # 2048 x 640
]
CASE_IDS = [f"{path.parent.name}:{name.removeprefix('model.layers.')}" for path, name in CASES]


def load(path: Path, name: str) -> torch.Tensor:
    """One weight of a converted model, as float32."""
    if not path.exists():
        pytest.skip(f"{path.parent} is missing (convert the model first)")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name).to(torch.float32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max_i |a_i - b_i| / |b_i|."""
    return ((a.double() - b.double()).abs() / b.double().abs()).max().item()


def check_factors(W: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> None:
    """Shapes, dtype, descending S, orthonormal columns, U diag(S) V^T = W."""
    m, n = W.shape
    r = S.shape[0]
    assert U.shape == (m, r) and V.shape == (n, r)
    assert U.dtype == S.dtype == V.dtype == torch.float32
    assert bool((S[:-1] >= S[1:]).all())
    eye = torch.eye(r)
    assert (U.mT @ U - eye).abs().max().item() < 1e-5
    assert (V.mT @ V - eye).abs().max().item() < 1e-5
    residual = torch.linalg.norm(U @ torch.diag(S) @ V.mT - W) / torch.linalg.norm(W)
    assert residual.item() < 1e-5


def small_budget(m: int, n: int) -> int:
    """The smallest budget the gram path accepts, plus a few rows."""
    return workspace_bytes(m, n, "gram") + 64 * msvd._gram_row_bytes(m, n, min(m, n))


# ---------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2 * 10**9),
        ("512MB", 512 * 10**6),
        ("1.5GiB", 3 * 2**29),
        ("100000", 100000),
        ("64KiB", 65536),
        ("10KB", 10000),
        ("3MiB", 3 * 2**20),
        (" 2 gb ", 2 * 10**9),
        ("0.3GB", 3 * 10**8),
    ],
)
def test_parse_size_good(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "2XB", "-1GB", "1e9", "GB", "0", "1.2.3GB", "0MB"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(EdgeC2IError) as info:
        parse_size(text)
    message = str(info.value)
    assert "\n" not in message and "512MB" in message and "GiB" in message


# ---------------------------------------------------------------- exact vs gram


@pytest.mark.parametrize(("path", "name"), CASES, ids=CASE_IDS)
def test_methods_agree_on_real_matrices(path: Path, name: str) -> None:
    W = load(path, name)
    m, n = W.shape
    truth = torch.linalg.svdvals(W.double())  # float64 reference of the float32 weight
    half = min(m, n) // 2
    budget = small_budget(m, n)
    results = {
        "exact": svd(W, "exact"),
        "gram": svd(W, "gram", budget=budget),
    }
    S_exact = results["exact"][1]
    for U, S, V in results.values():
        check_factors(W, U, S, V)
        assert rel_err(S[:half], S_exact[:half]) < 1e-4
    # the Gram path in float64 is float32-exact over the whole spectrum of these weights
    assert rel_err(results["gram"][1], truth) < 1e-6


def test_gram_core_with_many_chunks() -> None:
    """gram_svd over 23 row chunks of a wide weight (T = W^T) equals the float64 SVD."""
    W = load(GEMMA, "model.layers.0.mlp.down_proj.weight")  # 640 x 2048
    T = W.mT

    def blocks():
        for start in range(0, T.shape[0], 90):
            yield T[start : start + 90]

    A, S, E = msvd.gram_svd(blocks, *T.shape)
    check_factors(W, E, S, A)
    assert rel_err(S, torch.linalg.svdvals(W.double())) < 1e-6


def test_top_k_exact_and_gram() -> None:
    W = load(GEMMA, "model.layers.4.mlp.up_proj.weight")  # 2048 x 640
    _, S_full, _ = svd(W, "exact")
    for method in ("exact", "gram"):
        U, S, V = svd(W, method, k=64)
        assert U.shape == (2048, 64) and S.shape == (64,) and V.shape == (640, 64)
        assert rel_err(S, S_full[:64]) < 1e-5
        assert (U.mT @ U - torch.eye(64)).abs().max().item() < 1e-5
        assert (U.mT @ W @ V - torch.diag(S)).abs().max().item() < 1e-4 * S[0].item()


# ---------------------------------------------------------------- chooser and budgets


def test_chooser() -> None:
    m, n = 49152, 576  # SmolLM2 embed_tokens
    exact = workspace_bytes(m, n, "exact")
    gram = workspace_bytes(m, n, "gram")
    assert gram < exact
    assert msvd.choose_method(m, n) == "exact"
    assert msvd.choose_method(m, n, budget=exact) == "exact"
    assert msvd.choose_method(m, n, budget=exact - 1) == "gram"
    assert msvd.choose_method(m, n, budget=gram) == "gram"
    assert msvd.choose_method(m, n, k=8, budget=exact - 1) == "gram"
    with pytest.raises(EdgeC2IError) as info:
        msvd.choose_method(m, n, budget=gram - 1)
    message = str(info.value)
    assert "needs ~" in message and "raise --max-memory" in message and "\n" not in message


def test_auto_picks_gram_when_exact_does_not_fit() -> None:
    W = load(GEMMA, "model.layers.1.mlp.up_proj.weight")  # 2048 x 640
    m, n = W.shape
    budget = workspace_bytes(m, n, "gram") + 10**6
    assert budget < workspace_bytes(m, n, "exact")
    assert msvd.choose_method(m, n, budget=budget) == "gram"
    _, S_auto, _ = svd(W, "auto", budget=budget)
    _, S_exact, _ = svd(W, "exact")
    assert rel_err(S_auto[:320], S_exact[:320]) < 1e-4
    with pytest.raises(EdgeC2IError, match="needs ~"):
        svd(W, "auto", budget=budget // 2)
    with pytest.raises(EdgeC2IError, match="method exact needs"):
        svd(W, "exact", budget=budget)


def test_bad_arguments() -> None:
    W = torch.randn(30, 20)
    with pytest.raises(EdgeC2IError, match="unknown SVD method"):
        svd(W, "qr")
    with pytest.raises(EdgeC2IError, match="out of range"):
        svd(W, "exact", k=21)
    with pytest.raises(EdgeC2IError, match="2-D"):
        svd(W[0])


# ru_maxrss is no good here: Linux carries the parent's peak across fork + exec into it.
# VmHWM (the peak of this process's own address space) is reset by clear_refs "5".
_CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from safetensors import safe_open
    from edge_c2i.svd import svd

    def status(key):  # bytes, from /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    torch.linalg.eigh(torch.eye(64, dtype=torch.float64))  # load the LAPACK kernels
    path, name, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with safe_open(path, "pt") as f:
        W = f.get_tensor(name).float().clone()  # resident (not mapped), as a model's weight
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = status("VmRSS")
    U, S, V = svd(W, "gram", k=8, budget=budget)
    growth = status("VmHWM") - before
    print(json.dumps({"growth": growth, "S": S.tolist(), "shape": list(U.shape)}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_gram_peak_memory_stays_within_budget() -> None:
    """The gram path on the 113 MB SmolLM2 embedding with a 48 MB budget: RSS grows < 48 MB."""
    if not SMOL.exists():
        pytest.skip(f"{SMOL.parent} is missing (convert the model first)")
    budget = 48 * 10**6
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", _CHILD, str(SMOL), "model.embed_tokens.weight", str(budget)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [49152, 8]
    assert result["growth"] < budget, f"RSS grew by {result['growth'] / 1e6:.1f} MB"
    S = result["S"]
    assert all(a >= b > 0 for a, b in itertools.pairwise(S))


def test_sizes_in_messages_keep_three_digits():
    """"needs ~1.6 GB; --max-memory is 1.6 GB: raise it" read as a contradiction, and 1 kB
    read as 0.1 MB: sizes keep three significant digits, in the unit that fits."""
    from edge_c2i.svd import format_size

    assert [format_size(x) for x in (1.62e9, 1.6e9, 1.5e9, 5.45e8, 1000, 999_999, 12)] == \
        ["1.62 GB", "1.6 GB", "1.5 GB", "545 MB", "1 kB", "1 MB", "12 bytes"]
