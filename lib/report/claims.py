"""Claims from papers, this book's measurement of each, and a verdict by a rule stated in advance.

A chapter that checks a paper lists its claims as :class:`Claim` objects: what the paper says and
shows, our :class:`~lib.report.stats.Estimate` of the same quantity (with its interval, test and sample
size), and a verdict. :func:`judge` computes the verdict from the sign the paper predicts, so the
rule is the same for every claim in the book and is written out next to it:

* "reproduced": the interval excludes 0 on the predicted side;
* "not reproduced": it excludes 0 on the other side;
* "within noise": it contains 0, so this measurement cannot tell;
* "not testable here" (:func:`not_testable`): the book's models or data cannot measure it, for a
  stated reason.

:func:`claims_table` gives the chapter's claims table and :func:`glue_claims` glues every verdict
and number as text, so the prose quotes (with ``{glue:text}``) exactly what the table shows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd

from .stats import Estimate, format_level, format_number

VERDICTS: tuple[str, ...] = ("reproduced", "not reproduced", "within noise", "not testable here")
EXPECTS: tuple[str, ...] = ("positive", "negative")
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
    decimals its numbers are printed with.
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

    @property
    def ours(self) -> str:
        """Our estimate with its interval and unit, e.g. "+1.32 [0.05, 2.59] points"; "—" if none."""
        return _NO_VALUE if self.estimate is None else self.estimate.format(self.digits, self.unit)

    @property
    def test(self) -> str:
        """The test and its sample size, e.g. "Welch t, df = 3.7, n = 6"; "—" if none."""
        return _NO_VALUE if self.estimate is None else self.estimate.describe()


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
                 rule_text(expect, estimate, quantity), verdict_of(estimate, expect), digits=digits)


def not_testable(key: str, paper: str, statement: str, paper_figure: str, reason: str) -> Claim:
    """A claim the book cannot measure, with the ``reason`` (e.g. "needs ImageNet-scale models")."""
    return Claim(key, paper, statement, paper_figure, None, "",
                 "not tested: " + reason.strip() if reason and reason.strip() else "not tested",
                 "not testable here", reason=reason)


COLUMNS: tuple[str, ...] = ("paper", "claim", "paper's figure", "ours", "test", "verdict")


def claims_table(claims: Iterable[Claim]) -> pd.DataFrame:
    """The claims table: one row per claim, indexed by key, with the columns of :data:`COLUMNS`.

    "ours" is the estimate with interval and unit; "test" the test with df and n. A claim not
    testable here shows "—" as ours and its reason as the test.
    """
    claims = _unique(claims)
    rows = [{"paper": c.paper, "claim": c.statement, "paper's figure": c.paper_figure, "ours": c.ours,
             "test": c.reason if c.estimate is None else c.test, "verdict": c.verdict} for c in claims]
    return pd.DataFrame(rows, index=pd.Index([c.key for c in claims], name="key"), columns=list(COLUMNS))


def _unique(claims: Iterable[Claim]) -> list[Claim]:
    claims = list(claims)
    for c in claims:
        if not isinstance(c, Claim):
            raise ValueError(f"expected Claim objects, got {type(c).__name__}")
    keys = [c.key for c in claims]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"claim keys must be unique, repeated: {duplicates}")
    return claims


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
    df = 3.7, n = 6"). A claim not testable here has no numbers: ``<key>_verdict`` and
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
    for name, value in glued.items():
        glue(name, value, display=False)
    return glued


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
