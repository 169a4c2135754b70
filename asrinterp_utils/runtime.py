"""Run-time settings shared by the package and the book: fast mode, cache folder, default device.

Every chapter runs in one of two modes. ``make book`` runs the *full* mode (the real tiny.en and base models on
enough data for the figures to mean something); ``make test`` sets ``ASRINTERP_FAST=1`` and every chapter runs the
same code on a handful of clips and one model, to prove that it runs. Chapters ask :func:`fast_mode` and nothing
else.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

FAST_ENV = "ASRINTERP_FAST"
CACHE_ENV = "ASRINTERP_CACHE"
WAIT_POLICY_ENV = "ASRINTERP_OMP_WAIT_POLICY"


def configure_threads() -> None:
    """Make PyTorch's OpenMP threads sleep, not spin, when they wait: ``OMP_WAIT_POLICY=PASSIVE``, unless the
    environment sets ``OMP_WAIT_POLICY`` already or ``ASRINTERP_OMP_WAIT_POLICY=unset`` asks to leave it alone.

    With the default policy a thread that reaches a barrier spins; when another process runs on the same cores the
    spinning threads take the cores from the very thread they wait for, and Whisper's decoding, thousands of small
    operations each ending at a barrier, runs many times slower (``benchmarks/threads.py`` measures it). OpenMP reads
    the variable when it starts, so this runs when the package is imported, before torch, and does nothing if torch
    was imported first (then set the variable in the shell, or call ``torch.set_num_threads(1)`` in one process).
    """
    if os.environ.get(WAIT_POLICY_ENV, "").strip().lower() == "unset":
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


ALLOCATOR_ENV = "ASRINTERP_MALLOC"


def configure_allocator() -> bool:
    """Keep freed memory in the process for the next tensor, instead of handing it back to the system (glibc on
    Linux only; ``ASRINTERP_MALLOC=default`` leaves the allocator alone). Returns whether it was changed.

    glibc serves every allocation over 128 KiB-32 MiB with a fresh ``mmap`` and unmaps it when freed, so each large
    tensor (Whisper's encoder activations, the cross-attention keys and values: tens of MB) is zeroed and
    page-faulted in anew, one 4 KiB page at a time. On a 2-core machine that costs more than the arithmetic:
    copying one ``(24, 8, 1500, 64)`` key tensor took 33 ms with fresh pages and 6 ms with reused ones, a GELU
    over the encoder's MLP 36 ms against 12 ms. ``mallopt(M_MMAP_MAX, 0)`` serves large blocks from the heap and
    ``M_TRIM_THRESHOLD`` (1 GiB) keeps what is freed there: the process's memory stays near its peak, and each
    large tensor after the first reuses pages already mapped.
    """
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() == "default":
        return False
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def fast_mode() -> bool:
    """True when the environment asks for the fast mode (``ASRINTERP_FAST=1``, as ``make test`` sets it)."""
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir(*parts: str) -> Path:
    """The package's user cache folder (``$ASRINTERP_CACHE``, else ``$XDG_CACHE_HOME/asrinterp_utils``, else
    ``~/.cache/asrinterp_utils``), with ``parts`` appended. The folder is created if missing."""
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "asrinterp_utils"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_device():
    """CUDA when available, else CPU (a ``torch.device``)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def atomic_path(path: Path, tmp: Path | None = None) -> Iterator[Path]:
    """The one way the package writes a file: the block writes to a hidden temporary file in the same folder (or
    ``tmp``), which is renamed onto ``path`` when the block ends without an error and removed when it fails. A
    reader never sees a half-written file; two writers of the same path leave one of their complete files; an
    interrupted write leaves at most a hidden temporary file.

    >>> with atomic_path(folder / "table.csv") as tmp:   # doctest: +SKIP
    ...     table.to_csv(tmp, index=False)
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while building it, so that two processes asked for the same missing file
    (two pytest workers, two chapters) build it once: the second waits, then finds the file the first wrote. The
    lock is a file in ``cache_dir("locks")`` named after ``path`` (kept there: removing a lock file while another
    process waits on it would let a third one in); it is released when the block ends or the process dies. Where
    ``fcntl`` does not exist (Windows) the block runs unlocked: both may build, and :func:`atomic_path` keeps one
    complete file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path).resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    with open(cache_dir("locks") / f"{path.name}.{digest}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_whole(value: Any, what: str, minimum: int, why: str = "") -> int:
    """``value`` as an int, or a ``ValueError`` saying that ``what`` must be a whole number ``>= minimum`` (``why``
    says why the bound): ``True`` and ``2.5`` are refused rather than read as 1 and truncated to 2."""
    if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}{why}; got {value!r}")
    return int(value)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`), flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def save_results(name: str, results: dict) -> Path:
    """Save a chapter's headline numbers as JSON, atomically, under ``cache_dir("results", mode)`` (mode ``fast`` or
    ``full``), for the reproduction report to read. Returns the file's path."""
    import json

    path = cache_dir("results", "fast" if fast_mode() else "full") / f"{name}.json"
    write_text_atomic(path, json.dumps(results, indent=2, default=float))
    return path
