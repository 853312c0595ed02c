"""Training backends, picked by name. Each turns a base model path plus a trial's LoRA layout into a trainable
PEFT model on a device; the training loop, optimizer groups, audit and evaluation are shared (cpt_harness.train).

``load`` is the one place a backend's heavy imports happen. For unsloth that import must come before
transformers/peft in the process: call ``load`` first thing in every process that trains (the CLI does).
"""

from __future__ import annotations

import importlib
import importlib.util

from cpt_harness.backends.base import Backend
from cpt_harness.errors import BackendUnavailable

_REGISTRY = {
    "peft": "cpt_harness.backends.peft_backend:PeftBackend",
    "unsloth": "cpt_harness.backends.unsloth_backend:UnslothBackend",
}


def resolve_name(name: str) -> str:
    """``auto`` -> unsloth when a CUDA GPU and the unsloth package are present, else peft."""
    if name != "auto":
        return name
    if importlib.util.find_spec("unsloth") is None:
        return "peft"
    import torch

    return "unsloth" if torch.cuda.is_available() else "peft"


def load(name: str) -> Backend:
    name = resolve_name(name)
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r} (known: auto, {', '.join(_REGISTRY)})")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Backend", "BackendUnavailable", "load", "resolve_name"]
