"""The verdict arithmetic against hand computations. With df = 2, Student's t has a closed form,
P(T ≥ t) = 1/2 − t / (2·√(2 + t²)), so three seeds give p-values checkable without any library."""

from __future__ import annotations

import math

import pytest

from cpt_harness.analysis import stats
from cpt_harness.analysis.stats import CONTRADICTED, INCONCLUSIVE, NEGLIGIBLE, SUPPORTED, Claim


def upper_tail_df2(t: float) -> float:
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


def test_t_quantiles_are_exact():
    assert round(stats.t975(31), 3) == 2.040  # the old table said 1.960 beyond df = 30
    assert stats.t975(4) == pytest.approx(2.7764451, abs=1e-7)
    assert stats.t_quantile(0.90, 2) == pytest.approx(2.9199856, abs=1e-7)
    with pytest.raises(ValueError):
        stats.t975(0)


def test_an_extra_variance_widens_the_interval_with_df_n_minus_1():
    # s² = 1 over n = 3 gives s²/n = 1/3; with var_extra = 2/3 the standard error is exactly 1.
    iv = stats.t_interval([1.0, 2.0, 3.0], var_extra=2 / 3)
    assert (iv.low, iv.high) == pytest.approx((2 - 4.3026527, 2 + 4.3026527))  # t(0.975, 2) = 4.3026527


def test_one_sided_p_against_the_closed_form():
    # [1, 2, 3]: mean 2, se 1/√3, t = 2√3
    assert stats.one_sided_p([1.0, 2.0, 3.0], +1) == pytest.approx(upper_tail_df2(2 * math.sqrt(3)))
    assert stats.one_sided_p([1.0, 2.0, 3.0], -1) == pytest.approx(1 - upper_tail_df2(2 * math.sqrt(3)))
    assert stats.one_sided_p([1.0, 1.0, 1.0], +1) == 0.0 and stats.one_sided_p([1.0, 1.0, 1.0], -1) == 1.0


def test_tost_agrees_with_the_90_percent_interval_on_both_sides_of_the_boundary():
    # [1, 2, 3]: the 90% interval is 2 ± 2.9199856/√3 = [0.3141, 3.6859]
    assert stats.tost_p([1.0, 2.0, 3.0], 5.0) == pytest.approx(upper_tail_df2(3 * math.sqrt(3)))  # t = (5 − 2)·√3
    assert stats.tost_p([1.0, 2.0, 3.0], 3.0) == pytest.approx(upper_tail_df2(math.sqrt(3)))  # 0.1127
    assert stats.tost_p([1.0, 2.0, 3.0], 3.70) < 0.05 < stats.tost_p([1.0, 2.0, 3.0], 3.68)


def test_holm_step_down_by_hand():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]


def test_verdicts_in_their_order():
    strong = [2.0, 3.0, 4.0]  # mean 3, t = 3√3, one-sided p = 0.01756, Holm over its two tests: 0.0351
    p = upper_tail_df2(3 * math.sqrt(3))
    v = stats.verdict(Claim(strong, +1, delta=1.0))
    assert v.label == SUPPORTED and v.p_for == pytest.approx(2 * p) and v.n == 3 and v.estimate == 3.0
    assert stats.verdict(Claim(strong, -1, delta=1.0)).label == CONTRADICTED
    assert stats.verdict(Claim(strong, +1, delta=3.5)).label == INCONCLUSIVE  # significant, but below delta
    assert stats.verdict(Claim([1.0, 2.0, 3.0], +1, delta=5.0)).label == NEGLIGIBLE  # [0.31, 3.69] within ±5
    assert stats.verdict(Claim([1.0, 2.0, 3.0], +1, delta=1.0)).label == INCONCLUSIVE  # 2·0.0371 > 0.05
    short = stats.verdict(Claim([3.0, 3.1], +1, delta=0.1))
    assert short.label == INCONCLUSIVE and math.isnan(short.p_for)
    # An extra variance: se = √(1/3 + 1), t = 3·√3/2, one-sided p = 0.0606 before Holm.
    wide = stats.verdict(Claim(strong, +1, delta=1.0, var_extra=1.0))
    assert wide.label == INCONCLUSIVE and wide.p_for == pytest.approx(2 * upper_tail_df2(1.5 * math.sqrt(3)))


def test_holm_over_the_family_can_turn_support_into_inconclusive():
    strong = Claim([2.0, 3.0, 4.0], +1, delta=1.0)
    p = upper_tail_df2(3 * math.sqrt(3))
    alone, other = stats.verdicts([strong, Claim([10.0, 10.1, 9.9], +1, delta=1.0)])
    assert other.label == SUPPORTED
    assert alone.p_for == pytest.approx(3 * p) and alone.label == INCONCLUSIVE  # 0.0527: third of four tests
    # A claim with too few seeds is not tested, so it does not enlarge the family.
    kept, _ = stats.verdicts([strong, Claim([5.0, 6.0], +1, delta=1.0)])
    assert kept.p_for == pytest.approx(2 * p) and kept.label == SUPPORTED


def test_percent_perplexity():
    assert stats.percent_perplexity(math.log(1.1)) == pytest.approx(10.0)
    assert stats.percent_perplexity(-math.log(2)) == pytest.approx(-50.0)
