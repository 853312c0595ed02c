"""Text formats a user has (paragraphs, lines, a folder of files), streamed reading, the errors that name the key,
file, line and fix, and the memory-mapped training blocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cpt_harness import data
from cpt_harness.cli import main
from cpt_harness.config import DataConfig, DataSource
from cpt_harness.data import corpora as data_corpora
from cpt_harness.data import sources as data_sources
from tests.conftest import ROOT, builtin_docs

DEMO = str(ROOT / "sweeps" / "demo.yaml")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_each_format_reads_its_documents(tmp_path):
    (tmp_path / "p.txt").write_text("first doc\nstill first\n\n\nsecond doc\n")
    (tmp_path / "l.txt").write_text("one\n\n two \nthree\n")
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "b.txt").write_text("file b\n\nstill b\n")
    (tmp_path / "folder" / "sub" / "a.txt").write_text("file a\n")
    (tmp_path / "folder" / "notes.md").write_text("not read")
    read = lambda path, fmt="auto": data.read_documents(DataSource(str(tmp_path / path), format=fmt))  # noqa: E731
    assert read("p.txt") == read("p.txt", "paragraphs") == ["first doc\nstill first", "second doc"]
    assert read("p.txt", "lines") == ["first doc", "still first", "second doc"]
    assert read("l.txt", "lines") == ["one", "two", "three"]
    assert read("folder", "file") == ["file b\n\nstill b", "file a"]  # sorted by path: b.txt before sub/a.txt


def test_streamed_reading_is_the_same_in_any_chunk_size(tmp_path, monkeypatch):
    docs = ["\n".join(line for line in d.splitlines() if line.strip()) for d in builtin_docs("legal", 20)] + [
        "caf\u00e9 \u2014 na\u00efve \u4e2d\u6587"
    ] * 3
    (tmp_path / "p.txt").write_text("\n\n \n".join(docs))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    sources = [
        DataSource(str(tmp_path / "p.txt")),
        DataSource(str(tmp_path / "p.txt"), format="lines"),
        DataSource(str(tmp_path / "l.jsonl")),
    ]
    whole = [data.read_documents(s) for s in sources]
    assert [d.strip() for d in docs] == whole[0] == whole[2]
    monkeypatch.setattr(data_sources, "READ_CHUNK", 7)  # cuts separators, lines and multi-byte characters apart
    assert [data.read_documents(s) for s in sources] == whole


def test_a_bad_byte_late_in_a_large_file_names_its_line_and_byte(tmp_path, monkeypatch):
    good = "\n\n".join(builtin_docs("legal", 30)).encode()
    (tmp_path / "a.txt").write_bytes(good + b"\n\ncaf\xe9\n")
    monkeypatch.setattr(data_sources, "READ_CHUNK", 4096)
    with pytest.raises(data.DataError) as e:
        data.read_documents(DataSource(str(tmp_path / "a.txt")))
    line = good.count(b"\n") + 3
    assert f"(line {line}, byte {len(good) + 5}: b'\\xe9\\n')" in str(e.value)


@pytest.mark.parametrize("value, what", [("null", "null"), ("3", "a JSON int"), ('["a"]', "a JSON list")])
def test_a_jsonl_text_that_is_not_a_string_names_file_and_line(tmp_path, value, what):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": ' + value + "}\n")
    with pytest.raises(data.DataError) as e:
        data.read_documents(DataSource(str(path)))
    assert str(e.value).startswith(f"{path}:3: field 'text' is {what}, not a string")
    # validate reads the head and says the same, naming the key
    assert data.check_source(DataSource(str(path)), "data.domain") == [f"data.domain: {e.value}"]


def test_validate_names_the_format_that_splits_a_one_paragraph_file(tmp_path, capsys):
    (tmp_path / "defs.txt").write_text("".join(f"term {i}: its definition\n" for i in range(50)))
    assert main(["validate", DEMO, "--set", f"data.domain={tmp_path}/defs.txt"]) == 2
    err = capsys.readouterr().err
    assert (
        f"data.domain: {tmp_path}/defs.txt holds 1 document (format: paragraphs, documents separated by a blank "
        f"line); need at least 2 documents to hold some out; if it holds one document a line, set data.domain: "
        f"{{path: {tmp_path}/defs.txt, format: lines}}"
    ) in err and "Traceback" not in err
    assert main(["validate", DEMO, "--set", f"data.domain={{path: {tmp_path}/defs.txt, format: lines}}"]) == 0


def test_a_large_one_paragraph_file_fails_at_prepare_with_the_same_message(tmp_path, tokenizer):
    lines = "".join(f"{' '.join(d.split())}\n" for d in builtin_docs("legal", 80))
    (tmp_path / "big.txt").write_text(lines)
    assert len(lines) > data.HEAD_BYTES
    src = DataSource(str(tmp_path / "big.txt"))
    assert data.check_source(src, "data.domain") == []  # its head alone does not show it
    cfg = DataConfig(domain=src, general=DataSource("builtin:brown"))
    with pytest.raises(data.DataError, match=r"big.txt holds 1 document .* format: lines\}"):
        data.prepare(cfg, tokenizer, 32, 256)


def test_formats_that_do_not_fit_the_source_are_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    (tmp_path / "empty").mkdir()
    check = lambda path, fmt: data.check_source(DataSource(str(tmp_path / path), format=fmt), "k")  # noqa: E731
    assert check("d.jsonl", "lines") == [
        f"k.format: lines applies to a .txt file; {tmp_path}/d.jsonl is read as records (leave format out)"
    ]
    assert "a folder of .txt files, one document each, is read with k: {path: " in check("folder", "auto")[0]
    assert check("folder", "paragraphs")[0].startswith("k.format: paragraphs applies to a .txt file")
    assert check("folder", "file") == []
    assert check("empty", "file") == [
        f"k: {tmp_path}/empty holds no .txt file (format: file reads a folder of .txt files, one document each)"
    ]


def test_training_blocks_are_memory_mapped_and_the_same_in_any_number_of_processes(
    tokenizer, tiny_corpora, tmp_path, monkeypatch
):
    cfg = DataConfig(domain=DataSource(str(tiny_corpora["domain"])), general=DataSource(str(tiny_corpora["general"])))
    runs = {}
    for procs in (1, 2):
        monkeypatch.setenv("CPT_HARNESS_CACHE", str(tmp_path / f"cache-{procs}"))
        cfg.num_proc = procs
        runs[procs] = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=256)
    one, two = runs[1], runs[2]
    assert isinstance(one.domain_train, np.memmap) and str(one.domain_train.filename).endswith("domain_train.npy")
    assert one.fingerprint == two.fingerprint and one.stats == two.stats
    for name in data.ARRAYS:
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    # The file holds the training documents packed in the split's order, as pack() would in memory.
    docs = data.read_documents(cfg.domain)
    train, held_out = data.split_documents(docs, cfg.eval_fraction, cfg.seed)
    assert np.array_equal(one.domain_train, data.pack(train, tokenizer, 32))
    assert one.stats["domain_train"]["documents"] == len(train)
    assert not (tmp_path / "cache-1" / "data" / one.fingerprint / "documents").exists(), (
        "the Arrow document stores are scratch: gone once the blocks are built"
    )


def test_prepare_builds_model_and_data_without_training_and_a_sweep_then_finds_them(
    tiny_overrides, tiny_cfg, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("CPT_HARNESS_CACHE", str(tmp_path / "cache"))  # not the session's: this test builds it
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["prepare", DEMO] + sets) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "built in" in out and "MiB in" in out
    for row in ("domain train", "domain held-out", "general held-out: brown"):
        assert row in out and "documents" in out and "blocks" in out
    assert "tokens/s" in captured.err, "the progress bar shows the token rate"
    assert not Path(tiny_cfg.study.output_dir).exists() and not Path(tiny_cfg.study.storage[10:]).exists(), (
        "no study, no trial"
    )
    assert main(["prepare", DEMO] + sets) == 0 and "already cached" in capsys.readouterr().out
    monkeypatch.setattr(data_corpora, "_build", lambda *a: pytest.fail("the sweep rebuilt what prepare built"))
    from transformers import AutoTokenizer

    corpora = data.prepare(
        tiny_cfg.data,
        AutoTokenizer.from_pretrained(tiny_cfg.model.name),
        tiny_cfg.model.max_seq_length,
        tiny_cfg.eval.max_tokens,
    )
    assert corpora.domain_train.shape[1] == tiny_cfg.model.max_seq_length


def test_prepare_refuses_bad_data_with_exit_2(tiny_overrides, tmp_path, capsys):
    (tmp_path / "one.jsonl").write_text('{"text": "only one document"}\n')
    sets = [x for o in tiny_overrides + [f"data.domain={tmp_path}/one.jsonl"] for x in ("--set", o)]
    assert main(["prepare", DEMO] + sets) == 2
    err = capsys.readouterr().err
    assert f"data.domain: {tmp_path}/one.jsonl holds 1 document; need at least 2 documents" in err
    assert "Traceback" not in err
