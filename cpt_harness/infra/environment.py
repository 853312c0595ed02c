"""What a result depends on, for ``cpt-harness env``: package versions, CUDA, the GPUs, and whether Unsloth would
train here. Reads installed metadata and asks torch about CUDA; it never imports unsloth (whose import patches
transformers for the rest of the process)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys

from cpt_harness import __version__

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "datasets",
    "optuna",
    "wandb",
    "accelerate",
    "safetensors",
    "numpy",
    "scipy",
    "unsloth",
    "unsloth_zoo",
    "trl",
    "bitsandbytes",
    "psycopg2-binary",
)


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    """Everything ``env`` prints, as data."""
    out = {
        "cpt-harness": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in PACKAGES},
    }
    out.update(_cuda())
    out["unsloth"] = _unsloth(out)
    return out


def _cuda() -> dict:
    try:
        import torch
    except ImportError:
        return {"cuda": "torch is not installed", "gpus": []}
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        return {"cuda": f"not available (torch {torch.__version__}, {build})", "gpus": []}
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(f"{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    return {"cuda": f"{torch.version.cuda}, {len(gpus)} GPU(s)", "gpus": gpus}


def _unsloth(info: dict) -> str:
    """Whether ``backend: auto`` would pick Unsloth here, and if not, why."""
    if importlib.util.find_spec("unsloth") is None:
        return "not installed (pip install 'cpt-harness[gpu]' on a CUDA machine); backend auto uses peft"
    if not info["gpus"]:
        return "installed, but no CUDA GPU: backend auto uses peft"
    return f"installed ({info['packages']['unsloth']}): backend auto trains with unsloth"


def text(info: dict | None = None) -> str:
    info = info or describe()
    lines = [
        f"cpt-harness {info['cpt-harness']}",
        f"python {info['python']} ({sys.executable})",
        f"platform {info['platform']}",
        "packages:",
    ]
    lines += [f"  {name:<16}{v or '-'}" for name, v in info["packages"].items()]
    lines.append(f"cuda: {info['cuda']}")
    lines += [f"  gpu {g}" for g in info["gpus"]]
    lines.append(f"unsloth: {info['unsloth']}")
    return "\n".join(lines)
