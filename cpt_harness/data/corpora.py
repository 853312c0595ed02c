"""The prepared data of a study: every trial sees the same held-out blocks (the first ``eval.max_tokens`` tokens of
the packed held-out documents of each corpus), with the document of every token kept so losses can be summed
per document. Built once (tokenized by ``workers``, packed by ``packing``, near-copies dropped by
``contamination``) and cached under a key of the data's contents, the tokenizer and the block length."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpt_harness.config import DataConfig, DataSource
from cpt_harness.data import fetched
from cpt_harness.data.build import _build, _documents, _read
from cpt_harness.data.contamination import (
    CONTAMINATION_NGRAM,
    CONTAMINATION_THRESHOLD,
)
from cpt_harness.data.packing import (
    pack,
)
from cpt_harness.data.sources import (
    CORPORA_DIR,
    split_general,
    text_format,
)

# ------------------------------------------------------------------------------------------ the prepared set
from cpt_harness.data.workers import (
    Progress,
)
from cpt_harness.errors import DataError
from cpt_harness.infra.cache import build_once, cache_dir


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
        mix = (
            " ("
            + ", ".join(
                f"{n} {offsets[i + 1] - offsets[i]} weight {w:g}"
                for i, (n, w) in enumerate(zip(self.domain_names, self.domain_weights or []))
            )
            + ")"
            if offsets is not None and len(offsets) > 2
            else ""
        )
        return (
            f"domain train {self.domain_train.shape[0]} x {L} tokens{mix}, domain eval {self.domain_eval.size} tokens, "
            f"general eval {self.general_eval.size} tokens"
            + (
                f" ({', '.join(f'{n} {int(t)}' for n, t in zip(general.names, per))} predicted)"
                if len(general.names) > 1
                else ""
            )
        )

    def domain_set(self) -> EvalSet:
        docs = _docs_or_blocks(self.domain_eval, self.domain_eval_docs)
        corpus = (
            self.domain_doc_corpus if self.domain_doc_corpus is not None else np.zeros(int(docs.max()) + 1, np.int32)
        )
        return EvalSet(self.domain_eval, docs, corpus, list(self.domain_names))

    def general_set(self) -> EvalSet:
        docs = _docs_or_blocks(self.general_eval, self.general_eval_docs)
        corpus = (
            self.general_doc_corpus if self.general_doc_corpus is not None else np.zeros(int(docs.max()) + 1, np.int32)
        )
        return EvalSet(self.general_eval, docs, corpus, list(self.general_names))


def _docs_or_blocks(blocks: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
    """Synthetic corpora (benchmarks) carry no document ids: each block is then a document of its own."""
    if docs is not None:
        return docs
    return np.repeat(np.arange(len(blocks), dtype=np.int32)[:, None], blocks.shape[1], axis=1)


ARRAYS = ("domain_train", "domain_eval", "domain_eval_docs", "general_eval", "general_eval_docs", "general_doc_corpus")


def prepare(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int, progress: bool | None = None) -> Corpora:
    """Read, split, tokenize and pack the corpora; cached by data, tokenizer and block length. The training
    blocks come back memory-mapped: every process that prepares the same data shares one copy of them in the
    page cache. ``progress``: show a bar per pass on stderr (default: when stderr is a terminal)."""
    key = cache_key(cfg, tokenizer, block_len, eval_max_tokens)
    show = Progress(sys.stderr.isatty() if progress is None else progress)
    folder = build_once(cache_folder(key), lambda tmp: _build(cfg, tokenizer, block_len, eval_max_tokens, tmp, show))
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
        several = {
            "domain_doc_corpus": np.load(folder / "domain_doc_corpus.npy"),
            "domain_names": stats["domain_names"],
            "domain_train_offsets": stats["domain_train_offsets"],
            "domain_weights": cfg.domain_weights(),
        }
    general = " + ".join(g.path for g in cfg.general_sources())
    domain = " + ".join(d.path for d in cfg.domain_sources())
    for name, which, path in (("domain_eval", "data.domain", domain), ("general_eval", "data.general", general)):
        if arrays[name].shape[0] == 0:
            raise DataError(
                f"{which}: the held-out part of {path} ({_documents(stats[name])} at "
                f"data.eval_fraction={cfg.eval_fraction}) is shorter than one block of "
                f"model.max_seq_length={block_len} tokens; add documents, raise data.eval_fraction or "
                "lower model.max_seq_length"
            )
    if arrays["domain_train"].shape[0] == 0:
        raise DataError(
            f"data.domain: the training part of {domain} ({_documents(stats['domain_train'])}) "
            f"is shorter than one block of model.max_seq_length={block_len} tokens; add documents, lower "
            "data.eval_fraction or lower model.max_seq_length"
        )
    return Corpora(**arrays, **several, fingerprint=key, stats=stats, general_names=stats["general_names"])


MAPPED = ("domain_train",)  # arrays that grow with the corpus: memory-mapped, never read whole


def replayed_corpora(cfg: DataConfig) -> np.ndarray:
    """Per data.general corpus: whether it is data.replay.source (trained on, so its forgetting flatters)."""
    return np.array([cfg.replay is not None and g == cfg.replay.source for g in cfg.general_sources()], dtype=bool)


def validation_blocks(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> np.ndarray:
    """The general corpora's validation documents (``split_general``), packed like the held-out ones
    (eval.max_tokens per corpus) and stacked: where a heal is measured and chosen."""
    parts = []
    for src in cfg.general_sources():
        _, validation, _ = split_general(list(_read(src, "data.general")), cfg.eval_fraction, cfg.seed)
        parts.append(pack(validation, tokenizer, block_len, eval_max_tokens))
    return np.concatenate(parts)


def cache_key(cfg: DataConfig, tokenizer, block_len: int, eval_max_tokens: int) -> str:
    h = hashlib.sha256()
    domains = cfg.domain_sources()
    if len(domains) > 1:  # only then: a single source keeps its key (and its studies their fingerprint)
        h.update(f"domains:{len(domains)}".encode())
    for src in (*domains, *cfg.general_sources()):
        h.update(source_fingerprint(src).encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    # v2: document ids beside the eval blocks, several general corpora, the contamination filter
    h.update(
        f"{block_len}/{eval_max_tokens}/{cfg.eval_fraction}/{cfg.seed}/"
        f"{CONTAMINATION_NGRAM}/{CONTAMINATION_THRESHOLD}/v2".encode()
    )
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
