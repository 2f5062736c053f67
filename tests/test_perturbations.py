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

from lib.core import metrics  # noqa: E402
from lib.analyses import fourier, perturbations  # noqa: E402


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


def test_sign_noise_is_plus_or_minus_eps_from_the_generator():
    noise = perturbations.sign_noise((3, 2, 28, 28), eps=0.25, generator=torch.Generator().manual_seed(4))
    assert noise.dtype == torch.float64 and noise.shape == (3, 2, 28, 28)
    assert set(noise.unique().tolist()) == {-0.25, 0.25}
    white = torch.randn((3, 2, 28, 28), generator=torch.Generator().manual_seed(4))  # the same draw
    torch.testing.assert_close(noise, 0.25 * torch.where(white >= 0, 1.0, -1.0).double(), rtol=0, atol=0)


@pytest.mark.parametrize("centre", perturbations.BANDS)
def test_sign_band_noise_stays_in_its_band_and_is_real(centre):
    shape, eps, seed = (4, 2, 28, 28), 0.2, 6
    noise = perturbations.band_noise(shape, centre, eps=eps, generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float64)
    assert noise.shape == shape and noise.dtype == torch.float64 and not noise.is_complex()
    mask = perturbations.band_mask(28, 28, centre)
    power = torch.fft.fft2(noise).abs().pow(2)
    assert power[..., ~mask].sum() / power.sum() < 1e-20  # all its energy in the band
    # independently: numpy's FFT of the ±eps draw, filtered; its imaginary part is rounding only
    raw = perturbations.sign_noise(shape, eps, generator=torch.Generator().manual_seed(seed)).numpy()
    filtered = np.fft.ifft2(np.fft.fft2(raw) * mask.numpy())
    assert np.abs(filtered.imag).max() < 1e-15
    np.testing.assert_allclose(noise.numpy(), filtered.real, rtol=0, atol=1e-14)
    # not rescaled: Parseval, energy per pixel = (energy of the raw noise in the band bins) / (H·W)²
    band_energy = (np.abs(np.fft.fft2(raw))[..., mask.numpy()] ** 2).sum(axis=-1) / (28 * 28) ** 2
    np.testing.assert_allclose(noise.pow(2).mean(dim=(2, 3)).numpy(), band_energy, rtol=1e-10)


def test_sign_band_noise_over_all_frequencies_is_the_sign_noise():
    """A band covering every radius keeps every bin, so filtering returns the ±eps draw itself."""
    g = lambda: torch.Generator().manual_seed(2)
    everything = perturbations.band_noise((2, 1, 28, 28), 0.5, width=1.2, eps=0.3, generator=g(), dtype=torch.float64)
    torch.testing.assert_close(everything, perturbations.sign_noise((2, 1, 28, 28), 0.3, generator=g()),
                               rtol=0, atol=1e-12)


def test_sign_band_noise_energy_grows_with_the_band():
    """Park & Kim's noise is not normalised per band: on average a band keeps its share of the bins."""
    g = torch.Generator().manual_seed(3)
    rms = {b: perturbations.band_noise((200, 1, 28, 28), b, eps=1.0, generator=g).pow(2).mean().sqrt().item()
           for b in (0.1, 0.9)}
    bins = {b: int(perturbations.band_mask(28, 28, b).sum()) for b in (0.1, 0.9)}  # 24 and 200
    for b in rms:  # E|F_k|² = H·W for ±1 noise, so E[energy per pixel] = bins / (H·W)
        assert rms[b] == pytest.approx(math.sqrt(bins[b] / 784), rel=0.05)
    assert rms[0.9] > 2.5 * rms[0.1]


@pytest.mark.parametrize("centre", perturbations.BANDS)
def test_gaussian_rms_band_noise_stays_in_its_band_at_its_rms(centre):
    eps = 0.07
    noise = perturbations.band_noise((5, 2, 28, 28), centre, eps=eps, generator=torch.Generator().manual_seed(6),
                                     kind="gaussian_rms")
    assert noise.shape == (5, 2, 28, 28) and noise.dtype == torch.float32
    power = torch.fft.fft2(noise.double()).abs().pow(2)
    outside = power[..., ~perturbations.band_mask(28, 28, centre)].sum()
    assert outside / power.sum() < 1e-10
    rms = noise.double().pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full((5,), eps, dtype=torch.float64), rtol=1e-6, atol=0)
    norm = noise.double().flatten(1).norm(dim=1)
    torch.testing.assert_close(norm, torch.full((5,), eps * math.sqrt(2 * 28 * 28), dtype=torch.float64),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", perturbations.NOISE_KINDS)
def test_band_noise_is_reproducible(kind):
    a = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7), kind=kind)
    b = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7), kind=kind)
    c = perturbations.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(8), kind=kind)
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
    with pytest.raises(ValueError, match=r"kind must be one of \('sign', 'gaussian_rms'\)"):
        perturbations.band_noise((1, 1, 28, 28), 0.5, generator=g, kind="uniform")
    with pytest.raises(ValueError, match="eps"):
        perturbations.sign_noise((1, 1, 28, 28), eps=-1.0)
    with pytest.raises(ValueError, match="mask must be"):
        perturbations.band_filter(torch.zeros(1, 1, 28, 28), torch.ones(14, 14, dtype=torch.bool))


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


def test_noise_draws_average_single_draw_runs():
    """``draws=2`` from seed 3 is the mean of the runs seeded 3 and 4, per band and per image."""
    net, x, y = tiny_setup()
    kw = dict(eps=1.5, bands=(0.2, 0.7), batch_size=64, progress=False)
    both = perturbations.noise_robustness(net, x, y, seed=3, draws=2, **kw)
    single = [perturbations.noise_robustness(net, x, y, seed=s, **kw) for s in (3, 4)]
    assert both.draws == 2 and both.kind == "sign" and both.acc_per_draw.shape == (2, 2)
    np.testing.assert_array_equal(both.acc_per_draw, np.stack([r.acc for r in single]))
    np.testing.assert_allclose(both.acc, (single[0].acc + single[1].acc) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(both.nll, (single[0].nll + single[1].nll) / 2, rtol=1e-12)
    np.testing.assert_array_equal(both.correct[:, 0], single[0].correct[:, 0])
    np.testing.assert_allclose(both.correct[:, 1:], (single[0].correct[:, 1:] + single[1].correct[:, 1:]) / 2)
    np.testing.assert_allclose(100 * both.correct[:, 1:].mean(0), both.acc, atol=1e-9)
    assert not np.array_equal(single[0].correct, single[1].correct)  # the draws differ
    rms = perturbations.noise_robustness(net, x, y, seed=3, kind="gaussian_rms", **{**kw, "eps": 0.5})
    noise = perturbations.band_noise(x.shape, 0.7, eps=0.5, generator=torch.Generator().manual_seed(3),
                                     kind="gaussian_rms")
    assert rms.kind == "gaussian_rms" and rms.acc[1] == metrics.evaluate(net, x + noise, y, batch_size=64)["acc"]


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
    two = perturbations.calibrate_eps(net, x, y, **{**kw, "steps": 3}, draws=2)
    res = perturbations.noise_robustness(net, x, y, two.eps, bands=(0.3, 0.8), seed=1, batch_size=64, draws=2,
                                         progress=False)
    assert -res.drop.min() == two.drop >= 20.0
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
    with pytest.raises(ValueError, match="draws"):
        perturbations.noise_robustness(net, x, y, eps=0.1, draws=0, progress=False)
    with pytest.raises(ValueError, match="kind"):
        perturbations.calibrate_eps(net, x, y, kind="gaussian", progress=False)


# --------------------------------------------------------------------------------------------------
# Reading the per-image outcomes: hand-computed examples

# 4 images; columns: clean, then three bands. Column means: 0.75, 0.5, 0.25, 0.75.
CORRECT = np.array([[1, 1, 0, 1],
                    [1, 0, 0, 1],
                    [1, 1, 1, 1],
                    [0, 0, 0, 0]], dtype=float)


def test_per_image_change_in_points():
    expected = np.array([[0, -100, 0], [-100, -100, 0], [0, 0, 0], [0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(perturbations.per_image_change(CORRECT), expected)
    np.testing.assert_allclose(perturbations.per_image_change(CORRECT).mean(0), [-25, -50, 0])


def test_loss_shares_and_band_share():
    # losses 0.25, 0.5, 0 of a total 0.75
    np.testing.assert_allclose(perturbations.loss_shares(CORRECT), [1 / 3, 2 / 3, 0])
    bands = (0.1, 0.5, 0.9)
    assert perturbations.band_share(CORRECT, bands, 0.1, 0.5) == pytest.approx(1.0)
    assert perturbations.band_share(CORRECT, bands, 0.5, 0.9) == pytest.approx(2 / 3)
    assert perturbations.band_share(CORRECT, bands, 0.0, 0.2) == pytest.approx(1 / 3)
    # a model twice as fragile everywhere has the same profile (fractions over draws allowed)
    halved = CORRECT.copy()
    halved[:, 1:] = (CORRECT[:, 1:] + CORRECT[:, :1]) / 2  # loses half as much in every band
    np.testing.assert_allclose(perturbations.loss_shares(halved), perturbations.loss_shares(CORRECT))
    # a band where the noise helps has a negative share
    helped = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 1]], dtype=float)  # clean 2/3, bands 0 and 1
    np.testing.assert_allclose(perturbations.loss_shares(helped), [2 / 3, -1 / 3])  # losses 2/3, -1/3; L1 norm 1
    # a summed loss of 0 still has a profile: losses 1/2 and -1/2 over an L1 norm of 1
    balanced = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)
    np.testing.assert_allclose(perturbations.loss_shares(balanced), [0.5, -0.5])
    with pytest.raises(ValueError, match="no perturbation changes the accuracy"):
        perturbations.loss_shares(np.array([[1, 1, 1], [0, 0, 0]], dtype=float))
    with pytest.raises(ValueError, match="no band lies"):
        perturbations.band_share(CORRECT, bands, 0.6, 0.8)
    with pytest.raises(ValueError, match="one centre per perturbation column"):
        perturbations.band_share(CORRECT, (0.1, 0.5), 0.1, 0.5)


def test_relative_accuracy_and_loss():
    np.testing.assert_allclose(perturbations.relative_accuracy(CORRECT), [200 / 3, 100 / 3, 100])
    assert perturbations.relative_loss(CORRECT) == pytest.approx(100 / 3)  # 100 - mean(66.7, 33.3, 100)
    assert perturbations.relative_loss(np.array([[1, 1, 0], [1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=float)) \
        == pytest.approx(100 * (1 - (2 / 4 + 1 / 4) / 2 / (3 / 4)))
    with pytest.raises(ValueError, match="clean accuracy is 0"):
        perturbations.relative_accuracy(np.zeros((3, 2)))


def test_outcome_readers_reject_bad_arrays():
    with pytest.raises(ValueError, match="shape"):
        perturbations.loss_shares(np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        perturbations.per_image_change(np.ones((5, 1)))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        perturbations.relative_accuracy(np.full((2, 2), 2.0))

