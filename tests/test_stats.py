"""Seed statistics against hand computations, scipy's tests and simulation."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lib.report import stats


def test_pooled_std_by_hand():
    # deviations: (-1, 1) and (-2, 0, 2): squares 2 + 8 = 10 over 1 + 2 degrees of freedom
    assert stats.pooled_std([[1, 3], [4, 6, 8]]) == pytest.approx(math.sqrt(10 / 3))
    assert stats.pooled_std([[5, 5, 5]]) == 0.0
    with pytest.raises(ValueError, match=r"at least two values, got sizes \[2, 1\]"):
        stats.pooled_std([[1, 2], [3]])


# --- Estimates: t intervals, Welch, paired, bootstrap, Holm --------------------------------------

T_975_DF2 = 4.302652729749464  # Student t table, two-sided 95%, df = 2
T_975_DF6 = 2.446911851144969  # df = 6
T_975_DF12 = 2.178812829667228  # df = 12


def test_t_interval_by_hand():
    # [1, 2, 6]: mean 3, variance (4 + 1 + 9) / 2 = 7, standard error sqrt(7 / 3)
    e = stats.t_interval([1.0, 2.0, 6.0])
    half = T_975_DF2 * math.sqrt(7 / 3)
    assert e.value == pytest.approx(3.0)
    assert (e.low, e.high) == pytest.approx((3 - half, 3 + half))
    assert e.df == 2 and e.n == 3 and e.level == 0.95 and "df = 2" in e.test
    assert e.p == pytest.approx(scipy_stats.ttest_1samp([1.0, 2.0, 6.0], 0.0).pvalue)
    wider = stats.t_interval([1.0, 2.0, 6.0], level=0.99)
    assert wider.low < e.low and wider.high > e.high
    with pytest.raises(ValueError, match="at least 2 values, got n = 1"):
        stats.t_interval([1.0])


def test_welch_against_scipy_and_hand_satterthwaite():
    a, b = [1.0, 3.0], [0.0, 0.0, 0.0, 6.0]
    # s_a^2 / n_a = 2 / 2 = 1, s_b^2 / n_b = 9 / 4 = 2.25: df = 3.25^2 / (1^2 / 1 + 2.25^2 / 3)
    e = stats.welch(a, b)
    assert e.df == pytest.approx(10.5625 / 2.6875)
    assert e.test == "Welch t, df = 3.9" and e.n == 6
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert e.value / math.sqrt(3.25) == pytest.approx(ref.statistic)
    assert e.p == pytest.approx(ref.pvalue)
    q = scipy_stats.t.ppf(0.975, 10.5625 / 2.6875)
    assert (e.low, e.high) == pytest.approx((0.5 - q * math.sqrt(3.25), 0.5 + q * math.sqrt(3.25)))
    rng = np.random.default_rng(3)
    x, y = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 3.0, 5)
    ref = scipy_stats.ttest_ind(x, y, equal_var=False)
    e = stats.welch(x, y)
    assert e.p == pytest.approx(ref.pvalue) and e.df == pytest.approx(ref.df)
    ci = ref.confidence_interval(0.9)
    e90 = stats.welch(x, y, level=0.9)
    assert (e90.low, e90.high) == pytest.approx((ci.low, ci.high))


def test_welch_without_spread_is_a_point():
    e = stats.welch([2.0, 2.0], [1.0, 1.0, 1.0])
    assert e.value == e.low == e.high == 1.0 and e.p == 0.0 and e.df is None and e.excludes(0)
    assert stats.welch([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_welch_known_sd_by_hand():
    # one run each, both with a seed deviation of 0.5 estimated on 6 df: u = 0.25 per side
    e = stats.welch_known_sd([80.0], [78.0], 0.5, 0.5, 6, 6)
    assert e.df == pytest.approx((0.25 + 0.25) ** 2 / (2 * 0.25 ** 2 / 6))  # 12
    half = T_975_DF12 * math.sqrt(0.5)
    assert (e.low, e.high) == pytest.approx((2 - half, 2 + half))
    shared = stats.welch_known_sd([80.0], [78.0], 0.5, 0.5, 6, 6, shared=True)
    assert shared.df == 6 and shared.high == pytest.approx(2 + T_975_DF6 * math.sqrt(0.5))
    # three seeds against one: only a's size enters, not its own spread
    e = stats.welch_known_sd([80.0, 81.0, 79.0], [78.0], 0.5, 0.5, 6, 6)
    ua, ub = 0.25 / 3, 0.25
    assert e.df == pytest.approx((ua + ub) ** 2 / (ua ** 2 / 6 + ub ** 2 / 6)) and e.n == 4
    with pytest.raises(ValueError, match="shared=True needs one deviation"):
        stats.welch_known_sd([1.0], [2.0], 0.5, 0.4, 6, 6, shared=True)
    with pytest.raises(ValueError, match="df_b must be > 0"):
        stats.welch_known_sd([1.0], [2.0], 0.5, 0.4, 6, 0)


def test_paired_against_scipy():
    rng = np.random.default_rng(4)
    shared = rng.normal(size=40)  # what both models find hard
    a, b = shared + rng.normal(0.3, 0.2, 40), shared + rng.normal(0.0, 0.2, 40)
    e = stats.paired(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert e.p == pytest.approx(ref.pvalue) and e.df == 39 and e.test == "paired t, df = 39"
    ci = ref.confidence_interval(0.95)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high))
    assert e.high - e.low < 0.5 * (stats.welch(a, b).high - stats.welch(a, b).low)  # pairing helps
    with pytest.raises(ValueError, match="equal lengths, got 3 and 2"):
        stats.paired([1.0, 2.0, 3.0], [1.0, 2.0])


def test_t_interval_covers_at_its_level_where_two_standard_errors_do_not():
    rng = np.random.default_rng(0)
    samples = rng.normal(5.0, 2.0, size=(2000, 3))
    covered = np.mean([(e.low <= 5.0 <= e.high) for e in map(stats.t_interval, samples)])
    se = samples.std(axis=1, ddof=1) / math.sqrt(3)
    z2 = np.mean(np.abs(samples.mean(axis=1) - 5.0) <= 2 * se)
    assert 0.93 <= covered <= 0.97
    assert 0.78 <= z2 <= 0.86  # P(|t_2| <= 2) = 0.816


def test_bootstrap_seeded_and_close_to_t_for_a_large_sample():
    rng = np.random.default_rng(5)
    x = rng.normal(10.0, 3.0, 2000)
    e = stats.bootstrap(x, seed=1)
    assert e == stats.bootstrap(x, seed=1) and e != stats.bootstrap(x, seed=2)
    assert e.value == pytest.approx(x.mean()) and e.p == 0.0 and e.df is None  # every draw above 0
    assert e.test == "percentile bootstrap over 2000 rows, 2000 resamples"
    t = stats.t_interval(x)
    half = (t.high - t.low) / 2
    assert e.low == pytest.approx(t.low, abs=0.05 * half) and e.high == pytest.approx(t.high, abs=0.05 * half)
    assert (e.high - e.low) == pytest.approx(t.high - t.low, rel=0.05)
    # the vectorised mean and a statistic given as a function draw the same resamples
    generic = stats.bootstrap(x[:300], lambda r: float(r.sum() / len(r)), n_resamples=500, seed=7)
    fast = stats.bootstrap(x[:300], n_resamples=500, seed=7)
    assert (generic.low, generic.high) == pytest.approx((fast.low, fast.high))


def test_paired_bootstrap_is_the_bootstrap_of_differences():
    rng = np.random.default_rng(6)
    a, b = rng.normal(1.0, 1.0, 256), rng.normal(0.5, 1.0, 256)
    e = stats.bootstrap(a, paired_with=b, seed=3, rows="images")
    d = stats.bootstrap(a - b, seed=3)
    assert (e.value, e.low, e.high) == pytest.approx((d.value, d.low, d.high))
    assert e.test == "paired percentile bootstrap over 256 images, 2000 resamples"
    # a median of per-image rows (2-D data) through the generic path
    m = stats.bootstrap(np.stack([a, b], axis=1), lambda r: float(np.median(r[:, 0] - r[:, 1])), 200)
    assert m.low <= m.high and m.n == 256
    with pytest.raises(ValueError, match="as many rows as data, got 3 and 256"):
        stats.bootstrap(a, paired_with=[1.0, 2.0, 3.0])


def test_holm_textbook_example():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop; 0.04 is not rejected either
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # Bonferroni would reject only p <= 0.0125; Holm also rejects 0.02 <= 0.05/2 and 0.04 <= 0.05/1
    assert stats.holm([0.04, 0.001, 0.02]) == [True, True, True]
    assert stats.holm([0.2, 0.001]) == [False, True]
    assert stats.holm([]) == []
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        stats.holm([0.5, 1.5])


def test_holm_levels_by_hand_and_agree_with_holm():
    # sorted 0.005, 0.01, 0.03 (fails 0.05/2: stop), 0.04: levels 1 - 0.05/4, 1 - 0.05/3, then 1 - 0.05/2 twice
    levels = stats.holm_levels([0.01, 0.04, 0.03, 0.005])
    assert levels == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2, 1 - 0.05 / 4])
    assert stats.holm_levels([0.2]) == pytest.approx([0.95])
    # t intervals at their Holm levels exclude 0 exactly where holm() rejects
    rng = np.random.default_rng(11)
    for trial in range(50):
        ests = [stats.t_interval(rng.normal(rng.uniform(0, 1.5), 1.0, 8)) for _ in range(6)]
        ps = [e.p for e in ests]
        adjusted = [e.at_level(level) for e, level in zip(ests, stats.holm_levels(ps))]
        assert [a.excludes(0) for a in adjusted] == stats.holm(ps)
    with pytest.raises(ValueError, match="at least one p-value"):
        stats.holm_levels([])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        stats.holm_levels([0.5, -0.1])


def test_at_level_rebuilds_t_and_bootstrap_intervals():
    x = [1.0, 2.0, 4.0, 7.0]
    e = stats.t_interval(x)
    assert e.at_level(0.95) is e
    wide = e.at_level(0.99)
    assert (wide.low, wide.high) == pytest.approx((stats.t_interval(x, 0.99).low, stats.t_interval(x, 0.99).high))
    assert (wide.value, wide.n, wide.df, wide.p, wide.test) == (e.value, e.n, e.df, e.p, e.test) and wide.level == 0.99
    w = stats.welch([1.0, 2.0, 3.5], [0.0, 0.4, 0.2, 0.1], level=0.9).at_level(0.975)
    ref = stats.welch([1.0, 2.0, 3.5], [0.0, 0.4, 0.2, 0.1], level=0.975)
    assert (w.low, w.high) == pytest.approx((ref.low, ref.high))
    k = stats.welch_known_sd([1.0], [0.0], 0.5, 0.5, 4, 4, shared=True).at_level(0.99)
    assert (k.low, k.high) == pytest.approx((stats.welch_known_sd([1.0], [0.0], 0.5, 0.5, 4, 4, 0.99, shared=True).low,
                                             stats.welch_known_sd([1.0], [0.0], 0.5, 0.5, 4, 4, 0.99, shared=True).high))
    point = stats.welch([1.0, 1.0], [0.0, 0.0]).at_level(0.99)
    assert (point.low, point.high, point.level) == (1.0, 1.0, 0.99)
    rng = np.random.default_rng(2)
    rows = rng.normal(0.3, 1.0, 40)
    b = stats.bootstrap(rows, seed=4)
    b99 = b.at_level(0.99)
    direct = stats.bootstrap(rows, seed=4, level=0.99)
    assert (b99.low, b99.high) == (direct.low, direct.high) and b99.value == b.value
    with pytest.raises(ValueError, match="cannot be recomputed at another level"):
        stats.Estimate(1.0, 0.0, 2.0, 0.95, 3, "by hand").at_level(0.99)
    with pytest.raises(ValueError, match="level must be a probability"):
        e.at_level(1.5)


def test_percentile_p_is_where_the_interval_starts_to_exclude_zero():
    assert stats.percentile_p([0.5, 1.0, 2.0]) == 0.0 and stats.percentile_p([-3.0, -1.0]) == 0.0
    assert stats.percentile_p([0.0, 0.0, 0.0]) == 1.0
    # by hand: draws -1, 1, 2, 3 (last = 3); the low end crosses 0 at h = 0 + 1/2, q = 1/6: p = 1/3
    assert stats.percentile_p([3.0, -1.0, 2.0, 1.0]) == pytest.approx(1 / 3)
    assert stats.percentile_p([-3.0, 1.0, -2.0, -1.0]) == pytest.approx(1 / 3)
    rng = np.random.default_rng(8)
    for trial in range(30):
        draws = np.sort(rng.normal(rng.uniform(-0.5, 0.5), 1.0, int(rng.integers(20, 400))))
        p = stats.percentile_p(draws)
        if not 0 < p < 1:
            continue
        for a, excluded in ((p * (1 + 1e-6), True), (p * (1 - 1e-6), False)):
            low, high = np.quantile(draws, [a / 2, 1 - a / 2])
            assert (low > 0 or high < 0) == excluded


def test_format_level_keeps_holm_levels_short():
    assert [stats.format_level(x) for x in (0.95, 0.975, 0.9, 1 - 0.05 / 8, 1 - 0.05 / 7, 0.9995)] == [
        "95%", "97.5%", "90%", "99.4%", "99.3%", "99.95%"]


def test_multiplicity_note():
    assert stats.multiplicity_note(8, 0.95) == (
        "8 comparisons, each at the 95% level; with no correction about 0.4 of them would be "
        "expected to cross by chance")
    assert stats.multiplicity_note(1, 0.99).startswith("1 comparison, each at the 99% level")


def test_estimate_format_and_excludes():
    e = stats.Estimate(1.3245, 0.051, 2.594, 0.95, 6, "Welch t, df = 3.7", 3.7, 0.04)
    assert e.format() == "+1.32 [0.05, 2.59]" and e.format(1, "points") == "+1.3 [0.1, 2.6] points"
    assert e.excludes(0) and not e.excludes(1.0) and e.describe() == "Welch t, df = 3.7, n = 6"
    neg = stats.Estimate(-0.4, -1.234, 0.12, 0.95, 3, "t")
    assert neg.format() == "\u22120.40 [\u22121.23, 0.12]" and not neg.excludes()
    assert stats.format_number(-0.001) == "0.00" and stats.format_number(2, 0) == "+2"
    with pytest.raises(ValueError, match="low must not exceed high"):
        stats.Estimate(0.0, 1.0, -1.0, 0.95, 3, "t")


@pytest.mark.parametrize("call, message", [
    (lambda: stats.t_interval([1.0, 2.0], level=95), r"level must be a probability in \(0, 1\).*got 95"),
    (lambda: stats.welch([1.0, 2.0], [1.0, 2.0], level=0.0), r"level must be .*got 0.0"),
    (lambda: stats.t_interval([]), "at least 2 values, got n = 0"),
    (lambda: stats.welch([1.0, float("nan")], [1.0, 2.0]), r"a contains NaN .* positions \[1\]"),
    (lambda: stats.paired([1.0, 2.0], [1.0, float("nan")]), r"b contains NaN"),
    (lambda: stats.bootstrap([1.0, float("nan"), 2.0]), "data contains NaN"),
    (lambda: stats.bootstrap([1.0, 2.0], n_resamples=1), "n_resamples must be a whole number >= 2, got 1"),
    (lambda: stats.multiplicity_note(0), "n_tests must be a whole number >= 1, got 0"),
    (lambda: stats.holm([0.1], alpha=5), r"alpha must be in \(0, 1\)"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_format_range_writes_the_extremes_with_the_books_minus():
    assert stats.format_range([3.14159, -0.5, 2.0], 2) == "\u22120.50\u20133.14"
    assert stats.format_range(np.array([[1.0, 4.0], [2.0, 3.0]]), 0, signed=True) == "+1\u2013+4"
    assert stats.format_range([7.25], 1) == "7.2\u20137.2"
    with pytest.raises(ValueError, match="at least one value"):
        stats.format_range([], 2)


def test_welch_borrowed_takes_the_pooled_deviation_and_its_degrees_of_freedom():
    reference = [[1.0, 2.0, 3.0], [10.0, 12.0]]  # squares 2 + 2 over df 2 + 1: sd = sqrt(4 / 3)
    e = stats.welch_borrowed([5.0], [4.0], reference)
    sd = math.sqrt(4 / 3)
    assert e.value == pytest.approx(1.0) and e.df == 3
    half = scipy_stats.t.ppf(0.975, 3) * sd * math.sqrt(2)
    assert (e.low, e.high) == pytest.approx((1 - half, 1 + half))
    assert e == stats.welch_known_sd([5.0], [4.0], sd, sd, 3, 3, shared=True)
    with pytest.raises(ValueError, match="at least two values"):
        stats.welch_borrowed([5.0], [4.0], [[1.0]])
