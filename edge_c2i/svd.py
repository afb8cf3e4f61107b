"""Memory-aware SVD of one weight matrix: exact, randomized, or a chunked Gram path.

``svd(W)`` returns ``U (m, r)``, ``S (r,)`` descending and ``V (n, r)`` (V, not
V^T), all float32, with ``W ~ U diag(S) V^T``; ``r = min(m, n)``, or ``k`` when
only the top ``k`` triplets are asked for.

Methods
-------
exact       ``torch.linalg.svd(W, full_matrices=False)`` (LAPACK gesdd, float32).
randomized  ``torch.svd_lowrank`` (Halko et al. 2009) with ``l = k + max(10, k)``
            columns and ``niter = 6`` power iterations; top-k only.
gram        Let T be W or W^T, whichever is tall (T is M x N with N <= M).  Then
                G = T^T T = sum_c T_c^T T_c          (float64, N x N, over row chunks T_c)
                G = E diag(lam) E^T                  (torch.linalg.eigh)
                S = sqrt(max(lam, 0)),  A = T E / S  (again chunk by chunk)
            so T = A diag(S) E^T.  Only G, one row chunk and the outputs are ever
            allocated, and the chunk size follows from the budget.
auto        ``choose_method``: exact if it fits the budget (or there is none); else
            randomized when only a small top-k is needed; else gram; else
            UserError with the estimated need.

``svd_from_safetensors`` runs the gram path straight from a ``.safetensors`` file
with plain ``seek`` + ``readinto`` calls (no mmap: mapped pages would count as
resident memory), so the weight itself is never resident.  Row chunks of the
stored matrix are single reads; when the stored matrix is wide its column blocks
are read row by row (one read per stored row and block).  The chunk buffers are
allocated once per pass, and freed heap memory is handed back with glibc's
``malloc_trim`` so that RSS follows the estimate below.

Workspace estimates (bytes; p = min(m, n), q = max(m, n), r = output rank)
--------------------------------------------------------------------------
exact       4 (1.5 m n + p (m + n) + 4.5 p^2) + 16 MiB
            (working copy of W, U, V^T and gesdd's workspace)
randomized  4 (3 (m + n) l) + exact(l, p)     (basis, power-iteration blocks, small SVD)
gram        max(G + eigh, held + chunk) with
            G + eigh = 8 p^2 + 8 (3 p^2) + 16 MiB        (G, eigenvectors, syevd workspace)
            held     = max(8 p^2, 4 (q r + p r) + 8 p r) + 16 MiB   (G; or outputs + E64)
            chunk    = rows (4 p + 8 p + 8 r)   (raw read buffer, float64 copy, product)
            ``workspace_bytes`` quotes it at MIN_CHUNK_ROWS rows; ``gram_chunk_rows``
            gives the largest chunk a budget allows.
A budget counts what the call allocates, outputs included; for ``svd`` the input W
is not counted (it is already resident), for ``svd_from_safetensors`` nothing of W
is.  Measured peak-RSS growth over these estimates (bench/results/svd.json, MKL,
2 threads): exact 0.52-0.76, gram 0.72-0.92; streaming SmolLM2's 113 MB embedding
(k = 8) with a 32 / 48 / 96 MB budget grows RSS by 22.0 / 38.0 / 86.0 MB.  A small
budget makes the gram path slower, never larger, down to its floor: for p = 4096
that is ~554 MB, the float64 eigh of the 4096 x 4096 Gram matrix.

Precision
---------
The Gram matrix squares the singular values.  Accumulated and decomposed in
float64, the eigenvalues carry an absolute error of order eps64 lam_max, so

    |d sigma_i| / sigma_i  ~  eps64 (sigma_max / sigma_i)^2       (eps64 = 2.2e-16)

which for float32 weights beats float32 ``exact`` (~ eps32 sigma_max / sigma_i,
eps32 = 1.2e-7) unless sigma_max / sigma_i exceeds ~1e5.  Measured against a float64
SVD of the same float32 matrix (bench/results/svd.json):

* 42 real SmolLM2 / Gemma-3 matrices (all 7 types at 3 layers each; condition
  numbers 3.7 to 5.1e4): worst relative error over the WHOLE spectrum 5.9e-8 for
  gram (the float32 rounding of the output) and 1.5e-4 for exact.
* a synthetic 1024 x 512 matrix with singular values geometric from 1 to 1e-12,
  worst relative error per decade of sigma / sigma_max:
      1 .. 1e-4: gram <= 5.7e-8, exact <= 1.0e-5;   1e-4 .. 1e-5: gram 1.4e-7, exact 3.4e-2;
      1e-5 .. 1e-6: gram 7.5e-6, exact 5.2e-2;      below ~3e-7: gram returns 0.
  So the top of the spectrum is exact-quality, and tiny singular values lose
  relative precision quadratically: below sqrt(N eps64) sigma_max (3.4e-7 here)
  the eigenvalues are rounding noise and are reported as sigma = 0 with a zero
  U column (U diag(S) V^T still equals W to that noise floor).

The randomized method is an approximation: with l = 2k columns (k >= 10) and 6
power iterations its top-k singular values are within 1.45e-2 relative over all
126 Gemma-3-270M matrices at k = min(m, n) // 10 (3.2e-2 for k = 40 on a random
4096 x 11008 matrix, whose flat spectrum is its worst case), while the rank-k
truncation error ||W - U S V^T||_F stays within 0.13% of the optimum.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import UserError

METHODS = ("auto", "exact", "randomized", "gram")
MIB = 2**20
SLACK_BYTES = 16 * MIB  # allocator, MKL and LAPACK fixed costs (first calls, 2 threads)
MIN_CHUNK_ROWS = 16  # the gram path refuses budgets that leave fewer rows per chunk
DEFAULT_CHUNK_BYTES = 64 * MIB  # chunk size of the gram path when there is no budget
RANDOMIZED_MIN_OVERSAMPLE = 10  # l = k + max(10, k) columns
RANDOMIZED_NITER = 6  # power iterations (flat LLM spectra need several)
RANDOMIZED_MAX_FRACTION = 0.1  # auto uses randomized only for k <= 10% of min(m, n)
RANDOMIZED_SEED = 0  # the sketch is reproducible and leaves the global RNG alone

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
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# ---------------------------------------------------------------- sizes and estimates


def parse_size(text: str) -> int:
    """Bytes from "2GB", "512MB", "1.5GiB" or "100000" (GB = 1e9, GiB = 2**30)."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise UserError(f"bad memory size {text!r}: expected {_SIZE_HELP}")
    size = round(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UserError(f"bad memory size {text!r}: it must be positive ({_SIZE_HELP})")
    return size


def format_size(nbytes: float) -> str:
    """A short human size: "545 MB", "1.2 GB"."""
    if nbytes >= 10**9:
        return f"{nbytes / 1e9:.1f} GB"
    return f"{max(nbytes / 1e6, 0.1):.3g} MB"


def randomized_columns(m: int, n: int, k: int) -> int:
    """Columns l of the randomized sketch: k plus max(10, k) oversampling, at most min(m, n)."""
    return min(min(m, n), k + max(RANDOMIZED_MIN_OVERSAMPLE, k))


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
    """Bytes per row of a chunk: raw read buffer (<= 4 B/entry), float64 copy, float64 product."""
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
    if method == "randomized":
        ell = randomized_columns(m, n, r)
        return 4 * 3 * (m + n) * ell + _exact_bytes(ell, min(m, n))
    if method == "gram":
        eigh, held = _gram_fixed_bytes(m, n, r)
        return max(eigh, held + chunk_rows * _gram_row_bytes(m, n, r))
    raise UserError(f"unknown SVD method {method!r}: use one of exact, randomized, gram")


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
) -> UserError:
    """The error for "does not fit": it quotes the estimated need of ``method``, or the
    smallest need over all methods when ``method`` is None."""
    options = [method] if method else ["exact", "gram"] + (["randomized"] if k else [])
    need = min(workspace_bytes(m, n, name, k) for name in options)
    how = f" with method {method}" if method else ""
    return UserError(
        f"the SVD of a {m}x{n} matrix{how} needs ~{format_size(need)}, "
        f"budget {format_size(budget)}: raise --max-memory"
    )


def choose_method(m: int, n: int, k: int | None = None, budget: int | None = None) -> str:
    """The method "auto" runs: exact if it fits; a small top-k by randomized; else gram."""
    if budget is None or workspace_bytes(m, n, "exact", k) <= budget:
        return "exact"
    fits = {name: workspace_bytes(m, n, name, k) <= budget for name in ("gram", "randomized")}
    small_k = k is not None and k <= RANDOMIZED_MAX_FRACTION * min(m, n)
    if small_k and fits["randomized"]:
        return "randomized"
    if fits["gram"]:
        return "gram"
    if k is not None and fits["randomized"]:
        return "randomized"
    raise budget_error(m, n, k, budget)


# ---------------------------------------------------------------- in-memory SVD


def svd(
    W: torch.Tensor, method: str = "auto", k: int | None = None, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD W = U diag(S) V^T of a 2-D tensor; top-k only when k is given (see module doc)."""
    if W.ndim != 2:
        raise UserError(f"svd needs a 2-D matrix, got shape {tuple(W.shape)}")
    m, n = W.shape
    _check_rank(m, n, k)
    if method == "auto":
        method = choose_method(m, n, k, budget)
    elif method not in METHODS:
        raise UserError(f"unknown SVD method {method!r}: use one of {', '.join(METHODS)}")
    elif budget is not None and workspace_bytes(m, n, method, k) > budget:
        raise budget_error(m, n, k, budget, method)
    W = W.detach().to(torch.float32)
    if method == "exact":
        return _svd_exact(W, k)
    if method == "randomized":
        if k is None:
            raise UserError("the randomized SVD computes the top-k triplets only: give k")
        return _svd_randomized(W, k)
    return _svd_gram(W, k, budget)


def _check_rank(m: int, n: int, k: int | None) -> None:
    if k is not None and not 1 <= k <= min(m, n):
        raise UserError(f"k={k} is out of range for a {m}x{n} matrix: use 1..{min(m, n)}")


def _svd_exact(W: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    r = S.shape[0] if k is None else k
    return U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].mT.contiguous()


def _svd_randomized(W: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ell = randomized_columns(*W.shape, k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOMIZED_SEED)
        U, S, V = torch.svd_lowrank(W, q=ell, niter=RANDOMIZED_NITER)
    return U[:, :k].contiguous(), S[:k].contiguous(), V[:, :k].contiguous()


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
    _release_freed_memory()
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
        raise UserError(f"the matrix chunks gave {start} rows, expected {M}")
    del X, XE
    _release_freed_memory()
    return A, S.to(torch.float32), E.to(torch.float32)


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``).

    eigh's freed temporaries would otherwise stay resident as holes in the heap
    while the second pass allocates its chunk buffers above them.
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


# ---------------------------------------------------------------- streaming from safetensors


@dataclass(frozen=True)
class TensorInfo:
    """Where one 2-D tensor lives inside a .safetensors file."""

    path: Path
    name: str
    dtype: torch.dtype
    itemsize: int
    shape: tuple[int, int]  # as stored: (rows, cols), row-major
    offset: int  # absolute byte offset of element [0, 0]


def tensor_info(path: str | Path, tensor_name: str) -> TensorInfo:
    """Parse the header (8-byte little-endian length + JSON) and locate one tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise UserError(f"cannot read the safetensors header of {path}: {exc}") from None
    entry = header.get(tensor_name)
    if entry is None:
        raise UserError(f"{path} has no tensor {tensor_name!r}")
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise UserError(f"{tensor_name} is {entry['dtype']}: supported dtypes are F32, F16, BF16")
    if len(entry["shape"]) != 2:
        raise UserError(f"{tensor_name} has shape {entry['shape']}: a 2-D matrix is needed")
    rows, cols = entry["shape"]
    begin, end = entry["data_offsets"]
    itemsize = torch.finfo(dtype).bits // 8
    if end - begin != rows * cols * itemsize:
        raise UserError(f"{path}: the byte range of {tensor_name} does not match its shape")
    return TensorInfo(path, tensor_name, dtype, itemsize, (rows, cols), 8 + length + begin)


def _read_exact(f: BinaryIO, view: memoryview) -> None:
    """Fill ``view`` from the current file position (raw reads may return short)."""
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise UserError(f"{f.name} ended early: the file is truncated")
        done += got


def _stored_blocks(
    info: TensorInfo, rows: int, by_columns: bool
) -> Callable[[], Iterator[torch.Tensor]]:
    """Chunks of the stored matrix S: row blocks S[i:i+rows] (one read each), or
    column blocks S[:, j:j+rows]^T (one strided read per stored row)."""
    a, b = info.shape
    item = info.itemsize
    total = b if by_columns else a  # chunks run over the columns or the rows of S
    other = a if by_columns else b  # entries per chunk row

    def blocks() -> Iterator[torch.Tensor]:
        raw = torch.empty(min(rows, total) * other * item, dtype=torch.uint8)  # one per pass
        view = memoryview(raw.numpy())
        with open(info.path, "rb", buffering=0) as f:
            for start in range(0, total, rows):
                count = min(rows, total - start)
                nbytes = count * other * item
                if by_columns:  # S[i, start:start+count] for each stored row i
                    width = count * item
                    for i in range(a):
                        f.seek(info.offset + (i * b + start) * item)
                        _read_exact(f, view[i * width : (i + 1) * width])
                    yield raw[:nbytes].view(info.dtype).view(a, count).mT
                else:
                    f.seek(info.offset + start * b * item)
                    _read_exact(f, view[:nbytes])
                    yield raw[:nbytes].view(info.dtype).view(count, b)

    return blocks


def svd_from_safetensors(
    path: str | Path,
    tensor_name: str,
    budget: int | None,
    k: int | None = None,
    transpose: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram-path SVD of one weight read chunk by chunk from a .safetensors file.

    W is the stored (rows, cols) tensor, or its transpose when ``transpose`` is
    True (GPT-2 Conv1D stores (in, out)).  Returns (U, S, V) like ``svd``; the
    file is read twice with plain reads, never memory-mapped.
    """
    info = tensor_info(path, tensor_name)
    a, b = info.shape
    m, n = (b, a) if transpose else (a, b)
    _check_rank(m, n, k)
    rows = gram_chunk_rows(m, n, k, budget)
    by_columns = b > a  # T = S^T is the tall side: its rows are columns of S
    M, N = (b, a) if by_columns else (a, b)
    A, S, E = gram_svd(_stored_blocks(info, rows, by_columns), M, N, k)
    w_is_t = transpose == by_columns  # W = T, or W = T^T
    return (A, S, E) if w_is_t else (E, S, A)


def load_tensor(path: str | Path, tensor_name: str) -> torch.Tensor:
    """One tensor of a .safetensors file as float32, read with plain reads (no mmap)."""
    info = tensor_info(path, tensor_name)
    (block,) = _stored_blocks(info, info.shape[0], by_columns=False)()
    return block.to(torch.float32)
