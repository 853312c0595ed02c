"""Comparing ablation arms on the learning–forgetting frontier rather than at one learning rate.

At one LR an arm that learns less usually forgets less, and that is not a finding (Biderman et al. 2024,
"LoRA Learns Less and Forgets Less"). Here every arm × seed runs at several LRs and keeps its eval trajectory:
checkpoint 0 is the base model (gain 0, forgetting 0), then one checkpoint every eval_every steps, with
gain = base domain loss − domain loss and forgetting = general loss − base general loss (nats/token).

Two comparisons, named by the matched axis:
- axis "gain": forgetting at matched gain (lower is better: the arm's envelope over its LRs is the minimum);
- axis "forgetting": gain at matched forgetting (higher is better: the envelope is the maximum).
The match level is fixed from reach alone, never from the compared metric. Effects are per seed, alternative −
advice in the compared metric, averaged over the other factors' combinations (as ``ablation.effects`` does).

Also: the best LR per cell chosen leave-one-seed-out, a 2 × 2 interaction on it (the rsLoRA claim), a dose–response
trend for the embedding-LR ratio, and a bootstrap over eval documents whose variance enters the verdict's se².
numpy and scipy only (through ``stats``); plain dataclasses in and out.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, cast

import numpy as np

AXES = ("gain", "forgetting")
TREND_TEST = "per-seed log-ratio slope, t-test"


@dataclass(frozen=True)
class Run:
    """One trial's eval trajectory. ``gain`` and ``forgetting``: one value per checkpoint, step 0 (0, 0) first."""

    levels: Mapping[str, str]  # factor -> level, e.g. {"gate_proj": "out", "embeddings": "trained"}
    seed: int
    lr: float
    gain: np.ndarray
    forgetting: np.ndarray

    def __post_init__(self):
        gain, forgetting = np.asarray(self.gain, float), np.asarray(self.forgetting, float)
        if gain.shape != forgetting.shape or gain.ndim != 1 or gain[0] != 0 or forgetting[0] != 0:
            raise ValueError(
                f"run {self.arm} seed {self.seed} lr {self.lr:g}: gain and forgetting must be "
                "equal-length trajectories starting at the base model's (0, 0)"
            )
        object.__setattr__(self, "gain", gain)
        object.__setattr__(self, "forgetting", forgetting)

    @property
    def arm(self) -> str:
        return ",".join(f"{f}={lv}" for f, lv in self.levels.items())

    @property
    def cell(self) -> tuple[tuple[str, str], ...]:
        """The arm as a key that does not depend on the order of ``levels``."""
        return tuple(sorted(self.levels.items()))

    def along(self, axis: str) -> tuple[np.ndarray, np.ndarray]:
        """(matched axis, compared metric)."""
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        return (self.gain, self.forgetting) if axis == "gain" else (self.forgetting, self.gain)


# ------------------------------------------------------------------------------------------ one run, one arm


def monotone(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run as it first reaches each level of x.

    The matched axis becomes its cumulative maximum, cummax(x)[i]; the other axis takes y[j], where j is the
    first checkpoint at which x reached that maximum (not y[i]: a checkpoint that fell back on x has not
    reached anything new). Repeats of that curve carry no information, so only the records are returned:
    the checkpoints where x exceeds every earlier value, with their own y. x comes back strictly increasing.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    record = np.r_[True, x[1:] > np.maximum.accumulate(x)[:-1]]
    return x[record], y[record]


def at_level(x: np.ndarray, y: np.ndarray, level: float) -> float | None:
    """y where the monotone run (``monotone``) first reaches x = level, linear between the two records around
    it; None outside the range the run covers (no extrapolation)."""
    xs, ys = monotone(x, y)
    if not xs[0] <= level <= xs[-1]:
        return None
    k = int(np.searchsorted(xs, level))  # the first record at or above the level
    if xs[k] == level:
        return float(ys[k])
    w = (level - xs[k - 1]) / (xs[k] - xs[k - 1])
    return float(ys[k - 1] + w * (ys[k] - ys[k - 1]))


def envelope(runs: Sequence[Run], axis: str, level: float) -> float | None:
    """One arm's frontier in one seed: over its LRs, the lowest forgetting among the runs that reach this gain
    (axis "gain"), or the highest gain among the runs that reach this forgetting (axis "forgetting"); None when
    no run reaches the level."""
    values = [v for r in runs if (v := at_level(*r.along(axis), level)) is not None]
    if not values:
        return None
    return min(values) if axis == "gain" else max(values)


def match_level(runs: Sequence[Run], axis: str) -> float:
    """The default match level: per arm and seed, the largest value of the matched axis that the arm's envelope
    reaches (its best LR's maximum); then the smallest of those, so that every seed of every arm reaches it.
    Seeds missing an arm altogether cannot be compared and do not lower the level; nan when no seed is complete."""
    reach: dict[tuple, float] = {}
    for r in runs:
        top = float(r.along(axis)[0].max())
        reach[(r.cell, r.seed)] = max(reach.get((r.cell, r.seed), top), top)
    cells = {c for c, _ in reach}
    complete = {s for _, s in reach if all((c, s) in reach for c in cells)}
    return min((v for (_, s), v in reach.items() if s in complete), default=math.nan)


# ------------------------------------------------------------------------------------------ matched effects


@dataclass(frozen=True)
class Matched:
    axis: str  # the matched axis; the effect is in the other metric
    level: float
    per_seed: dict[int, float]  # seed -> alternative − advice, averaged over the other factors' combinations
    dropped: tuple[int, ...]  # seeds where some cell does not reach the level (or is missing)

    @property
    def metric(self) -> str:
        return AXES[1 - AXES.index(self.axis)]

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else math.nan


def frontier_by_seed(
    runs: Sequence[Run], axis: str, factor: str, factor_levels: Sequence[str], level: float
) -> tuple[dict[int, dict[str, float]], tuple[int, ...]]:
    """Per seed, the frontier value of each of ``factor_levels`` at the match ``level``, averaged over the
    combinations of the other factors present. A seed is kept only when every (combination, level) cell has a
    run reaching the level; the others come back as dropped. A level ≤ 0 (some arm never moves along the axis,
    e.g. general loss never rose) matches nothing but the base model, so every seed is dropped."""
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.levels.get(factor) in factor_levels:
            combo = tuple(sorted((f, lv) for f, lv in r.levels.items() if f != factor))
            cells[(r.seed, combo, r.levels[factor])].append(r)
    combos = sorted({c for _, c, _ in cells})
    kept, dropped = {}, []
    for seed in sorted({s for s, _, _ in cells}):
        values = {lv: [envelope(cells.get((seed, c, lv), []), axis, level) for c in combos] for lv in factor_levels}
        if level > 0 and all(v is not None for vs in values.values() for v in vs):
            kept[seed] = {lv: statistics.fmean(cast("list[float]", vs)) for lv, vs in values.items()}  # none is None
        else:
            dropped.append(seed)
    return kept, tuple(dropped)


def matched_effect(
    runs: Sequence[Run], axis: str, factor: str, advice: str, alternative: str, level: float | None = None
) -> Matched:
    """The factor's effect on the frontier: per seed, metric(alternative) − metric(advice) with the metric the
    other axis, each arm at its envelope over LRs at the matched level. ``level`` None: ``match_level`` over the
    runs of these two levels of the factor (pass one explicitly to share a level across comparisons)."""
    runs = [r for r in runs if r.levels.get(factor) in (advice, alternative)]
    level = match_level(runs, axis) if level is None else level
    values, dropped = frontier_by_seed(runs, axis, factor, (advice, alternative), level)
    return Matched(axis, level, {s: v[alternative] - v[advice] for s, v in values.items()}, dropped)


# ------------------------------------------------------------------------------------------ best LR, interaction


@dataclass(frozen=True)
class BestLR:
    arm: str
    grid: tuple[float, ...]  # the cell's LRs, ascending
    lr: dict[int, float]  # seed -> the LR chosen without that seed
    per_seed: dict[int, float]  # seed -> its final gain at that LR

    @property
    def at_edge(self) -> tuple[int, ...]:
        """Seeds whose chosen LR is the grid's lowest or highest: the best LR may lie outside the grid."""
        return tuple(s for s, lr in self.lr.items() if lr in (self.grid[0], self.grid[-1]))


def best_lr(runs: Sequence[Run]) -> BestLR:
    """Leave-one-seed-out best LR of one cell (one arm, several LRs and seeds): for seed s, the LR with the highest
    mean final gain over the other seeds (ties: the lower LR); seed s's value is its own final gain at that LR,
    so no seed's value picked its own LR. A seed without a run at its chosen LR is left out; no runs, no seeds."""
    if len({r.cell for r in runs}) > 1:
        raise ValueError(f"best_lr takes the runs of one cell, got arms {sorted({r.arm for r in runs})}")
    final = {(r.seed, r.lr): float(r.gain[-1]) for r in runs}
    grid, seeds = sorted({r.lr for r in runs}), sorted({r.seed for r in runs})
    chosen, values = {}, {}
    for s in seeds:
        score = {lr: [final[(o, lr)] for o in seeds if o != s and (o, lr) in final] for lr in grid}
        scored = [lr for lr in grid if score[lr]]
        lr = max(scored, key=lambda x: statistics.fmean(score[x]), default=None)
        if lr is not None and (s, lr) in final:
            chosen[s], values[s] = lr, final[(s, lr)]
    return BestLR(runs[0].arm if runs else "", tuple(grid), chosen, values)


@dataclass(frozen=True)
class Interaction:
    per_seed: dict[int, float]
    cells: dict[tuple[str, str], BestLR]  # (level of a, level of b) -> that cell's leave-one-seed-out choice

    @property
    def at_edge(self) -> list[tuple[str, int]]:
        """(arm, seed) pairs whose chosen LR sits at the edge of the cell's grid."""
        return [(c.arm, s) for c in self.cells.values() for s in c.at_edge]


def interaction(
    runs: Sequence[Run], a: str, a_levels: tuple[str, str], b: str, b_levels: tuple[str, str]
) -> Interaction:
    """Per seed, (g[a1, b1] − g[a0, b1]) − (g[a1, b0] − g[a0, b0]), with g a cell's final gain at its
    leave-one-seed-out best LR; only seeds present in all four cells. Any other factor must be fixed.

    The rsLoRA claim: a = "rank" (low, high), b = "rslora" ("off", "on"): how much more raising the rank helps
    under α/√r than under α/r, each scale at its own best LR.
    """
    cells = {
        (x, y): best_lr([r for r in runs if r.levels.get(a) == x and r.levels.get(b) == y])
        for x in a_levels
        for y in b_levels
    }
    (a0, a1), (b0, b1) = a_levels, b_levels
    g = {k: c.per_seed for k, c in cells.items()}
    seeds = sorted(set.intersection(*(set(v) for v in g.values())))
    return Interaction({s: (g[(a1, b1)][s] - g[(a0, b1)][s]) - (g[(a1, b0)][s] - g[(a0, b0)][s]) for s in seeds}, cells)


def interaction_at(
    runs: Sequence[Run], axis: str, level: float, a: str, a_levels: tuple[str, str], b: str, b_levels: tuple[str, str]
) -> dict[int, float]:
    """The 2 × 2 interaction on the frontier: per seed, (m[a1, b1] − m[a0, b1]) − (m[a1, b0] − m[a0, b0]) with
    m a cell's envelope over its LRs at the matched ``level`` (axis "forgetting": gain at matched forgetting).
    Only seeds where all four cells reach the level."""
    (a0, a1), (b0, b1) = a_levels, b_levels
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cells[(r.seed, r.levels.get(a), r.levels.get(b))].append(r)
    out = {}
    for seed in sorted({r.seed for r in runs}):
        m = {(x, y): envelope(cells.get((seed, x, y), []), axis, level) for x in (a0, a1) for y in (b0, b1)}
        if level > 0 and all(v is not None for v in m.values()):
            reached = cast("dict[tuple[str, str], float]", m)  # none is None
            out[seed] = (reached[(a1, b1)] - reached[(a0, b1)]) - (reached[(a1, b0)] - reached[(a0, b0)])
    return out


# ------------------------------------------------------------------------------------------ dose–response


@dataclass(frozen=True)
class DoseResponse:
    test: str  # TREND_TEST: the slopes go to stats.verdict as a one-sample t-test
    level: float  # the matched gain
    means: dict[float, float]  # ratio -> mean matched forgetting over the kept seeds
    slopes: dict[int, float]  # seed -> least-squares slope of matched forgetting against log(ratio)
    dropped: tuple[int, ...]

    @property
    def mean_slope(self) -> float:
        return statistics.fmean(self.slopes.values()) if self.slopes else math.nan


def dose_response(
    runs: Sequence[Run], factor: str = "embedding_lr_ratio", axis: str = "gain", level: float | None = None
) -> DoseResponse:
    """Forgetting at matched gain (axis "gain") for every level of a numeric factor, per seed, and its trend:
    per seed the least-squares slope against log(level), for a one-sample t-test over seeds. A positive slope:
    a larger ratio forgets more at the same gain. ``level`` None: ``match_level`` over all the ratios' runs."""
    ratios = sorted({r.levels[factor] for r in runs if factor in r.levels}, key=float)
    level = match_level([r for r in runs if factor in r.levels], axis) if level is None else level
    values, dropped = frontier_by_seed(runs, axis, factor, ratios, level)
    x = np.log([float(v) for v in ratios])
    slopes = {s: _slope(x, np.array([v[lv] for lv in ratios])) for s, v in values.items()}
    means = {float(lv): statistics.fmean(v[lv] for v in values.values()) for lv in ratios} if values else {}
    return DoseResponse(TREND_TEST, level, means, slopes, dropped)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    dx = x - x.mean()
    return float(dx @ (y - y.mean()) / (dx @ dx))


# ------------------------------------------------------------------------------------------ document bootstrap


@dataclass(frozen=True)
class Docs:
    """One corpus's eval, per document: summed NLL in nats and token counts. ``nll`` is [n_checkpoints, n_docs]
    for a trial, [n_docs] for the base; ``tokens`` the same shape or [n_docs] (the blocks are fixed)."""

    nll: np.ndarray
    tokens: np.ndarray

    def loss(self, weights: np.ndarray) -> np.ndarray:
        """Σ w·nll / Σ w·tokens for each column of ``weights`` [n_docs, B] (a document's draw count): [..., B]."""
        return (np.asarray(self.nll, float) @ weights) / (np.asarray(self.tokens, float) @ weights)


@dataclass(frozen=True)
class DocRun:
    """A trial's per-document eval at its checkpoints after step 0 (step 0 is the base model, ``Base``)."""

    levels: Mapping[str, str]
    seed: int
    lr: float
    domain: Docs  # [n_checkpoints, n_domain_docs]
    general: Docs  # [n_checkpoints, n_general_docs]

    def __post_init__(self):
        shapes = np.shape(self.domain.nll), np.shape(self.general.nll)
        if len(shapes[0]) != 2 or len(shapes[1]) != 2 or shapes[0][0] != shapes[1][0]:
            raise ValueError(
                f"trial seed {self.seed} lr {self.lr:g}: per-document NLL must be [n_checkpoints, n_docs] "
                f"for both corpora with the same checkpoints, got {shapes[0]} and {shapes[1]}"
            )


@dataclass(frozen=True)
class Base:
    domain: Docs  # [n_domain_docs]
    general: Docs  # [n_general_docs]
    general_corpus: np.ndarray | None = None  # [n_general_docs] each document's corpus: the bootstrap draws within each
    domain_corpus: np.ndarray | None = None  # [n_domain_docs] each document's data.domain source: the same


DocResults = tuple[list[DocRun], Base]  # (per-document runs, base): what the document bootstrap draws from


def _runs(doc_runs: Sequence[DocRun], base: Base, w_domain: np.ndarray, w_general: np.ndarray) -> list[list[Run]]:
    """The runs under each column of the document weights: B lists of runs, step 0 = (0, 0) prepended."""
    base_domain, base_general = base.domain.loss(w_domain), base.general.loss(w_general)  # [B]
    curves = [(base_domain - d.domain.loss(w_domain), d.general.loss(w_general) - base_general) for d in doc_runs]
    return [
        [Run(d.levels, d.seed, d.lr, np.r_[0.0, g[:, b]], np.r_[0.0, f[:, b]]) for d, (g, f) in zip(doc_runs, curves)]
        for b in range(w_domain.shape[1])
    ]


def runs_from_docs(doc_runs: Sequence[DocRun], base: Base) -> list[Run]:
    """The runs on the full eval sets, every document once: the point estimates' input."""
    ones = lambda docs: np.ones((np.shape(docs.tokens)[-1], 1))  # noqa: E731
    return _runs(doc_runs, base, ones(base.domain), ones(base.general))[0]


def _draws(rng: np.random.Generator, n_docs: int, replicates: int, groups: np.ndarray | None = None) -> np.ndarray:
    """[n_docs, B]: how often each document is drawn when n_docs indices are drawn with replacement, per replicate.
    With ``groups`` (a group per document) of more than one value, each group's documents are drawn among
    themselves, as many as it has: the eval's make-up (eval.max_tokens per corpus) stays what it was by design."""
    if groups is None or len(np.unique(groups)) < 2:
        idx = rng.integers(0, n_docs, size=(replicates, n_docs)) + n_docs * np.arange(replicates)[:, None]
        return np.bincount(idx.ravel(), minlength=n_docs * replicates).reshape(replicates, n_docs).T.astype(float)
    draws = np.zeros((n_docs, replicates))
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        draws[members] = _draws(rng, len(members), replicates)
    return draws


def bootstrap(
    doc_runs: Sequence[DocRun],
    base: Base,
    statistic: Callable[[list[Run]], float],
    replicates: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """The statistic over bootstrap replicates of the eval documents.

    A replicate draws document indices with replacement once per corpus (each domain source and each general
    corpus, within its own documents) and applies that one draw to every trial, checkpoint and the base, so
    documents stay paired across arms, seeds and LRs; it recomputes every loss as Σnll/Σtokens over the drawn documents, then the gains and forgetting,
    then calls ``statistic`` on the runs, which redoes the matching (its level too, unless it fixes one).
    ``statistic``: e.g. ``lambda runs: matched_effect(runs, "gain", "gate_proj", "in", "out").mean``.
    """
    rng = np.random.default_rng(seed)
    w_domain = _draws(rng, np.shape(base.domain.tokens)[-1], replicates, base.domain_corpus)
    w_general = _draws(rng, np.shape(base.general.tokens)[-1], replicates, base.general_corpus)
    return np.array([statistic(runs) for runs in _runs(doc_runs, base, w_domain, w_general)])


def bootstrap_var(
    doc_runs: Sequence[DocRun],
    base: Base,
    statistic: Callable[[list[Run]], float],
    replicates: int = 200,
    seed: int = 0,
) -> float:
    """The variance over replicates of the statistic (the mean effect): the ``var_extra`` of ``stats.Claim``.
    Replicates where the statistic is nan (no seed matched) are left out."""
    return float(np.nanvar(bootstrap(doc_runs, base, statistic, replicates, seed), ddof=1))
