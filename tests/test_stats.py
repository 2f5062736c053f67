"""Seed statistics against hand computations."""
import math

import pytest

from lib import stats


def test_pooled_std_by_hand():
    # deviations: (-1, 1) and (-2, 0, 2): squares 2 + 8 = 10 over 1 + 2 degrees of freedom
    assert stats.pooled_std([[1, 3], [4, 6, 8]]) == pytest.approx(math.sqrt(10 / 3))
    assert stats.pooled_std([[5, 5, 5]]) == 0.0
    with pytest.raises(ValueError, match=r"at least two values, got sizes \[2, 1\]"):
        stats.pooled_std([[1, 2], [3]])


def test_compare_verdicts():
    c = stats.compare([90.0, 91.0, 92.0], [89.0], sigma=0.5)
    assert c.difference == pytest.approx(2.0)
    assert c.std_error == pytest.approx(0.5 * math.sqrt(1 / 3 + 1))
    assert c.verdict == "higher" and c.z == pytest.approx(2.0 / c.std_error)
    assert stats.compare([89.0], [90.0], sigma=0.2).verdict == "lower"
    assert stats.compare([89.0], [89.5], sigma=0.5).verdict == "within noise"
    assert stats.compare([89.0], [89.5], sigma=0.1, z=3).verdict == "lower"  # 0.5 > 3 x 0.141
    assert stats.compare([89.0], [89.5], sigma=0.1, z=4).verdict == "within noise"
    # Welch: each sample's own deviation; a pair of sigmas for single runs
    own = stats.compare([1.0, 3.0], [0.0, 0.0, 0.3], sigma=None)
    assert own.std_error == pytest.approx(math.sqrt(2.0 / 2 + 0.03 / 3))
    assert stats.compare([2.0], [1.0], sigma=(0.3, 0.4)).std_error == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two values or more, got 1 and 3"):
        stats.compare([1.0], [0.0, 0.0, 0.3])
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        stats.compare([1.0], [2.0], sigma=0)
    with pytest.raises(ValueError, match="at least one value"):
        stats.compare([], [2.0], sigma=1)


def test_accuracy_std_error_by_hand():
    # p = 0.8 on 100 images: variance 0.0016, std 4 points; the mean of two: sqrt(2 * 0.0016) / 2
    assert stats.accuracy_std_error([80.0], 100) == pytest.approx(4.0)
    assert stats.accuracy_std_error([80.0, 80.0], 100) == pytest.approx(100 * math.sqrt(0.0032) / 2)
    assert stats.accuracy_std_error([100.0], 10) == 0.0
    with pytest.raises(ValueError, match="percentages in"):
        stats.accuracy_std_error([0.8, 120.0], 10)
