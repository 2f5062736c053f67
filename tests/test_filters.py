"""lib.analyses.filters: band noise stays in its band at its stated RMS, and the ideal low-pass
filter's ends are the identity and the mean."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib.analyses import filters, fourier

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------------------------------
# Band-limited noise


@pytest.mark.parametrize("centre,count", [(0.1, 24), (0.5, 56), (0.9, 200)])
def test_band_mask_rings(centre, count):
    """On 28×28 the radii are k/14; the Chebyshev ring of radius k holds 8k bins."""
    mask = filters.band_mask(28, 28, centre, 0.1)
    assert int(mask.sum()) == count
    r = fourier.radius(28, 28)[mask]
    assert r.min() >= centre - 0.05 and r.max() <= centre + 0.05
    neg = (-torch.arange(28)) % 28  # the bin of -f
    assert torch.equal(mask, mask[neg][:, neg])  # symmetric, so real noise stays real


def test_sign_noise_is_plus_or_minus_eps_from_the_generator():
    noise = filters.sign_noise((3, 2, 28, 28), eps=0.25, generator=torch.Generator().manual_seed(4))
    assert noise.dtype == torch.float64 and noise.shape == (3, 2, 28, 28)
    assert set(noise.unique().tolist()) == {-0.25, 0.25}
    white = torch.randn((3, 2, 28, 28), generator=torch.Generator().manual_seed(4))  # the same draw
    torch.testing.assert_close(noise, 0.25 * torch.where(white >= 0, 1.0, -1.0).double(), rtol=0, atol=0)


@pytest.mark.parametrize("centre", filters.BANDS)
def test_sign_band_noise_stays_in_its_band_and_is_real(centre):
    shape, eps, seed = (4, 2, 28, 28), 0.2, 6
    noise = filters.band_noise(shape, centre, eps=eps, generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float64)
    assert noise.shape == shape and noise.dtype == torch.float64 and not noise.is_complex()
    mask = filters.band_mask(28, 28, centre)
    power = torch.fft.fft2(noise).abs().pow(2)
    assert power[..., ~mask].sum() / power.sum() < 1e-20  # all its energy in the band
    # independently: numpy's FFT of the ±eps draw, filtered; its imaginary part is rounding only
    raw = filters.sign_noise(shape, eps, generator=torch.Generator().manual_seed(seed)).numpy()
    filtered = np.fft.ifft2(np.fft.fft2(raw) * mask.numpy())
    assert np.abs(filtered.imag).max() < 1e-15
    np.testing.assert_allclose(noise.numpy(), filtered.real, rtol=0, atol=1e-14)
    # not rescaled: Parseval, energy per pixel = (energy of the raw noise in the band bins) / (H·W)²
    band_energy = (np.abs(np.fft.fft2(raw))[..., mask.numpy()] ** 2).sum(axis=-1) / (28 * 28) ** 2
    np.testing.assert_allclose(noise.pow(2).mean(dim=(2, 3)).numpy(), band_energy, rtol=1e-10)


def test_sign_band_noise_over_all_frequencies_is_the_sign_noise():
    """A band covering every radius keeps every bin, so filtering returns the ±eps draw itself."""
    g = lambda: torch.Generator().manual_seed(2)
    everything = filters.band_noise((2, 1, 28, 28), 0.5, width=1.2, eps=0.3, generator=g(), dtype=torch.float64)
    torch.testing.assert_close(everything, filters.sign_noise((2, 1, 28, 28), 0.3, generator=g()),
                               rtol=0, atol=1e-12)


def test_sign_band_noise_energy_grows_with_the_band():
    """Park & Kim's noise is not normalised per band: on average a band keeps its share of the bins."""
    g = torch.Generator().manual_seed(3)
    rms = {b: filters.band_noise((200, 1, 28, 28), b, eps=1.0, generator=g).pow(2).mean().sqrt().item()
           for b in (0.1, 0.9)}
    bins = {b: int(filters.band_mask(28, 28, b).sum()) for b in (0.1, 0.9)}  # 24 and 200
    for b in rms:  # E|F_k|² = H·W for ±1 noise, so E[energy per pixel] = bins / (H·W)
        assert rms[b] == pytest.approx(math.sqrt(bins[b] / 784), rel=0.05)
    assert rms[0.9] > 2.5 * rms[0.1]


@pytest.mark.parametrize("centre", filters.BANDS)
def test_gaussian_rms_band_noise_stays_in_its_band_at_its_rms(centre):
    eps = 0.07
    noise = filters.band_noise((5, 2, 28, 28), centre, eps=eps, generator=torch.Generator().manual_seed(6),
                                     kind="gaussian_rms")
    assert noise.shape == (5, 2, 28, 28) and noise.dtype == torch.float32
    power = torch.fft.fft2(noise.double()).abs().pow(2)
    outside = power[..., ~filters.band_mask(28, 28, centre)].sum()
    assert outside / power.sum() < 1e-10
    rms = noise.double().pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full((5,), eps, dtype=torch.float64), rtol=1e-6, atol=0)
    norm = noise.double().flatten(1).norm(dim=1)
    torch.testing.assert_close(norm, torch.full((5,), eps * math.sqrt(2 * 28 * 28), dtype=torch.float64),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", filters.NOISE_KINDS)
def test_band_noise_is_reproducible(kind):
    a = filters.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7), kind=kind)
    b = filters.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(7), kind=kind)
    c = filters.band_noise((2, 1, 28, 28), 0.3, generator=torch.Generator().manual_seed(8), kind=kind)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_band_noise_rejects_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="band_center"):
        filters.band_noise((1, 1, 28, 28), 1.5, generator=g)
    with pytest.raises(ValueError, match="width"):
        filters.band_noise((1, 1, 28, 28), 0.5, width=0.0, generator=g)
    with pytest.raises(ValueError, match="eps"):
        filters.band_noise((1, 1, 28, 28), 0.5, eps=-0.1, generator=g)
    with pytest.raises(ValueError, match=r"shape must be \(N, C, H, W\)"):
        filters.band_noise((28, 28), 0.5, generator=g)
    with pytest.raises(ValueError, match=r"no frequency of a 4×4 grid.*radii are \[0.0, 0.5, 1.0\]"):
        filters.band_noise((1, 1, 4, 4), 0.2, generator=g)
    with pytest.raises(ValueError, match=r"kind must be one of \('sign', 'gaussian_rms'\)"):
        filters.band_noise((1, 1, 28, 28), 0.5, generator=g, kind="uniform")
    with pytest.raises(ValueError, match="eps"):
        filters.sign_noise((1, 1, 28, 28), eps=-1.0)
    with pytest.raises(ValueError, match="mask must be"):
        filters.band_filter(torch.zeros(1, 1, 28, 28), torch.ones(14, 14, dtype=torch.bool))


# --------------------------------------------------------------------------------------------------
# Low-pass filtering


def test_low_pass_ends_are_identity_and_mean():
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(9))
    same = filters.low_pass(x, 1.0)
    assert same.dtype == x.dtype and same.shape == x.shape
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)
    flat = filters.low_pass(x, 0.0)
    torch.testing.assert_close(flat, x.mean(dim=(2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-6)
    x7 = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(10))  # odd size: no Nyquist bin
    torch.testing.assert_close(filters.low_pass(x7, 1.0), x7, rtol=0, atol=1e-6)


def test_low_pass_removes_exactly_the_high_frequencies():
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    y = filters.low_pass(x, 0.5)
    spec_x, spec_y = torch.fft.fft2(x), torch.fft.fft2(y)
    keep = fourier.radius(28, 28) <= 0.5
    assert spec_y[..., ~keep].abs().max() < 1e-12
    torch.testing.assert_close(spec_y[..., keep], spec_x[..., keep], rtol=0, atol=1e-12)
    torch.testing.assert_close(filters.low_pass(y, 0.5), y, rtol=0, atol=1e-12)  # idempotent
    with pytest.raises(ValueError, match="cutoff"):
        filters.low_pass(x, 1.2)
