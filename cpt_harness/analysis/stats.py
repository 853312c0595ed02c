"""Paired differences across seeds and the verdicts drawn from them: t-intervals, one-sided and equivalence
(TOST) tests, Holm's step-down correction over a family of claims. Quantiles and tail areas are scipy's, exact.

Every test here reads its standard error as se² = s²/n + var_extra with df = n − 1: s² is the variance of the
per-seed effects, var_extra a variance the seeds cannot see (the eval documents' bootstrap variance: every
seed is scored on the same documents, so their sampling noise shifts all seeds alike).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy.stats import t as student_t

ALPHA = 0.05
MIN_SEEDS = 3  # fewer paired seeds than this give no verdict but INCONCLUSIVE
NEGLIGIBLE, SUPPORTED, CONTRADICTED, INCONCLUSIVE = "NEGLIGIBLE", "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE"


def t_quantile(confidence: float, df: float) -> float:
    """The two-sided quantile t_{(1 + confidence)/2, df} of Student's t."""
    if df < 1:
        raise ValueError("a t-interval needs at least two paired values (df >= 1)")
    return float(student_t.ppf((1 + confidence) / 2, df))


def t975(df: float) -> float:
    return t_quantile(0.95, df)


def percent_perplexity(nats: float) -> float:
    """A difference in loss (nats/token) as the % change in perplexity it means: 100·(exp(Δ) − 1)."""
    return 100 * math.expm1(nats)


@dataclass(frozen=True)
class Interval:
    n: int
    mean: float
    low: float
    high: float

    @property
    def verdict_sign(self) -> int:
        """+1 when the whole interval is above zero, -1 when below, 0 when it contains zero."""
        return 1 if self.low > 0 else (-1 if self.high < 0 else 0)


def _mean_se(values: Sequence[float], var_extra: float = 0.0) -> tuple[float, float]:
    """The mean of the per-seed effects and its standard error (nan where n is too small)."""
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    se = math.sqrt(statistics.variance(values) / n + var_extra) if n >= 2 else math.nan
    return mean, se


def t_interval(values: Sequence[float], var_extra: float = 0.0, confidence: float = 0.95) -> Interval:
    """Mean and t-interval (95% by default) of paired differences (one per seed)."""
    n = len(values)
    mean, se = _mean_se(values, var_extra)
    if n < 2:
        return Interval(n, mean, math.nan, math.nan)
    half = t_quantile(confidence, n - 1) * se
    return Interval(n, mean, mean - half, mean + half)


def _upper_tail(x: float, se: float, df: int) -> float:
    """P(T_df ≥ x / se); with se = 0, 0 or 1 by the sign of x (0.5 at x = 0)."""
    t = x / se if se > 0 else (math.copysign(math.inf, x) if x else 0.0)
    return float(student_t.sf(t, df))


def one_sided_p(values: Sequence[float], direction: int, var_extra: float = 0.0) -> float:
    """p of the one-sided paired t-test of 'direction · mean effect > 0' (direction +1 or −1)."""
    if len(values) < 2:
        return math.nan
    mean, se = _mean_se(values, var_extra)
    return _upper_tail(direction * mean, se, len(values) - 1)


def tost_p(values: Sequence[float], delta: float, var_extra: float = 0.0) -> float:
    """Two one-sided tests of equivalence within ±delta: the larger p of 'effect > −delta' and 'effect < delta'.
    Below 0.05 exactly when the 90% t-interval lies inside (−delta, +delta)."""
    if len(values) < 2:
        return math.nan
    mean, se = _mean_se(values, var_extra)
    df = len(values) - 1
    return max(_upper_tail(mean + delta, se, df), _upper_tail(delta - mean, se, df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni step-down adjusted p-values, in the input's order: the k-th smallest (k = 0, 1, ...) is
    multiplied by m − k, capped at 1, and made non-decreasing along that order. Reject where adjusted < alpha."""
    m = len(pvalues)
    adjusted = [math.nan] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Claim:
    """One claim's evidence: paired per-seed effects (alternative − advice) in the claim's metric."""

    values: Sequence[float]
    direction: int  # +1 when the claim predicts a positive effect, −1 a negative one
    delta: float  # the smallest effect that matters, in the metric's units: the equivalence margin
    var_extra: float = 0.0  # a variance the seeds do not see (bootstrap over eval documents), added to se²


@dataclass(frozen=True)
class Verdict:
    label: str  # NEGLIGIBLE | SUPPORTED | CONTRADICTED | INCONCLUSIVE
    n: int
    estimate: float  # the mean effect
    se: float
    ci90: tuple[float, float]  # the interval TOST reads
    p_for: float  # Holm-adjusted one-sided p in the claimed direction (nan: not tested, n < MIN_SEEDS)
    p_against: float  # Holm-adjusted one-sided p against it


def verdicts(claims: Sequence[Claim], alpha: float = ALPHA) -> list[Verdict]:
    """The verdict on every claim of one family (one report), in order.

    Holm's correction runs over both one-sided tests (for and against) of every claim with n ≥ MIN_SEEDS,
    so the family-wise error over all SUPPORTED and CONTRADICTED verdicts is at most alpha; a claim tested
    alone is thus two one-sided tests at alpha/2 each. NEGLIGIBLE (TOST at alpha) is not corrected.
    """
    tested = [i for i, c in enumerate(claims) if len(c.values) >= MIN_SEEDS]
    adjusted = holm(
        [one_sided_p(claims[i].values, d * claims[i].direction, claims[i].var_extra) for i in tested for d in (1, -1)]
    )
    p = {i: (adjusted[2 * k], adjusted[2 * k + 1]) for k, i in enumerate(tested)}
    return [_decide(c, *p.get(i, (math.nan, math.nan)), alpha) for i, c in enumerate(claims)]


def verdict(claim: Claim, alpha: float = ALPHA) -> Verdict:
    """The verdict on a claim that is a family of its own."""
    return verdicts([claim], alpha)[0]


def _decide(c: Claim, p_for: float, p_against: float, alpha: float) -> Verdict:
    """In this order: too few seeds → INCONCLUSIVE; (1 − 2·alpha) interval within ±delta → NEGLIGIBLE;
    |estimate| ≥ delta and a significant one-sided test → SUPPORTED or CONTRADICTED; else INCONCLUSIVE."""
    n = len(c.values)
    mean, se = _mean_se(c.values, c.var_extra)
    iv = t_interval(c.values, c.var_extra, 1 - 2 * alpha)
    large = abs(mean) >= c.delta
    if n < MIN_SEEDS:
        label = INCONCLUSIVE
    elif tost_p(c.values, c.delta, c.var_extra) < alpha:
        label = NEGLIGIBLE
    elif large and p_for < alpha:
        label = SUPPORTED
    elif large and p_against < alpha:
        label = CONTRADICTED
    else:
        label = INCONCLUSIVE
    return Verdict(label, n, mean, se, (iv.low, iv.high), p_for, p_against)
