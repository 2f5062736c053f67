"""Fourier views of a network's feature maps: which frequencies its units keep.

Park & Kim (2022) argue that multi-head self-attentions (MSAs) act as low-pass filters and
convolutions as high-pass filters, from two experiments. This module holds the first and the
frequency conventions both share; :mod:`lib.analyses.filters` and :mod:`lib.analyses.robustness`
hold the second (band-limited noise) and Ghiasi et al.'s low-pass filtering of the input.

* **Feature maps in the frequency domain** (their Figs. 2a and 8). :func:`relative_log_amplitude`
  takes a unit's output as spatial maps, computes the 2-D FFT of every map, averages the log
  amplitude over images and channels and reads it along the half-diagonal of the spectrum, from
  frequency 0 to the highest frequency, relative to frequency 0 (Δ log amplitude).
  :func:`unit_profiles` does this for every unit of a zoo model (see :func:`lib.core.residual.units`),
  and :func:`high_frequency_change` reduces a unit to one number: how much it raises (high-pass)
  or lowers (low-pass) the Δ log amplitude at the highest frequency.
  :func:`high_frequency_changes` gives that number per image and unit, so that two kinds of unit,
  or two models, can be compared image by image with an interval over images.

Conventions, stated once:

* **Frequencies** are in units of π radians per sample (per pixel of an image, per token of a
  token grid), per axis, as ``2 * torch.fft.fftfreq(n)``: 0 is the mean, 1 (= π) the Nyquist
  frequency, where neighbouring samples alternate in sign. An axis of even length ``n`` has the
  frequencies ``0, 2/n, ..., 1``; an odd one stops at ``(n - 1)/n`` (a 7×7 token grid:
  0, 2/7, 4/7, 6/7, and no π).
* **Radius** of a 2-D frequency ``(f_y, f_x)``: the Chebyshev (max-norm) radius
  ``max(|f_y|, |f_x|)``. Its level sets are squares centred on frequency 0, the "square annuli" of
  Park & Kim; a point ``(f, f)`` on the diagonal has radius ``f``.
* **Log amplitude**: ``log(|FFT2(map)| + 1e-6)`` per image and channel, then the *mean of the
  logs* over images and channels (Park & Kim's code does this; it is what :data:`FLOOR` is for).
  A mean of logs is the log of a geometric mean: a unit that multiplies frequency ``f`` by the
  same gain ``g(f)`` in every map shifts the curve by exactly ``log|g(f)|``, whatever the maps,
  which makes the curves of different units comparable.
* Models are evaluated in eval mode under ``torch.no_grad``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..core import residual
from ..core.residual import AboutUnit, UnitInfo, as_grid
from ..core.running import check_positive_int, eval_mode, moved_to, progress_bar
from .unit_effects import unit_roles

#: Added to every amplitude before the log (Park & Kim's value), so that a frequency absent from a
#: map gives a large negative but finite log amplitude.
FLOOR: float = 1e-6

CHUNK = 256  #: images per FFT call: bounds the complex128 temporaries
TOL = 1e-9  #: band and cutoff edges are inclusive up to this (frequencies are ratios like 2k/n)


# --------------------------------------------------------------------------------------------------
# Frequencies
# --------------------------------------------------------------------------------------------------

def frequencies(n: int, shifted: bool = True) -> Tensor:
    """The frequencies of an axis of length ``n``, in units of π (float64).

    ``2 * torch.fft.fftfreq(n)``, in ``torch.fft.fftshift`` order (frequency 0 at index ``n // 2``;
    negative frequencies first) when ``shifted``, else in ``torch.fft.fft`` order. Use it to label
    the axes of :func:`log_amplitude_spectrum`.
    """
    check_positive_int(n, "n")
    f = 2 * torch.fft.fftfreq(n, dtype=torch.float64)
    return torch.fft.fftshift(f) if shifted else f


def radius(h: int, w: int) -> Tensor:
    """Chebyshev radius ``max(|f_y|, |f_x|)`` (units of π) of every bin of an ``h × w`` FFT.

    In ``torch.fft.fft2`` order (not shifted), float64, shape ``(h, w)``.
    """
    fy = frequencies(h, shifted=False).abs()
    fx = frequencies(w, shifted=False).abs()
    return torch.maximum(fy[:, None], fx[None, :])


def _half_diagonal(n: int) -> Tensor:
    """FFT indices of the diagonal bins ``(-k, -k)``, ``k = 0 .. n // 2``, whose radius is ``2k/n``.

    In the shifted spectrum these run from the centre to the top-left corner, which for even ``n``
    is the Nyquist bin (the bottom-right corner of an even spectrum stops one bin short of π).
    For real maps ``|F(-k, -k)| = |F(k, k)|``, so either half-diagonal gives the same amplitudes.
    """
    return (-torch.arange(n // 2 + 1)) % n


# --------------------------------------------------------------------------------------------------
# Log amplitude of feature maps (Park & Kim Figs. 2a, 8)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class FrequencyProfile:
    """The mean log amplitude of a set of maps along the half-diagonal of their spectrum.

    ``freq[k] = 2k/n`` (units of π) for ``k = 0 .. n // 2``: the diagonal frequency ``(freq[k],
    freq[k])``, whose Chebyshev radius is ``freq[k]``. ``log_amplitude[k]`` is the mean over images
    and channels of ``log(|FFT2|[bin] + FLOOR)`` and ``delta[k] = log_amplitude[k] -
    log_amplitude[0]`` (Park & Kim's Δ log amplitude; 0 at frequency 0 by construction, negative
    where a frequency is weaker than the mean). ``n_maps`` is how many maps (images × channels)
    were averaged.
    """

    freq: np.ndarray
    log_amplitude: np.ndarray
    delta: np.ndarray
    n_maps: int

    @property
    def high(self) -> float:
        """Δ log amplitude at the highest frequency (``freq[-1]``: π for even sizes)."""
        return float(self.delta[-1])


def _token_grid(tokens: Tensor, what: str) -> Tensor:
    """A 3-D tensor read as tokens ``(B, N, D)`` and put on its grid by :func:`as_grid`.

    The rule (see :func:`relative_log_amplitude`): ``N`` must be a square number of patch tokens,
    or one more (a CLS token in front), and ``N != D``. Anything else is refused, because a 3-D
    tensor is just as likely one image ``(C, H, W)``, which the token reading would silently turn
    into a tiny grid of the wrong numbers.
    """
    b, n, d = tokens.shape
    if tokens.numel() == 0:
        return as_grid(tokens)  # the caller reports the empty tensor
    hint = ("for one image (C, H, W) pass x[None]; for tokens outside this rule pass (B, C, H, W) maps, "
            "e.g. from lib.core.residual.as_grid")
    if n == d:
        raise ValueError(f"{what} of shape {tuple(tokens.shape)} is ambiguous: a 3-D tensor is read as tokens "
                         f"(B, N, D), but N == D, which is how one square image (C, H, W) looks; {hint}")
    side = math.isqrt(n)
    if n - side * side > 1:
        raise ValueError(f"{what} of shape {tuple(tokens.shape)} is not a token sequence (B, N, D): N = {n} is "
                         f"neither a square number of patch tokens nor one more (a CLS token); {hint}")
    return as_grid(tokens)


def _as_maps(features: Tensor, what: str = "features") -> Tensor:
    """``features`` as ``(B, C, H, W)`` square maps; token sequences go through :func:`_token_grid`."""
    if not isinstance(features, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim == 3:
        features = _token_grid(features, what)
    if features.ndim != 4:
        raise ValueError(f"{what} must be maps (B, C, H, W) or tokens (B, N, D), got shape "
                         f"{tuple(features.shape)}; logits have no spatial extent")
    b, c, h, w = features.shape
    if h != w:
        raise ValueError(f"{what} must be square maps (the half-diagonal needs H == W), got {h}×{w}")
    if b * c * h == 0:
        raise ValueError(f"{what} is empty: shape {tuple(features.shape)}")
    if features.is_complex():
        raise ValueError(f"{what} must be real, got dtype {features.dtype}")
    return features


def _log_amplitude_sum(maps: Tensor) -> Tensor:
    """``Σ_{b,c} log(|FFT2(maps[b, c])| + FLOOR)`` over all maps, float64 ``(H, W)``, FFT order."""
    total = None
    for chunk in maps.detach().split(CHUNK):
        part = torch.log(torch.fft.fft2(chunk.to(torch.float64)).abs() + FLOOR).sum(dim=(0, 1))
        total = part if total is None else total + part
    return total


def _profile(mean_log: Tensor, n_maps: int) -> FrequencyProfile:
    """The half-diagonal profile of a mean log amplitude ``(n, n)`` in FFT order."""
    n = mean_log.shape[0]
    idx = _half_diagonal(n).to(mean_log.device)
    values = mean_log[idx, idx].cpu().numpy()
    freq = (2.0 * np.arange(n // 2 + 1)) / n
    return FrequencyProfile(freq=freq, log_amplitude=values, delta=values - values[0], n_maps=n_maps)


def relative_log_amplitude(features: Tensor) -> FrequencyProfile:
    """Δ log amplitude of feature maps along the half-diagonal (Park & Kim Figs. 2a, 8).

    ``features`` are maps ``(B, C, H, W)`` with ``H == W`` (a CNN unit's output, or a transformer
    unit's output after :func:`lib.core.residual.as_grid`; token sequences ``(B, N, D)`` are passed
    through ``as_grid`` here, which drops the CLS token).

    A 3-D tensor is always read as tokens ``(B, N, D)``, never as one image ``(C, H, W)``, and
    is accepted only if ``N`` is a square number of patch tokens (``N = s²``, an ``s × s`` grid)
    or one more (``N = 1 + s²``, a CLS token in front, as every zoo transformer unit outputs),
    and ``N != D``. A square image ``(C, H, H)`` has ``N == D`` and is refused, as is any shape
    whose ``N`` leaves more than one prefix token (``(1, 28, 30)``: 28 = 5² + 3): pass
    ``x[None]`` for one image, or your own ``(B, C, H, W)`` maps for other token layouts.

    For every image and channel the 2-D FFT is taken in float64, its amplitude floored and
    logged, ``log(|F| + FLOOR)``; the logs are averaged over images and channels (mean of logs,
    as in Park & Kim's code) and read on the diagonal from frequency ``(0, 0)`` to the highest
    frequency: ``H // 2 + 1`` points at ``f = 2k/H`` (units of π), i.e. 0 … π for even ``H``
    (15 points on 28×28 maps) and 0 … (H − 1)/H·π for odd ``H`` (4 points on a 7×7 token grid:
    0, 2/7, 4/7, 6/7 π).

    Park & Kim's code reads the diagonal from the centre of the shifted spectrum towards the
    bottom-right corner, which on even sizes stops at ``(H/2 − 1)·2π/H`` and misses π; reading
    towards the top-left corner (the bins ``(-k, -k)``) reaches π, and gives the same values
    elsewhere because real maps have ``|F(-k, -k)| = |F(k, k)|``.

    Returns a :class:`FrequencyProfile` (``delta[0] == 0`` by construction).

    Raises:
        ValueError: not maps or tokens, a 3-D tensor outside the token rule above (one image
            ``(C, H, W)`` included), non-square maps, an empty or complex tensor.
    """
    maps = _as_maps(features)
    n_maps = maps.shape[0] * maps.shape[1]
    return _profile(_log_amplitude_sum(maps) / n_maps, n_maps)


def log_amplitude_spectrum(features: Tensor, relative: bool = False) -> Tensor:
    """The full 2-D mean log amplitude of feature maps, frequency 0 in the centre (for heat maps).

    The same quantity as :func:`relative_log_amplitude` (mean over images and channels of
    ``log(|FFT2| + FLOOR)``) on every frequency, ``torch.fft.fftshift``-ed: frequency ``(0, 0)`` at
    index ``(H // 2, W // 2)``, axes labelled by :func:`frequencies` ``(H)`` (rows) and ``(W)``
    (columns). With ``relative=True`` the value at frequency 0 is subtracted (Δ log amplitude).
    Returns a float64 CPU tensor ``(H, W)``; non-square maps are fine here. A 3-D tensor must be
    tokens ``(B, N, D)`` by the rule of :func:`relative_log_amplitude` (one image ``(C, H, W)`` is
    refused with a ``ValueError``: pass ``x[None]``).
    """
    if not isinstance(features, Tensor):
        raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}")
    maps = _token_grid(features, "features") if features.ndim == 3 else features
    if maps.ndim != 4 or maps.numel() == 0:
        raise ValueError(f"features must be non-empty maps (B, C, H, W) or tokens (B, N, D), got shape "
                         f"{tuple(features.shape)}")
    mean_log = (_log_amplitude_sum(maps) / (maps.shape[0] * maps.shape[1])).cpu()
    if relative:
        mean_log = mean_log - mean_log[0, 0]
    return torch.fft.fftshift(mean_log)


def high_frequency_change(before: Tensor | FrequencyProfile, after: Tensor | FrequencyProfile) -> float:
    """How a unit changes the Δ log amplitude at the highest frequency: ``after.high - before.high``.

    ``before`` is the unit's input and ``after`` its output, each as feature maps or tokens (see
    :func:`relative_log_amplitude`) or as an already computed :class:`FrequencyProfile`. Negative:
    the unit weakens high frequencies relative to frequency 0 (it acts as a low-pass filter);
    positive: it strengthens them (high-pass). Each side is read at its own highest frequency, so
    for a unit that changes the resolution this compares the top of two different grids.
    """
    def high(value: Tensor | FrequencyProfile, what: str) -> float:
        if isinstance(value, FrequencyProfile):
            return value.high
        return relative_log_amplitude(_as_maps(value, what)).high

    return high(after, "after") - high(before, "before")


@dataclass(frozen=True, eq=False)
class UnitProfile(AboutUnit):
    """The Fourier picture of one unit's output (one entry of :func:`unit_profiles`).

    ``info`` identifies the unit (``name``, ``kind``, ``stage``, ``index``, ``depth`` read through);
    ``profile`` is the :class:`FrequencyProfile` of its output; ``spectrum`` the full fftshifted
    mean log amplitude ``(H, W)`` of its output (see :func:`log_amplitude_spectrum`); ``change``
    is :func:`high_frequency_change` from the unit's input (the previous unit's output; the input
    images for the first unit) to its output.
    """

    info: UnitInfo
    profile: FrequencyProfile
    spectrum: np.ndarray
    change: float

    @property
    def high(self) -> float:
        """Δ log amplitude of the output at its highest frequency (what Park & Kim's Fig. 8 plots)."""
        return self.profile.high

    @property
    def size(self) -> int:
        """Side of the unit's output grid: pixels of a CNN map, tokens of a transformer's grid.

        Two units are compared at matched resolution when their sizes agree (a 7×7 token grid and a
        7×7 map of a CNN's last stage have the same frequencies 0, 2/7, 4/7 and 6/7 π).
        """
        return int(self.spectrum.shape[-1])


@contextmanager
def _spatial_units_on(model: nn.Module, x: Tensor, batch_size: int, device: str | torch.device | None
                      ) -> Iterator[tuple[list, torch.device]]:
    """The model's non-head units and the device to run on, with the model in eval mode there.

    Checks ``x`` and ``batch_size`` first; on exit the model's train/eval mode is restored and, if
    it was moved to ``device``, it goes back where its parameters were.
    """
    units = [u for u in residual.units(model) if u.kind != "head"]
    _as_maps(x, "x")
    check_positive_int(batch_size, "batch_size")
    with moved_to(model, device) as target, eval_mode(model):
        yield units, target


def unit_profiles(model: nn.Module, x: Tensor, batch_size: int = 128, device: str | torch.device | None = None,
                  progress: bool = False) -> list[UnitProfile]:
    """Δ log amplitude profile of every unit of a zoo model, for Park & Kim's Figs. 2a and 8.

    Runs ``x`` (images in [0, 1], ``(N, C, H, W)``) through :func:`lib.core.residual.units` in chunks of
    ``batch_size`` and accumulates, for each unit's output as spatial maps (:func:`as_grid`: the
    CLS token is dropped), the sum of ``log(|FFT2| + FLOOR)`` over images and channels; dividing
    by the count at the end gives exactly the mean of :func:`relative_log_amplitude` over all of
    ``x``, without keeping any unit's output. The head (logits, no spatial extent) is skipped.
    The first unit's ``change`` is measured from the input images themselves, so it includes the
    model's input normalisation.

    The model runs in eval mode under ``torch.no_grad`` on ``device`` (``None``: where its
    parameters are; otherwise it is moved there and back), in float32; its train/eval mode is
    restored. Returns one :class:`UnitProfile` per non-head unit, in order.

    Raises:
        TypeError: ``model`` is not a zoo model (see :func:`lib.core.residual.units`).
        ValueError: ``x`` is not a non-empty batch of square images, or a bad ``batch_size``.
    """
    with _spatial_units_on(model, x, batch_size, device) as (units, target), torch.no_grad():
        sums: list[Tensor | None] = [None] * (len(units) + 1)  # [input, unit 0, unit 1, ...]
        counts = [0] * (len(units) + 1)
        for xb in progress_bar(x.split(batch_size), desc="unit spectra", unit="batch", progress=progress):
            h = xb.to(target)
            for i in range(len(units) + 1):
                if i:  # accumulate as we go: no unit's output is kept longer than needed
                    h = units[i - 1](h)
                maps = _as_maps(h, f"the output of {units[i - 1].name!r}" if i else "x")
                s = _log_amplitude_sum(maps)
                sums[i] = s if sums[i] is None else sums[i] + s
                counts[i] += maps.shape[0] * maps.shape[1]
    means = [(s / n).cpu() for s, n in zip(sums, counts)]
    profiles = [_profile(m, n) for m, n in zip(means, counts)]
    return [UnitProfile(info=u.info, profile=profiles[i + 1],
                        spectrum=torch.fft.fftshift(means[i + 1]).numpy(),
                        change=profiles[i + 1].high - profiles[i].high)
            for i, u in enumerate(units)]


def _high_per_image(maps: Tensor) -> Tensor:
    """Δ log amplitude at the highest diagonal frequency of each image's maps ``(B, C, n, n)``.

    Per image: the mean over channels of ``log(|FFT2| + FLOOR)`` at the bin ``(-n//2, -n//2)``
    minus the same mean at frequency ``(0, 0)``: :func:`relative_log_amplitude` ``(maps[i:i+1]).high``
    for every ``i`` at once. Returns float64 ``(B,)`` on the CPU.
    """
    n = maps.shape[-1]
    top = (-(n // 2)) % n
    out = []
    for chunk in maps.detach().split(CHUNK):
        spectrum = torch.fft.fft2(chunk.to(torch.float64))
        logs = torch.log(torch.stack([spectrum[..., 0, 0], spectrum[..., top, top]], dim=-1).abs() + FLOOR)
        mean = logs.mean(dim=1)  # over channels: (B, 2)
        out.append((mean[:, 1] - mean[:, 0]).cpu())
    return torch.cat(out)


def high_frequency_changes(model: nn.Module, x: Tensor, batch_size: int = 128,
                           device: str | torch.device | None = None,
                           progress: bool = False) -> tuple[list[UnitInfo], np.ndarray]:
    """Every unit's high-frequency change, image by image: ``(units, changes[n_images, n_units])``.

    ``changes[i, j]`` is :func:`high_frequency_change` from unit ``j``'s input to its output,
    computed on image ``i`` alone (channels averaged, as :func:`relative_log_amplitude` does for
    one image): the change of Δ log amplitude at the highest frequency. Because the profile is a
    mean of logs, the mean of column ``j`` over the images is exactly the ``change`` of
    :func:`unit_profiles` on the same images. Keeping the images apart is what an interval needs:
    the same images go through every unit and every model, so contrasts such as "MSA units minus
    convolutional units at the same resolution" are paired over images (bootstrap the rows).

    ``units`` are the :class:`lib.core.residual.UnitInfo` of the non-head units, in order (the head's
    logits have no spatial extent); unit 0's input is ``x`` itself, so its change includes the
    model's input normalisation. The model runs as in :func:`unit_profiles` (eval mode, no
    gradients, float32, chunks of ``batch_size``, moved to ``device`` and back; its mode restored).
    Returns float64 ``changes``.

    Raises:
        TypeError: ``model`` is not a zoo model (see :func:`lib.core.residual.units`).
        ValueError: ``x`` is not a non-empty batch of square images, or a bad ``batch_size``.
    """
    with _spatial_units_on(model, x, batch_size, device) as (units, target), torch.no_grad():
        rows = []
        for xb in progress_bar(x.split(batch_size), desc="high-frequency changes", unit="batch",
                               progress=progress):
            h = xb.to(target)
            highs = [_high_per_image(_as_maps(h, "x"))]
            for u in units:
                h = u(h)
                highs.append(_high_per_image(_as_maps(h, f"the output of {u.name!r}")))
            rows.append(torch.diff(torch.stack(highs, dim=1), dim=1))
    return [u.info for u in units], torch.cat(rows).numpy()


@dataclass(frozen=True)
class UnitGroups:
    """The units of a model after its embedding, by role and grid, for per-kind tables.

    ``roles[i]`` is unit ``i``'s kind, or ``"subsampling"`` where it starts a stage
    (:func:`lib.analyses.unit_effects.unit_roles`); ``grids[i]`` the grid it works on, ``"7×7"``, or
    ``"14→7"`` where its output is smaller than its input. Index 0, the embedding, belongs to no group
    (its change includes the input normalisation).
    """

    roles: list[str]
    grids: list[str]

    def keys(self) -> list[tuple[str, str]]:
        """Every ``(role, grid)`` pair that has units, in the order the model first reaches it."""
        return list(dict.fromkeys(zip(self.roles[1:], self.grids[1:])))

    def columns(self, role: str, grid: str | None = None) -> list[int]:
        """The indices of the units of ``role`` (on ``grid``, or on any grid when None), in order."""
        return [i for i in range(1, len(self.roles)) if self.roles[i] == role and grid in (None, self.grids[i])]


def unit_groups(profiles: Sequence[UnitProfile], input_size: int) -> UnitGroups:
    """:class:`UnitGroups` of the units behind ``profiles`` (:func:`unit_profiles`), whose first unit
    reads images of ``input_size`` pixels a side."""
    sizes = [input_size] + [p.size for p in profiles]
    grids = [f"{out}×{out}" if into == out else f"{into}→{out}" for into, out in zip(sizes, sizes[1:])]
    return UnitGroups(unit_roles(profiles), grids)
