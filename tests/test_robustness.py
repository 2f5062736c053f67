"""lib.analyses.robustness: the robustness measurements reproduce an independent computation, and
the readers of per-image outcomes give hand-computed answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lib.core import metrics
from lib.analyses import filters, robustness

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# Robustness measurements on a tiny model


def tiny_setup(n: int = 64):
    """A random conv net and labels that are its own clean predictions (clean accuracy 100%)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 28 * 28, 4)).eval()
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_noise_robustness_with_zero_eps_is_the_clean_accuracy():
    net, x, y = tiny_setup()
    res = robustness.noise_robustness(net, x, y, eps=0.0, batch_size=16, progress=False)
    assert res.clean_acc == 100.0
    np.testing.assert_array_equal(res.acc, np.full(9, res.clean_acc))
    np.testing.assert_array_equal(res.nll, np.full(9, res.clean_nll))
    np.testing.assert_array_equal(res.drop, np.zeros(9))
    np.testing.assert_allclose(res.bands, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # Park & Kim's bands


def test_noise_robustness_matches_an_independent_computation():
    net, x, y = tiny_setup()
    bands = (0.2, 0.7)
    res = robustness.noise_robustness(net, x, y, eps=0.5, bands=bands, seed=3, batch_size=16, progress=False)
    for i, b in enumerate(bands):
        noise = filters.band_noise(x.shape, b, eps=0.5, generator=torch.Generator().manual_seed(3))
        expected = metrics.evaluate(net, x + noise, y, batch_size=16)
        assert res.acc[i] == expected["acc"] and res.nll[i] == pytest.approx(expected["nll"], rel=1e-6)
        with torch.no_grad():  # per image, straight from the logits
            hits = (net(x + noise).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(res.correct[:, 1 + i], hits)
    assert res.correct.shape == (len(y), 1 + len(bands))
    np.testing.assert_array_equal(res.correct[:, 0], np.ones(len(y)))  # labels are the clean predictions
    np.testing.assert_array_equal(100 * res.correct[:, 1:].mean(0), res.acc)
    assert res.acc.min() < 100.0  # the noise does something at this level
    again = robustness.noise_robustness(net, x, y, eps=0.5, bands=bands, seed=3, batch_size=64, progress=False)
    np.testing.assert_array_equal(again.acc, res.acc)  # batching does not change the noise


def test_noise_draws_average_single_draw_runs():
    """``draws=2`` from seed 3 is the mean of the runs seeded 3 and 4, per band and per image."""
    net, x, y = tiny_setup()
    kw = dict(eps=1.5, bands=(0.2, 0.7), batch_size=64, progress=False)
    both = robustness.noise_robustness(net, x, y, seed=3, draws=2, **kw)
    single = [robustness.noise_robustness(net, x, y, seed=s, **kw) for s in (3, 4)]
    assert both.draws == 2 and both.kind == "sign" and both.acc_per_draw.shape == (2, 2)
    np.testing.assert_array_equal(both.acc_per_draw, np.stack([r.acc for r in single]))
    np.testing.assert_allclose(both.acc, (single[0].acc + single[1].acc) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(both.nll, (single[0].nll + single[1].nll) / 2, rtol=1e-12)
    np.testing.assert_array_equal(both.correct[:, 0], single[0].correct[:, 0])
    np.testing.assert_allclose(both.correct[:, 1:], (single[0].correct[:, 1:] + single[1].correct[:, 1:]) / 2)
    np.testing.assert_allclose(100 * both.correct[:, 1:].mean(0), both.acc, atol=1e-9)
    assert not np.array_equal(single[0].correct, single[1].correct)  # the draws differ
    rms = robustness.noise_robustness(net, x, y, seed=3, kind="gaussian_rms", **{**kw, "eps": 0.5})
    noise = filters.band_noise(x.shape, 0.7, eps=0.5, generator=torch.Generator().manual_seed(3),
                                     kind="gaussian_rms")
    assert rms.kind == "gaussian_rms" and rms.acc[1] == metrics.evaluate(net, x + noise, y, batch_size=64)["acc"]


def test_calibration_is_deterministic_and_reproduced():
    net, x, y = tiny_setup()
    kw = dict(target_drop=20.0, bands=(0.3, 0.8), eps_max=4.0, steps=5, batch_size=64, seed=1, progress=False)
    cal = robustness.calibrate_eps(net, x, y, **kw)
    again = robustness.calibrate_eps(net, x, y, **kw)
    assert (cal.eps, cal.drop, cal.band, cal.history) == (again.eps, again.drop, again.band, again.history)
    assert cal.drop >= 20.0 and cal.band in (0.3, 0.8) and len(cal.history) == 6
    tested = dict(cal.history)
    assert tested[cal.eps] == cal.drop and 0 < cal.eps <= 4.0
    step = 4.0 / 2 ** 5  # the final bracket [eps - step, eps]
    assert (cal.eps / step).is_integer()
    if cal.eps > step:  # the bracket's lower end was tested and misses the target
        assert tested[cal.eps - step] < 20.0
    res = robustness.noise_robustness(net, x, y, cal.eps, bands=(0.3, 0.8), seed=1, batch_size=64, progress=False)
    assert -res.drop.min() == cal.drop
    two = robustness.calibrate_eps(net, x, y, **{**kw, "steps": 3}, draws=2)
    res = robustness.noise_robustness(net, x, y, two.eps, bands=(0.3, 0.8), seed=1, batch_size=64, draws=2,
                                         progress=False)
    assert -res.drop.min() == two.drop >= 20.0
    with pytest.raises(ValueError, match="eps_max=0.001 costs"):
        robustness.calibrate_eps(net, x, y, **{**kw, "eps_max": 1e-3})
    with pytest.raises(ValueError, match="target_drop"):
        robustness.calibrate_eps(net, x, y, **{**kw, "target_drop": 0})


def test_low_pass_sweep_matches_an_independent_computation():
    net, x, y = tiny_setup()
    res = robustness.low_pass_sweep(net, x, y, cutoffs=(0.0, 0.3, 1.0), batch_size=32, progress=False)
    for i, c in enumerate((0.0, 0.3, 1.0)):
        expected = metrics.evaluate(net, filters.low_pass(x, c), y, batch_size=32)
        assert res.acc[i] == expected["acc"]
        with torch.no_grad():
            hits = (net(filters.low_pass(x, c)).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(res.correct[:, 1 + i], hits)
    assert res.acc[-1] == res.clean_acc == 100.0
    assert res.acc[0] < 100.0
    np.testing.assert_array_equal(res.drop, res.acc - 100.0)


def test_robustness_rejects_bad_arguments():
    net, x, y = tiny_setup(8)
    with pytest.raises(ValueError, match="bands"):
        robustness.noise_robustness(net, x, y, eps=0.1, bands=(), progress=False)
    with pytest.raises(ValueError, match="bands"):
        robustness.noise_robustness(net, x, y, eps=0.1, bands=(0.5, 1.3), progress=False)
    with pytest.raises(ValueError, match="eps"):
        robustness.noise_robustness(net, x, y, eps=float("nan"), progress=False)
    with pytest.raises(ValueError, match="same number of images"):
        robustness.noise_robustness(net, x, y[:4], eps=0.1, progress=False)
    with pytest.raises(ValueError, match="x must be at least 1 image"):
        robustness.noise_robustness(net, x[0], y, eps=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        robustness.low_pass_sweep(net, x, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="cutoffs"):
        robustness.low_pass_sweep(net, x, y, cutoffs=(-0.1,), progress=False)
    with pytest.raises(ValueError, match="steps"):
        robustness.calibrate_eps(net, x, y, steps=0, progress=False)
    with pytest.raises(ValueError, match="draws"):
        robustness.noise_robustness(net, x, y, eps=0.1, draws=0, progress=False)
    with pytest.raises(ValueError, match="kind"):
        robustness.calibrate_eps(net, x, y, kind="gaussian", progress=False)


# --------------------------------------------------------------------------------------------------
# Reading the per-image outcomes: hand-computed examples

# 4 images; columns: clean, then three bands. Column means: 0.75, 0.5, 0.25, 0.75.
CORRECT = np.array([[1, 1, 0, 1],
                    [1, 0, 0, 1],
                    [1, 1, 1, 1],
                    [0, 0, 0, 0]], dtype=float)


def test_per_image_change_in_points():
    expected = np.array([[0, -100, 0], [-100, -100, 0], [0, 0, 0], [0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(robustness.per_image_change(CORRECT), expected)
    np.testing.assert_allclose(robustness.per_image_change(CORRECT).mean(0), [-25, -50, 0])


def test_loss_shares_and_band_share():
    # losses 0.25, 0.5, 0 of a total 0.75
    np.testing.assert_allclose(robustness.loss_shares(CORRECT), [1 / 3, 2 / 3, 0])
    bands = (0.1, 0.5, 0.9)
    assert robustness.band_share(CORRECT, bands, 0.1, 0.5) == pytest.approx(1.0)
    assert robustness.band_share(CORRECT, bands, 0.5, 0.9) == pytest.approx(2 / 3)
    assert robustness.band_share(CORRECT, bands, 0.0, 0.2) == pytest.approx(1 / 3)
    # a model twice as fragile everywhere has the same profile (fractions over draws allowed)
    halved = CORRECT.copy()
    halved[:, 1:] = (CORRECT[:, 1:] + CORRECT[:, :1]) / 2  # loses half as much in every band
    np.testing.assert_allclose(robustness.loss_shares(halved), robustness.loss_shares(CORRECT))
    # a band where the noise helps has a negative share
    helped = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=float)  # clean 2/3, bands 0 and 1
    np.testing.assert_allclose(robustness.loss_shares(helped), [2 / 3, -1 / 3])  # losses 2/3, -1/3; L1 norm 1
    # a summed loss of 0 still has a profile: losses 1/2 and -1/2 over an L1 norm of 1
    balanced = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)
    np.testing.assert_allclose(robustness.loss_shares(balanced), [0.5, -0.5])
    with pytest.raises(ValueError, match="no perturbation changes the accuracy"):
        robustness.loss_shares(np.array([[1, 1, 1], [0, 0, 0]], dtype=float))
    with pytest.raises(ValueError, match="no band lies"):
        robustness.band_share(CORRECT, bands, 0.6, 0.8)
    with pytest.raises(ValueError, match="one centre per perturbation column"):
        robustness.band_share(CORRECT, (0.1, 0.5), 0.1, 0.5)


def test_relative_accuracy_and_loss():
    np.testing.assert_allclose(robustness.relative_accuracy(CORRECT), [200 / 3, 100 / 3, 100])
    assert robustness.relative_loss(CORRECT) == pytest.approx(100 / 3)  # 100 - mean(66.7, 33.3, 100)
    assert robustness.relative_loss(np.array([[1, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=float)) \
        == pytest.approx(100 * (1 - (2 / 4 + 1 / 4) / 2 / (3 / 4)))
    with pytest.raises(ValueError, match="clean accuracy is 0"):
        robustness.relative_accuracy(np.zeros((3, 2)))


def test_outcome_readers_reject_bad_arrays():
    with pytest.raises(ValueError, match="shape"):
        robustness.loss_shares(np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        robustness.per_image_change(np.ones((5, 1)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        robustness.relative_accuracy(np.full((2, 2), 2.0))
