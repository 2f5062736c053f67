"""Seed statistics: how far apart two trained models must be before the difference means something.

Training the same recipe with another seed moves test accuracy by a few tenths of a point at the
book's scale, so a single run cannot tell two architectures apart when they differ by less. The
seed-to-seed standard deviation ``sigma`` (pooled over models trained with several seeds) is the
yardstick: the difference of two means over ``n_a`` and ``n_b`` seeds has standard error
``sigma * sqrt(1/n_a + 1/n_b)``, and a difference counts when it exceeds ``z`` standard errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

VERDICTS: tuple[str, ...] = ("higher", "lower", "within seed noise")


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """Pooled sample standard deviation of several groups (each with its own mean).

    ``sqrt(sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1))``: every group needs two values or more.
    """
    groups = [np.asarray(g, dtype=float) for g in groups]
    if not groups or any(g.size < 2 for g in groups):
        raise ValueError(f"every group needs at least two values, got sizes {[g.size for g in groups]}")
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    return float(np.sqrt(squares / sum(g.size - 1 for g in groups)))


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: difference of the means, its standard error and the verdict for ``a``."""

    difference: float
    std_error: float
    verdict: str  # one of VERDICTS

    @property
    def z(self) -> float:
        """The difference in standard errors."""
        return self.difference / self.std_error


def compare(a: Sequence[float], b: Sequence[float], sigma: float, z: float = 2.0) -> Comparison:
    """Is the mean of ``a`` higher or lower than the mean of ``b``, given seed noise ``sigma``?

    ``a`` and ``b`` hold one value per seed (one value is allowed). The verdict is "higher" or
    "lower" when the difference exceeds ``z`` standard errors, else "within seed noise".
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 1 or b.size < 1:
        raise ValueError("a and b need at least one value each")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    diff = float(a.mean() - b.mean())
    se = float(sigma * np.sqrt(1 / a.size + 1 / b.size))
    verdict = "higher" if diff > z * se else "lower" if diff < -z * se else "within seed noise"
    return Comparison(diff, se, verdict)
