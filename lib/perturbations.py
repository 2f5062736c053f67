"""Perturbing the input in the frequency domain: band-limited noise, and low-pass filtering.

* **Robustness to band-limited noise** (Park & Kim 2022, Fig. 2b). :func:`band_noise` draws
  Gaussian noise confined to a square annulus of frequencies; :func:`noise_robustness` measures
  accuracy with such noise added, band by band, and :func:`calibrate_eps` picks the one noise level
  used for all models. ViTs are said to be robust to high-frequency noise, CNNs not.
* **Low-pass filtering** (Ghiasi et al. 2022): :func:`low_pass` removes every frequency above a
  cutoff and :func:`low_pass_sweep` measures accuracy against the cutoff.

Frequencies, radii and the square annuli follow the conventions of :mod:`lib.fourier`. Models are
evaluated with :func:`lib.metrics.evaluate` in eval mode; pixels are not clamped to [0, 1] after
adding noise or filtering (clamping would rectify the noise on Fashion-MNIST's black background
and move its energy to other frequencies). Random numbers come from CPU generators, so results do
not depend on the device.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm  # plain text bars: no widgets in stored notebooks or the offline book

from .fourier import CHUNK, TOL, check_positive_int, model_device, radius
from .metrics import evaluate_per_image

#: Centres of the noise bands of Park & Kim's Fig. 2b, in units of π.
BANDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Default low-pass cutoffs, in units of π (1.0 keeps every frequency).
CUTOFFS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# --------------------------------------------------------------------------------------------------
# Band-limited noise (Park & Kim Fig. 2b)
# --------------------------------------------------------------------------------------------------

def _check_unit_interval(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{what} must be a number in [0, 1] (units of π), got {value!r}")
    return float(value)


def _check_band(band_center: object, width: object) -> tuple[float, float]:
    center = _check_unit_interval(band_center, "band_center")
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


def _unit_rms_band(white: Tensor, mask: Tensor) -> Tensor:
    """White noise ``(N, C, H, W)`` filtered to ``mask`` and rescaled to RMS 1 per image (float64)."""
    out = []
    for chunk in white.split(CHUNK):
        filtered = torch.fft.ifft2(torch.fft.fft2(chunk.to(torch.float64)) * mask).real
        rms = filtered.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        out.append(filtered / rms)
    return torch.cat(out)


def _check_cpu_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (noise is drawn on the CPU so that it does "
                         f"not depend on the device), got one on {generator.device.type!r}")


def band_noise(shape: Sequence[int], band_center: float, width: float = 0.1, eps: float = 0.1,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None) -> Tensor:
    """Gaussian noise confined to a band of frequencies, at a fixed RMS per image.

    Draws white Gaussian noise of ``shape`` ``(N, C, H, W)`` (float32, on the CPU, from
    ``generator``, a CPU ``torch.Generator``; ``None``: the global generator), keeps only the FFT
    bins in :func:`band_mask` ``(H, W, band_center, width)`` (in float64), transforms back (the
    result is real) and rescales each image so that its root-mean-square over its ``C·H·W``
    values is exactly ``eps``: per-image L2 norm ``eps·sqrt(C·H·W)``. Returns ``dtype`` on
    ``device``.

    Why a fixed RMS: every band then carries the same noise energy, so accuracy differences
    between bands come from the frequencies alone. (Park & Kim filter sign noise of amplitude ε,
    whose energy in a band grows with the number of bins in it, i.e. with the frequency.)
    ``eps`` is in pixel units of images in [0, 1] (Fashion-MNIST's pixel standard deviation is
    about 0.35).

    :func:`noise_robustness` with seed ``s`` adds exactly
    ``band_noise(x.shape, b, width, eps, generator=torch.Generator().manual_seed(s))`` in band ``b``.

    Raises:
        ValueError: ``shape`` is not 4-D with positive sizes, bad band (see :func:`band_mask`),
            ``eps`` negative, or a generator that is not on the CPU.
    """
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape must be (N, C, H, W) with positive integer sizes, got {shape}")
    _check_eps(eps)
    _check_cpu_generator(generator)
    mask = band_mask(shape[2], shape[3], band_center, width)
    white = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (eps * _unit_rms_band(white, mask)).to(device=device, dtype=dtype)


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (noise RMS in pixel units), got {eps!r}")
    return float(eps)


def _check_xy(x: object, y: object) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(y, Tensor) or y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        raise ValueError(f"y must be a 1-D tensor of labels, one per image of x ({len(x)}), got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")


def _check_values(values: Iterable[float], what: str) -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a non-empty sequence of numbers in [0, 1] (units of π), "
                         f"got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"{what} must be a non-empty sequence of numbers in [0, 1] (units of π), got {values!r}")
    return arr


class _Evaluator:
    """Accuracy and NLL of a model on perturbed copies of ``(x, y)``, on one device.

    Moves the model to ``device`` (if given) on entry and back on exit; evaluation itself is
    :func:`lib.metrics.evaluate` (eval mode, the model's mode restored, bf16 autocast on CUDA).
    """

    def __init__(self, model: nn.Module, y: Tensor, batch_size: int, device: str | torch.device | None):
        check_positive_int(batch_size, "batch_size")
        self.model, self.y, self.batch_size = model, y, batch_size
        self.home = model_device(model)
        self.device = self.home if device is None else torch.device(device)
        self.moved = device is not None

    def __enter__(self) -> _Evaluator:
        if self.moved:
            self.model.to(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.moved:
            self.model.to(self.home)

    def __call__(self, x: Tensor) -> tuple[float, float, np.ndarray]:
        result = evaluate_per_image(self.model, x, self.y, batch_size=self.batch_size, device=self.device)
        return result["acc"], result["nll"], result["correct"]


def _noisy(x: Tensor, unit_noise: Tensor, eps: float) -> Tensor:
    """``x + eps·unit_noise``, the product taken in float64 and cast to ``x``'s dtype and device."""
    return x + (eps * unit_noise).to(device=x.device, dtype=x.dtype)


class _ChangeFromClean:
    """``drop``: accuracy change in points, ``acc − clean_acc`` (negative: the perturbation hurts).

    ``correct`` holds the outcome per image, ``(n_images, 1 + len(acc))``: 1.0 where the image is
    classified right, column 0 clean, then one column per perturbation. Two models evaluated on
    the same images (and noise seed) give a paired comparison image by image; the column means
    are ``clean_acc`` and ``acc`` divided by 100.
    """

    acc: np.ndarray
    clean_acc: float

    @property
    def drop(self) -> np.ndarray:
        """Accuracy change in points, ``acc − clean_acc`` (negative: the perturbation hurts)."""
        return self.acc - self.clean_acc


@dataclass(frozen=True, eq=False)
class NoiseRobustness(_ChangeFromClean):
    """Accuracy under band-limited noise, one entry per band (Park & Kim Fig. 2b).

    ``acc`` (%) and ``nll`` (mean cross-entropy) with noise of RMS ``eps`` in the band centred on
    ``bands[i]`` (units of π, ``width`` wide) added to every image; ``clean_acc`` and
    ``clean_nll`` without noise, on the same ``n_images`` images; ``seed`` seeded the noise.
    """

    bands: np.ndarray
    acc: np.ndarray
    nll: np.ndarray
    clean_acc: float
    clean_nll: float
    eps: float
    width: float
    seed: int
    n_images: int
    correct: np.ndarray


def _sweep(model: nn.Module, x: Tensor, y: Tensor, perturbed: list[Callable[[], Tensor]], batch_size: int,
           device: str | torch.device | None, progress: bool, desc: str) -> dict:
    """Clean accuracy and NLL of ``model`` on ``(x, y)``, then those of each perturbed version of
    ``x`` (made one at a time by the callables, so only one is in memory): the fields ``clean_acc``,
    ``clean_nll``, ``acc``, ``nll`` and ``correct`` (per image, clean first) of the results."""
    acc, nll, correct = [], [], []
    with _Evaluator(model, y, batch_size, device) as run:
        bar = tqdm(total=1 + len(perturbed), desc=desc, unit="eval", file=sys.stderr, disable=not progress)
        try:
            clean_acc, clean_nll, clean_correct = run(x)
            bar.update(1)
            for make in perturbed:
                a, n, c = run(make())
                acc.append(a)
                nll.append(n)
                correct.append(c)
                bar.update(1)
        finally:
            bar.close()
    return {"clean_acc": clean_acc, "clean_nll": clean_nll, "acc": np.array(acc), "nll": np.array(nll),
            "correct": np.column_stack([clean_correct, *correct])}


def noise_robustness(model: nn.Module, x: Tensor, y: Tensor, eps: float, bands: Iterable[float] = BANDS,
                     width: float = 0.1, batch_size: int = 256, seed: int = 0,
                     device: str | torch.device | None = None, progress: bool = True) -> NoiseRobustness:
    """Accuracy of ``model`` on ``(x, y)`` with band-limited noise added, band by band.

    One white-noise tensor the shape of ``x`` is drawn from ``torch.Generator().manual_seed(seed)``
    and filtered to each band in turn (see :func:`band_noise`, which gives the same noise), so
    every band and every model sees the same underlying random numbers: compare models with the
    same ``seed``, ``eps`` and images. Noisy images are not clamped to [0, 1]. The clean accuracy
    is measured the same way (with ``eps = 0`` every band reproduces it exactly).

    Args:
        eps: noise RMS per image, in pixel units (see :func:`calibrate_eps` for choosing it).
        bands: band centres in units of π (default :data:`BANDS`, 0.1 … 0.9).
        width: band width in units of π (Park & Kim: 0.1).
        batch_size: images per forward pass.
        seed: seeds the noise.
        device: where to evaluate (``None``: where the model is; otherwise it is moved there and back).
        progress: show a tqdm bar over the evaluations (on stderr).

    Raises:
        ValueError: bad shapes, ``eps``, bands, ``width`` or ``batch_size``.
    """
    _check_xy(x, y)
    eps = _check_eps(eps)
    centres = _check_values(bands, "bands")
    masks = [band_mask(x.shape[2], x.shape[3], float(b), width) for b in centres]
    white = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    perturbed = [lambda mask=mask: _noisy(x, _unit_rms_band(white, mask), eps) for mask in masks]
    evaluated = _sweep(model, x, y, perturbed, batch_size, device, progress, "band noise")
    return NoiseRobustness(bands=centres, **evaluated, eps=eps, width=float(width), seed=seed, n_images=len(y))


@dataclass(frozen=True, eq=False)
class Calibration:
    """The noise level chosen by :func:`calibrate_eps` and how it was found.

    ``eps`` is the chosen noise RMS; with it the reference model loses ``drop`` accuracy points
    (``drop >= target_drop``) in its worst band, ``band`` (units of π). ``clean_acc`` is its clean
    accuracy. ``history`` lists every ``(eps, worst drop)`` evaluated, in order.
    """

    eps: float
    drop: float
    band: float
    target_drop: float
    clean_acc: float
    history: list[tuple[float, float]]


def calibrate_eps(model: nn.Module, x: Tensor, y: Tensor, target_drop: float = 10.0,
                  bands: Iterable[float] = BANDS, width: float = 0.1, eps_max: float = 1.0, steps: int = 8,
                  batch_size: int = 256, seed: int = 0, device: str | torch.device | None = None,
                  progress: bool = True) -> Calibration:
    """One noise level for all models: the ε at which the worst band costs a reference model
    ``target_drop`` accuracy points.

    The rule: with the noise of :func:`noise_robustness` (same ``seed``, ``width``, images), the
    *worst-band drop* ``d(ε) = clean_acc − min_b acc_b(ε)`` is found by bisection on
    ``[0, eps_max]``: ``d(eps_max)`` must reach ``target_drop``; then ``steps`` times the bracket
    ``[lo, hi]`` is halved, keeping ``d(hi) >= target_drop > d(lo)`` (``d(0) = 0``). The result is
    the final ``hi``: an ε measured to cost at least the target, within ``eps_max / 2**steps`` of
    the crossing. Everything is deterministic: the noise is fixed by ``seed`` and only its scale
    changes, so ``d`` is a fixed function of ε (close to monotone; on a finite set of images not
    strictly, in which case the bisection still returns one crossing). Park & Kim leave ε
    unpublished; a worst band costing 10–15 points makes every band's drop readable.
    ``noise_robustness(model, x, y, result.eps, bands, width, seed=seed)`` reproduces ``drop``
    exactly.

    Costs ``(1 + steps) · len(bands) + 1`` evaluations of ``x``.

    Raises:
        ValueError: ``target_drop`` not in (0, 100], ``eps_max`` not positive, ``steps`` not a
            positive integer, or ``eps_max`` too small to reach the target.
    """
    _check_xy(x, y)
    if isinstance(target_drop, bool) or not isinstance(target_drop, (int, float)) or not 0 < target_drop <= 100:
        raise ValueError(f"target_drop must be in (0, 100] accuracy points, got {target_drop!r}")
    if isinstance(eps_max, bool) or not isinstance(eps_max, (int, float)) or not 0 < eps_max < math.inf:
        raise ValueError(f"eps_max must be a positive finite number, got {eps_max!r}")
    check_positive_int(steps, "steps")
    centres = _check_values(bands, "bands")
    masks = [band_mask(x.shape[2], x.shape[3], float(b), width) for b in centres]
    white = torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    unit = [_unit_rms_band(white, mask) for mask in masks]
    history: list[tuple[float, float]] = []
    with _Evaluator(model, y, batch_size, device) as run:
        bar = tqdm(total=2 + steps, desc="calibrate eps", unit="eps", file=sys.stderr, disable=not progress)
        try:
            clean_acc = run(x)[0]
            bar.update(1)

            def worst(eps: float) -> tuple[float, float]:
                drops = [clean_acc - run(_noisy(x, u, eps))[0] for u in unit]
                i = int(np.argmax(drops))
                history.append((eps, drops[i]))
                bar.update(1)
                return drops[i], float(centres[i])

            lo, hi = 0.0, float(eps_max)
            hi_drop, hi_band = worst(hi)
            if hi_drop < target_drop:
                raise ValueError(f"even eps_max={eps_max:g} costs the reference model only {hi_drop:.2f} points in "
                                 f"its worst band (target {target_drop:g}); raise eps_max or lower target_drop")
            for _ in range(steps):
                mid = (lo + hi) / 2
                d, b = worst(mid)
                if d >= target_drop:
                    hi, hi_drop, hi_band = mid, d, b
                else:
                    lo = mid
        finally:
            bar.close()
    return Calibration(eps=hi, drop=hi_drop, band=hi_band, target_drop=float(target_drop),
                       clean_acc=clean_acc, history=history)


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
    cutoff = _check_unit_interval(cutoff, "cutoff")
    if not isinstance(x, Tensor) or x.ndim < 2 or x.is_complex():
        raise ValueError(f"x must be a real tensor (..., H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    h, w = x.shape[-2:]
    keep = (radius(h, w) <= cutoff + TOL).to(x.device)
    spectrum = torch.fft.fft2(x.to(torch.float64)) * keep
    return torch.fft.ifft2(spectrum).real.to(x.dtype)


@dataclass(frozen=True, eq=False)
class LowPassSweep(_ChangeFromClean):
    """Accuracy (%) and NLL after :func:`low_pass` at each cutoff (units of π), and without it."""

    cutoffs: np.ndarray
    acc: np.ndarray
    nll: np.ndarray
    clean_acc: float
    clean_nll: float
    n_images: int
    correct: np.ndarray


def low_pass_sweep(model: nn.Module, x: Tensor, y: Tensor, cutoffs: Iterable[float] = CUTOFFS,
                   batch_size: int = 256, device: str | torch.device | None = None,
                   progress: bool = True) -> LowPassSweep:
    """Accuracy of ``model`` on low-pass filtered images, cutoff by cutoff (Ghiasi et al. 2022).

    Each cutoff filters every image with :func:`low_pass` (no clamping) and evaluates with
    :func:`lib.metrics.evaluate`; the clean images are evaluated too. Ghiasi et al. find that
    removing high frequencies hurts a ResNet much more than a ViT. ``device`` and ``progress`` as
    in :func:`noise_robustness`.

    Raises:
        ValueError: bad shapes, cutoffs outside [0, 1], or a bad ``batch_size``.
    """
    _check_xy(x, y)
    values = _check_values(cutoffs, "cutoffs")
    perturbed = [lambda c=c: low_pass(x, float(c)) for c in values]
    evaluated = _sweep(model, x, y, perturbed, batch_size, device, progress, "low-pass")
    return LowPassSweep(cutoffs=values, **evaluated, n_images=len(y))
