"""A trial's training batches: endless shuffled blocks, seed k the same order in every trial; mixed with replayed
general text at a fixed token fraction, and several domain sources by their weights. Each stream has a
``state_dict`` for a trial that resumes, and for a decay branch that must leave no trace."""

from __future__ import annotations

import math

import numpy as np
import torch

from cpt_harness.data import Corpora, DataError
from cpt_harness.train.params import TrialParams


class Batches:
    """Endless shuffled batches; seed k gives the same order in every trial. ``blocks`` may be memory-mapped:
    only the rows of a batch are read. Each epoch is a fresh seeded permutation of the blocks cut into full
    batches (one batch of all the blocks when there are fewer than a batch). ``state_dict``: where the stream
    is, for a trial that resumes (train.checkpoint_every)."""

    def __init__(self, blocks: np.ndarray, batch_size: int, seed: int):
        self.blocks, self.batch_size = blocks, batch_size
        self.g = torch.Generator().manual_seed(seed)
        self.order: np.ndarray | None = None
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        n, b = len(self.blocks), self.batch_size
        if self.order is None or (self.i + b > n if n >= b else self.i > 0):
            self.order, self.i = torch.randperm(n, generator=self.g).numpy(), 0
        rows = self.order[self.i : self.i + b]
        self.i += b
        return torch.from_numpy(self.blocks[rows]).long()  # a copy of those rows (memory-mapped)

    def state_dict(self) -> dict:
        return {"g": self.g.get_state(), "order": None if self.order is None else self.order.copy(), "i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])
        self.order, self.i = state["order"], state["i"]


def batches(blocks: np.ndarray, batch_size: int, seed: int) -> Batches:
    return Batches(blocks, batch_size, seed)


class MixedBatches:
    """Endless batches of which ``fraction`` of the blocks (so of the tokens: every block is as long) come from
    ``replay``: after n batches exactly floor(fraction x batch_size x n) replay blocks have been drawn, so the
    fraction holds to within one block at any step. Each corpus is drawn in its own seeded shuffled order."""

    def __init__(
        self,
        domain: np.ndarray,
        replay: np.ndarray | None,
        fraction: float,
        batch_size: int,
        seed: int,
        domain_rows: WeightedRows | None = None,
    ):
        self.domain, self.replay, self.fraction, self.batch_size = domain, replay, fraction, batch_size
        self.dom = domain_rows if domain_rows is not None else Rows(len(domain), seed)
        self.rep = Rows(len(replay), seed + 1) if replay is not None else None
        self.n = self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.n += 1
        k = math.floor(self.fraction * self.batch_size * self.n + 1e-9) - self.drawn
        self.drawn += k
        rows = [self.domain[self.dom.take(self.batch_size - k)]]
        if self.rep is not None and self.replay is not None:  # the one is set exactly when the other is
            rows.append(self.replay[self.rep.take(k)])
        return torch.from_numpy(np.concatenate(rows)).long()

    def state_dict(self) -> dict:
        return {
            "dom": self.dom.state_dict(),
            "rep": self.rep.state_dict() if self.rep is not None else None,
            "n": self.n,
            "drawn": self.drawn,
        }

    def load_state_dict(self, state: dict) -> None:
        self.dom.load_state_dict(state["dom"])
        if self.rep is not None:
            self.rep.load_state_dict(state["rep"])
        self.n, self.drawn = state["n"], state["drawn"]


def mixed_batches(domain: np.ndarray, replay: np.ndarray, fraction: float, batch_size: int, seed: int) -> MixedBatches:
    return MixedBatches(domain, replay, fraction, batch_size, seed)


class Rows:
    """Endless row indices: a fresh seeded permutation of range(n) per epoch, drawn ``take(k)`` at a time."""

    def __init__(self, n: int, seed: int):
        self.n, self.g = n, torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.i = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.i >= len(self.order):
                self.order, self.i = torch.randperm(self.n, generator=self.g).tolist(), 0
            j = min(len(self.order), self.i + k - len(out))
            out += self.order[self.i : j]
            self.i = j
        return out

    def state_dict(self) -> dict:
        return {"g": self.g.get_state(), "order": np.asarray(self.order, dtype=np.int64), "i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])
        self.order, self.i = state["order"].tolist(), state["i"]


class WeightedRows:
    """Row indices into the training blocks of several domain sources (source i: rows offsets[i]:offsets[i+1]),
    each source drawn in its own seeded shuffled order, their shares held to the weights: after T rows, source i
    has given floor(T x w_i / sum w) or one more (the largest remainders get the spare rows, ties to the first)."""

    def __init__(self, offsets: list[int], weights: list[float], seed: int):
        self.offsets, self.weights = list(offsets), [w / sum(weights) for w in weights]
        self.rows = [Rows(offsets[i + 1] - offsets[i], seed + 2 + i) for i in range(len(weights))]
        self.drawn = [0] * len(weights)

    def take(self, k: int) -> list[int]:
        total = sum(self.drawn) + k
        target = [total * w for w in self.weights]
        counts = [max(0, math.floor(t + 1e-9) - d) for t, d in zip(target, self.drawn)]
        spare = k - sum(counts)
        by_remainder = sorted(range(len(counts)), key=lambda i: -(target[i] - self.drawn[i] - counts[i]))
        for i in by_remainder[: max(0, spare)]:
            counts[i] += 1
        out: list[int] = []
        for i, c in enumerate(counts):
            out += [self.offsets[i] + r for r in self.rows[i].take(c)]
            self.drawn[i] += c
        return out

    def state_dict(self) -> dict:
        return {"rows": [r.state_dict() for r in self.rows], "drawn": list(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        for r, s in zip(self.rows, state["rows"]):
            r.load_state_dict(s)
        self.drawn = list(state["drawn"])


def training_batches(corpora: Corpora, params: TrialParams, batch_size: int, seed: int):
    """The trial's batches: the domain's alone, or mixed with replay at the trial's replay fraction; several
    domain sources mixed by their weights (data.domain as a list)."""
    fraction = params.replay_fraction or 0.0
    if fraction > 0 and corpora.replay_train is None:
        raise DataError("a replay fraction without replay blocks: set data.replay.source")
    offsets = corpora.domain_train_offsets
    if offsets is not None and len(offsets) > 2:
        rows = WeightedRows(offsets, corpora.domain_weights or [1.0] * (len(offsets) - 1), seed)
        return MixedBatches(
            corpora.domain_train,
            corpora.replay_train if fraction > 0 else None,
            fraction,
            batch_size,
            seed,
            domain_rows=rows,
        )
    if fraction <= 0:
        return batches(corpora.domain_train, batch_size, seed)
    assert corpora.replay_train is not None  # fraction > 0: refused above without replay blocks
    return mixed_batches(corpora.domain_train, corpora.replay_train, fraction, batch_size, seed)
