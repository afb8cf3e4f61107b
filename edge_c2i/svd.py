"""Memory-aware SVD of one weight matrix: exact, or a chunked Gram path under a budget.

``svd(W)`` returns ``U (m, r)``, ``S (r,)`` descending and ``V (n, r)`` (V, not
V^T), all float32, with ``W ~ U diag(S) V^T``; ``r = min(m, n)``, or ``k`` when
only the top ``k`` triplets are asked for.  The budgeted scan (budget.py, scan.py)
runs it with the workspace its plan leaves for one decomposition.

Methods
-------
exact       ``torch.linalg.svd(W, full_matrices=False)`` (LAPACK gesdd, float32).
gram        Let T be W or W^T, whichever is tall (T is M x N with N <= M).  Then
                G = T^T T = sum_c T_c^T T_c          (float64, N x N, over row chunks T_c)
                G = E diag(lam) E^T                  (torch.linalg.eigh)
                S = sqrt(max(lam, 0)),  A = T E / S  (again chunk by chunk)
            so T = A diag(S) E^T.  Only G, one row chunk and the outputs are ever
            allocated, and the chunk size follows from the budget.
auto        ``choose_method``: exact if it fits the budget (or there is none); else
            gram; else EdgeC2IError with the estimated need.

Workspace estimates (bytes; p = min(m, n), q = max(m, n), r = output rank)
--------------------------------------------------------------------------
exact       4 (1.5 m n + p (m + n) + 4.5 p^2) + 16 MiB
            (working copy of W, U, V^T and gesdd's workspace)
gram        max(G + eigh, held + chunk) with
            G + eigh = 8 p^2 + 8 (3 p^2) + 16 MiB        (G, eigenvectors, syevd workspace)
            held     = max(8 p^2, 4 (q r + p r) + 8 p r) + 16 MiB   (G; or outputs + E64)
            chunk    = rows (4 p + 8 p + 8 r)   (input chunk, float64 copy, product)
            ``workspace_bytes`` quotes it at MIN_CHUNK_ROWS rows; ``gram_chunk_rows``
            gives the largest chunk a budget allows.
A budget counts what the call allocates, outputs included, not the input W (it is
already resident).  A small budget makes the gram path slower, never larger, down to
its floor: the float64 eigh of the p x p Gram matrix.  How the estimates compare with
the measured peak RSS is in bench/results/svd.json and the README.

Precision
---------
The Gram matrix squares the singular values.  Accumulated and decomposed in
float64, the eigenvalues carry an absolute error of order eps64 lam_max, so

    |d sigma_i| / sigma_i  ~  eps64 (sigma_max / sigma_i)^2       (eps64 = 2.2e-16)

which for float32 weights beats float32 ``exact`` (~ eps32 sigma_max / sigma_i,
eps32 = 1.2e-7) unless sigma_max / sigma_i exceeds ~1e5: the top of the spectrum is
exact-quality, and tiny singular values lose relative precision quadratically.
Below sqrt(N eps64) sigma_max the eigenvalues are rounding noise and are reported as
sigma = 0 with a zero U column (U diag(S) V^T still equals W to that noise floor).
The errors measured on real and synthetic matrices are in bench/results/svd.json.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import re
from collections.abc import Callable, Iterator

import torch

from .errors import EdgeC2IError

METHODS = ("auto", "exact", "gram")
MIB = 2**20
SLACK_BYTES = 16 * MIB  # allocator, MKL and LAPACK fixed costs (first calls, 2 threads)
MIN_CHUNK_ROWS = 16  # the gram path refuses budgets that leave fewer rows per chunk
DEFAULT_CHUNK_BYTES = 64 * MIB  # chunk size of the gram path when there is no budget

_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
_SIZE_HELP = "a number of bytes with an optional unit KB/MB/GB or KiB/MiB/GiB, e.g. 512MB, 1.5GiB"
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None
if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):  # musl, macOS
    _LIBC = None


# ---------------------------------------------------------------- sizes and estimates


def parse_size(text: str) -> int:
    """Bytes from "2GB", "512MB", "1.5GiB" or "100000" (GB = 1e9, GiB = 2**30)."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise EdgeC2IError(f"bad memory size {text!r}: expected {_SIZE_HELP}")
    size = round(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise EdgeC2IError(f"bad memory size {text!r}: it must be positive ({_SIZE_HELP})")
    return size


def format_size(nbytes: float) -> str:
    """A short human size, to three digits: "545 MB", "1.62 GB", "1 kB"."""
    nbytes = float(f"{nbytes:.3g}")  # 999,999 bytes: "1 MB", not "1e+03 kB"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} bytes"


def _exact_bytes(m: int, n: int) -> int:
    p = min(m, n)
    return 4 * (3 * m * n // 2 + p * (m + n) + 9 * p * p // 2) + SLACK_BYTES


def _gram_fixed_bytes(m: int, n: int, r: int) -> tuple[int, int]:
    """(peak around eigh, memory held outside it while chunks stream) of the gram path."""
    p, q = min(m, n), max(m, n)
    eigh = 8 * p * p + 8 * 3 * p * p + SLACK_BYTES  # G, eigenvectors + LAPACK workspace
    held = max(8 * p * p, 4 * (q * r + p * r) + 8 * p * r)  # G; or outputs + float64 E
    return eigh, held + SLACK_BYTES


def _gram_row_bytes(m: int, n: int, r: int) -> int:
    """Bytes per row of a chunk: the input chunk (<= 4 B/entry), float64 copy, float64 product."""
    p = min(m, n)
    return 4 * p + 8 * p + 8 * r


def workspace_bytes(
    m: int, n: int, method: str, k: int | None = None, chunk_rows: int = MIN_CHUNK_ROWS
) -> int:
    """Estimated bytes an SVD of an (m, n) matrix allocates; see the module docstring.

    For gram the figure is at ``chunk_rows`` rows per chunk (the smallest by default;
    ``gram_chunk_rows`` gives the size a budget allows).
    """
    r = min(m, n) if k is None else k
    if method == "exact":
        return _exact_bytes(m, n)
    if method == "gram":
        eigh, held = _gram_fixed_bytes(m, n, r)
        return max(eigh, held + chunk_rows * _gram_row_bytes(m, n, r))
    raise EdgeC2IError(f"unknown SVD method {method!r}: use one of exact, gram")


def gram_chunk_rows(m: int, n: int, k: int | None, budget: int | None) -> int:
    """Rows of the tall side per chunk that keep the gram path within ``budget`` bytes."""
    r = min(m, n) if k is None else k
    row = _gram_row_bytes(m, n, r)
    if budget is None:
        return max(MIN_CHUNK_ROWS, min(max(m, n), DEFAULT_CHUNK_BYTES // row))
    _, held = _gram_fixed_bytes(m, n, r)
    rows = min(max(m, n), (budget - held) // row)
    if rows < MIN_CHUNK_ROWS or workspace_bytes(m, n, "gram", k) > budget:
        raise budget_error(m, n, k, budget, "gram")
    return rows


def budget_error(
    m: int, n: int, k: int | None, budget: int, method: str | None = None
) -> EdgeC2IError:
    """The error for "does not fit": it quotes the estimated need of ``method``, or the
    smallest need over all methods when ``method`` is None."""
    options = [method] if method else ["exact", "gram"]
    need = min(workspace_bytes(m, n, name, k) for name in options)
    how = f" with method {method}" if method else ""
    return EdgeC2IError(
        f"the SVD of a {m}x{n} matrix{how} needs ~{format_size(need)}, "
        f"budget {format_size(budget)}: raise --max-memory"
    )


def choose_method(m: int, n: int, k: int | None = None, budget: int | None = None) -> str:
    """The method "auto" runs: exact if it fits the budget, else gram."""
    if budget is None or workspace_bytes(m, n, "exact", k) <= budget:
        return "exact"
    if workspace_bytes(m, n, "gram", k) <= budget:
        return "gram"
    raise budget_error(m, n, k, budget)


# ---------------------------------------------------------------- the SVD


def svd(
    W: torch.Tensor, method: str = "auto", k: int | None = None, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD W = U diag(S) V^T of a 2-D tensor; top-k only when k is given (see module doc)."""
    if W.ndim != 2:
        raise EdgeC2IError(f"svd needs a 2-D matrix, got shape {tuple(W.shape)}")
    m, n = W.shape
    _check_rank(m, n, k)
    if method == "auto":
        method = choose_method(m, n, k, budget)
    elif method not in METHODS:
        raise EdgeC2IError(f"unknown SVD method {method!r}: use one of {', '.join(METHODS)}")
    elif budget is not None and workspace_bytes(m, n, method, k) > budget:
        raise budget_error(m, n, k, budget, method)
    W = W.detach().to(torch.float32)
    if method == "exact":
        return _svd_exact(W, k)
    return _svd_gram(W, k, budget)


def _check_rank(m: int, n: int, k: int | None) -> None:
    if k is not None and not 1 <= k <= min(m, n):
        raise EdgeC2IError(f"k={k} is out of range for a {m}x{n} matrix: use 1..{min(m, n)}")


def _svd_exact(W: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    r = S.shape[0] if k is None else k
    return U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].mT.contiguous()


def _svd_gram(
    W: torch.Tensor, k: int | None, budget: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, n = W.shape
    T = W if n <= m else W.mT  # tall: M x N with N <= M
    rows = gram_chunk_rows(m, n, k, budget)

    def blocks() -> Iterator[torch.Tensor]:
        for start in range(0, T.shape[0], rows):
            yield T[start : start + rows]

    A, S, E = gram_svd(blocks, T.shape[0], T.shape[1], k)
    return (A, S, E) if T is W else (E, S, A)


# ---------------------------------------------------------------- the Gram core


def gram_svd(
    blocks: Callable[[], Iterator[torch.Tensor]], M: int, N: int, k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T = A diag(S) E^T for a tall T (M x N, N <= M) seen only as row chunks.

    ``blocks()`` yields the row chunks of T in order, any float dtype; it is
    called twice (one pass for G = T^T T, one for A = T E / S).
    """
    r = N if k is None else k
    G = torch.zeros(N, N, dtype=torch.float64)
    for X in _float64_chunks(blocks):
        G.addmm_(X.mT, X)  # G += X^T X
    del X  # the chunk buffers are gone before eigh
    lam, Q = torch.linalg.eigh(G)  # ascending eigenvalues
    del G
    E = Q[:, N - r :].flip(-1)  # top-r eigenvectors, descending (a copy: Q can go)
    del Q
    release_freed_memory()
    S = lam[N - r :].flip(0).clamp_min(0).sqrt()
    # eigenvalues below N eps64 lam_max are rounding noise: report sigma = 0 there
    floor = S[0] * math.sqrt(N * torch.finfo(torch.float64).eps) if r else 0.0
    alive = S > floor
    S = torch.where(alive, S, 0.0)
    inv_S = torch.where(alive, 1.0 / S, 0.0)
    A = torch.empty(M, r, dtype=torch.float32)
    start, XE = 0, None
    for X in _float64_chunks(blocks):
        if XE is None:  # one product buffer for the whole pass
            XE = torch.empty(X.shape[0], r, dtype=torch.float64)
        rows = X.shape[0]
        torch.matmul(X, E, out=XE[:rows])
        A[start : start + rows] = XE[:rows].mul_(inv_S)  # A = T E / S, chunk by chunk
        start += rows
    if start != M:
        raise EdgeC2IError(f"the matrix chunks gave {start} rows, expected {M}")
    del X, XE
    release_freed_memory()
    return A, S.to(torch.float32), E.to(torch.float32)


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``).

    eigh's freed temporaries would otherwise stay resident as holes in the heap
    while the second pass allocates its chunk buffers above them; so would the scan's
    activations while the search allocates other shapes.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _float64_chunks(blocks: Callable[[], Iterator[torch.Tensor]]) -> Iterator[torch.Tensor]:
    """One pass over the chunks, each copied into one float64 buffer reused along the pass
    (the first chunk is the largest), so a pass allocates once instead of per chunk."""
    buf = None
    for X in blocks():
        if buf is None:
            buf = torch.empty(X.shape, dtype=torch.float64)
        yield buf[: X.shape[0]].copy_(X)
