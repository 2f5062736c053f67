"""Seed statistics: how far apart two trained models must be before the difference means something.

Training the same recipe with another seed moves test accuracy by a few tenths of a point at the
book's scale, so a single run cannot tell two architectures apart when they differ by less. The
seed-to-seed standard deviation is the yardstick: the difference of two means over ``n_a`` and
``n_b`` seeds has standard error ``sqrt(sigma_a**2 / n_a + sigma_b**2 / n_b)`` (Welch's), and a
difference counts when it exceeds ``z`` standard errors. A model trained with one seed borrows
``sigma`` from a related model trained with several. Accuracies measured on a finite set of test
images carry a second, binomial error (:func:`accuracy_std_error`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

VERDICTS: tuple[str, ...] = ("higher", "lower", "within noise")


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


def compare(a: Sequence[float], b: Sequence[float], sigma: float | tuple[float, float] | None = None,
            z: float = 2.0) -> Comparison:
    """Is the mean of ``a`` higher or lower than the mean of ``b``, given seed noise?

    ``a`` and ``b`` hold one value per seed. ``sigma`` is the seed-to-seed standard deviation:
    one value for both, a pair ``(sigma_a, sigma_b)``, or ``None`` to use each sample's own
    standard deviation (then both need two values or more). The verdict is "higher" or "lower"
    when the difference exceeds ``z`` standard errors, else "within noise".
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 1 or b.size < 1:
        raise ValueError("a and b need at least one value each")
    if sigma is None:
        if a.size < 2 or b.size < 2:
            raise ValueError(f"without sigma both samples need two values or more, got {a.size} and {b.size}")
        sigma_a, sigma_b = float(a.std(ddof=1)), float(b.std(ddof=1))
    elif isinstance(sigma, tuple):
        sigma_a, sigma_b = sigma
    else:
        sigma_a = sigma_b = sigma
    if not (sigma_a > 0 and sigma_b > 0):
        raise ValueError(f"sigma must be > 0, got {sigma_a} and {sigma_b}")
    diff = float(a.mean() - b.mean())
    se = float(np.sqrt(sigma_a ** 2 / a.size + sigma_b ** 2 / b.size))
    verdict = "higher" if diff > z * se else "lower" if diff < -z * se else "within noise"
    return Comparison(diff, se, verdict)


def accuracy_std_error(accuracies: Sequence[float], n_images: int) -> float:
    """Binomial standard error (in points) of the mean of accuracies (in %) on ``n_images`` each.

    Each accuracy ``p`` measured on ``n`` images has variance ``p (1 - p) / n``; for the mean of
    ``k`` of them (independent draws) the variances add and divide by ``k**2``.
    """
    p = np.asarray(accuracies, dtype=float) / 100
    if p.size < 1 or n_images < 1:
        raise ValueError(f"need at least one accuracy and one image, got {p.size} and {n_images}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"accuracies must be percentages in [0, 100], got {accuracies}")
    return float(100 * np.sqrt((p * (1 - p) / n_images).sum()) / p.size)
