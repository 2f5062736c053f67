"""Perturbing an image in the frequency domain: band-limited noise and low-pass filtering.

* **Band-limited noise** (Park & Kim 2022, Fig. 2b). :func:`band_noise` draws Park & Kim's noise,
  ε·sign(N(0, 1)) per pixel (:func:`sign_noise`) filtered to a square annulus of frequencies
  (:func:`band_mask`, :func:`band_filter`), or, on request, Gaussian noise rescaled to the same RMS
  in every band (:data:`NOISE_KINDS`). :func:`unit_band_noise` is the same noise at ε = 1 from a
  given normal draw, so one draw serves every noise level.
* **Low-pass filtering** (Ghiasi et al. 2022): :func:`low_pass` removes every frequency above a
  cutoff.

What a model does under these perturbations is :mod:`lib.analyses.robustness`. Frequencies, radii
and the square annuli follow the conventions of :mod:`lib.analyses.fourier`; pixels are not clamped
to [0, 1] after adding noise or filtering (clamping would rectify the noise on Fashion-MNIST's
black background and move its energy to other frequencies).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..core.running import check_positive_int
from .fourier import CHUNK, TOL, radius

#: Centres of the noise bands of Park & Kim's Fig. 2b, in units of π.
BANDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: The kinds of band-limited noise: Park & Kim's filtered sign noise (the default), and Gaussian
#: noise rescaled to the same RMS in every band.
NOISE_KINDS: tuple[str, ...] = ("sign", "gaussian_rms")


def check_eps(eps: object) -> float:
    """``eps`` as a float: a noise amplitude must be a finite number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (noise amplitude in pixel units), got {eps!r}")
    return float(eps)


def check_unit_interval(value: object, what: str) -> float:
    """``value`` as a float: a frequency (units of π) must lie in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number in [0, 1] (units of π), got {value!r}")
    return float(value)


def _check_band(band_center: object, width: object) -> tuple[float, float]:
    center = check_unit_interval(band_center, "band_center")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 2:
        raise ValueError(f"width must be a number in (0, 2] (units of π), got {width!r}")
    return center, float(width)


def band_mask(h: int, w: int, band_center: float, width: float = 0.1) -> Tensor:
    """Which bins of an ``h × w`` FFT lie in the band: a square annulus of frequencies.

    True where the Chebyshev radius (:func:`radius`, units of π) lies in
    ``[band_center − width/2, band_center + width/2]`` (edges inclusive). The mask is symmetric
    under ``f → −f``, so filtering a real signal with it gives a real signal. Returned in
    ``torch.fft.fft2`` order (``torch.fft.fftshift`` it to draw it), boolean ``(h, w)``.

    On a 28×28 image the radii are multiples of 1/14, so a band of width 0.1 holds one or two
    rings of bins (0.5π: one ring of 56 bins; 0.1π: radii 1/14 and 2/14, 24 bins).

    Raises:
        ValueError: ``band_center`` outside [0, 1], ``width`` outside (0, 2], or no bin of this
            grid in the band (the grid is too coarse for it).
    """
    check_positive_int(h, "h")
    check_positive_int(w, "w")
    center, width = _check_band(band_center, width)
    r = radius(h, w)
    mask = (r >= center - width / 2 - TOL) & (r <= center + width / 2 + TOL)
    if not mask.any():
        radii = sorted({round(v, 4) for v in r.flatten().tolist()})
        raise ValueError(f"no frequency of a {h}×{w} grid lies in the band {center:g} ± {width / 2:g} (units of "
                         f"π); its radii are {radii}: widen the band or move its centre")
    return mask


def check_noise_kind(kind: object) -> str:
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    return kind


def band_filter(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` ``(..., H, W)`` with every frequency outside ``mask`` removed, in float64 on ``x``'s device.

    ``ifft2(fft2(x) · mask)``, whose real part is returned: for a mask symmetric under ``f → −f``
    (every :func:`band_mask` is) the imaginary part is rounding only, so the result is the real
    signal with exactly the frequencies of ``mask``. Chunked along the first axis (bounds the
    complex temporaries).
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or x.is_complex():
        raise ValueError(f"x must be a real tensor (..., H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"mask must be a tensor of shape {tuple(x.shape[-2:])} (the last two dims of x), got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    mask = mask.to(x.device)
    chunks = x.split(CHUNK) if x.ndim > 2 else [x]
    return torch.cat([torch.fft.ifft2(torch.fft.fft2(c.to(torch.float64)) * mask).real for c in chunks])


def _signs(white: Tensor) -> Tensor:
    """``+1`` where ``white >= 0``, ``-1`` elsewhere (float64): ``sign`` without its zeros."""
    return torch.where(white >= 0, 1.0, -1.0).to(torch.float64)


def unit_band_noise(white: Tensor, mask: Tensor, kind: str) -> Tensor:
    """The band noise of :func:`band_noise` at ``eps = 1`` (float64), from a standard normal draw.

    ``"sign"``: ``sign(white)`` filtered to ``mask``; ``"gaussian_rms"``: ``white`` filtered to
    ``mask`` and rescaled to RMS 1 per image. Both scale linearly with ε, so one draw serves
    every noise level.
    """
    if kind == "sign":
        return band_filter(_signs(white), mask)
    filtered = band_filter(white, mask)
    return filtered / filtered.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _check_cpu_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (noise is drawn on the CPU so that it does "
                         f"not depend on the device), got one on {generator.device.type!r}")


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be (N, C, H, W) with positive integer sizes, got {shape}")
    return shape


def sign_noise(shape: Sequence[int], eps: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """Park & Kim's unfiltered noise: ``eps · sign(N(0, 1))`` per pixel, every entry ``±eps`` (float64, CPU).

    Drawn as ``torch.randn(shape, generator=generator)`` (float32, CPU generator) with ``+eps``
    where the draw is ``>= 0`` and ``-eps`` elsewhere. :func:`band_noise` with ``kind="sign"``
    filters exactly this draw (same generator state) to a band.

    Raises:
        ValueError: ``shape`` not 4-D with positive sizes, ``eps`` negative, a non-CPU generator.
    """
    shape = _check_shape(shape)
    eps = check_eps(eps)
    _check_cpu_generator(generator)
    return eps * _signs(torch.randn(shape, generator=generator, dtype=torch.float32))


def band_noise(shape: Sequence[int], band_center: float, width: float = 0.1, eps: float = 0.1,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, kind: str = "sign") -> Tensor:
    """Noise confined to a band of frequencies (Park & Kim Fig. 2b), ``shape`` ``(N, C, H, W)``.

    A standard normal tensor is drawn (float32, on the CPU, from ``generator``, a CPU
    ``torch.Generator``; ``None``: the global generator) and then, by ``kind``:

    * ``"sign"`` (default, Park & Kim's noise): ``eps · sign`` of the draw (:func:`sign_noise`,
      every entry ``±eps``) is filtered to the bins of :func:`band_mask` ``(H, W, band_center,
      width)`` by :func:`band_filter`. It is *not* rescaled: a band holding ``k`` of the ``H·W``
      bins keeps about ``k / (H·W)`` of the sign noise's energy ``eps²`` per pixel, so on 28×28 the
      band at 0.9π (200 bins) carries about eight times the energy of the band at 0.1π (24 bins).
    * ``"gaussian_rms"``: the draw itself is filtered to the band and each image rescaled so that
      its root-mean-square over its ``C·H·W`` values is exactly ``eps``: the same energy in every
      band, so that differences between bands come from the frequencies alone.

    ``eps`` is in pixel units of images in [0, 1] (Fashion-MNIST's pixel standard deviation is
    about 0.35). The result is real (the band is symmetric) and returned as ``dtype`` on ``device``.
    :func:`noise_robustness` with seed ``s`` adds exactly ``band_noise(x.shape, b, width, eps,
    generator=torch.Generator().manual_seed(s), kind=kind)`` in band ``b`` (draw ``d`` uses seed
    ``s + d``).

    Raises:
        ValueError: ``shape`` is not 4-D with positive sizes, bad band (see :func:`band_mask`),
            ``eps`` negative, an unknown ``kind`` or a generator that is not on the CPU.
    """
    shape = _check_shape(shape)
    eps = check_eps(eps)
    kind = check_noise_kind(kind)
    _check_cpu_generator(generator)
    mask = band_mask(shape[2], shape[3], band_center, width)
    white = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (eps * unit_band_noise(white, mask, kind)).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Low-pass filtering (Ghiasi et al.)
# --------------------------------------------------------------------------------------------------

def low_pass(x: Tensor, cutoff: float) -> Tensor:
    """Keep only the frequencies of ``x`` with Chebyshev radius ``<= cutoff·π``: an ideal filter.

    ``x`` is ``(..., H, W)`` (images ``(N, C, H, W)``); each ``H × W`` map is transformed with a
    2-D FFT in float64, every bin with :func:`radius` above ``cutoff`` is zeroed (the edge is
    inclusive), and the inverse transform's real part (the mask is symmetric, so the imaginary
    part is rounding only) is returned in ``x``'s dtype and device. ``cutoff = 1`` keeps every
    frequency (the identity, up to rounding); ``cutoff = 0`` keeps only frequency 0, giving each
    map's mean everywhere. The result is not clamped (an ideal filter rings, so values may leave
    [0, 1]).

    Raises:
        ValueError: ``cutoff`` outside [0, 1] or ``x`` with fewer than 2 dims.
    """
    cutoff = check_unit_interval(cutoff, "cutoff")
    if not isinstance(x, Tensor) or x.ndim < 2 or x.is_complex():
        raise ValueError(f"x must be a real tensor (..., H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    h, w = x.shape[-2:]
    keep = (radius(h, w) <= cutoff + TOL).to(x.device)
    spectrum = torch.fft.fft2(x.to(torch.float64)) * keep
    return torch.fft.ifft2(spectrum).real.to(x.dtype)
