"""Where Unsloth may put the embeddings it offloads to disk: a folder of this process's own (no unsloth import
here, so the CPU tests cover it)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

_OFFLOAD_ROOT: Path | None = None


@contextlib.contextmanager
def private_offload_folder(model):
    """A folder of this process's own for the embeddings Unsloth offloads to disk when it trains them.

    Unsloth writes them to ``os.path.join(temporary_location, config._name_or_path)/input_embeddings.pt`` and
    memory-maps them back. With an absolute model path that is the shared model folder itself, so concurrent
    trials on one base overwrite each other's file while another maps it ("mmap can only be used with files
    saved with torch.save(..., _use_new_zipfile_serialization=True)", seen with 8-16 workers on one host). So:
    a relative name under a fresh folder per load, removed with the process. Earlier loads' folders go at the
    next load: unlinking a mapped file is safe, the mapping keeps it alive until the old model is freed.
    """
    global _OFFLOAD_ROOT
    if _OFFLOAD_ROOT is None:
        _OFFLOAD_ROOT = Path(tempfile.mkdtemp(prefix=f"cpt-harness-unsloth-{os.getpid()}-"))
        atexit.register(shutil.rmtree, _OFFLOAD_ROOT, True)
    for old in _OFFLOAD_ROOT.iterdir():
        shutil.rmtree(old, ignore_errors=True)
    folder = tempfile.mkdtemp(dir=_OFFLOAD_ROOT)
    name = model.config._name_or_path
    model.config._name_or_path = Path(name).name or "model"
    try:
        yield folder
    finally:
        model.config._name_or_path = name
