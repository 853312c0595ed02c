"""Paired differences and their 95% t-intervals: the arithmetic behind an ablation's verdicts."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t (t_{0.975, df}) for df = 1..30; beyond, the normal 1.960 is within 0.04.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a t-interval needs at least two paired values (df >= 1)")
    return _T975[df - 1] if df <= len(_T975) else 1.960


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


def t_interval(values: list[float]) -> Interval:
    """Mean and 95% t-interval of paired differences (one per seed)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(n, mean, float("nan"), float("nan"))
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(n, mean, mean - half, mean + half)
