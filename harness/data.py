"""Corpora: read documents, split train / held-out by document, tokenize, pack into fixed-length blocks, cache.

Every trial of a study sees the same held-out blocks (the first ``eval.max_tokens`` tokens of the packed
held-out documents), so trials compare on identical text. The tokenized blocks are cached under a key of the
data's contents, the tokenizer and the block length.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.cache import build_once, cache_dir
from harness.config import DataConfig, DataSource

CORPORA_DIR = Path(__file__).parent / "corpora"
BUILTIN_CORPORA = {
    "brown": "general English: the Brown Corpus (500 texts, 15 genres)",
    "legal": "legal domain: license texts from ScanCode licensedcode-data",
    "austen": "general English: Jane Austen's six novels, by chapter (healing text)",
    "sotu": "general English: the State of the Union addresses, 1790-2021 (233 addresses)",
}
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class DataError(Exception):
    pass


def check_source(src: DataSource, key: str) -> list[str]:
    """Problems with a data source that can be seen without reading or downloading it."""
    name = src.path
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        if short not in BUILTIN_CORPORA:
            return [f"{key}: unknown built-in corpus {short!r} (built-in: {', '.join(BUILTIN_CORPORA)})"]
        return []
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.suffix in FILE_SUFFIXES
    if path.exists():
        if path.is_file() and path.suffix not in FILE_SUFFIXES:
            return [f"{key}: {name}: unsupported file type {path.suffix!r} (use {', '.join(FILE_SUFFIXES)})"]
        if path.is_dir() and not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return [f"{key}: {name} is a folder but not a datasets.save_to_disk folder"]
        if path.is_file():
            try:
                with open(path, "rb") as fh:
                    fh.read(1)
            except OSError as e:
                return [f"{key}: {name} is not readable ({e.strerror})"]
        return []
    if looks_local:
        return [f"{key}: {name} does not exist"]
    if not _HUB_ID.match(name):
        return [f"{key}: {name!r} is neither builtin:NAME, an existing file or folder, nor a hub dataset id"]
    return []


def source_label(src: DataSource) -> str:
    return src.path if src.text_field == "text" else f"{src.path}[{src.text_field}]"


# ------------------------------------------------------------------------------------------ reading


def read_documents(src: DataSource) -> list[str]:
    """All non-empty documents of a source, in a stable order."""
    name = src.path
    if name.startswith("builtin:"):
        return _read_jsonl_lines(lzma.open(CORPORA_DIR / f"{name.removeprefix('builtin:')}.jsonl.xz", "rt"), "text", name)
    path = Path(name).expanduser()
    if path.suffix == ".txt":
        # Documents are separated by one or more blank lines.
        return [d.strip() for d in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")) if d.strip()]
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl_lines(open(path, encoding="utf-8"), src.text_field, name)
    return _read_with_datasets(src, path)


def _read_jsonl_lines(fh, text_field: str, name: str) -> list[str]:
    docs = []
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name}:{lineno}: not valid JSON ({e.msg})") from None
            if text_field not in row:
                raise DataError(f"{name}:{lineno}: no field {text_field!r} (fields: {', '.join(row)}); set text_field")
            if str(row[text_field]).strip():
                docs.append(str(row[text_field]))
    return docs


def _read_with_datasets(src: DataSource, path: Path) -> list[str]:
    import datasets

    try:
        if path.suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        elif path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(f"{src.path}: no split {src.split!r} (splits: {', '.join(ds)}); set split")
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(src.path, split=src.split)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{src.path}: could not load with datasets ({type(e).__name__}: {e})") from None
    if src.text_field not in ds.column_names:
        raise DataError(f"{src.path}: no column {src.text_field!r} (columns: {', '.join(ds.column_names)}); set text_field")
    return [t for t in ds[src.text_field] if t and str(t).strip()]


def split_documents(docs: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Held-out by document, never by line: near-identical lines of one document stay on one side."""
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to hold some out, got {len(docs)}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(docs) * eval_fraction))
    return [docs[i] for i in order[n_eval:]], [docs[i] for i in order[:n_eval]]


# ------------------------------------------------------------------------------------------ packing


def separator_id(tokenizer) -> int:
    """The token placed between documents: <|endoftext|> where the vocabulary has it, else EOS."""
    tok_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tok_id, int) and tok_id != tokenizer.unk_token_id and tok_id is not None:
        return tok_id
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return tokenizer.eos_token_id


def pack(docs: list[str], tokenizer, block_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Tokenize documents, join them with the separator, cut into [n_blocks, block_len] (remainder dropped)."""
    sep = separator_id(tokenizer)
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for row in tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(sep)
        if max_tokens is not None and len(ids) >= max_tokens + block_len:
            break
    n_blocks = len(ids) // block_len
    if max_tokens is not None:
        n_blocks = min(n_blocks, max(1, max_tokens // block_len))
    return np.asarray(ids[: n_blocks * block_len], dtype=np.int32).reshape(n_blocks, block_len)


# ------------------------------------------------------------------------------------------ the prepared set


@dataclass
class Corpora:
    domain_train: np.ndarray  # [n, L] packed training blocks
    domain_eval: np.ndarray  # [m, L] held-out domain blocks
    general_eval: np.ndarray  # [k, L] held-out general blocks
    fingerprint: str
    stats: dict

    def describe(self) -> str:
        L = self.domain_train.shape[1]
        return (f"domain train {self.domain_train.shape[0]} x {L} tokens, domain eval {self.domain_eval.size} tokens, "
                f"general eval {self.general_eval.size} tokens")


def prepare(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> Corpora:
    """Read, split, tokenize and pack both corpora; cached by data, tokenizer and block length."""
    key = _cache_key(cfg, tokenizer, block_len, eval_max_tokens)
    folder = build_once(cache_dir() / "data" / key, lambda tmp: _build(cfg, tokenizer, block_len, eval_max_tokens, tmp))
    stats = json.loads((folder / "stats.json").read_text())
    arrays = {n: np.load(folder / f"{n}.npy") for n in ("domain_train", "domain_eval", "general_eval")}
    for name in ("domain_eval", "general_eval"):
        if arrays[name].shape[0] == 0:
            raise DataError(f"the held-out {name.split('_')[0]} text is shorter than one block of {block_len} tokens; "
                            "add documents, raise data.eval_fraction or lower model.max_seq_length")
    if arrays["domain_train"].shape[0] == 0:
        raise DataError(f"the domain training text is shorter than one block of {block_len} tokens")
    return Corpora(**arrays, fingerprint=key, stats=stats)


def _build(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path) -> None:
    stats = {}
    domain_train, domain_eval = split_documents(_read(cfg.domain, "data.domain"), cfg.eval_fraction, cfg.seed)
    # Only the general corpus's held-out part is ever used: it measures forgetting.
    _, general_eval = split_documents(_read(cfg.general, "data.general"), cfg.eval_fraction, cfg.seed)
    for name, docs in (("domain_train", domain_train), ("domain_eval", domain_eval), ("general_eval", general_eval)):
        blocks = pack(docs, tokenizer, block_len, None if name == "domain_train" else eval_max_tokens)
        np.save(out / f"{name}.npy", blocks)
        stats[name] = {"documents": len(docs), "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}
    stats["sources"] = {"domain": source_label(cfg.domain), "general": source_label(cfg.general)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def _read(src: DataSource, key: str) -> list[str]:
    try:
        docs = read_documents(src)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except OSError as e:
        raise DataError(f"{key}: cannot read {src.path} ({e.strerror or e})") from None
    if not docs:
        raise DataError(f"{key}: {src.path} holds no text")
    return docs


def _cache_key(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> str:
    h = hashlib.sha256()
    for src in (cfg.domain, cfg.general):
        h.update(source_fingerprint(src).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"{block_len}/{eval_max_tokens}/{cfg.eval_fraction}/{cfg.seed}/v1".encode())
    return h.hexdigest()[:16]


def source_fingerprint(src: DataSource) -> str:
    name = src.path
    path = CORPORA_DIR / f"{name.removeprefix('builtin:')}.jsonl.xz" if name.startswith("builtin:") else Path(name)
    h = hashlib.sha256(f"{name}|{src.text_field}|{src.split}".encode())
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
