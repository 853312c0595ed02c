"""Sequential seeds (issue 27, item 2): a group-sequential design for the claims' verdicts.

The seeds run in rounds, ``min_seeds`` first and then one more per look up to ``max_seeds``: look k (1-based)
judges every claim still undecided on its first ``min_seeds + k − 1`` seeds. A claim that is decided there
(SUPPORTED, CONTRADICTED or NEGLIGIBLE by ``stats``'s rules) stops; the others get another seed; at the last
look whatever is not decided is INCONCLUSIVE.

Repeated looks at growing data would inflate the error of a fixed-sample test, so each look tests at a smaller,
*nominal* alpha, from a Lan–DeMets alpha-spending function over the information fractions t_k = n_k / max_seeds
(the t-test's information grows with the seeds):

- ``obrien_fleming`` (the default): α(t) = 2 − 2Φ(z_{1−α/2} / √t), almost nothing spent at the early looks,
  most of alpha kept for the last (with 3 to 8 seeds its nominal alpha is two thirds of the fixed design's);
- ``pocock``: α(t) = α · ln(1 + (e − 1) t), about the same nominal alpha at every look (half of alpha is spent
  by t ≈ 0.4, so with 3 of 8 seeds the first look's nominal alpha is the largest).

The boundary of each look is solved so that the probability, under the null, of crossing first at look k is
α(t_k) − α(t_{k−1}). ``boundaries`` does it for a normal statistic (the joint normal law of the looks,
numerically integrated; it reproduces the published Lan–DeMets values), but its nominal p-values overspend with
3–8 seeds, whose variance estimate moves from look to look (0.056–0.058 in all for 0.05); so ``t_nominal_alphas`` calibrates the boundaries of
the t statistics themselves, on their exact null law (simulated once, with a fixed seed: it is pivotal), and the
look's nominal alpha is the t-test's p at that boundary (df = n_k − 1). ``tests/analysis/test_sequential.py``
shows by simulation that the false-verdict rates stay at or below alpha at every look and overall.

Two boundaries, one per kind of error, both at the family's ``alpha`` (0.05):

- efficacy (SUPPORTED / CONTRADICTED): the one-sided tests for and against every claim form one family, judged
  by Holm's step-down in its group-sequential form (Ye et al. 2013; Maurer and Bretz 2013): the j-th smallest p of the
  look (counting hypotheses already rejected at earlier looks) is compared with the nominal alpha of a boundary
  spending alpha / (m − j) in all. A claim alone is two one-sided tests, the first at a boundary spending 0.025.
  Reported as ``stats`` does, as adjusted p-values to compare with alpha: the running maximum of
  p · alpha / nominal (exactly Holm's adjusted p with one look);
- equivalence (NEGLIGIBLE, the TOST of ``stats``): each of its two one-sided tests at the nominal alpha of a
  boundary spending alpha (an intersection–union test needs no correction between them).

The futility side (stopping a claim as NEGLIGIBLE) is non-binding for the efficacy boundary: the efficacy
boundaries are computed as if no claim ever stopped for it, so stopping only lowers the efficacy error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.signal import fftconvolve
from scipy.stats import norm
from scipy.stats import t as student_t

from cpt_harness.analysis import stats

Spending = Literal["obrien_fleming", "pocock"]
SPENDING: tuple[Spending, ...] = ("obrien_fleming", "pocock")
DECIDED = (stats.SUPPORTED, stats.CONTRADICTED, stats.NEGLIGIBLE)

CALIBRATION_PATHS = 400_000  # simulated null studies that calibrate the t boundaries (t_nominal_alphas)
CALIBRATION_SEED = 20_27
_GRID_STEP = 0.001  # the integration grid of the look statistics (in units of the last look's sd)
_GRID_HALF = 9.0


def spent(kind: Spending, alpha: float, t: float) -> float:
    """The one-sided alpha spent by information fraction t (0 ≤ t ≤ 1), Lan–DeMets."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if kind == "obrien_fleming":
        return float(2 * norm.sf(norm.isf(alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log1p((math.e - 1) * t))
    raise ValueError(f"unknown alpha-spending function {kind!r}: one of {', '.join(SPENDING)}")


@lru_cache(maxsize=256)
def boundaries(kind: Spending, alpha: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """The one-sided z boundary of each look (inf where the look spends nothing), for increasing information
    fractions ending at 1: P(first crossing at look k) = spent(t_k) − spent(t_{k−1}) under the null.

    The look statistics Z_k = S_k / √t_k, S a Brownian motion in t: the sub-density of S_k on the paths not yet
    stopped is carried from look to look by a convolution with the increment's normal density on a fine grid."""
    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[0] <= 0:
        raise ValueError(f"the information fractions must increase from above 0: {fractions}")
    s = np.arange(-_GRID_HALF, _GRID_HALF + _GRID_STEP / 2, _GRID_STEP)
    density = np.zeros_like(s)
    out: list[float] = []
    before, t_before = 0.0, 0.0
    for k, t in enumerate(fractions):
        target = spent(kind, alpha, t) - before
        before += target
        sd = math.sqrt(t - t_before)
        if k == 0:
            bound = math.sqrt(t) * float(norm.isf(target)) if target > 0 else math.inf
            density = norm.pdf(s, scale=sd)
        else:
            weights = density * _GRID_STEP

            def crossing(b: float, weights: np.ndarray = weights, sd: float = sd) -> float:
                return float(np.sum(weights * norm.sf((b - s) / sd)))

            if target <= 0:
                bound = math.inf
            else:
                lo, hi = -_GRID_HALF, _GRID_HALF
                bound = brentq(lambda b: crossing(b) - target, lo, hi, xtol=1e-10) if crossing(hi) < target else hi
            offsets = np.arange(-(len(s) - 1), len(s)) * _GRID_STEP
            density = fftconvolve(weights, norm.pdf(offsets, scale=sd))[len(s) - 1 : 2 * len(s) - 1]
        density = np.where(s < bound, density, 0.0)
        out.append(bound / math.sqrt(t))
        t_before = t
    return tuple(out)


def nominal_alphas(kind: Spending, alpha: float, fractions: Sequence[float]) -> tuple[float, ...]:
    """The nominal one-sided alpha of each look for a normal statistic of known variance: 1 − Φ(z_k)."""
    return tuple(float(norm.sf(z)) for z in boundaries(kind, alpha, tuple(float(t) for t in fractions)))


@lru_cache(maxsize=8)
def _t_paths(min_seeds: int, max_seeds: int) -> np.ndarray:
    """The one-sample t statistics at every look of CALIBRATION_PATHS null studies (columns: looks);
    pivotal: the t statistics' joint law under a zero mean does not depend on the seeds' sd."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    x = rng.standard_normal((CALIBRATION_PATHS, max_seeds), dtype=np.float64)
    n = np.arange(min_seeds, max_seeds + 1)
    total, squares = np.cumsum(x, axis=1)[:, min_seeds - 1 :], np.cumsum(x * x, axis=1)[:, min_seeds - 1 :]
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1)
    return np.ascontiguousarray(mean / np.sqrt(var / n))


@lru_cache(maxsize=256)
def t_nominal_alphas(kind: Spending, alpha: float, min_seeds: int, max_seeds: int) -> tuple[float, ...]:
    """The nominal one-sided alpha of each look (seeds min_seeds..max_seeds) for the t-test with df = n − 1,
    so that the t statistics' first crossings spend ``kind``'s alpha at each look.

    The normal boundaries (``boundaries``) turned into nominal p-values overspend here: with 3 to 8 seeds the
    variance estimate moves from look to look and the t statistics are less correlated than the z's (about 0.056
    in all for 0.05). So each look's boundary c_k is calibrated on the exact null law of the t statistics,
    simulated once (CALIBRATION_PATHS studies, a fixed seed): the largest c_k where the paths not yet stopped
    that cross it at look k are no more than the look's share, α(t_k) − (the fraction stopped before). The
    nominal alpha is then P(T_{n_k − 1} > c_k); what a look cannot spend is carried to the next."""
    looks = max_seeds - min_seeds + 1
    if looks == 1:
        return (spent(kind, alpha, 1.0),)  # the fixed design
    paths = _t_paths(min_seeds, max_seeds)
    open_ = np.ones(len(paths), dtype=bool)
    out = []
    for k in range(looks):
        allowed = int(math.floor(spent(kind, alpha, (min_seeds + k) / max_seeds) * len(paths) + 1e-9))
        budget = allowed - int(np.count_nonzero(~open_))
        t = paths[open_, k]
        if budget <= 0:
            c = math.inf
        elif budget >= len(t):
            c = -math.inf
        else:  # exactly `budget` open paths lie above c: halfway between the budget-th and the next largest
            top = np.partition(t, len(t) - budget - 1)[len(t) - budget - 1 :]
            c = float((top[0] + np.min(top[1:])) / 2)
        open_[open_] = ~(t > c)
        out.append(float(student_t.sf(c, min_seeds + k - 1)))
    return tuple(out)


@dataclass(frozen=True)
class Design:
    """The planned looks: one at min_seeds and one per added seed up to max_seeds."""

    min_seeds: int = 3
    max_seeds: int = 8
    spending: Spending = "obrien_fleming"
    alpha: float = stats.ALPHA

    def __post_init__(self) -> None:
        if not stats.MIN_SEEDS <= self.min_seeds <= self.max_seeds:
            raise ValueError(
                f"sequential seeds need {stats.MIN_SEEDS} <= min ({self.min_seeds}) <= max ({self.max_seeds})"
            )
        if self.spending not in SPENDING:
            raise ValueError(f"unknown alpha-spending function {self.spending!r}: one of {', '.join(SPENDING)}")

    @property
    def looks(self) -> int:
        return self.max_seeds - self.min_seeds + 1

    def seeds_at(self, look: int) -> int:
        """The seeds judged at look ``look`` (1-based)."""
        self._check(look)
        return self.min_seeds + look - 1

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple((self.min_seeds + k) / self.max_seeds for k in range(self.looks))

    def efficacy_alpha(self, look: int, share: int = 2) -> float:
        """The nominal alpha at ``look`` of one one-sided efficacy test whose boundary spends alpha / share
        (share 2: a claim alone, its tests for and against)."""
        self._check(look)
        return t_nominal_alphas(self.spending, self.alpha / share, self.min_seeds, self.max_seeds)[look - 1]

    def equivalence_alpha(self, look: int) -> float:
        """The nominal alpha at ``look`` of each of TOST's two one-sided tests (NEGLIGIBLE)."""
        self._check(look)
        return t_nominal_alphas(self.spending, self.alpha, self.min_seeds, self.max_seeds)[look - 1]

    def _check(self, look: int) -> None:
        if not 1 <= look <= self.looks:
            raise ValueError(f"look {look} is not one of the design's 1..{self.looks}")


@dataclass(frozen=True)
class LookVerdict:
    """One claim (or one claim × level) at one look."""

    verdict: stats.Verdict  # p_for / p_against: adjusted as the module says, to compare with the design's alpha
    look: int
    decided: bool  # SUPPORTED / CONTRADICTED / NEGLIGIBLE, or the last look: no further seed
    last: bool  # the design's last look
    equivalence_alpha: float  # the nominal alpha TOST used at this look

    @property
    def label(self) -> str:
        return self.verdict.label


def adjusted_p(pvalues: Sequence[float], nominal: Sequence[float], alpha: float) -> list[float]:
    """Holm's step-down with a nominal alpha per step: sorted ascending, the j-th p is scaled by
    alpha / nominal[j] (the nominal alpha of the boundary spending alpha / (m − j)), capped at 1, and made
    non-decreasing; reject where the result is below alpha. With nominal[j] = alpha / (m − j), Holm's."""
    out = [math.nan] * len(pvalues)
    running = 0.0
    for j, i in enumerate(sorted(range(len(pvalues)), key=lambda q: pvalues[q])):
        running = max(running, min(1.0, pvalues[i] * alpha / nominal[j]))
        out[i] = running
    return out


def look_verdicts(
    claims: Sequence[stats.Claim], look: int, design: Design, family: int | None = None, rejected: int = 0
) -> list[LookVerdict]:
    """The verdict at ``look`` on every claim of a family still being judged (each ``Claim`` with the first
    ``design.seeds_at(look)`` seeds' effects; a claim judged over several match levels is one ``Claim`` per
    level, its verdict the levels' common one: ``claim_label``).

    ``family``: the number of one-sided efficacy hypotheses of the whole study (default: two per claim given,
    for a study whose claims are all still open); ``rejected``: how many of them earlier looks rejected (claims
    stopped as SUPPORTED or CONTRADICTED, one each). Claims stopped as NEGLIGIBLE stay in ``family`` unrejected.
    """
    n = design.seeds_at(look)
    if any(len(c.values) != n for c in claims):
        raise ValueError(f"look {look} judges {n} seeds per claim: got {sorted({len(c.values) for c in claims})}")
    raw = [stats.one_sided_p(c.values, d * c.direction, c.var_extra) for c in claims for d in (1, -1)]
    m = 2 * len(claims) if family is None else family
    if m < rejected + len(raw):
        raise ValueError(f"a family of {m} hypotheses cannot hold {rejected} rejected and {len(raw)} open")
    nominal = [design.efficacy_alpha(look, share=m - rejected - j) for j in range(len(raw))]
    adjusted = adjusted_p(raw, nominal, design.alpha)
    eq_alpha = design.equivalence_alpha(look)
    last = look == design.looks
    out = []
    for k, c in enumerate(claims):
        v = _decide(c, adjusted[2 * k], adjusted[2 * k + 1], design.alpha, eq_alpha)
        out.append(LookVerdict(v, look, last or v.label in DECIDED, last, eq_alpha))
    return out


def look_verdict(claim: stats.Claim, look: int, design: Design) -> LookVerdict:
    """The verdict at ``look`` on a claim that is a family of its own."""
    return look_verdicts([claim], look, design)[0]


def claim_label(levels: Sequence[LookVerdict]) -> str | None:
    """A claim judged over several match levels at one look: the decided label every level has (the levels'
    rule), INCONCLUSIVE at the last look when they do not agree on one (``levels.band_verdict`` says more),
    None while undecided (the claim gets another seed)."""
    labels = {v.label for v in levels}
    if len(labels) == 1 and (label := labels.pop()) in DECIDED:
        return label
    return stats.INCONCLUSIVE if any(v.last for v in levels) else None


def _decide(c: stats.Claim, p_for: float, p_against: float, alpha: float, eq_alpha: float) -> stats.Verdict:
    """``stats._decide``'s order with the look's alphas: too few seeds → INCONCLUSIVE; TOST at the nominal
    equivalence alpha → NEGLIGIBLE; |estimate| ≥ delta and an adjusted one-sided p below alpha → SUPPORTED or
    CONTRADICTED; else INCONCLUSIVE (undecided)."""
    n = len(c.values)
    mean, se = stats._mean_se(c.values, c.var_extra)
    iv = stats.t_interval(c.values, c.var_extra, 1 - 2 * eq_alpha)
    large = abs(mean) >= c.delta
    if n < stats.MIN_SEEDS:
        label = stats.INCONCLUSIVE
    elif stats.tost_p(c.values, c.delta, c.var_extra) < eq_alpha:
        label = stats.NEGLIGIBLE
    elif large and p_for < alpha:
        label = stats.SUPPORTED
    elif large and p_against < alpha:
        label = stats.CONTRADICTED
    else:
        label = stats.INCONCLUSIVE
    return stats.Verdict(label, n, mean, se, (iv.low, iv.high), p_for, p_against)
