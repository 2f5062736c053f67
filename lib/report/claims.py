"""Claims from papers, this book's measurement of each, and a verdict by a rule stated in advance.

A chapter that checks a paper states each claim as a :class:`Hypothesis`: what the paper says and
shows, our :class:`~lib.report.stats.Estimate` of the same quantity, the sign the paper predicts,
the smallest effect that matters (the *margin*, in the estimate's own unit, with a one-line reason)
and what the interval is replicated over. :func:`decide` turns the chapter's hypotheses into
:class:`Claim` objects with their verdicts, the same rule for every claim in the book:

* the intervals are Holm-adjusted within the chapter's family (:func:`lib.report.stats.holm_levels`),
  so the chance of any false "reproduced" or "not reproduced" in a chapter stays at most 5%;
* "reproduced": the interval excludes 0 on the predicted side and the estimate reaches the margin;
* "no meaningful effect": the interval lies within ±margin (an equivalence test);
* "not reproduced": the interval excludes 0 on the other side and the estimate reaches the margin
  there;
* "inconclusive": anything else (the interval is too wide to tell);
* "not testable here" (:func:`not_testable`): the book's models or data cannot measure it, for a
  stated reason.

A difference between trained models must be replicated over training runs (seeds, or a borrowed
seed-to-seed deviation): an interval over the images of one run of each model measures only how
precisely those two runs were compared. A percentile bootstrap needs at least
:data:`MIN_BOOTSTRAP_UNITS` units.

:func:`judge` is the earlier rule (the sign of a 95% interval, no margin, no adjustment; "within
noise" when the interval contains 0), kept for the chapters not yet stated with margins.
:func:`claims_table` gives the chapter's claims table and :func:`glue_claims` glues every verdict
and number as text, so the prose quotes (with ``{glue:text}``) exactly what the table shows.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd

from .stats import MINUS, Estimate, format_level, format_number, holm_levels

VERDICTS: tuple[str, ...] = ("reproduced", "no meaningful effect", "not reproduced", "inconclusive",
                             "within noise", "not testable here")
EXPECTS: tuple[str, ...] = ("positive", "negative")
# What an interval is replicated over: independent training runs; models of different architectures,
# each summarised into one value; or units within one model.
REPLICATIONS: tuple[str, ...] = ("training runs", "models", "images", "mini-batches", "directions", "units", "heads")
# Below about 20 units a percentile bootstrap has too few distinct resamples for its tails.
MIN_BOOTSTRAP_UNITS = 20
ALPHA = 0.05
_KEY = re.compile(r"[a-z0-9_]+")
_NO_VALUE = "—"

GlueFn = Callable[..., Any]


@dataclass(frozen=True)
class Claim:
    """One claim of a paper next to our measurement of it.

    ``key`` is the stem of its glue names (lowercase letters, digits and underscores), ``paper`` the
    source ("Park & Kim 2022"), ``statement`` the claim in words, ``paper_figure`` what the paper
    shows for it ("Fig. 1a: rise +20 (ResNet-50) vs +12 (ViT-Ti)"). ``estimate`` is our measurement
    in ``unit`` (``None`` when not testable), ``rule`` the verdict rule in words, ``verdict`` one of
    :data:`VERDICTS`, ``reason`` why a claim is not testable here (required then) and ``digits`` the
    decimals its numbers are printed with. A claim decided by :func:`decide` also carries the sign
    it ``expect``-ed, its ``margin`` with the ``margin_reason`` and the ``adjustment`` of its level
    ("Holm over 8 claims"); its verdict is then checked against its estimate, so a table can never
    show a verdict its own numbers contradict.
    """

    key: str
    paper: str
    statement: str
    paper_figure: str
    estimate: Estimate | None
    unit: str
    rule: str
    verdict: str
    reason: str = ""
    digits: int = 2
    expect: str | None = None
    margin: float | None = None
    margin_reason: str = ""
    adjustment: str = ""

    def __post_init__(self) -> None:
        _check_key(self.key, "key")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "not testable here":
            if not self.reason.strip():
                raise ValueError(f"claim {self.key!r} is not testable here: give the reason")
        elif self.estimate is None:
            raise ValueError(f"claim {self.key!r} with verdict {self.verdict!r} needs an estimate")
        for name in ("paper", "statement", "rule"):
            if not getattr(self, name).strip():
                raise ValueError(f"claim {self.key!r} needs a non-empty {name}")
        if self.expect is not None and self.expect not in EXPECTS:
            raise ValueError(f"expect must be one of {EXPECTS}, got {self.expect!r}")
        if self.margin is not None:
            _check_margin(self.margin, self.margin_reason, self.key)
        if self.estimate is None or self.expect is None:
            return
        rule = (verdict_of(self.estimate, self.expect) if self.margin is None
                else verdict_with_margin(self.estimate, self.expect, self.margin))
        if self.verdict != rule:
            raise ValueError(f"claim {self.key!r}: verdict {self.verdict!r} contradicts its estimate "
                             f"{self.estimate.format(self.digits)}, for which the rule gives {rule!r}")

    @property
    def ours(self) -> str:
        """Our estimate with its interval and unit, e.g. "+1.32 [0.05, 2.59] points"; "—" if none."""
        return _NO_VALUE if self.estimate is None else self.estimate.format(self.digits, self.unit)

    @property
    def test(self) -> str:
        """The test and its sample size, e.g. "Welch t, df = 3.7, n = 6"; "—" if none.

        A decided claim adds its interval's level and adjustment: "...; 99.4% interval, Holm over 8
        claims".
        """
        if self.estimate is None:
            return _NO_VALUE
        text = self.estimate.describe()
        if self.adjustment:
            text += f"; {format_level(self.estimate.level)} interval, {self.adjustment}"
        return text

    @property
    def smallest_effect(self) -> str:
        """The margin with its unit and reason, e.g. "±0.50 NLL (a tenth of the rise)"; "—" if none."""
        if self.margin is None:
            return _NO_VALUE
        return f"±{_with_unit(format_number(self.margin, self.digits, signed=False), self.unit)} ({self.margin_reason})"


def _with_unit(text: str, unit: str) -> str:
    return f"{text} {unit}" if unit else text


def _is_margin(margin: Any) -> bool:
    """A finite number > 0 (NaN, infinity and booleans are not margins)."""
    return (not isinstance(margin, bool) and isinstance(margin, (int, float))
            and math.isfinite(margin) and margin > 0)


def _check_margin(margin: float, reason: str, key: str) -> None:
    if not _is_margin(margin):
        raise ValueError(f"claim {key!r}: the margin (smallest effect that matters) must be a finite number > 0 "
                         f"in the estimate's unit, got {margin!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"claim {key!r}: say in one line why {margin!r} is the smallest effect that matters")


def _check_key(key: str, what: str) -> None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"{what} must use only lowercase letters, digits and underscores "
                         f"(it names glue keys), got {key!r}")


def rule_text(expect: str, estimate: Estimate, quantity: str = "difference") -> str:
    """The verdict rule of :func:`judge` in words, with the level, test, df and sample size."""
    if expect not in EXPECTS:
        raise ValueError(f"expect must be one of {EXPECTS}, got {expect!r}")
    side, other = ("above", "below") if expect == "positive" else ("below", "above")
    return (f"reproduced if the {format_level(estimate.level)} interval of the {quantity} lies "
            f"{side} 0, not reproduced if it lies {other} 0, within noise if it contains 0 "
            f"({estimate.describe()})")


def verdict_of(estimate: Estimate, expect: str) -> str:
    """"reproduced", "not reproduced" or "within noise" for the sign ``expect``-ed of ``estimate``."""
    if expect not in EXPECTS:
        raise ValueError(f"expect must be one of {EXPECTS}, got {expect!r}")
    if not estimate.excludes(0.0):
        return "within noise"
    above = estimate.low > 0
    return "reproduced" if above == (expect == "positive") else "not reproduced"


def judge(key: str, paper: str, statement: str, paper_figure: str, estimate: Estimate, expect: str,
          unit: str = "", digits: int = 2, *, quantity: str = "difference") -> Claim:
    """A claim whose verdict follows from the sign the paper predicts for ``estimate``.

    ``expect`` is "positive" or "negative": the sign the paper's statement implies for the
    quantity estimated (e.g. the difference ViT − ResNet). The interval excluding 0 on that side
    gives "reproduced", on the other side "not reproduced", containing 0 "within noise".
    ``quantity`` names what was estimated in the rule text ("difference", "mean", ...).
    """
    if not isinstance(estimate, Estimate):
        raise ValueError(f"estimate must be a lib.report.stats.Estimate, got {type(estimate).__name__}")
    return Claim(key, paper, statement, paper_figure, estimate, unit,
                 rule_text(expect, estimate, quantity), verdict_of(estimate, expect), digits=digits, expect=expect)


def verdict_with_margin(estimate: Estimate, expect: str, margin: float) -> str:
    """The verdict of :func:`decide`'s rule for an interval (already at its adjusted level).

    With the predicted side made positive: "reproduced" if the interval lies above 0 and the value
    reaches ``margin``; "no meaningful effect" if it lies strictly within ±``margin``; "not
    reproduced" if it lies below 0 and the value reaches −``margin``; "inconclusive" otherwise.
    The three are exclusive: equivalence keeps the value inside ±margin, the others need it on or
    beyond.
    """
    if expect not in EXPECTS:
        raise ValueError(f"expect must be one of {EXPECTS}, got {expect!r}")
    if not _is_margin(margin):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    sign = 1.0 if expect == "positive" else -1.0
    low, high = sorted((sign * estimate.low, sign * estimate.high))
    value = sign * estimate.value
    if low > 0 and value >= margin:
        return "reproduced"
    if -margin < low and high < margin:
        return "no meaningful effect"
    if high < 0 and value <= -margin:
        return "not reproduced"
    return "inconclusive"


def margin_rule_text(expect: str, margin: float, unit: str, digits: int, level: float, adjustment: str,
                     quantity: str, described: str) -> str:
    """:func:`verdict_with_margin`'s rule in words, with the level, its adjustment and the test."""
    side, other = ("above", "below") if expect == "positive" else ("below", "above")
    reach, against = (("+", MINUS) if expect == "positive" else (MINUS, "+"))
    m = _with_unit(format_number(margin, digits, signed=False), unit)
    return (f"reproduced if the {format_level(level)} interval ({adjustment}) of the {quantity} lies {side} 0 "
            f"and the estimate reaches {reach}{m}; no meaningful effect if the interval lies within ±{m}; "
            f"not reproduced if it lies {other} 0 and the estimate reaches {against}{m}; inconclusive "
            f"otherwise ({described})")


@dataclass(frozen=True)
class Hypothesis:
    """A paper's claim stated as a test, before the chapter's family is decided by :func:`decide`.

    ``estimate`` is built by :mod:`lib.report.stats` (so it has a p-value and can be recomputed at
    the Holm-adjusted level), ``expect`` the sign the paper predicts for it, ``margin`` the smallest
    effect that matters in ``unit`` (> 0), with ``margin_reason`` saying in one line why.
    ``replicated_over`` names what the interval's units are (one of :data:`REPLICATIONS`);
    ``between_models`` marks a difference between trained models, which must be replicated over
    "training runs": the images or batches of one run per model say how precisely two runs were
    compared, not whether the architectures differ. ``quantity`` names the estimate in the rule
    text ("difference in NLL rise, ResNet − ViT,").
    """

    key: str
    paper: str
    statement: str
    paper_figure: str
    estimate: Estimate
    expect: str
    margin: float
    margin_reason: str
    replicated_over: str
    between_models: bool
    unit: str = ""
    digits: int = 2
    quantity: str = "difference"

    def __post_init__(self) -> None:
        _check_key(self.key, "key")
        if not isinstance(self.estimate, Estimate):
            raise ValueError(f"claim {self.key!r}: estimate must be a lib.report.stats.Estimate, "
                             f"got {type(self.estimate).__name__}")
        if self.expect not in EXPECTS:
            raise ValueError(f"claim {self.key!r}: expect must be one of {EXPECTS}, got {self.expect!r}")
        _check_margin(self.margin, self.margin_reason, self.key)
        if self.replicated_over not in REPLICATIONS:
            raise ValueError(f"claim {self.key!r}: replicated_over must be one of {REPLICATIONS}, "
                             f"got {self.replicated_over!r}")
        if self.between_models and self.replicated_over != "training runs":
            raise ValueError(f"claim {self.key!r} compares trained models, so its interval must be replicated over "
                             f"training runs (seeds, or a borrowed seed-to-seed deviation), not over "
                             f"{self.replicated_over}; with one run per model state it as not testable here")
        if self.estimate.draws is not None and self.estimate.n < MIN_BOOTSTRAP_UNITS:
            raise ValueError(f"claim {self.key!r}: a percentile bootstrap over {self.estimate.n} units is too coarse "
                             f"(at least {MIN_BOOTSTRAP_UNITS}); use a t interval on the per-unit values or more units")
        if self.estimate.p is None or (self.estimate.se is None and self.estimate.draws is None):
            raise ValueError(f"claim {self.key!r}: the estimate needs a p-value and a standard error or bootstrap "
                             f"draws for its Holm-adjusted interval: build it with lib.report.stats")
        for name in ("paper", "statement", "paper_figure"):
            if not getattr(self, name).strip():
                raise ValueError(f"claim {self.key!r} needs a non-empty {name}")


def decide(items: Iterable[Hypothesis | Claim], alpha: float = ALPHA) -> list[Claim]:
    """A chapter's claims, in the given order, with verdicts from Holm-adjusted intervals and margins.

    ``items`` are the chapter's :class:`Hypothesis` objects and its claims not testable here
    (:func:`not_testable`), which pass through. The hypotheses form one family: their intervals are
    taken at :func:`lib.report.stats.holm_levels` of their p-values (family-wise ``alpha``; a single
    hypothesis keeps ``1 - alpha``) and judged by :func:`verdict_with_margin`.
    """
    items = list(items)
    for item in items:
        if isinstance(item, Claim) and item.verdict != "not testable here":
            raise ValueError(f"claim {item.key!r} was judged on its own ({item.verdict!r}); a family decided "
                             "together takes Hypothesis objects and claims not testable here")
        if not isinstance(item, (Hypothesis, Claim)):
            raise ValueError(f"expected Hypothesis or Claim objects, got {type(item).__name__}")
    _check_unique_keys(item.key for item in items)
    hypotheses = [item for item in items if isinstance(item, Hypothesis)]
    levels = iter(holm_levels([h.estimate.p for h in hypotheses], alpha) if hypotheses else [])
    m = len(hypotheses)
    adjustment = f"Holm over {m} claims" if m > 1 else "a single claim, no adjustment"
    decided = []
    for item in items:
        if isinstance(item, Claim):
            decided.append(item)
            continue
        estimate = item.estimate.at_level(next(levels))
        rule = margin_rule_text(item.expect, item.margin, item.unit, item.digits, estimate.level, adjustment,
                                item.quantity, estimate.describe())
        decided.append(Claim(item.key, item.paper, item.statement, item.paper_figure, estimate, item.unit, rule,
                             verdict_with_margin(estimate, item.expect, item.margin), digits=item.digits,
                             expect=item.expect, margin=float(item.margin), margin_reason=item.margin_reason,
                             adjustment=adjustment))
    return decided


def not_testable(key: str, paper: str, statement: str, paper_figure: str, reason: str) -> Claim:
    """A claim the book cannot measure, with the ``reason`` (e.g. "needs ImageNet-scale models")."""
    return Claim(key, paper, statement, paper_figure, None, "",
                 "not tested: " + reason.strip() if reason and reason.strip() else "not tested",
                 "not testable here", reason=reason)


COLUMNS: tuple[str, ...] = ("paper", "claim", "paper's figure", "ours", "test", "verdict")
SMALLEST_EFFECT = "smallest effect that matters"


def claims_table(claims: Iterable[Claim]) -> pd.DataFrame:
    """The claims table: one row per claim, indexed by key, with the columns of :data:`COLUMNS`.

    "ours" is the estimate with interval and unit; "test" the test with df and n (and, for decided
    claims, the interval's adjusted level). Where any claim has a margin, a column "smallest effect
    that matters" follows "ours". A claim not testable here shows "—" as ours and its reason as the
    test.
    """
    claims = _unique(claims)
    columns = list(COLUMNS)
    if any(c.margin is not None for c in claims):
        columns.insert(columns.index("ours") + 1, SMALLEST_EFFECT)
    rows = [{"paper": c.paper, "claim": c.statement, "paper's figure": c.paper_figure, "ours": c.ours,
             SMALLEST_EFFECT: c.smallest_effect, "test": c.reason if c.estimate is None else c.test,
             "verdict": c.verdict} for c in claims]
    return pd.DataFrame(rows, index=pd.Index([c.key for c in claims], name="key"), columns=columns)


def _unique(claims: Iterable[Claim]) -> list[Claim]:
    claims = list(claims)
    for c in claims:
        if not isinstance(c, Claim):
            raise ValueError(f"expected Claim objects, got {type(c).__name__}")
    _check_unique_keys(c.key for c in claims)
    return claims


def _check_unique_keys(keys: Iterable[str]) -> None:
    """A chapter's claim keys name its glue keys, so no two claims may share one."""
    keys = list(keys)
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"claim keys must be unique, repeated: {repeated}")


def _skip_glue(name: str, value: Any, display: bool = True) -> None:
    """Glue nothing: without MyST-NB (Colab) there is no book build to paste into."""


def _glue_fn(glue: GlueFn | None) -> GlueFn:
    """``glue`` if given, else MyST-NB's; a no-op where MyST-NB is not installed.

    Gluing only feeds the book's build (the values are stored invisibly in the notebook), so a
    reader running a chapter on Colab, which lacks MyST-NB, loses nothing visible without it and
    need not install it with its Sphinx dependencies.
    """
    if glue is not None:
        return glue
    try:
        from myst_nb import glue as myst_glue  # only where a notebook glues
    except ModuleNotFoundError:
        return _skip_glue
    return myst_glue


def glue_claims(claims: Iterable[Claim], glue: GlueFn | None = None) -> dict[str, str]:
    """Glue each claim's verdict and numbers as strings, for ``{glue:text}`` in the prose.

    For a claim with an estimate: ``<key>_verdict``, ``<key>_value`` ("+1.32"), ``<key>_interval``
    ("[0.05, 2.59]"), ``<key>_ours`` ("+1.32 [0.05, 2.59] points") and ``<key>_test`` ("Welch t,
    df = 3.7, n = 6"); a decided claim adds ``<key>_margin`` ("±0.50 NLL") and ``<key>_level``
    ("99.4%"). A claim not testable here has no numbers: ``<key>_verdict`` and
    ``<key>_reason`` only, so prose that quotes a missing number fails the build. ``glue``
    defaults to :func:`myst_nb.glue` (called with ``display=False``). Returns what was glued.
    """
    glue = _glue_fn(glue)
    glued: dict[str, str] = {}
    for c in _unique(claims):
        glued[f"{c.key}_verdict"] = c.verdict
        if c.estimate is None:
            glued[f"{c.key}_reason"] = c.reason
            continue
        glued[f"{c.key}_value"] = c.estimate.format_value(c.digits)
        glued[f"{c.key}_interval"] = c.estimate.format_interval(c.digits)
        glued[f"{c.key}_ours"] = c.ours
        glued[f"{c.key}_test"] = c.test
        if c.margin is not None:
            glued[f"{c.key}_margin"] = "±" + _with_unit(format_number(c.margin, c.digits, signed=False), c.unit)
            glued[f"{c.key}_level"] = format_level(c.estimate.level)
    for name, value in glued.items():
        glue(name, value, display=False)
    return glued


def glue_family(claims: Iterable[Claim], alpha: float = ALPHA, glue: GlueFn | None = None) -> str:
    """Glue what the prose says about a chapter's family of claims, and return it as a sentence.

    ``n_tested`` (how many claims have an estimate), ``widest_level`` (the widest Holm-adjusted
    level among them, "99.2%") and ``family_error`` (``alpha`` as a percentage, "5%"); the sentence
    is "6 claims tested together: intervals Holm-adjusted to a family-wise error of 5%".
    """
    tested = [c for c in _unique(claims) if c.estimate is not None]
    if not tested:
        raise ValueError("glue_family needs at least one tested claim (with an estimate)")
    facts = {"n_tested": str(len(tested)), "widest_level": format_level(max(c.estimate.level for c in tested)),
             "family_error": f"{100 * alpha:g}%"}
    for name, text in facts.items():
        glue_text(name, text, glue)
    return (f"{facts['n_tested']} claims tested together: intervals Holm-adjusted to a family-wise error of "
            f"{facts['family_error']}")


#: The glue name of a chapter's claims record, which the book's summary of all claims reads.
REGISTRY = "claims_registry"
#: The fields of a record, in order.
REGISTRY_FIELDS: tuple[str, ...] = ("key", "paper", "claim", "ours", SMALLEST_EFFECT, "test", "verdict")


def registry_records(claims: Iterable[Claim]) -> list[dict[str, str]]:
    """One record (strings only) per claim: the row of the book's summary of every claim."""
    return [{"key": c.key, "paper": c.paper, "claim": c.statement, "ours": c.ours, SMALLEST_EFFECT: c.smallest_effect,
             "test": c.reason if c.estimate is None else c.test, "verdict": c.verdict} for c in _unique(claims)]


def glue_registry(claims: Iterable[Claim], glue: GlueFn | None = None) -> list[dict[str, str]]:
    """Glue all of a chapter's claims as one JSON text under :data:`REGISTRY`, and return the records.

    ``tools/claims_summary.py`` collects these records from every chapter's stored outputs into the
    introduction's table of all claims, so a claim a chapter states cannot be missing from it. Call
    it once per chapter, with every claim of the chapter (tested or not).
    """
    records = registry_records(claims)
    _glue_fn(glue)(REGISTRY, json.dumps(records, ensure_ascii=False), display=False)
    return records


def glue_number(name: str, value: float, digits: int, glue: GlueFn | None = None, unit: str = "",
                *, signed: bool = True) -> None:
    """Glue one number for the prose, written as :meth:`Estimate.format` writes values.

    ``+1.32`` (or ``−0.40``) with ``digits`` decimals, then `` unit`` if given; ``signed=False``
    drops the plus for quantities that are not differences. Returns nothing, so a cell that ends
    with a glue shows no stray output (a trailing ``;`` does not silence it under nbval).
    """
    _check_key(name, "name")
    text = format_number(value, digits, signed=signed)
    text = f"{text} {unit}" if unit else text
    _glue_fn(glue)(name, text, display=False)


def glue_text(name: str, text: str, glue: GlueFn | None = None) -> None:
    """Glue a short computed text for the prose, e.g. a range "82–87°" or a list of bands.

    For quantities that are not one number: build ``text`` from computed values (never type the
    numbers) and paste it with ``{glue:text}``. Returns nothing, as :func:`glue_number`.
    """
    _check_key(name, "name")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text glued as {name!r} must be a non-empty string, got {text!r}")
    _glue_fn(glue)(name, text, display=False)


def regime_text(subset: float | None) -> str:
    """The training data of a zoo run, for prose: ``None`` -> "on all of the data", ``0.1`` -> "on 10% of the data"."""
    if subset is None:
        return "on all of the data"
    if not (isinstance(subset, float) and 0 < subset < 1):
        raise ValueError(f"subset must be None (all of the data) or a fraction in (0, 1), got {subset!r}")
    return f"on {subset:.0%} of the data"


def glue_seed_runs(seeds: Iterable[int], subset: float | None, glue: GlueFn | None = None) -> str:
    """Glue a chapter's training runs for its prose, so that a retrained zoo rewrites it: ``n_runs``,
    ``run_seeds`` ("0, 1 and 2") and ``run_regime`` (:func:`regime_text`, also returned)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("glue_seed_runs needs at least one seed")
    regime = regime_text(subset)
    fn = _glue_fn(glue)
    glue_text("n_runs", str(len(seeds)), fn)
    glue_text("run_seeds", str(seeds[0]) if len(seeds) == 1
              else ", ".join(map(str, seeds[:-1])) + " and " + str(seeds[-1]), fn)
    glue_text("run_regime", regime, fn)
    return regime
