"""Forked worker processes for the data build: tokenizing ranges of documents and hashing held-out n-grams,
ordered, bounded and killed on the way out (a worker's death is an error, never a hang)."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

from cpt_harness.data.contamination import (
    _WORD,
    CONTAMINATION_NGRAM,
    hits,
    ngram_hashes,
    not_contaminated,
    unique_hashes,
)
from cpt_harness.data.packing import _Documents, _Store, encode
from cpt_harness.errors import DataError


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
            return DataError(
                f"a data preparation worker died (exit code {procs[worker].exitcode}); with little "
                "memory, lower data.num_proc"
            )

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
        ids = np.fromiter(
            itertools.chain.from_iterable(r + [w["sep"]] for r in rows),
            dtype=np.int32,
            count=sum(map(len, rows)) + len(rows),
        )
    found = np.empty(0, dtype=np.int64)
    if w.get("wanted") is not None and w["wanted"].size:
        vocab = _vocab()
        found = hits(
            w["wanted"], np.concatenate([ngram_hashes(t, vocab=vocab) for t in texts] or [np.empty(0, np.uint64)])
        )
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


def _check_all(
    short: list[int], checked: list[_Checked], held_outs, splits, keys, procs: int, show: Progress
) -> list[np.ndarray]:
    """Sources ``short`` checked again, every held-out document of them this time, against every source's training
    text (n-grams only, no tokenizing): the keeps, as ``_keeps``."""
    for i in short:
        checked[i] = _held_out_hashes(*held_outs[i], procs, None)
    wanted = unique_hashes([h for part in checked for h in part.hashes])
    found = np.zeros(wanted.size, dtype=bool)
    for (store, order, n_eval), key in zip(splits, keys):
        with (
            _workers(procs, docs=_Documents(store, order[n_eval:]), wanted=wanted) as pmap,
            show.stage(f"{key}: look for held-out text again", len(order) - n_eval) as tick,
        ):
            for _, n, seen in pmap(_tokenize_range, _ranges(len(order) - n_eval, CHUNK_DOCS)):
                found[seen] = True
                tick(n, 0)
    return _keeps(checked, wanted, found)


def _hash_range(bounds: tuple[int, int]) -> tuple[list[np.ndarray], list[int]]:
    """The documents' n-gram hashes, and their numbers of words."""
    vocab, texts = _vocab(), _WORK["docs"][slice(*bounds)]
    hashes = [ngram_hashes(t, vocab=vocab) for t in texts]
    return hashes, [
        h.size + CONTAMINATION_NGRAM - 1 if h.size else len(_WORD.findall(t.lower())) for h, t in zip(hashes, texts)
    ]


def _vocab(limit: int = 1 << 20) -> dict[str, int]:
    """This worker's word -> hash memo, kept across its tasks (a word is hashed once per worker, not per task);
    emptied when it reaches ``limit`` words (~150 MB), so memory stays bounded on any vocabulary."""
    vocab = _WORK.setdefault("vocab", {})
    if len(vocab) >= limit:
        vocab.clear()
    return vocab


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + size)) for i in range(0, n, size)]
