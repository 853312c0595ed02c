"""Building a study's prepared data once: every source read into a memory-mapped store, split by document,
near-copies of training documents dropped from the held-out part, tokenized and packed by forked workers, the
domain's training blocks memory-mapped, the held-out blocks with each token's document."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cpt_harness.config import DataConfig, DataSource
from cpt_harness.data import workers
from cpt_harness.data.contamination import (
    CONTAMINATION_NGRAM,
    CONTAMINATION_THRESHOLD,
    unique_hashes,
)
from cpt_harness.data.packing import (
    BlockWriter,
    _Documents,
    _Store,
    pack_documents,
    separator_id,
)
from cpt_harness.data.sources import (
    corpus_names,
    iter_documents,
    source_label,
    split_order,
    too_few_documents,
)

# ------------------------------------------------------------------------------------------ the prepared set
from cpt_harness.data.workers import (
    Progress,
    _check_all,
    _held_out_hashes,
    _keeps,
    _ranges,
    _tokenize_range,
    _workers,
)
from cpt_harness.errors import DataError


def _build(
    cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, out: Path, show: Progress | None = None
) -> None:
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
    checked = [_held_out_hashes(store, held_out, procs, workers.CHECK_WORDS * need) for store, held_out in held_outs]
    wanted = unique_hashes([h for part in checked for h in part.hashes])
    found = np.zeros(wanted.size, dtype=bool)
    writer = BlockWriter(out / "domain_train.npy", block_len)
    offsets, n_train = [0], 0
    for (store, order, n_eval), key in zip(splits, keys):
        train = order[n_eval:]
        n_train += len(train)
        with (
            _workers(procs, docs=_Documents(store, train), tokenizer=tokenizer, sep=sep, wanted=wanted) as pmap,
            show.stage(f"{key}: tokenize, pack", len(train)) as tick,
        ):
            for ids, n, seen in pmap(_tokenize_range, _ranges(len(train), workers.CHUNK_DOCS)):
                writer.write(ids)
                found[seen] = True
                tick(n, len(ids))
        if len(sources) > 1:
            offsets.append(writer.cut())
            if offsets[-1] == offsets[-2]:
                raise DataError(
                    f"{key}: the training part of {sources[len(offsets) - 2].path} "
                    f"({_documents({'documents': len(train)})}) is shorter than one block of model.max_seq_length={block_len} tokens; "
                    "add documents, lower data.eval_fraction or lower model.max_seq_length"
                )
    n_blocks = writer.close()
    keeps = _keeps(checked, wanted, found)
    short = [
        i
        for i, (part, keep) in enumerate(zip(checked, keeps))
        if len(part) < len(held_outs[i][1]) and np.asarray(part.words)[keep].sum() < need
    ]
    if short:  # so many near-copies that the checked ones cannot fill the evaluation: check every held-out one
        keeps = _check_all(short, checked, held_outs, splits, keys, procs, show)
    held_outs = [(store, held_out[: len(keep)]) for (store, held_out), keep in zip(held_outs, keeps)]
    keep = np.concatenate(keeps)
    dropped = int((~keep).sum())
    n_held_out = sum(n_eval for _, _, n_eval in splits)
    stats["contamination"] = {
        "ngram_words": CONTAMINATION_NGRAM,
        "threshold": CONTAMINATION_THRESHOLD,
        "held_out_documents": n_held_out,
        "checked": len(keep),
        "dropped": dropped,
    }
    if not keep.any():
        raise DataError(
            f"data.domain: every held-out document is a near-copy of training documents ({dropped} "
            f"of {len(keep)} share >= {CONTAMINATION_THRESHOLD:.0%} of their {CONTAMINATION_NGRAM}-word "
            "sequences with them); deduplicate the corpus"
        )
    stats["domain_train"] = {"documents": n_train, "blocks": n_blocks, "tokens": n_blocks * block_len}
    if len(sources) == 1:  # as before several sources: one pack of eval.max_tokens
        store, held_out = held_outs[0]
        blocks, docs = pack_documents(_Documents(store, held_out[keep]), tokenizer, block_len, eval_max_tokens)
        np.save(out / "domain_eval.npy", blocks)
        np.save(out / "domain_eval_docs.npy", docs)
        stats["domain_eval"] = _eval_stats(n_held_out - dropped, blocks, docs)
    else:
        _domain_eval_per_source(
            sources,
            keys,
            held_outs,
            keep,
            offsets,
            tokenizer,
            block_len,
            eval_max_tokens,
            out,
            stats,
            cfg,
            [n_eval for _, _, n_eval in splits],
        )
    _build_general(cfg, tokenizer, block_len, eval_max_tokens, out, stats, scratch, show)
    stats["sources"] = {
        "domain": " + ".join(source_label(d) for d in sources),
        "general": " + ".join(source_label(g) for g in cfg.general_sources()),
    }
    if cfg.replay is not None:
        stats["replay_train"] = _build_replay(cfg, tokenizer, block_len, out, scratch, show)
        stats["sources"]["replay"] = source_label(cfg.replay.source)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(scratch)


def _domain_eval_per_source(
    sources,
    keys,
    held_outs,
    keep,
    offsets,
    tokenizer,
    block_len,
    eval_max_tokens,
    out,
    stats,
    cfg,
    n_held_out: list[int],
) -> None:
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
            raise DataError(
                f"{key}: the held-out part of {sources[i].path} ({_documents({'documents': len(kept)})} "
                f"at data.eval_fraction={cfg.eval_fraction}, after dropping near-copies) is shorter than "
                f"one block of model.max_seq_length={block_len} tokens; add documents, raise "
                "data.eval_fraction or lower model.max_seq_length"
            )
        all_blocks.append(blocks)
        all_docs.append(docs + len(corpus))
        corpus += [i] * (int(docs.max()) + 1)
        per[name] = {
            "source": source_label(sources[i]),
            **_eval_stats(n_held_out[i] - dropped, blocks, docs),
            "train_blocks": offsets[i + 1] - offsets[i],
        }
    blocks, docs = np.concatenate(all_blocks), np.concatenate(all_docs)
    np.save(out / "domain_eval.npy", blocks)
    np.save(out / "domain_eval_docs.npy", docs)
    np.save(out / "domain_doc_corpus.npy", np.asarray(corpus, dtype=np.int32))
    stats["domain_eval"] = {
        "documents": sum(p["documents"] for p in per.values()),
        "documents_evaluated": len(corpus),
        "blocks": int(blocks.shape[0]),
        "tokens": int(blocks.size),
    }
    stats["domain_corpora"] = per
    stats["domain_names"] = names
    stats["domain_train_offsets"] = offsets


def _build_replay(cfg: DataConfig, tokenizer, block_len: int, out: Path, scratch: Path, show: Progress) -> dict:
    """data.replay.source's training documents (``split_general``'s training part: neither its held-out nor its
    heal-validation documents), packed into replay_train.npy like the domain's."""
    store, order, n_eval = _stored_split(cfg.replay.source, "data.replay.source", cfg, scratch, show)
    if len(order) <= 2 * n_eval:
        raise DataError(
            too_few_documents(
                cfg.replay.source,
                "data.replay.source",
                len(order),
                2 * n_eval + 1,
                "to hold out a test and a validation part and replay the rest",
            )
        )
    train = order[2 * n_eval :]
    writer = BlockWriter(out / "replay_train.npy", block_len)
    with (
        _workers(
            num_proc(cfg), docs=_Documents(store, train), tokenizer=tokenizer, sep=separator_id(tokenizer)
        ) as pmap,
        show.stage("data.replay.source: tokenize, pack", len(train)) as tick,
    ):
        for ids, n, _ in pmap(_tokenize_range, _ranges(len(train), workers.CHUNK_DOCS)):
            writer.write(ids)
            tick(n, len(ids))
    n_blocks = writer.close()
    if n_blocks == 0:
        raise DataError(
            f"data.replay.source: the training part of {cfg.replay.source.path} ({len(train)} documents) "
            f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents"
        )
    return {"documents": len(train), "blocks": n_blocks, "tokens": n_blocks * block_len}


def _build_general(
    cfg: DataConfig,
    tokenizer,
    block_len: int,
    eval_max_tokens: int,
    out: Path,
    stats: dict,
    scratch: Path,
    show: Progress,
) -> None:
    """Each general corpus's held-out part, packed on its own (eval.max_tokens each), then stacked; document
    numbers run on across corpora. Only the held-out parts are ever used here: they measure forgetting."""
    sources, names = cfg.general_sources(), corpus_names(cfg.general_sources())
    all_blocks, all_docs, corpus, per = [], [], [], {}
    for i, (src, name) in enumerate(zip(sources, names)):
        key = "data.general" if len(sources) == 1 else f"data.general[{i}]"
        store, order, n_eval = _stored_split(src, key, cfg, scratch, show)
        blocks, docs = pack_documents(_Documents(store, order[:n_eval]), tokenizer, block_len, eval_max_tokens)
        if blocks.shape[0] == 0:
            raise DataError(
                f"{key}: the held-out part of {src.path} ({_documents({'documents': n_eval})} at "
                f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                "lower model.max_seq_length"
            )
        n_docs = int(docs.max()) + 1
        all_blocks.append(blocks)
        all_docs.append(docs + len(corpus))
        corpus += [i] * n_docs
        per[name] = {"source": source_label(src), **_eval_stats(n_eval, blocks, docs)}
    blocks, docs = np.concatenate(all_blocks), np.concatenate(all_docs)
    np.save(out / "general_eval.npy", blocks)
    np.save(out / "general_eval_docs.npy", docs)
    np.save(out / "general_doc_corpus.npy", np.asarray(corpus, dtype=np.int32))
    stats["general_eval"] = {
        "documents": sum(p["documents"] for p in per.values()),
        "documents_evaluated": len(corpus),
        "blocks": int(blocks.shape[0]),
        "tokens": int(blocks.size),
    }
    stats["general_corpora"] = per
    stats["general_names"] = names


def _eval_stats(n_docs: int, blocks: np.ndarray, doc_ids: np.ndarray) -> dict:
    return {
        "documents": n_docs,
        "documents_evaluated": int(doc_ids.max()) + 1 if doc_ids.size else 0,
        "blocks": int(blocks.shape[0]),
        "tokens": int(blocks.size),
    }


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
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as writer,
        show.stage(f"{key}: read {src.path}") as tick,
    ):
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


def _documents(stats: dict) -> str:
    n = stats["documents"]
    return f"{n} document" + ("" if n == 1 else "s")


def num_proc(cfg: DataConfig) -> int:
    if cfg.num_proc != "auto":
        return cfg.num_proc
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _read(src: DataSource, key: str) -> Iterator[str]:
    """``iter_documents``, its errors naming the key."""
    try:
        yield from iter_documents(src)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except OSError as e:
        raise DataError(f"{key}: cannot read {src.path} ({e.strerror or e})") from None
