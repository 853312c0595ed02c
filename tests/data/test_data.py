"""Reading, splitting, packing and caching corpora."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cpt_harness import data
from cpt_harness.config import DataConfig, DataSource
from cpt_harness.data import corpora as data_corpora
from cpt_harness.data import workers as data_workers
from tests.conftest import ROOT, builtin_docs


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_builtin_corpora_are_real_and_large_enough():
    for name in set(data.BUILTIN_CORPORA) - set(data.fetched.FETCHED_CORPORA):  # those: tests/data/test_fetched.py
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
        "data.domain: unknown built-in corpus 'poetry'"
    )
    assert "unsupported file type '.docx'" in data.check_source(DataSource(str(tmp_path / "notes.docx")), "k")[0]
    assert data.check_source(DataSource(str(tmp_path / "none.jsonl")), "k") == [
        f"k: {tmp_path}/none.jsonl does not exist"
    ]
    assert data.check_source(DataSource("builtin:legal"), "k") == []


def test_prepare_is_cached_and_eval_blocks_fixed(tokenizer, tiny_corpora, monkeypatch):
    cfg = DataConfig(domain=DataSource(str(tiny_corpora["domain"])), general=DataSource(str(tiny_corpora["general"])))
    first = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=256)
    assert first.domain_eval.shape == (8, 32) and first.general_eval.shape == (8, 32)
    calls = []
    monkeypatch.setattr(data_corpora, "_build", lambda *a: calls.append(a))
    second = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=256)
    assert not calls, "a second prepare with the same data, tokenizer and length must come from the cache"
    assert np.array_equal(first.domain_eval, second.domain_eval)
    assert np.array_equal(first.general_eval, second.general_eval)
    assert first.fingerprint == second.fingerprint
    # No held-out document is in the training blocks: compare held-out token windows against training.
    train = first.domain_train.reshape(-1).tobytes()
    assert first.domain_eval[0, :16].tobytes() not in train


@pytest.mark.integration
def test_empty_held_out_text_is_a_clear_error(tokenizer, tmp_path):
    (tmp_path / "d.txt").write_text("tiny\n\nalso tiny\n\nsmall\n")
    cfg = DataConfig(domain=DataSource(str(tmp_path / "d.txt")), general=DataSource("builtin:brown"))
    with pytest.raises(data.DataError) as e:
        data.prepare(cfg, tokenizer, block_len=512, eval_max_tokens=512)
    assert str(e.value).startswith(
        f"data.domain: the held-out part of {tmp_path}/d.txt (1 document at "
        "data.eval_fraction=0.1) is shorter than one block of model.max_seq_length=512"
    )
    cfg = DataConfig(domain=DataSource("builtin:legal"), general=DataSource(str(tmp_path / "d.txt")))
    with pytest.raises(data.DataError) as e:
        data.prepare(cfg, tokenizer, block_len=512, eval_max_tokens=512)
    assert str(e.value).startswith(
        f"data.general: the held-out part of {tmp_path}/d.txt (1 document at "
        "data.eval_fraction=0.1) is shorter than one block of model.max_seq_length=512"
    )


def test_text_problems_name_the_line_and_byte():
    assert data.text_problem("caf\u00e9\n".encode()) is None
    latin1 = "ab\ncd\ncaf\u00e9".encode("latin-1")
    assert data.text_problem(latin1).startswith("is not UTF-8 (line 3, byte 9: b'\\xe9')")
    assert data.text_problem(b"text\0more").startswith("is binary, not text (a NUL byte at byte 4)")
    assert data.text_problem(bytes(range(128, 256)) * 8).startswith("is binary, not text (")
    assert data.text_problem("hi".encode("utf-16")).startswith("is UTF-16")
    cut = "caf\u00e9".encode()[:-1]  # the first 64 KiB may end inside a character
    assert data.text_problem(cut, complete=False) is None and data.text_problem(cut) is not None


def test_reading_refuses_what_is_not_utf8_text(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good text\n\n\xff\xfe bad")
    with pytest.raises(data.DataError, match=r"a.txt is not UTF-8 \(line 3, byte 11"):
        data.read_documents(DataSource(str(tmp_path / "a.txt")))  # it was read with errors="replace" before
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n"just a string"\n')
    with pytest.raises(data.DataError, match=r"b.jsonl:2: a JSON str, not an object"):
        data.read_documents(DataSource(str(tmp_path / "b.jsonl")))


def test_check_source_reads_only_the_head(tmp_path):
    good = "".join(json.dumps({"text": t}) + "\n" for t in builtin_docs("legal", 60))
    (tmp_path / "a.jsonl").write_text(good + "[1]\n")
    assert len(good) > data.HEAD_BYTES
    assert data.check_source(DataSource(str(tmp_path / "a.jsonl")), "k") == []  # the full read finds it (test_fuzz)
    (tmp_path / "b.jsonl").write_text("[1]\n" + good)
    assert data.check_source(DataSource(str(tmp_path / "b.jsonl")), "k") == [
        f'k: {tmp_path}/b.jsonl:1: a JSON list, not an object; each line must be an object like {{"text": "..."}}'
    ]


def test_a_hub_dataset_offline_needs_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    src = DataSource("someone/corpus")
    assert data.check_source(src, "data.domain") == []  # online: validate does not download to find out
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" in data.check_source(src, "data.domain")[0]
    (tmp_path / "hub" / "datasets--someone--corpus").mkdir(parents=True)
    assert data.check_source(src, "data.domain") == []


def test_every_token_knows_its_document(tokenizer):
    docs = ["hello world", "license text here", "a third document", "and a fourth one"]
    blocks, owner = data.pack_documents(docs, tokenizer, block_len=5)
    assert np.array_equal(blocks, data.pack(docs, tokenizer, block_len=5)) and owner.shape == blocks.shape
    assert owner.dtype == np.int32 and np.all(np.diff(owner.reshape(-1)) >= 0), "documents in packing order"
    flat, sep = blocks.reshape(-1), data.separator_id(tokenizer)
    for k in np.unique(owner):
        ids = tokenizer(docs[k], add_special_tokens=False)["input_ids"] + [sep]
        mine = flat[owner.reshape(-1) == k].tolist()
        assert mine == ids[: len(mine)], f"document {k}'s tokens (and its separator) carry its index"


def test_contamination_filter_drops_a_copy_of_training_text_and_keeps_fresh_text():
    training = builtin_docs("legal", 30)
    fresh = builtin_docs("brown", 1)[0]
    copied = "  ".join(training[7].upper().split())  # a verbatim copy, respaced and upper-cased
    half = training[3].split()
    mostly = " ".join(half[: int(len(half) * 0.7)] + fresh.split()[: int(len(half) * 0.3)])
    kept, dropped = data.drop_contaminated([copied, fresh, mostly], training)
    assert kept == [fresh] and dropped == 2
    words = fresh.split()
    a_little = " ".join(words[:200] + half[:40])  # 40 copied words of 240: well under half of its 13-grams
    assert data.drop_contaminated([a_little], training) == ([a_little], 0)
    assert data.drop_contaminated(["too short to have a single thirteen word sequence"], training)[1] == 0


def test_prepare_drops_held_out_copies_and_counts_them(tokenizer, tmp_path):
    originals = builtin_docs("legal", 40)
    docs = originals + originals  # every document twice: a held-out one whose twin trains is contaminated
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cfg = DataConfig(
        domain=DataSource(str(tmp_path / "dup.jsonl")), general=DataSource("builtin:brown"), eval_fraction=0.2
    )
    train, held_out = data.split_documents(docs, cfg.eval_fraction, cfg.seed)
    expected = sum(d in train for d in held_out)
    assert 0 < expected < len(held_out), "the split should hold out some twins together, some apart"
    corpora = data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=100_000)
    c = corpora.stats["contamination"]
    assert (c["dropped"], c["held_out_documents"], c["ngram_words"]) == (expected, len(held_out), 13)
    assert corpora.stats["domain_eval"]["documents"] == len(held_out) - expected
    evaluated = corpora.domain_set()
    assert evaluated.n_docs == len(held_out) - expected  # every kept document fits in 100k tokens


def test_several_general_corpora_are_packed_apart_and_numbered_on(tokenizer, tiny_corpora):
    one = DataConfig(domain=DataSource(str(tiny_corpora["domain"])), general=DataSource(str(tiny_corpora["general"])))
    two = DataConfig(domain=one.domain, general=[one.general, DataSource(str(tiny_corpora["sotu"]))])
    single, both = data.prepare(one, tokenizer, 32, 256), data.prepare(two, tokenizer, 32, 256)
    assert single.general_names == ["brown"] and both.general_names == ["brown", "sotu"]
    g = both.general_set()
    n_brown = single.general_set().n_docs
    # eval.max_tokens applies per corpus: Brown's blocks are the single-corpus ones, SOTU's follow.
    assert np.array_equal(both.general_eval[: len(single.general_eval)], single.general_eval)
    assert both.general_eval.shape == (16, 32) and g.docs.shape == (16, 32)
    assert list(g.corpus) == [0] * n_brown + [1] * (g.n_docs - n_brown)
    assert g.docs[len(single.general_eval) :].min() == n_brown, "SOTU's documents are numbered after Brown's"
    per = both.stats["general_corpora"]
    assert set(per) == {"brown", "sotu"} and per["sotu"]["tokens"] == 256
    assert per["sotu"]["source"].endswith("sotu.jsonl")
    assert both.fingerprint != single.fingerprint
    assert data.corpus_names([DataSource("builtin:brown"), DataSource("/x/brown.txt"), DataSource("org/wiki")]) == [
        "brown",
        "brown-2",
        "wiki",
    ]


def test_the_vectorised_contamination_share_equals_the_per_document_one():
    """not_contaminated (one sorted search over all held-out n-grams) decides as the per-document mean would,
    with documents too short for an n-gram among them, and a share that lands exactly on the threshold."""
    rng = np.random.default_rng(0)
    wanted = np.unique(rng.integers(0, 2**62, 5000, dtype=np.int64).astype(np.uint64))
    found = rng.random(wanted.size) < 0.4
    hashes = [rng.choice(wanted, size=rng.integers(0, 40)) for _ in range(300)]
    hashes.append(wanted[np.flatnonzero(found)[:2].tolist() + np.flatnonzero(~found)[:2].tolist()])  # share 0.5
    naive = [not (h.size and np.mean(found[np.searchsorted(wanted, h)]) >= 0.5) for h in hashes]
    assert data.not_contaminated(hashes, wanted, found, 0.5).tolist() == naive
    assert data.not_contaminated(hashes, wanted, found, 0.5, chunk=50).tolist() == naive  # in parts, as at scale
    assert not data.not_contaminated(hashes, wanted, found, 0.5)[-1] and sum(naive) not in (0, len(naive))
    assert data.not_contaminated([np.empty(0, np.uint64)] * 3, wanted, found).tolist() == [True] * 3
    assert data.unique_hashes(hashes).tolist() == np.unique(np.concatenate(hashes)).tolist()


def test_ngram_hashes_of_ascii_and_unicode_text_are_those_of_their_lowercased_words():
    """The fast paths (ASCII text read as bytes, a memo of word hashes shared across documents) hash exactly as
    the definition: 64-bit blake2b of each lowercased \\w+ word, rolled over 13 words."""
    import hashlib
    import re

    def reference(text):
        words = re.findall(r"\w+", text.lower())
        ids = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words]
        out = []
        for i in range(len(words) - 12):
            h = 0
            for k in range(13):
                h = (h * 1099511628211 + ids[i + k]) % 2**64
            out.append(h)
        return out

    english = builtin_docs("brown", 1)[0]
    french = "Au commencement, Dieu créa les cieux et la terre. La terre était informe et vide: il y avait des ténèbres"
    vocab: dict = {}
    for text in (english, french, english.upper() + " " + french):  # the memo holds str and bytes words by then
        assert data.ngram_hashes(text, vocab=vocab).tolist() == reference(text)
    assert data.ngram_hashes("Café au lait, s'il vous plaît").size == 0


@pytest.mark.parametrize("check_words", [0, 2])
@pytest.mark.integration
def test_only_the_held_out_documents_that_can_be_evaluated_are_checked_and_the_evaluation_is_the_same(
    tokenizer, tmp_path, monkeypatch, check_words
):
    """The contamination check looks only at the first held-out documents, as many as the evaluation could use
    (memory flat in the corpus size); when near-copies leave too few of them, every held-out document is checked.
    Either way the evaluated blocks are those of checking every one."""
    legal, brown = builtin_docs("legal", 60), builtin_docs("brown", 60)
    docs = legal + legal + brown  # a legal document held out while its twin trains is a near-copy
    (tmp_path / "mix.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    monkeypatch.setattr(data_workers, "CHUNK_DOCS", 4)

    def build(words, name):
        monkeypatch.setattr(data_workers, "CHECK_WORDS", words)
        monkeypatch.setenv("CPT_HARNESS_CACHE", str(tmp_path / name))
        cfg = DataConfig(
            domain=DataSource(str(tmp_path / "mix.jsonl")), general=DataSource("builtin:brown"), eval_fraction=0.5
        )
        return data.prepare(cfg, tokenizer, block_len=32, eval_max_tokens=20_000)

    every, bounded = build(10**9, "every"), build(check_words, "bounded")
    assert every.stats["contamination"]["checked"] == every.stats["contamination"]["held_out_documents"] == 90
    assert np.array_equal(bounded.domain_eval, every.domain_eval)
    assert np.array_equal(bounded.domain_eval_docs, every.domain_eval_docs)
    checked = bounded.stats["contamination"]["checked"]
    if check_words == 0:  # the first 4 documents (~7k words) cannot fill 20k tokens: every one was checked again
        assert checked == 90
    else:
        assert 4 < checked < 90 and bounded.stats["contamination"]["dropped"] < every.stats["contamination"]["dropped"]


def test_data_workers_end_cleanly_however_their_results_are_left():
    """The held-out check stops reading its workers' results once it has enough words. Pool.imap left that way and
    terminated deadlocked whenever a worker was writing a result larger than the pipe's buffer (a flaky hang of
    this suite; 50 of 50 rounds below hung with it). The workers must end within seconds whether read to the end,
    left unread, failed, killed or interrupted; in a subprocess here, so that a regression fails instead of
    hanging the suite."""
    script = textwrap.dedent("""
        import numpy as np
        from cpt_harness.data import workers as data_workers

        def big(i):
            return [np.full(50_000, i, dtype=np.int64) for _ in range(20)]  # 8 MB a result

        for stop in (0, 3, 10) * 5:
            with data_workers._workers(2) as pmap:
                for k, result in enumerate(pmap(big, range(64))):
                    assert int(result[0][0]) == k  # in order
                    if k == stop:
                        break
        with data_workers._workers(2) as pmap:
            assert [int(r[0][0]) for r in pmap(big, range(9))] == list(range(9))
        print("closed")

        # a worker's error is raised here, as itself; a worker that dies is an error, not a hang
        def fails(i):
            if i == 5:
                raise ValueError("bad document 5")
            return i

        def dies(i):
            if i == 5:
                import os, signal
                os.kill(os.getpid(), signal.SIGKILL)
            return i

        for fn, expected in ((fails, ValueError), (dies, data_workers.DataError)):
            try:
                with data_workers._workers(2) as pmap:
                    list(pmap(fn, range(20)))
            except expected as e:
                print(f"raised {type(e).__name__}: {e}")

        # Ctrl-C (the whole process group: the workers get it too) ends the pool at once
        import os, signal, threading, time
        start = time.monotonic()
        threading.Timer(1.0, lambda: os.killpg(os.getpgrp(), signal.SIGINT)).start()
        try:
            with data_workers._workers(2) as pmap:
                for result in pmap(big, range(10**6)):
                    time.sleep(0.01)
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - start:.1f} s")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, start_new_session=True
    )
    assert proc.returncode == 0 and "closed" in proc.stdout, proc.stderr[-2000:]
    assert "raised ValueError: bad document 5" in proc.stdout
    assert "raised DataError: a data preparation worker died (exit code -9)" in proc.stdout
    seconds = float(proc.stdout.split("interrupted after ")[1].split(" s")[0])
    assert seconds < 30, proc.stdout
