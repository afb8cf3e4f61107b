"""The scan's singular vectors kept on disk: they depend on the weights, not on the task.

``scan.spectral_basis`` (a float64 eigendecomposition per matrix) was half of a SmolLM2
scan on a small task (bench/results/scan.json, "SVDs"), and every scan of the same model
computed the same bases again.  Each basis is stored once under a name made from the
matrix itself (SHA-256 of its bytes, dtype and shape), so any model, adapted or not, finds
the bases of the matrices it shares with an earlier run, and a changed matrix never reads
a stale one.  A file read back gives the very tensors the decomposition gave, so the scores
do not depend on the cache.

Where: ``$EDGE_C2I_SPECTRA_CACHE``, else ``spectra`` under edge-c2i's home
(``$EDGE_C2I_HOME`` or ``~/.cache/edge-c2i``); ``EDGE_C2I_SPECTRA_CACHE=off`` computes
every basis and writes nothing.  A basis is p x p floats for a matrix whose smaller side is
p (SmolLM2-135M: about 210 MB in all, Gemma-3-270M about 160 MB).  Files are written to a
temporary name and renamed, so a run that stops leaves no half file; an unreadable file is
computed again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .paths import home

ENV = "EDGE_C2I_SPECTRA_CACHE"
OFF = ("off", "0", "no", "false", "")
VERSION = 1  # part of every key: a change in what a file holds changes the names
MAX_HEADER = 2**20  # a basis file's JSON header is ~200 bytes: anything longer is not one
_DTYPES = {torch.float32: "F32", torch.uint8: "U8"}  # safetensors' names


def cache_dir() -> Path | None:
    """The directory bases are kept in, or None when the cache is off."""
    value = os.environ.get(ENV)
    if value is None:
        return home() / "spectra"
    return None if value.strip().lower() in OFF else Path(value).expanduser()


def key(W: torch.Tensor) -> str:
    """A name for W's contents: SHA-256 of its bytes, dtype, shape and ``VERSION``."""
    W = W.detach().cpu().contiguous()
    digest = hashlib.sha256(f"v{VERSION} {W.dtype} {tuple(W.shape)}".encode())
    digest.update(memoryview(W.view(torch.uint8).numpy()))
    return digest.hexdigest()


def load(directory: Path, name: str, p: int, out: torch.Tensor | None = None
         ) -> tuple[bool, torch.Tensor, torch.Tensor] | None:
    """(left, Q, s) stored under ``name``, or None if absent or not a p x p basis.

    Read with plain reads into tensors of this process (``out``: a p x p float32 tensor to
    read Q into, which a scan reuses from one matrix to the next), not mapped: safetensors'
    ``load_file`` maps the file, and its tensors are views of the mapping, so a scan that
    kept the singular values held every file it read resident (SmolLM2-135M: 200 MB more
    than its memory plan), and each Q read was a fresh 1-2 MB block of the heap, whose
    holes glibc left resident (up to 0.8 GB more).
    """
    Q = torch.empty(p, p) if out is None else out
    s, left = torch.empty(p), torch.empty(1, dtype=torch.uint8)
    if Q.shape != (p, p) or Q.dtype != torch.float32 or not Q.is_contiguous():
        raise ValueError(f"out must be a contiguous {p} x {p} float32 tensor")
    try:
        with open(directory / f"{name}.safetensors", "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                return None
            header = json.loads(f.read(size))
            for key, t in (("Q", Q), ("s", s), ("left", left)):
                start, end = header[key]["data_offsets"]
                nbytes = t.numel() * t.element_size()
                if (header[key]["dtype"] != _DTYPES[t.dtype]
                        or list(header[key]["shape"]) != list(t.shape) or end - start != nbytes):
                    return None
                f.seek(8 + size + start)
                if f.readinto(memoryview(t.numpy()).cast("B")) != nbytes:
                    return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, unreadable or not a basis
    return bool(left.item()), Q, s


def save(directory: Path, name: str, left: bool, Q: torch.Tensor, s: torch.Tensor) -> int:
    """Write one basis (temporary name, then rename); bytes written, 0 if the disk refused."""
    from safetensors.torch import save_file

    path = directory / f"{name}.safetensors"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"left": torch.tensor([int(left)], dtype=torch.uint8),
                   "Q": Q.contiguous(), "s": s.contiguous()}, tmp)
        os.replace(tmp, path)
        return path.stat().st_size
    except OSError:  # a full or read-only disk: the scan goes on without the cache
        tmp.unlink(missing_ok=True)
        return 0
