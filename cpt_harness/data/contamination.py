"""Held-out documents that are near-copies of training documents: 13-word n-gram hashes, and dropping a held-out
document when at least half of its n-grams occur in the training text."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

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
    return int.from_bytes(
        hashlib.blake2b(word.encode() if isinstance(word, str) else word, digest_size=8).digest(), "little"
    )


def drop_contaminated(
    held_out: list[str],
    training: Iterable[str],
    n: int = CONTAMINATION_NGRAM,
    threshold: float = CONTAMINATION_THRESHOLD,
) -> tuple[list[str], int]:
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


def not_contaminated(
    hashes: list[np.ndarray],
    wanted: np.ndarray,
    found: np.ndarray,
    threshold: float = CONTAMINATION_THRESHOLD,
    chunk: int = 1 << 22,
) -> np.ndarray:
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
