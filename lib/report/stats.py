"""Intervals and tests sized to the book's samples: a few seeds, a few hundred images, a few batches.

Claims from papers are stated as an :class:`Estimate`: a point value with a two-sided interval at a
stated level, the test that produced it and its sample size. Training the same recipe with another
seed moves test accuracy by a few tenths of a point, and with three seeds the seed deviation is
itself estimated from two degrees of freedom: a "two standard errors" rule then covers far less
than 95% (about 82%). The Student t quantile at the right degrees of freedom fixes that.
:func:`t_interval` (one sample), :func:`welch` (two independent samples, Welch–Satterthwaite df),
:func:`welch_known_sd` (single runs that borrow a seed deviation, e.g. :func:`pooled_std` over
related models' seeds), :func:`paired` (the same images, noise draw or batches for both models)
and :func:`bootstrap` (seeded percentile resampling of per-image or per-batch values) build them;
:func:`holm`, :func:`holm_levels` and :func:`multiplicity_note` deal with many comparisons at once.
Every estimate these functions build can be recomputed at another level
(:meth:`Estimate.at_level`), which is how a chapter's claims get their Holm-adjusted intervals.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats

def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """Pooled sample standard deviation of several groups (each with its own mean).

    ``sqrt(sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1))``: every group needs two values or more.
    """
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.size < 2 for g in groups):
        raise ValueError(f"every group needs at least two values, got sizes {[g.size for g in groups]}")
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    return float(np.sqrt(squares / sum(g.size - 1 for g in groups)))


# --- Estimates with intervals -------------------------------------------------------------------

MINUS = "\N{MINUS SIGN}"


def format_number(x: float, digits: int = 2, signed: bool = True) -> str:
    """``x`` with ``digits`` decimals, the unicode minus for negatives and, if ``signed``, a plus.

    A value that rounds to zero is written without a sign ("0.00"): neither direction is shown.
    The book pastes these strings verbatim, so every number of a claim is written by this one
    function and a value and its bounds always use the same minus.
    """
    if not isinstance(digits, (int, np.integer)) or isinstance(digits, bool) or digits < 0:
        raise ValueError(f"digits must be a whole number >= 0, got {digits!r}")
    x = float(x)
    if math.isnan(x):
        raise ValueError("cannot format NaN")
    if math.isinf(x):
        return ("+" if signed else "") + "∞" if x > 0 else MINUS + "∞"
    text = f"{abs(x):.{digits}f}"
    if not any(c in "123456789" for c in text):
        return text
    if x < 0:
        return MINUS + text
    return ("+" if signed else "") + text


def format_range(values: Sequence[float], digits: int = 2, signed: bool = False) -> str:
    """The smallest and the largest of ``values`` as ``"lo–hi"`` (an en dash), each written by
    :func:`format_number`: the spread of a quantity over runs, batches or directions in prose."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError("format_range needs at least one value")
    return f"{format_number(arr.min(), digits, signed)}–{format_number(arr.max(), digits, signed)}"


def format_level(level: float) -> str:
    """``0.95`` -> ``"95%"``, ``0.975`` -> ``"97.5%"``, a Holm level ``0.99375`` -> ``"99.4%"``.

    Three significant digits, more where those would round up to 100 (``0.9995`` -> ``"99.95%"``).
    """
    _check_level(level)
    text = f"{100 * level:.3g}"
    return (f"{100 * level:.5g}" if float(text) >= 100 else text) + "%"


def format_df(df: float) -> str:
    """Degrees of freedom as the tests print them: whole numbers bare, others with one decimal."""
    df = float(df)
    if math.isinf(df):
        return "∞"
    return str(int(df)) if df.is_integer() else f"{df:.1f}"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval, and how it was obtained.

    ``value`` is the estimate (a mean, or a difference of means), ``[low, high]`` its interval at
    ``level``, ``n`` the sample size behind it (seeds, images, batches or pairs), ``test`` a short
    description of the procedure ("Welch t, df = 3.7"), ``df`` its degrees of freedom where it has
    them and ``p`` the two-sided p-value against 0 where the test gives one (else ``None``).
    Keeping all of this in one object lets a chapter print a claim's number, interval and test from
    the same source, so prose and table cannot disagree.

    ``se`` (a t interval's standard error) or ``draws`` (a bootstrap's sorted resampled values)
    let :meth:`at_level` recompute the interval at another level; the functions of this module
    fill them in, and an estimate built by hand has neither.
    """

    value: float
    low: float
    high: float
    level: float
    n: int
    test: str
    df: float | None = None
    p: float | None = None
    se: float | None = field(default=None, compare=False, repr=False)
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_level(self.level)
        for name in ("value", "low", "high"):
            if math.isnan(getattr(self, name)):
                raise ValueError(f"{name} is NaN")
        if not self.low <= self.high:
            raise ValueError(f"low must not exceed high, got [{self.low}, {self.high}]")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.df is not None and not self.df > 0:
            raise ValueError(f"df must be > 0 or None, got {self.df}")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1] or None, got {self.p}")

    def at_level(self, level: float) -> "Estimate":
        """The same estimate with its interval at ``level`` (e.g. a Holm-adjusted 99.4%).

        A t interval is rebuilt from its standard error and degrees of freedom, a bootstrap
        interval from its resampled values, exactly as at the original level (which returns the
        estimate itself); the value, test, n, df and p do not change.
        """
        _check_level(level)
        if level == self.level:
            return self
        if self.draws is not None:
            low, high = np.quantile(self.draws, [0.5 - level / 2, 0.5 + level / 2])
            return replace(self, low=float(low), high=float(high), level=level)
        if self.se is not None:
            if self.se == 0:
                return replace(self, level=level)
            q = float(_scipy_stats.t.ppf(0.5 + level / 2, self.df))
            return replace(self, low=self.value - q * self.se, high=self.value + q * self.se, level=level)
        raise ValueError("this estimate carries neither a standard error nor bootstrap draws, so its interval "
                         "cannot be recomputed at another level: build it with lib.report.stats")

    def excludes(self, x: float = 0.0) -> bool:
        """Whether ``x`` lies outside the (closed) interval."""
        return self.low > x or self.high < x

    def format_value(self, digits: int = 2) -> str:
        """The point value with its sign, e.g. ``"+1.32"`` or ``"−0.40"``."""
        return format_number(self.value, digits, signed=True)

    def format_interval(self, digits: int = 2) -> str:
        """The interval, e.g. ``"[0.05, 2.59]"`` or ``"[−0.31, 0.12]"``."""
        lo, hi = (format_number(b, digits, signed=False) for b in (self.low, self.high))
        return f"[{lo}, {hi}]"

    def format(self, digits: int = 2, unit: str = "") -> str:
        """Value and interval, e.g. ``"+1.32 [0.05, 2.59]"``, followed by `` unit`` if given."""
        text = f"{self.format_value(digits)} {self.format_interval(digits)}"
        return f"{text} {unit}" if unit else text

    def describe(self) -> str:
        """The test with its sample size, e.g. ``"Welch t, df = 3.7, n = 6"``.

        The size is not repeated when the test already states it ("... over 256 images, ...").
        """
        if re.search(rf"\bover {self.n}\b", self.test):
            return self.test
        return f"{self.test}, n = {self.n}"


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
            or not 0 < level < 1:
        raise ValueError(f"level must be a probability in (0, 1), e.g. 0.95 for 95%, got {level!r}")


def _sample(x: Sequence[float], name: str, at_least: int = 1) -> np.ndarray:
    """``x`` as a flat float array, with at least ``at_least`` values and no NaN."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per seed, image or pair), "
                         f"got shape {arr.shape}")
    if arr.size < at_least:
        raise ValueError(f"{name} needs at least {at_least} value{'s' * (at_least > 1)}, got n = {arr.size}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} contains NaN or infinite values at positions {bad[:10].tolist()}")
    return arr


def _t_estimate(value: float, se: float, df: float | None, level: float, n: int, test: str) -> Estimate:
    """``value ± t_{df} se`` with a two-sided p against 0; a zero ``se`` gives the point itself.

    With no spread at all the data cannot distinguish any other value: the interval is the point,
    and p is 0 if the value differs from 0 (1 if it is 0).
    """
    if se == 0:
        return Estimate(value, value, value, level, n, test, df, 0.0 if value != 0 else 1.0, se=0.0)
    q = float(_scipy_stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * _scipy_stats.t.sf(abs(value) / se, df))
    return Estimate(value, value - q * se, value + q * se, level, n, test, df, p, se=se)


def t_interval(sample: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean of ``sample`` with its Student t interval at ``df = n - 1`` (and p against a mean of 0).

    The t quantile widens the interval to account for the standard deviation being estimated
    from the same few values: for three seeds it is 4.30 rather than 1.96.
    """
    _check_level(level)
    x = _sample(sample, "sample", at_least=2)
    n = x.size
    return _t_estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)), float(n - 1), level, n,
                       f"one-sample t, df = {n - 1}")


def _satterthwaite(terms: Sequence[float], dfs: Sequence[float]) -> float:
    """Welch–Satterthwaite df of a sum of variance terms, each estimated with its own df."""
    num = sum(terms) ** 2
    den = sum(t ** 2 / d for t, d in zip(terms, dfs))
    return float(num / den)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Estimate:
    """``mean(a) - mean(b)`` for two independent samples with unequal variances (Welch's t).

    The standard error is ``sqrt(s_a²/n_a + s_b²/n_b)`` and the degrees of freedom follow
    Welch–Satterthwaite, which lies between ``min(n_a, n_b) - 1`` and ``n_a + n_b - 2``. Each
    sample needs two values or more (a single run: :func:`welch_known_sd`). If both samples have
    zero variance the data show no noise at all: the interval is the point (``low = high =
    value``), ``p`` is 0 when the means differ (1 when they agree) and ``df`` is ``None``.
    """
    _check_level(level)
    a, b = _sample(a, "a", at_least=2), _sample(b, "b", at_least=2)
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    diff, n = float(a.mean() - b.mean()), a.size + b.size
    if va + vb == 0:
        return _t_estimate(diff, 0.0, None, level, n, "Welch t, no spread in either sample")
    df = _satterthwaite([va, vb], [a.size - 1, b.size - 1])
    return _t_estimate(diff, math.sqrt(va + vb), df, level, n, f"Welch t, df = {format_df(df)}")


def welch_known_sd(a: Sequence[float], b: Sequence[float], sd_a: float, sd_b: float,
                   df_a: float, df_b: float, level: float = 0.95, *, shared: bool = False) -> Estimate:
    """``mean(a) - mean(b)`` where the seed deviations come from elsewhere.

    A model trained with one seed has no spread of its own, so it borrows ``sd_a`` estimated on
    related runs with ``df_a`` degrees of freedom (e.g. pooled over 3 seeds of 3 models: df 6).
    The standard error is ``sqrt(sd_a²/n_a + sd_b²/n_b)``, with ``n_a``, ``n_b`` the sizes of ``a``
    and ``b`` (their own spread is not used), and the degrees of freedom are Welch–Satterthwaite's
    from the borrowed ones: ``(u_a + u_b)² / (u_a²/df_a + u_b²/df_b)`` with ``u = sd²/n``.
    Satterthwaite assumes the two deviations were estimated independently; when both sides borrow
    the very same estimate, pass ``shared=True`` (then ``sd_a == sd_b``, ``df_a == df_b``) and the
    exact df, ``df_a``, is used instead of the larger Satterthwaite value. ``df = math.inf``
    marks a deviation known exactly. Zero deviations on both sides give the point itself.
    """
    _check_level(level)
    a, b = _sample(a, "a"), _sample(b, "b")
    for name, v in (("sd_a", sd_a), ("sd_b", sd_b)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite deviation >= 0, got {v}")
    for name, v in (("df_a", df_a), ("df_b", df_b)):
        if not v > 0:
            raise ValueError(f"{name} must be > 0 (math.inf for a deviation known exactly), got {v}")
    if shared and (sd_a != sd_b or df_a != df_b):
        raise ValueError(f"shared=True needs one deviation for both, "
                         f"got sd {sd_a}, {sd_b} and df {df_a}, {df_b}")
    ua, ub = sd_a ** 2 / a.size, sd_b ** 2 / b.size
    diff, n = float(a.mean() - b.mean()), a.size + b.size
    if ua + ub == 0:
        return _t_estimate(diff, 0.0, None, level, n, "Welch t, borrowed deviations of 0")
    df = float(df_a) if shared else _satterthwaite([ua, ub], [df_a, df_b])
    kind = "one borrowed deviation" if shared else "borrowed deviations"
    return _t_estimate(diff, math.sqrt(ua + ub), df, level, n, f"Welch t, {kind}, df = {format_df(df)}")


def welch_borrowed(a: Sequence[float], b: Sequence[float], reference: Sequence[Sequence[float]],
                   level: float = 0.95) -> Estimate:
    """``mean(a) - mean(b)`` for networks with too few training runs of their own (often one each),
    both borrowing one seed-to-seed deviation: :func:`pooled_std` over the ``reference`` groups
    (runs of related models, the same measure), with ``sum(n_g - 1)`` degrees of freedom.

    :func:`welch_known_sd` with ``shared=True``: the standard error is ``sd · sqrt(1/n_a + 1/n_b)``
    and the t has the reference's degrees of freedom, however many values ``a`` and ``b`` hold.
    Which runs lend their deviation is the caller's claim to state ("the ViT's three runs on 10%").
    """
    sd = pooled_std(reference)
    df = sum(len(g) - 1 for g in reference)
    return welch_known_sd(a, b, sd, sd, df, df, level, shared=True)


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Estimate:
    """``mean(a - b)`` for paired values (same images, same noise draw, same batches), df = n - 1.

    Pairing removes what the two measurements share (an image that is hard for both models), so
    the interval is usually much narrower than Welch's on the same numbers. ``n`` counts pairs.
    """
    _check_level(level)
    a, b = _sample(a, "a"), _sample(b, "b")
    if a.size != b.size:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"paired samples need at least 2 pairs, got n = {a.size}")
    d, n = a - b, a.size
    return _t_estimate(float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)), float(n - 1), level, n,
                       f"paired t, df = {n - 1}")


_CHUNK = 1 << 22  # resampled values held at once: bounds memory for many rows or resamples


def bootstrap(data: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] | None = None,
              n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
              paired_with: Sequence[float] | np.ndarray | None = None, *, rows: str = "rows") -> Estimate:
    """Seeded percentile bootstrap of ``statistic(data)`` resampling rows (axis 0) with replacement.

    Rows are the independent units, e.g. one per test image or per batch; ``statistic`` maps an
    array of rows to a float (default: the mean of all its values). With ``paired_with`` (same
    number of rows) the same resampled indices are applied to both arrays and the estimate is the
    paired difference ``statistic(data_rows) - statistic(paired_with_rows)``, which keeps what the
    two share out of the noise. The interval holds the central ``level`` of the resampled values;
    ``p`` is the percentile bootstrap's p-value, the smallest ``1 - level`` at which that interval
    excludes 0 (:func:`percentile_p`), so that Holm can order bootstrap and t estimates alike. The
    sorted resampled values are kept (``draws``) for :meth:`Estimate.at_level`. ``rows`` names the units in the test text
    ("percentile bootstrap over 256 images, 2000 resamples"). The same ``seed`` gives the same
    result; the mean is computed for all resamples at once, in chunks.
    """
    _check_level(level)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 2:
        raise ValueError(f"n_resamples must be a whole number >= 2, got {n_resamples!r}")
    x = _rows(data, "data")
    y = None if paired_with is None else _rows(paired_with, "paired_with")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"paired_with needs as many rows as data, got {y.shape[0]} and {x.shape[0]}")
    n = x.shape[0]
    vectorised = statistic is None or statistic is np.mean
    stat = (lambda rows_: float(np.mean(rows_))) if statistic is None else statistic

    def point(u: np.ndarray) -> float:
        value = float(stat(u))
        if math.isnan(value):
            raise ValueError("statistic returned NaN")
        return value

    value = point(x) - (point(y) if y is not None else 0.0)
    rng = np.random.default_rng(seed)
    per_row = max(x[0].size + (y[0].size if y is not None else 0), 1)
    chunk = max(1, _CHUNK // (n * per_row))
    values = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        if vectorised:
            values[start:stop] = x[idx].reshape(stop - start, -1).mean(axis=1)
            if y is not None:
                values[start:stop] -= y[idx].reshape(stop - start, -1).mean(axis=1)
        else:
            for k, i in enumerate(idx):
                values[start + k] = point(x[i]) - (point(y[i]) if y is not None else 0.0)
    values.sort()
    low, high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    kind = "paired percentile bootstrap" if y is not None else "percentile bootstrap"
    return Estimate(value, float(low), float(high), level, n,
                    f"{kind} over {n} {rows}, {n_resamples} resamples", p=percentile_p(values), draws=values)


def percentile_p(draws: Sequence[float] | np.ndarray) -> float:
    """The smallest ``a`` for which the central ``1 - a`` percentile interval of ``draws`` excludes 0.

    The interval's ends are numpy's (linearly interpolated) quantiles at ``a/2`` and ``1 - a/2``,
    as :func:`bootstrap` takes them; they move monotonically with ``a``, so for every larger ``a``
    the interval excludes 0 and for every smaller one it does not (at ``a`` itself it touches 0).
    1 when no interval excludes 0, 0 when all draws lie on one side of it.
    """
    d = np.sort(_sample(draws, "draws", at_least=2))
    last = d.size - 1
    p = 1.0
    if d[0] > 0 or d[-1] < 0:
        return 0.0
    if d[-1] > 0:  # the low end rises above 0 once its quantile passes the crossing
        j = int(np.searchsorted(d, 0.0, side="right")) - 1  # d[j] <= 0 < d[j + 1]
        h = j - d[j] / (d[j + 1] - d[j])
        p = min(p, 2 * h / last)
    if d[0] < 0:  # the high end falls below 0 once its quantile drops under the crossing
        i = int(np.searchsorted(d, 0.0, side="left"))  # d[i - 1] < 0 <= d[i]
        h = (i - 1) - d[i - 1] / (d[i] - d[i - 1])
        p = min(p, 2 * (1 - h / last))
    return float(min(max(p, 0.0), 1.0))


def _rows(data: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(data, dtype=float)
    if arr.ndim == 0 or arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to resample, got shape {arr.shape}")
    bad = np.flatnonzero(np.isnan(arr.reshape(arr.shape[0], -1)).any(axis=1))
    if bad.size:
        raise ValueError(f"{name} contains NaN in rows {bad[:10].tolist()}")
    return arr


# --- Many comparisons ---------------------------------------------------------------------------

def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm–Bonferroni: which null hypotheses to reject with family-wise error at most ``alpha``.

    The k-th smallest of m p-values (k from 0) is compared with ``alpha / (m - k)``; rejections stop
    at the first that fails. Uniformly more powerful than Bonferroni and needs no independence.
    Returns one bool per p-value, in the input order.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    p = np.asarray(p_values, dtype=float).ravel()
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    m = p.size
    reject = [False] * m
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - k):
            break
        reject[int(i)] = True
    return reject


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Per hypothesis, the interval level that carries Holm's decision at family-wise ``alpha``.

    Holm compares the k-th smallest of m p-values (k from 0) with ``alpha / (m - k)`` and stops at
    the first that fails. The k-th hypothesis's interval is therefore taken at ``1 - alpha / (m - k)``,
    and from the first failure on every remaining hypothesis gets that failure's level. An interval
    at its level then excludes 0 exactly when :func:`holm` rejects (up to ties at the boundary), so a
    chapter can state its verdicts from intervals and still control the family-wise error.
    Returns the levels in the input order.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    p = np.asarray(p_values, dtype=float).ravel()
    if p.size == 0:
        raise ValueError("holm_levels needs at least one p-value")
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {list(p_values)}")
    m = p.size
    levels = [0.0] * m
    stopped: float | None = None
    for k, i in enumerate(np.argsort(p, kind="stable")):
        if stopped is None:
            level = 1 - alpha / (m - k)
            if p[i] > alpha / (m - k):
                stopped = level
        levels[int(i)] = level if stopped is None else stopped
    return levels


def multiplicity_note(n_tests: int, level: float = 0.95) -> str:
    """A sentence on how many of ``n_tests`` uncorrected intervals would miss by chance alone.

    E.g. "8 comparisons, each at the 95% level; with no correction about 0.4 of them would be
    expected to cross by chance" (``n_tests * (1 - level)``, when no effect is real).
    """
    if isinstance(n_tests, bool) or not isinstance(n_tests, (int, np.integer)) or n_tests < 1:
        raise ValueError(f"n_tests must be a whole number >= 1, got {n_tests!r}")
    _check_level(level)
    expected = n_tests * (1 - level)
    count = f"{expected:.0f}" if expected >= 10 else f"{expected:.2g}"
    noun = "comparison" if n_tests == 1 else "comparisons"
    return (f"{n_tests} {noun}, each at the {format_level(level)} level; with no correction about "
            f"{count} of them would be expected to cross by chance")
