"""Training backends, picked by name. Each turns a base model path plus a trial's LoRA layout into a trainable
PEFT model on a device; the training loop, optimizer groups, audit and evaluation are shared (cpt_harness.train).

``load`` is the one place a backend's heavy imports happen. For unsloth that import must come before
transformers/peft in the process: call ``load`` first thing in every process that trains (the CLI does).
"""

from __future__ import annotations

import importlib
import importlib.util

from cpt_harness.errors import BackendUnavailable
from cpt_harness.model.backends.base import Backend

_REGISTRY = {
    "peft": "cpt_harness.model.backends.peft_backend:PeftBackend",
    "unsloth": "cpt_harness.model.backends.unsloth_backend:UnslothBackend",
}


def resolve_name(name: str) -> str:
    """``auto`` -> unsloth when a CUDA GPU and the unsloth package are present, else peft."""
    if name != "auto":
        return name
    if importlib.util.find_spec("unsloth") is None:
        return "peft"
    import torch

    return "unsloth" if torch.cuda.is_available() else "peft"


_kept: dict[str, Backend] | None = None  # set by keep_backends: one backend per name for the process's life


def keep_backends() -> None:
    """From now on ``load`` gives this process the same backend object per name (a pool worker, which serves
    study after study: the backend's kept base model stays loaded between them)."""
    global _kept
    _kept = {} if _kept is None else _kept


def load(name: str) -> Backend:
    name = resolve_name(name)
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r} (known: auto, {', '.join(_REGISTRY)})")
    if _kept is not None and name in _kept:
        return _kept[name]
    module, cls = _REGISTRY[name].split(":")
    backend = getattr(importlib.import_module(module), cls)()
    if _kept is not None:
        _kept[name] = backend
    return backend


__all__ = ["Backend", "BackendUnavailable", "keep_backends", "load", "resolve_name"]
