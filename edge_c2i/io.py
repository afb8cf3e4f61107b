"""Writing outputs without ever losing a user's file.

Every folder or file edge-c2i writes goes through ``OutputDir`` or ``write_output_file``:

- An existing ``--out`` is refused unless ``force`` is given, and even then only a
  folder (or file) that edge-c2i itself wrote is replaced: it is recognised by its
  manifest.  Anything else is refused before any heavy work.
- The result is written into a temporary sibling named ``.NAME.edge-c2i-PID-XXXXXXXX``
  (never inside ``--out``), and swapped in at the end with one atomic
  ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it (else: the old folder is
  renamed aside, the new one renamed in, then the old one deleted).  At every instant
  ``--out`` is either the old or the new complete folder.
- The PID in the temporary name says who owns it: a later run on the same ``--out``
  deletes temporaries whose owner is dead (a killed run), and refuses to start while
  a live run is writing there.
- A folder records the entries it was written with (``WROTE``): ``--force`` refuses a folder
  that holds anything else (a user's notes, an app's assets), as it refuses a folder that
  is not edge-c2i's.  The checks are made again just before the swap: an output that
  appeared, or changed, while the run was working is not replaced; the result is kept
  beside it.

No heavy imports here: the torch-free ONNX path uses it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import EdgeC2IError

TMP_TAG = "edge-c2i"
WROTE = ".edge_c2i_wrote.json"  # in each folder edge-c2i writes: the paths of its entries


def _tmp_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.{TMP_TAG}-(\d+)-[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(out: Path) -> None:
    """Delete the temporaries of dead runs on ``out``; refuse if a live run is writing it."""
    if not out.parent.is_dir():
        return
    pattern = _tmp_pattern(out.name)
    for entry in out.parent.iterdir():
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        if _alive(pid):
            raise EdgeC2IError(f"another edge-c2i run (pid {pid}) is writing {out}; wait for it "
                               "to finish or choose another output")
        _remove(entry)


def _is_cwd_or_ancestor(path: Path) -> bool:
    cwd = Path.cwd().resolve()
    return path == cwd or path in cwd.parents


def _probe_writable(folder: Path, out: Path) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    # os.access says yes to root even where nothing can be created (/proc, read-only mounts),
    # so create something. On Linux TemporaryFile is an unnamed O_TMPFILE: a run killed at
    # this instant leaves no entry behind in the user's folder.
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=f".{TMP_TAG}-probe-"):
            pass
    except OSError as e:
        raise EdgeC2IError(f"cannot write {out}: {probe} is not writable ({e.strerror})") from None


def check_output(out: str | Path, force: bool, ours: Callable[[Path], bool], what: str,
                 is_dir: bool = True) -> Path:
    """Refuse an output that must not be written, before any heavy work; returns the path.

    ``ours(path)`` tells whether an existing ``path`` was written by edge-c2i (its
    manifest); ``what`` names it in messages ("an adapted folder").
    """
    out = Path(out).expanduser()
    full = out.resolve()
    if _is_cwd_or_ancestor(full):
        raise EdgeC2IError(f"--out {out} is the current folder or one above it; name a new "
                           "folder to write, e.g. --out out/adapted")
    if out.exists() or out.is_symlink():
        if is_dir and not out.is_dir():
            raise EdgeC2IError(f"--out {out} is a file, not a folder; choose another path")
        if not is_dir and out.is_dir():
            raise EdgeC2IError(f"--out {out} is a folder; name a file to write, e.g. {out}/scan.json")
        if not force:
            raise EdgeC2IError(f"{out} exists; pass --force to replace it")
        if out.is_symlink() or not ours(out):
            raise EdgeC2IError(f"{out} exists and is not {what} written by edge-c2i; --force only "
                               "replaces edge-c2i's own output: choose another --out or remove it "
                               "yourself")
        foreign = not_written(out) if is_dir else []
        if foreign:
            raise EdgeC2IError(f"{out} holds {', '.join(foreign[:3])}"
                               f"{' and more' if len(foreign) > 3 else ''}, which edge-c2i did not "
                               "write there; --force would delete it: move it out, or choose "
                               "another --out")
    _probe_writable(full.parent, out)
    clean_stale(full)
    return out


def _entries(folder: Path) -> list[str]:
    """Every path under ``folder``, relative, subfolders' contents included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _record(folder: Path) -> set[str] | None:
    try:
        return set(json.loads((folder / WROTE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def not_written(folder: Path) -> list[str]:
    """The paths under ``folder`` that edge-c2i did not write there (by its WROTE record; a
    folder written before the record was kept has none, and is judged by its manifest)."""
    wrote = _record(folder)
    if wrote is None:
        return []
    return [p for p in _entries(folder) if p not in wrote and p != WROTE]


def record_written(folder: Path, *names: str) -> None:
    """Add files edge-c2i wrote into a finished folder of its own (a quantized variant beside
    an export's model.onnx) to its WROTE record, so that --force may replace them too.  A
    folder without a record (one being written: the record comes with the swap) is left as
    it is."""
    wrote = _record(folder)
    if wrote is not None and not wrote.issuperset(names):
        (folder / WROTE).write_text(json.dumps(sorted(wrote.union(names))))


def has_manifest(*names: str) -> Callable[[Path], bool]:
    """``ours`` for a folder: it holds one of these manifest files, and it parses as JSON."""

    def ours(folder: Path) -> bool:
        for name in names:
            try:
                json.loads((folder / name).read_text())
                return True
            except (OSError, ValueError):
                continue
        return False

    return ours


# --------------------------------------------------------------------------- the swap


def _libc_exchange() -> Callable[[Path, Path], bool] | None:
    """``exchange(a, b)`` with Linux's renameat2(RENAME_EXCHANGE), or None where it is missing."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: Path, b: Path) -> bool:
        res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
        return res == 0  # False: the filesystem does not support it (EINVAL), use the fallback

    return exchange


_EXCHANGE = _libc_exchange()


def swap_in(new: Path, out: Path, aside: Path) -> None:
    """Put ``new`` at ``out``; an existing ``out`` ends at ``aside`` (the caller deletes it)."""
    if out.exists() or out.is_symlink():
        if _EXCHANGE is not None and _EXCHANGE(new, out):
            new.rename(aside)  # new's name now holds the old output
            return
        out.rename(aside)
    new.rename(out)


class OutputDir:
    """A folder claimed up front and written atomically.

        with OutputDir(out, force, ours, "an adapted folder") as tmp:
            ...write files into tmp...
        # on success tmp is now at out; on any error tmp is gone and out untouched

    Creating it checks ``out`` (``check_output``) and makes the temporary folder, which
    also tells later runs that this one is writing ``out``.  ``claim()`` may be called
    early (before heavy work) and the ``with`` block later.
    """

    def __init__(self, out: str | Path, force: bool, ours: Callable[[Path], bool], what: str):
        self.out = check_output(out, force, ours, what)
        self.force, self.ours, self.what = force, ours, what
        self.existed = self.out.exists()
        self.tmp: Path | None = None
        self.made: list[Path] = []  # parent folders claim() created, outermost first

    def _sibling(self) -> Path:
        full = self.out.resolve()
        return full.with_name(f".{full.name}.{TMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}")

    def claim(self) -> Path:
        if self.tmp is None:
            self.tmp = self._sibling()
            missing = self.tmp.parent
            while not missing.exists():  # folders made for --out: removed again on failure
                self.made.insert(0, missing)
                missing = missing.parent
            try:
                self.tmp.parent.mkdir(parents=True, exist_ok=True)
                self.tmp.mkdir()
            except OSError as e:
                raise EdgeC2IError(f"cannot write {self.out}: {e.strerror or e}") from None
            clean_stale(self.out.resolve())  # a run that started at the same moment
        return self.tmp

    def commit(self) -> Path:
        tmp = self.claim()
        (tmp / WROTE).write_text(json.dumps(_entries(tmp)))
        for path in tmp.rglob("*"):  # safetensors and onnx write owner-only files: every
            if path.is_file() and not path.is_symlink():  # file as readable as one Python
                shutil.copymode(tmp / WROTE, path)  # writes (the user's umask)
        try:  # again: the output may have appeared, or changed, while this run worked
            if self.out.exists() and not self.existed and not self.force:
                raise EdgeC2IError(f"{self.out} appeared while this run was writing it")
            check_output(self.out, self.force, self.ours, self.what)
        except EdgeC2IError as e:
            kept = self.out.resolve().with_name(f"{self.out.name}.new-{secrets.token_hex(4)}")
            try:
                tmp.rename(kept)
            except OSError:
                kept = tmp
            self.tmp = None
            raise EdgeC2IError(f"{e}; it was left as it is, and this run's result is at "
                               f"{kept}") from None
        aside = self._sibling()
        try:
            swap_in(tmp, self.out.resolve(), aside)
        except OSError as e:
            raise EdgeC2IError(f"cannot write {self.out}: {e.strerror or e}; the finished result "
                               f"was kept at {tmp}") from None
        self.tmp = None
        _remove(aside)
        return self.out

    def abort(self) -> None:
        if self.tmp is not None:
            _remove(self.tmp)
            self.tmp = None
        for folder in reversed(self.made):  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.made = []

    def __enter__(self) -> Path:
        return self.claim()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
            reason = write_failure(exc)
            if reason:
                raise EdgeC2IError(f"cannot write {self.out}: {reason}; nothing was written and "
                                   f"{self.out} is as it was") from None


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed (disk full, file too large, read-only...), or None if it was no write.

    OSError for Python's own writes; safetensors and onnx report the OS error in their
    own exception types, as "I/O error: ... (os error N)".
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or str(exc)
    text = str(exc)
    if "os error" in text or "I/O error" in text:
        return text.strip().splitlines()[0][:200]
    return None


def write_output_file(out: str | Path, text: str, force: bool,
                      ours: Callable[[Path], bool], what: str) -> Path:
    """Write one file atomically (temp sibling + os.replace), refusing what is not ours."""
    out = check_output(out, force, ours, what, is_dir=False)
    full = out.resolve()
    tmp = full.with_name(f".{full.name}.{TMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, full)
    except OSError as e:
        _remove(tmp)
        raise EdgeC2IError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def json_with_keys(keys: Iterable[str]) -> Callable[[Path], bool]:
    """``ours`` for a JSON file edge-c2i wrote: it parses and has these top-level keys."""
    keys = set(keys)

    def ours(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and keys <= data.keys()

    return ours
