"""Corpora: read documents, split train / held-out by document, tokenize, pack into fixed-length blocks, cache.

Every trial of a study sees the same held-out blocks (the first ``eval.max_tokens`` tokens of the packed
held-out documents), so trials compare on identical text. The tokenized blocks are cached under a key of the
data's contents, the tokenizer and the block length.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import lzma
import os
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
}
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
FORMATS = ("builtin:NAME, a .txt file (documents separated by blank lines), .jsonl or .json (one JSON object per "
           "line), .parquet, a datasets.save_to_disk folder, or a hub dataset id")
# Suffixes that mean "a local file" even when it is missing (a hub id like org/corpus.v2 has no such suffix).
_FILE_LIKE = FILE_SUFFIXES + (".csv", ".tsv", ".gz", ".xz", ".bz2", ".zst", ".zip", ".tar", ".arrow", ".md",
                              ".text", ".xml", ".html", ".yaml", ".yml", ".pdf", ".docx")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HEAD_BYTES = 64 * 1024  # what validate reads of a data file


class DataError(Exception):
    pass


def check_source(src: DataSource, key: str) -> list[str]:
    """Problems with a data source that can be seen without downloading it; of a local file, only its first
    64 KiB are read."""
    name = src.path
    if not name.strip():
        return [f"{key}: must not be empty; give {FORMATS}"]
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        if short not in BUILTIN_CORPORA:
            return [f"{key}: unknown built-in corpus {short!r} (built-in: {', '.join(BUILTIN_CORPORA)})"]
        return []
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return [f"{key}: {name} is a folder but not a datasets.save_to_disk folder"]
        return []
    if path.exists():
        if path.suffix not in FILE_SUFFIXES:
            return [f"{key}: {name}: unsupported file type {path.suffix!r}; give {FORMATS}"]
        problem = _file_problem(path, name, src.text_field)
        return [f"{key}: {problem}"] if problem else []
    if name.startswith((".", "/", "~")) or path.suffix.lower() in _FILE_LIKE:
        return [f"{key}: {name} does not exist"]
    if not _HUB_ID.match(name):
        return [f"{key}: {name!r} is neither builtin:NAME, an existing file or folder, nor a hub dataset id"]
    if hub_offline() and not _hub_dataset_cached(name):
        return [f"{key}: {name} is a hub dataset id, but HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set and it is not "
                "in the local Hugging Face cache; download it once online, or point to a local file"]
    return []


def _file_problem(path: Path, name: str, text_field: str) -> str | None:
    """What is wrong with a local data file, judged from its first 64 KiB (None: nothing seen)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except OSError as e:
        return f"{name} is not readable ({e.strerror or e})"
    if not head:
        return f"{name} is empty"
    if path.suffix == ".parquet":
        return None if head[:4] == tail == b"PAR1" else f"{name} is not a Parquet file (no PAR1 at its start and end)"
    complete = size <= len(head)
    if problem := text_problem(head, complete):
        return f"{name} {problem}"
    if path.suffix in (".jsonl", ".json"):
        text = head.decode("utf-8", errors="ignore")
        lines = text if complete else text[: text.rfind("\n") + 1]  # complete lines only
        try:
            _read_jsonl_lines(io.StringIO(lines), text_field, name)
        except DataError as e:
            return str(e)
    return None


def text_problem(blob: bytes, complete: bool = True) -> str | None:
    """Why ``blob`` (a whole file, or its first bytes when not ``complete``) is not UTF-8 text; None if it is."""
    if blob.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "is UTF-16, not UTF-8; re-encode it, e.g. iconv -f utf-16 -t utf-8 FILE > NEW"
    if (nul := blob.find(b"\0")) >= 0:
        return f"is binary, not text (a NUL byte at byte {nul})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(blob, final=complete)
        return None
    except UnicodeDecodeError as e:
        undecodable = blob.decode("utf-8", errors="replace").count("\ufffd") / len(blob)
        if undecodable > 0.1 and len(blob) >= 256:  # a few bad bytes in a short text are an encoding, not binary
            return f"is binary, not text ({undecodable:.0%} of its first {len(blob):,} bytes are not UTF-8)"
        line = blob.count(b"\n", 0, e.start) + 1
        return (f"is not UTF-8 (line {line}, byte {e.start}: {blob[e.start:e.start + 4]!r}); re-encode it as UTF-8, "
                "e.g. iconv -f latin1 -t utf-8 FILE > NEW")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_dataset_cached(repo_id: str) -> bool:
    """Whether a hub dataset has been downloaded (hub cache) or prepared (datasets cache) on this machine."""
    try:
        from huggingface_hub import constants

        if (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir():
            return True
        home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
        return (datasets_cache / repo_id.replace("/", "___")).is_dir()
    except Exception:
        return False


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
        return [d.strip() for d in re.split(r"\n\s*\n", _read_text(path)) if d.strip()]
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl_lines(io.StringIO(_read_text(path)), src.text_field, name)
    return _read_with_datasets(src, path)


def _read_text(path: Path) -> str:
    blob = path.read_bytes()
    if problem := text_problem(blob):
        raise DataError(f"{path} {problem}")
    return blob.decode("utf-8")


def _read_jsonl_lines(fh, text_field: str, name: str) -> list[str]:
    docs = []
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                hint = "; a .json file is read as JSON lines, one object per line" if name.endswith(".json") else ""
                raise DataError(f"{name}:{lineno}: not valid JSON ({e.msg}){hint}") from None
            if not isinstance(row, dict):
                raise DataError(f"{name}:{lineno}: a JSON {type(row).__name__}, not an object; each line must be "
                                f'an object like {{"{text_field}": "..."}}')
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
        hint = ("; HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set: download it once online, or point to a local file"
                if hub_offline() and not path.exists() else "")
        raise DataError(f"{src.path}: could not load with datasets ({type(e).__name__}: {e}){hint}") from None
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
    for name, which, src in (("domain_eval", "data.domain", cfg.domain), ("general_eval", "data.general", cfg.general)):
        if arrays[name].shape[0] == 0:
            raise DataError(f"{which}: the held-out part of {src.path} ({_documents(stats[name])} at "
                            f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                            f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                            "lower model.max_seq_length")
    if arrays["domain_train"].shape[0] == 0:
        raise DataError(f"data.domain: the training part of {cfg.domain.path} ({_documents(stats['domain_train'])}) "
                        f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents, lower "
                        "data.eval_fraction or lower model.max_seq_length")
    return Corpora(**arrays, fingerprint=key, stats=stats)


def _documents(stats: dict) -> str:
    n = stats["documents"]
    return f"{n} document" + ("" if n == 1 else "s")


def _build(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path) -> None:
    stats = {}
    domain_train, domain_eval = _split(cfg.domain, "data.domain", cfg)
    # Only the general corpus's held-out part is ever used: it measures forgetting.
    _, general_eval = _split(cfg.general, "data.general", cfg)
    for name, docs in (("domain_train", domain_train), ("domain_eval", domain_eval), ("general_eval", general_eval)):
        blocks = pack(docs, tokenizer, block_len, None if name == "domain_train" else eval_max_tokens)
        np.save(out / f"{name}.npy", blocks)
        stats[name] = {"documents": len(docs), "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}
    stats["sources"] = {"domain": source_label(cfg.domain), "general": source_label(cfg.general)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def _split(src: DataSource, key: str, cfg: DataConfig) -> tuple[list[str], list[str]]:
    try:
        return split_documents(_read(src, key), cfg.eval_fraction, cfg.seed)
    except DataError as e:
        if str(e).startswith(key):
            raise
        hint = " (in a .txt file, documents are separated by a blank line)" if src.path.endswith(".txt") else ""
        raise DataError(f"{key}: {src.path}: {e}{hint}") from None


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
