"""Reading, splitting, packing and caching corpora."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import data
from harness.config import DataConfig, DataSource
from tests.conftest import builtin_docs


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_builtin_corpora_are_real_and_large_enough():
    for name in data.BUILTIN_CORPORA:
        docs = data.read_documents(DataSource(f"builtin:{name}"))
        assert len(docs) >= (233 if name == "sotu" else 250) and sum(map(len, docs)) > 3_000_000, name


def test_split_is_by_document_and_deterministic():
    docs = [f"document {i} " + "x" * i for i in range(100)]
    train, held = data.split_documents(docs, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
    assert data.split_documents(docs, 0.1, seed=3) == (train, held)
    assert data.split_documents(docs, 0.1, seed=4)[1] != held


def test_pack_joins_documents_with_the_separator(tokenizer):
    blocks = data.pack(["hello world", "license text"], tokenizer, block_len=4)
    sep = data.separator_id(tokenizer)
    assert sep == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    flat = blocks.reshape(-1).tolist()
    first = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert flat[: len(first) + 1] == first + [sep]
    assert blocks.shape[1] == 4 and blocks.dtype == np.int32


def test_local_formats_read_the_same_documents(tmp_path):
    docs = builtin_docs("legal", 5)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    assert data.read_documents(DataSource(str(tmp_path / "a.jsonl"), text_field="body")) == docs

    import datasets

    datasets.Dataset.from_dict({"text": docs}).to_parquet(str(tmp_path / "a.parquet"))
    assert data.read_documents(DataSource(str(tmp_path / "a.parquet"))) == docs
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": docs})}).save_to_disk(str(tmp_path / "ds"))
    assert data.read_documents(DataSource(str(tmp_path / "ds"), text_field="content")) == docs

    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n\nsecond doc\n")
    assert data.read_documents(DataSource(str(tmp_path / "a.txt"))) == ["first doc\nstill first", "second doc"]


def test_wrong_text_field_names_the_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(data.DataError, match="no field 'text' \\(fields: content\\); set text_field"):
        data.read_documents(DataSource(str(tmp_path / "a.jsonl")))


def test_check_source_messages(tmp_path):
    (tmp_path / "notes.docx").write_text("x")
    assert data.check_source(DataSource("builtin:poetry"), "data.domain")[0].startswith(
        "data.domain: unknown built-in corpus 'poetry'")
    assert "unsupported file type '.docx'" in data.check_source(DataSource(str(tmp_path / "notes.docx")), "k")[0]
    assert data.check_source(DataSource(str(tmp_path / "none.jsonl")), "k") == [f"k: {tmp_path}/none.jsonl does not exist"]
    assert data.check_source(DataSource("builtin:legal"), "k") == []


def test_prepare_is_cached_and_eval_blocks_fixed(tokenizer, tiny_corpora, monkeypatch):
    cfg = DataConfig(domain=DataSource(str(tiny_corpora["domain"])), general=DataSource(str(tiny_corpora["general"])))
    first = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=256)
    assert first.domain_eval.shape == (8, 32) and first.general_eval.shape == (8, 32)
    calls = []
    monkeypatch.setattr(data, "_build", lambda *a: calls.append(a))
    second = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=256)
    assert not calls, "a second prepare with the same data, tokenizer and length must come from the cache"
    assert np.array_equal(first.domain_eval, second.domain_eval)
    assert np.array_equal(first.general_eval, second.general_eval)
    assert first.fingerprint == second.fingerprint
    # No held-out document is in the training blocks: compare held-out token windows against training.
    train = first.domain_train.reshape(-1).tobytes()
    assert first.domain_eval[0, :16].tobytes() not in train


def test_empty_held_out_text_is_a_clear_error(tokenizer, tmp_path):
    (tmp_path / "d.txt").write_text("tiny\n\nalso tiny\n\nsmall\n")
    cfg = DataConfig(domain=DataSource(str(tmp_path / "d.txt")), general=DataSource(str(tmp_path / "d.txt")))
    with pytest.raises(data.DataError, match="shorter than one block"):
        data.prepare(cfg, tokenizer, block_len=512, eval_max_tokens=512)
