"""The on-disk cache (converted models, tokenized data) and the two primitives that make it safe when several
processes start cold at once: an exclusive file lock, and build-in-a-temp-folder-then-rename."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """``$CPT_HARNESS_CACHE``, else ``~/.cache/cpt-harness``."""
    root = os.environ.get("CPT_HARNESS_CACHE") or Path.home() / ".cache" / "cpt-harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
