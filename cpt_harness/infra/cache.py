"""The on-disk cache (converted models, tokenized data) and the two primitives that make it safe when several
processes start cold at once: an exclusive file lock, and build-in-a-temp-folder-then-rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock

from cpt_harness.errors import LockTimeout

# The longest a process waits for another's lock: building a cache entry (a model download and conversion, a
# corpus's tokenization) or measuring a study's base losses on a CPU takes minutes, not an hour. The OS releases
# a dead process's lock at once, so waiting this long means a live process is stuck.
LOCK_TIMEOUT_S = 3600.0


def cache_dir() -> Path:
    """``$CPT_HARNESS_CACHE``, else ``~/.cache/cpt-harness``."""
    root = os.environ.get("CPT_HARNESS_CACHE") or Path.home() / ".cache" / "cpt-harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the duration of the block; LockTimeout when
    another process holds it for over ``timeout`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeout(
            f"waited {timeout:g} s for {path}: another cpt-harness process holds it (building this "
            "cache entry, or measuring the study's base losses) and has not let go; find it (e.g. "
            f"`fuser {path}`) and stop it, or wait for it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def build_once(final: Path, build) -> Path:
    """Return ``final``, calling ``build(tmp_dir)`` first if it does not exist yet.

    Only one process builds (the others wait on the lock, then find the result); the result appears with an
    atomic rename, so a crash mid-build leaves no half-written folder behind.
    """
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.with_name(f".{final.name}.lock")):
        if final.exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def file_sha256(path: Path) -> str:
    """The sha256 of a file's contents, read in 4 MiB chunks (models and wheels are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
