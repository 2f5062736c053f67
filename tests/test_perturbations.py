"""Input perturbations: band noise stays in its band at its stated RMS, the ideal low-pass filter's
ends are the identity and the mean, and the robustness measurements reproduce an independent
computation."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from lib import fourier, metrics, perturbations  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# Band-limited noise


@pytest.mark.parametrize("centre,count", [(0.1, 24), (0.5, 56), (0.9, 200)])
def test_band_mask_rings(centre, count):
    """On 28×28 the radii are k/14; the Chebyshev ring of radius k holds 8k bins."""
    mask = perturbations.band_mask(28, 28, centre, 0.1)
    assert int(mask.sum()) == count
    r = fourier.radius(28, 28)[mask]
    assert r.min() >= centre - 0.05 and r.max() <= centre + 0.05
    neg = (-torch.arange(28)) % 28  # the bin of -f
    assert torch.equal(mask, mask[neg][:, neg])  # symmetric, so real noise stays real


@pytest.mark.parametrize("centre", perturbations.BANDS)
def test_band_noise_stays_in_its_band_at_its_rms(centre):
    eps = 0.07
    noise = perturbations.band_noise((5, 2, 28, 28), centre, eps=eps, generator=torch.Generator().manual_seed(6))
    assert noise.shape == (5, 2, 28, 28) and noise.dtype == torch.float32
    power = torch.fft.fft2(noise.double()).abs().pow(2)
    outside = power[..., ~perturbations.band_mask(28, 28, centre)].sum()
    assert outside / power.sum() < 1e-10
    rms = noise.double().pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full((5,), eps, dtype=torch.float64), rtol=1e-6, atol=0)
    norm = noise.double().flatten(1).norm(dim=1)
    torch.testing.assert_close(norm, torch.full((5,), eps * math.sqrt(2 * 28 * 28), dtype=torch.float64),
                               rtol=1e-6, atol=0)


def test_band_noise_is_reproducible():
    a = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7))
    b = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7))
    c = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_band_noise_rejects_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="band_center"):
        perturbations.band_noise((1, 1, 28, 28), 1.5, generator=g)
    with pytest.raises(ValueError, match="width"):
        perturbations.band_noise((1, 1, 28, 28), 0.5, width=0.0, generator=g)
    with pytest.raises(ValueError, match="eps"):
        perturbations.band_noise((1, 1, 28, 28), 0.5, eps=-0.1, generator=g)
    with pytest.raises(ValueError, match=r"shape must be \(N, C, H, W\)"):
        perturbations.band_noise((28, 28), 0.5, generator=g)
    with pytest.raises(ValueError, match=r"no frequency of a 4×4 grid.*radii are \[0.0, 0.5, 1.0\]"):
        perturbations.band_noise((1, 1, 4, 4), 0.2, generator=g)


# --------------------------------------------------------------------------------------------------
# Low-pass filtering


def test_low_pass_ends_are_identity_and_mean():
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(9))
    same = perturbations.low_pass(x, 1.0)
    assert same.dtype == x.dtype and same.shape == x.shape
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)
    flat = perturbations.low_pass(x, 0.0)
    torch.testing.assert_close(flat, x.mean(dim=(2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-6)
    x7 = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(10))  # odd size: no Nyquist bin
    torch.testing.assert_close(perturbations.low_pass(x7, 1.0), x7, rtol=0, atol=1e-6)


def test_low_pass_removes_exactly_the_high_frequencies():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    y = perturbations.low_pass(x, 0.5)
    spec_x, spec_y = torch.fft.fft2(x), torch.fft.fft2(y)
    keep = fourier.radius(28, 28) <= 0.5
    assert spec_y[..., ~keep].abs().max() < 1e-12
    torch.testing.assert_close(spec_y[..., keep], spec_x[..., keep], rtol=0, atol=1e-12)
    torch.testing.assert_close(perturbations.low_pass(y, 0.5), y, rtol=0, atol=1e-12)  # idempotent
    with pytest.raises(ValueError, match="cutoff"):
        perturbations.low_pass(x, 1.2)


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
    res = perturbations.noise_robustness(net, x, y, eps=0.0, batch_size=16, progress=False)
    assert res.clean_acc == 100.0
    np.testing.assert_array_equal(res.acc, np.full(9, res.clean_acc))
    np.testing.assert_array_equal(res.nll, np.full(9, res.clean_nll))
    np.testing.assert_array_equal(res.drop, np.zeros(9))
    np.testing.assert_allclose(res.bands, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # Park & Kim's bands


def test_noise_robustness_matches_an_independent_computation():
    net, x, y = tiny_setup()
    bands = (0.2, 0.7)
    res = perturbations.noise_robustness(net, x, y, eps=0.5, bands=bands, seed=3, batch_size=16, progress=False)
    for i, b in enumerate(bands):
        noise = perturbations.band_noise(x.shape, b, eps=0.5, generator=torch.Generator().manual_seed(3))
        expected = metrics.evaluate(net, x + noise, y, batch_size=16)
        assert res.acc[i] == expected["acc"] and res.nll[i] == pytest.approx(expected["nll"], rel=1e-6)
        with torch.no_grad():  # per image, straight from the logits
            hits = (net(x + noise).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(res.correct[:, 1 + i], hits)
    assert res.correct.shape == (len(y), 1 + len(bands))
    np.testing.assert_array_equal(res.correct[:, 0], np.ones(len(y)))  # labels are the clean predictions
    np.testing.assert_array_equal(100 * res.correct[:, 1:].mean(0), res.acc)
    assert res.acc.min() < 100.0  # the noise does something at this level
    again = perturbations.noise_robustness(net, x, y, eps=0.5, bands=bands, seed=3, batch_size=64, progress=False)
    np.testing.assert_array_equal(again.acc, res.acc)  # batching does not change the noise


def test_calibration_is_deterministic_and_reproduced():
    net, x, y = tiny_setup()
    kw = dict(target_drop=20.0, bands=(0.3, 0.8), eps_max=4.0, steps=5, batch_size=64, seed=1, progress=False)
    cal = perturbations.calibrate_eps(net, x, y, **kw)
    again = perturbations.calibrate_eps(net, x, y, **kw)
    assert (cal.eps, cal.drop, cal.band, cal.history) == (again.eps, again.drop, again.band, again.history)
    assert cal.drop >= 20.0 and cal.band in (0.3, 0.8) and len(cal.history) == 6
    tested = dict(cal.history)
    assert tested[cal.eps] == cal.drop and 0 < cal.eps <= 4.0
    step = 4.0 / 2 ** 5  # the final bracket [eps - step, eps]
    assert (cal.eps / step).is_integer()
    if cal.eps > step:  # the bracket's lower end was tested and misses the target
        assert tested[cal.eps - step] < 20.0
    res = perturbations.noise_robustness(net, x, y, cal.eps, bands=(0.3, 0.8), seed=1, batch_size=64, progress=False)
    assert -res.drop.min() == cal.drop
    with pytest.raises(ValueError, match="eps_max=0.001 costs"):
        perturbations.calibrate_eps(net, x, y, **{**kw, "eps_max": 1e-3})
    with pytest.raises(ValueError, match="target_drop"):
        perturbations.calibrate_eps(net, x, y, **{**kw, "target_drop": 0})


def test_low_pass_sweep_matches_an_independent_computation():
    net, x, y = tiny_setup()
    res = perturbations.low_pass_sweep(net, x, y, cutoffs=(0.0, 0.3, 1.0), batch_size=32, progress=False)
    for i, c in enumerate((0.0, 0.3, 1.0)):
        expected = metrics.evaluate(net, perturbations.low_pass(x, c), y, batch_size=32)
        assert res.acc[i] == expected["acc"]
        with torch.no_grad():
            hits = (net(perturbations.low_pass(x, c)).argmax(1) == y).double().numpy()
        np.testing.assert_array_equal(res.correct[:, 1 + i], hits)
    assert res.acc[-1] == res.clean_acc == 100.0
    assert res.acc[0] < 100.0
    np.testing.assert_array_equal(res.drop, res.acc - 100.0)


def test_robustness_rejects_bad_arguments():
    net, x, y = tiny_setup(8)
    with pytest.raises(ValueError, match="bands"):
        perturbations.noise_robustness(net, x, y, eps=0.1, bands=(), progress=False)
    with pytest.raises(ValueError, match="bands"):
        perturbations.noise_robustness(net, x, y, eps=0.1, bands=(0.5, 1.3), progress=False)
    with pytest.raises(ValueError, match="eps"):
        perturbations.noise_robustness(net, x, y, eps=float("nan"), progress=False)
    with pytest.raises(ValueError, match="y must be"):
        perturbations.noise_robustness(net, x, y[:4], eps=0.1, progress=False)
    with pytest.raises(ValueError, match="x must be"):
        perturbations.noise_robustness(net, x[0], y, eps=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        perturbations.low_pass_sweep(net, x, y, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="cutoffs"):
        perturbations.low_pass_sweep(net, x, y, cutoffs=(-0.1,), progress=False)
    with pytest.raises(ValueError, match="steps"):
        perturbations.calibrate_eps(net, x, y, steps=0, progress=False)
