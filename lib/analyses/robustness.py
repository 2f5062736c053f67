"""A model's accuracy under frequency-domain perturbations of its input, and how to read it.

* **Robustness to band-limited noise** (Park & Kim 2022, Fig. 2b): :func:`noise_robustness`
  measures accuracy with the noise of :func:`lib.analyses.filters.band_noise` added, band by band
  and over several noise draws, and :func:`calibrate_eps` picks the one noise level used for all
  models. ViTs are said to be robust to high-frequency noise, CNNs not.
* **Low-pass filtering** (Ghiasi et al. 2022): :func:`low_pass_sweep` measures accuracy against
  the cutoff of :func:`lib.analyses.filters.low_pass`.
* **Common corruptions** (Park & Kim 2022, Sec. 4, on corrupted data): :func:`corruption_robustness`
  measures several models on the same images of :func:`lib.analyses.corruptions.corrupt`, every
  kind at every severity.
* **Reading the per-image outcomes** that both measurements keep (``correct``):
  :func:`per_image_change` (points, per image), :func:`loss_shares` and :func:`band_share` (a
  model's profile across bands, normalised by its own size (unit L1 norm), so that models of different
  overall robustness can be compared by *which* bands hurt them most) and
  :func:`relative_accuracy` / :func:`relative_loss` (accuracy as a share of the clean accuracy).
  Each is a plain function of the rows, so a bootstrap over images can resample them.

Models are evaluated with :func:`lib.core.metrics.evaluate` in eval mode. Random numbers come from
CPU generators, so results do not depend on the device.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..core.metrics import evaluate_per_image
from ..core.running import check_images, check_labels, check_positive_int, moved_to, progress_bar
from . import corruptions, filters
from .filters import check_eps, check_unit_interval
from .fourier import TOL

#: Default low-pass cutoffs, in units of π (1.0 keeps every frequency).
CUTOFFS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)



def _check_values(values: Iterable[float], what: str) -> np.ndarray:
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a non-empty sequence of numbers in [0, 1] (units of π), "
                         f"got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all((arr >= 0) & (arr <= 1)):
        raise ValueError(f"{what} must be a non-empty sequence of numbers in [0, 1] (units of π), got {values!r}")
    return arr


@contextmanager
def _evaluator(model: nn.Module, y: Tensor, batch_size: int, device: str | torch.device | None
               ) -> Iterator[Callable[[Tensor], tuple[float, float, np.ndarray]]]:
    """``run(x)``: accuracy, NLL and per-image correctness of ``model`` on perturbed images ``x``
    with the labels ``y``, by :func:`lib.core.metrics.evaluate_per_image` (eval mode, the model's
    mode restored), on ``device`` (the model moved there and back, :func:`lib.core.running.moved_to`)."""
    check_positive_int(batch_size, "batch_size")
    with moved_to(model, device) as target:
        def run(x: Tensor) -> tuple[float, float, np.ndarray]:
            result = evaluate_per_image(model, x, y, batch_size=batch_size, device=target)
            return result["acc"], result["nll"], result["correct"]
        yield run


def _noisy(x: Tensor, unit_noise: Tensor, eps: float) -> Tensor:
    """``x + eps·unit_noise``, the product taken in float64 and cast to ``x``'s dtype and device."""
    return x + (eps * unit_noise).to(device=x.device, dtype=x.dtype)


class _ChangeFromClean:
    """``drop``: accuracy change in points, ``acc − clean_acc`` (negative: the perturbation hurts).

    ``correct`` holds the outcome per image, ``(n_images, 1 + len(acc))``: 1.0 where the image is
    classified right (averaged over the noise draws where there are several), column 0 clean,
    then one column per perturbation. Two models evaluated on the same images (and noise seeds)
    give a paired comparison image by image; the column means are ``clean_acc`` and ``acc``
    divided by 100.
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

    ``acc`` (%) and ``nll`` (mean cross-entropy) with noise of amplitude ``eps`` and ``kind`` (see
    :func:`lib.analyses.filters.band_noise`) in the band centred on ``bands[i]`` (units of π, ``width`` wide) added to
    every image, averaged over ``draws`` noise draws seeded ``seed, seed + 1, …``;
    ``acc_per_draw`` ``(draws, len(bands))`` keeps each draw's accuracy. ``clean_acc`` and
    ``clean_nll`` without noise, on the same ``n_images`` images. ``correct[:, 1 + i]`` is, per
    image, the fraction of the draws that left it classified right in band ``i`` (0 or 1 with one
    draw); bootstrapping its rows resamples images with their draws.
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
    draws: int = 1
    kind: str = "sign"
    acc_per_draw: np.ndarray | None = None


def _sweep(model: nn.Module, x: Tensor, y: Tensor, perturbed: list[Callable[[], Tensor]], batch_size: int,
           device: str | torch.device | None, progress: bool, desc: str) -> dict:
    """Clean accuracy and NLL of ``model`` on ``(x, y)``, then those of each perturbed version of
    ``x`` (made one at a time by the callables, so only one is in memory): the fields ``clean_acc``,
    ``clean_nll``, ``acc``, ``nll`` and ``correct`` (per image, clean first) of the results."""
    acc, nll, correct = [], [], []
    with _evaluator(model, y, batch_size, device) as run:
        bar = progress_bar(total=1 + len(perturbed), desc=desc, unit="eval", progress=progress)
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


def _draw_whites(shape: tuple[int, ...], seed: int, draws: int) -> list[Tensor]:
    """One standard normal tensor per draw, seeded ``seed + d`` (CPU, float32)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    check_positive_int(draws, "draws")
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed + d), dtype=torch.float32)
            for d in range(draws)]


def noise_robustness(model: nn.Module, x: Tensor, y: Tensor, eps: float, bands: Iterable[float] = filters.BANDS,
                     width: float = 0.1, batch_size: int = 256, seed: int = 0,
                     device: str | torch.device | None = None, progress: bool = False, *, draws: int = 1,
                     kind: str = "sign") -> NoiseRobustness:
    """Accuracy of ``model`` on ``(x, y)`` with band-limited noise added, band by band.

    For each of ``draws`` draws ``d`` one standard normal tensor the shape of ``x`` is drawn from
    ``torch.Generator().manual_seed(seed + d)`` and turned into each band's noise in turn (see
    :func:`lib.analyses.filters.band_noise`, which gives the same noise), so every band and every model sees the same
    underlying random numbers: compare models with the same ``seed``, ``draws``, ``eps``, ``kind``
    and images, and the comparison is paired over images and draws. Noisy images are not clamped
    to [0, 1]. The clean accuracy is measured the same way (with ``eps = 0`` every band
    reproduces it exactly). Accuracies and per-image outcomes are averaged over the draws.

    Args:
        eps: noise amplitude in pixel units: the ±ε of the sign noise before filtering (default
            ``kind``), or the RMS per image for ``kind="gaussian_rms"``. See :func:`calibrate_eps`.
        bands: band centres in units of π (default :data:`lib.analyses.filters.BANDS`, 0.1 … 0.9).
        width: band width in units of π (Park & Kim: 0.1).
        batch_size: images per forward pass.
        seed: seeds the first noise draw; draw ``d`` uses ``seed + d``.
        device: where to evaluate (``None``: where the model is; otherwise it is moved there and back).
        progress: show a tqdm bar over the evaluations (on stderr).
        draws: independent noise draws (costs ``1 + draws · len(bands)`` evaluations of ``x``).
        kind: ``"sign"`` (Park & Kim) or ``"gaussian_rms"`` (see :func:`lib.analyses.filters.band_noise`).

    Raises:
        ValueError: bad shapes, ``eps``, bands, ``width``, ``batch_size``, ``draws`` or ``kind``.
    """
    check_images(x)
    check_labels(x, y)
    eps = check_eps(eps)
    kind = filters.check_noise_kind(kind)
    centres = _check_values(bands, "bands")
    masks = [filters.band_mask(x.shape[2], x.shape[3], float(b), width) for b in centres]
    whites = _draw_whites(tuple(x.shape), seed, draws)
    perturbed = [lambda mask=mask, white=white: _noisy(x, filters.unit_band_noise(white, mask, kind), eps)
                 for mask in masks for white in whites]  # band-major: band i, draw d at i * draws + d
    evaluated = _sweep(model, x, y, perturbed, batch_size, device, progress, "band noise")
    per_draw = evaluated["acc"].reshape(len(centres), draws)
    correct = evaluated["correct"]
    evaluated.update(acc=per_draw.mean(axis=1), nll=evaluated["nll"].reshape(len(centres), draws).mean(axis=1),
                     correct=np.column_stack([correct[:, 0],
                                              correct[:, 1:].reshape(len(y), len(centres), draws).mean(axis=2)]))
    return NoiseRobustness(bands=centres, **evaluated, eps=eps, width=float(width), seed=seed, n_images=len(y),
                           draws=draws, kind=kind, acc_per_draw=per_draw.T.copy())


@dataclass(frozen=True, eq=False)
class Calibration:
    """The noise level chosen by :func:`calibrate_eps` and how it was found.

    ``eps`` is the chosen noise amplitude; with it the reference model loses ``drop`` accuracy
    points (``drop >= target_drop``, averaged over the noise draws) in its worst band, ``band``
    (units of π). ``clean_acc`` is its clean accuracy. ``history`` lists every ``(eps, worst
    drop)`` evaluated, in order.
    """

    eps: float
    drop: float
    band: float
    target_drop: float
    clean_acc: float
    history: list[tuple[float, float]]


def calibrate_eps(model: nn.Module, x: Tensor, y: Tensor, target_drop: float = 10.0,
                  bands: Iterable[float] = filters.BANDS, width: float = 0.1, eps_max: float = 1.0, steps: int = 8,
                  batch_size: int = 256, seed: int = 0, device: str | torch.device | None = None,
                  progress: bool = False, *, draws: int = 1, kind: str = "sign") -> Calibration:
    """One noise level for all models: the ε at which the worst band costs a reference model
    ``target_drop`` accuracy points.

    The rule: with the noise of :func:`noise_robustness` (same ``seed``, ``draws``, ``kind``,
    ``width``, images), the *worst-band drop* ``d(ε) = clean_acc − min_b acc_b(ε)`` (``acc_b``
    averaged over the draws) is found by bisection on ``[0, eps_max]``: ``d(eps_max)`` must reach
    ``target_drop``; then ``steps`` times the bracket ``[lo, hi]`` is halved, keeping ``d(hi) >=
    target_drop > d(lo)`` (``d(0) = 0``). The result is the final ``hi``: an ε measured to cost at
    least the target, within ``eps_max / 2**steps`` of the crossing. Everything is deterministic:
    the noise is fixed by ``seed`` and only its scale changes, so ``d`` is a fixed function of ε
    (close to monotone; on a finite set of images not strictly, in which case the bisection still
    returns one crossing). Park & Kim leave ε unpublished; a worst band costing 10–15 points makes
    every band's drop readable. ``noise_robustness(model, x, y, result.eps, bands, width,
    seed=seed, draws=draws, kind=kind)`` reproduces ``drop`` exactly.

    Costs ``(1 + steps) · draws · len(bands) + 1`` evaluations of ``x``.

    Raises:
        ValueError: ``target_drop`` not in (0, 100], ``eps_max`` not positive, ``steps`` or
            ``draws`` not a positive integer, an unknown ``kind``, or ``eps_max`` too small to
            reach the target.
    """
    check_images(x)
    check_labels(x, y)
    if isinstance(target_drop, bool) or not isinstance(target_drop, (int, float)) or not 0 < target_drop <= 100:
        raise ValueError(f"target_drop must be in (0, 100] accuracy points, got {target_drop!r}")
    if isinstance(eps_max, bool) or not isinstance(eps_max, (int, float)) or not 0 < eps_max < math.inf:
        raise ValueError(f"eps_max must be a positive finite number, got {eps_max!r}")
    check_positive_int(steps, "steps")
    kind = filters.check_noise_kind(kind)
    centres = _check_values(bands, "bands")
    masks = [filters.band_mask(x.shape[2], x.shape[3], float(b), width) for b in centres]
    whites = _draw_whites(tuple(x.shape), seed, draws)
    unit = [[filters.unit_band_noise(white, mask, kind) for white in whites] for mask in masks]
    history: list[tuple[float, float]] = []
    with _evaluator(model, y, batch_size, device) as run:
        bar = progress_bar(total=2 + steps, desc="calibrate eps", unit="eps", progress=progress)
        try:
            clean_acc = run(x)[0]
            bar.update(1)

            def worst(eps: float) -> tuple[float, float]:
                accs = [float(np.mean([run(_noisy(x, u, eps))[0] for u in per_band])) for per_band in unit]
                drops = [clean_acc - a for a in accs]
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

@dataclass(frozen=True, eq=False)
class LowPassSweep(_ChangeFromClean):
    """Accuracy (%) and NLL after :func:`lib.analyses.filters.low_pass` at each cutoff (units of π), and without it."""

    cutoffs: np.ndarray
    acc: np.ndarray
    nll: np.ndarray
    clean_acc: float
    clean_nll: float
    n_images: int
    correct: np.ndarray


def low_pass_sweep(model: nn.Module, x: Tensor, y: Tensor, cutoffs: Iterable[float] = CUTOFFS,
                   batch_size: int = 256, device: str | torch.device | None = None,
                   progress: bool = False) -> LowPassSweep:
    """Accuracy of ``model`` on low-pass filtered images, cutoff by cutoff (Ghiasi et al. 2022).

    Each cutoff filters every image with :func:`lib.analyses.filters.low_pass` (no clamping) and evaluates with
    :func:`lib.core.metrics.evaluate`; the clean images are evaluated too. Ghiasi et al. find that
    removing high frequencies hurts a ResNet much more than a ViT. ``device`` and ``progress`` as
    in :func:`noise_robustness`.

    Raises:
        ValueError: bad shapes, cutoffs outside [0, 1], or a bad ``batch_size``.
    """
    check_images(x)
    check_labels(x, y)
    values = _check_values(cutoffs, "cutoffs")
    perturbed = [lambda c=c: filters.low_pass(x, float(c)) for c in values]
    evaluated = _sweep(model, x, y, perturbed, batch_size, device, progress, "low-pass")
    return LowPassSweep(cutoffs=values, **evaluated, n_images=len(y))


# --------------------------------------------------------------------------------------------------
# Reading the per-image outcomes (``correct`` of both measurements)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CorruptionRobustness:
    """Per-image correctness (1.0 right, 0.0 wrong) of several models on the same corrupted images.

    ``clean[name]`` is ``(n,)``; ``correct[name]`` is ``(kinds, severities, n)``, in the order of
    ``kinds`` and ``severities``.
    """

    kinds: tuple[str, ...]
    severities: tuple[int, ...]
    clean: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]

    def accuracy(self, name: str) -> np.ndarray:
        """Accuracy (%) of model ``name`` per kind and severity, ``(kinds, severities)``."""
        return 100.0 * self.correct[name].mean(axis=-1)

    def per_image(self, name: str) -> np.ndarray:
        """Per image, the accuracy (%) of model ``name`` over every corrupted version of it, ``(n,)``:
        the rows a paired comparison of two models over the same images takes."""
        return 100.0 * self.correct[name].mean(axis=(0, 1))


def corruption_robustness(models: dict[str, nn.Module], x: Tensor, y: Tensor, kinds: Iterable[str] | None = None,
                          severities: Iterable[int] = corruptions.SEVERITIES, seed: int = 0, batch_size: int = 256,
                          device: str | torch.device | None = None, progress: bool = False) -> CorruptionRobustness:
    """Every model of ``models`` on ``x`` clean and corrupted by every kind (default: all of
    :data:`lib.analyses.corruptions.CORRUPTIONS`) at every severity.

    Each corrupted set is built once (seeded) and shown to every model, so differences between the
    models are paired image by image. Models run on their own device unless ``device`` names one.
    """
    check_images(x)
    check_labels(x, y)
    check_positive_int(batch_size, "batch_size")
    if not models:
        raise ValueError("corruption_robustness() needs at least one model")
    kinds = tuple(corruptions.CORRUPTIONS if kinds is None else kinds)
    severities = tuple(severities)
    if not kinds or not severities:
        raise ValueError("corruption_robustness() needs at least one kind and one severity")
    for kind in kinds:
        for severity in severities:
            corruptions.check_corruption(kind, severity)
    x_cpu = x.cpu()
    clean = {name: evaluate_per_image(m, x, y, batch_size, device)["correct"] for name, m in models.items()}
    correct = {name: np.empty((len(kinds), len(severities), len(y))) for name in models}
    settings = [(k, s) for k in range(len(kinds)) for s in range(len(severities))]
    for k, s in progress_bar(settings, total=len(settings), desc="corruptions", progress=progress):
        corrupted = corruptions.corrupt(x_cpu, kinds[k], severities[s], seed)
        for name, m in models.items():
            correct[name][k, s] = evaluate_per_image(m, corrupted, y, batch_size, device)["correct"]
    return CorruptionRobustness(kinds, severities, clean, correct)


def _check_correct(correct: object) -> np.ndarray:
    """``correct`` as float64 ``(n_images, 1 + k)``: clean column first, values in [0, 1]."""
    try:
        arr = np.asarray(correct, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"correct must be an array (n_images, 1 + perturbations), got {type(correct).__name__}") \
            from None
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"correct must be (n_images, 1 + perturbations) with the clean column first and at least "
                         f"one image and one perturbation, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("correct must hold per-image outcomes in [0, 1] (1: classified right; a fraction "
                         "over noise draws), got values outside that range")
    return arr


def per_image_change(correct: np.ndarray) -> np.ndarray:
    """Accuracy change of every image under every perturbation, in points: ``100·(correct[:, 1:] −
    correct[:, :1])``, shape ``(n_images, k)``. Its column means are the ``drop`` of the result the
    rows came from; paired intervals over images start from here."""
    arr = _check_correct(correct)
    return 100.0 * (arr[:, 1:] - arr[:, :1])


def loss_shares(correct: np.ndarray) -> np.ndarray:
    """A model's profile across perturbations, normalised by its own size: which bands hurt *this*
    model most.

    With ``loss_b = mean(correct[:, 0]) − mean(correct[:, 1 + b])`` (accuracy lost in band ``b``),
    returns ``loss_b / Σ_b |loss_b|``, shape ``(k,)``: the profile scaled to unit L1 norm. Where
    every band costs accuracy this is each band's share of the model's total loss (the shares sum
    to 1); a band where the noise *helps* gets a negative share and the positive shares then sum
    to less than 1. A model that loses little overall and one that loses a lot get comparable
    profiles, so two models can be compared by the *shape* of their sensitivity rather than by how
    robust they are overall (which depends on their fit, their clean accuracy and the one ε).

    Why the absolute values: a robust model's summed loss can be close to 0 (small losses in some
    bands, small gains in others), and dividing by a sum that a bootstrap resample can push
    through 0 gives a ratio without bounds; ``Σ |loss_b|`` is 0 only when no band changes the
    accuracy at all. Examples: clean 0.8, bands 0.7, 0.5, 0.8 → losses 0.1, 0.3, 0 → 0.25, 0.75,
    0; clean 2/3, bands 0 and 1 → losses 2/3, −1/3 → 2/3, −1/3.

    Raises:
        ValueError: ``correct`` malformed, or no band changes the accuracy (no profile to normalise).
    """
    arr = _check_correct(correct)
    loss = arr[:, 0].mean() - arr[:, 1:].mean(axis=0)
    size = float(np.abs(loss).sum())
    if not size > 0:
        raise ValueError("no perturbation changes the accuracy, so the loss has no profile to normalise; "
                         "raise eps or use more images")
    return loss / size


def band_share(correct: np.ndarray, bands: Iterable[float], lo: float, hi: float) -> float:
    """The share of a model's normalised loss profile (:func:`loss_shares`) that falls in the bands
    ``lo … hi`` (units of π, edges inclusive): the sum of those bands' shares. ``bands`` are the centres of ``correct``'s perturbation columns.

    Raises:
        ValueError: ``bands`` not one per perturbation column, ``lo > hi``, or no band in the range.
    """
    shares = loss_shares(correct)
    centres = _check_values(bands, "bands")
    if len(centres) != len(shares):
        raise ValueError(f"bands must give one centre per perturbation column ({len(shares)}), got {len(centres)}")
    lo, hi = check_unit_interval(lo, "lo"), check_unit_interval(hi, "hi")
    keep = (centres >= lo - TOL) & (centres <= hi + TOL)
    if lo > hi or not keep.any():
        raise ValueError(f"no band lies in [{lo:g}, {hi:g}]; the bands are {centres.tolist()}")
    return float(shares[keep].sum())


def relative_accuracy(correct: np.ndarray) -> np.ndarray:
    """Accuracy under each perturbation as a percentage of the clean accuracy:
    ``100 · mean(correct[:, 1 + b]) / mean(correct[:, 0])``, shape ``(k,)``.

    Raises:
        ValueError: ``correct`` malformed or a clean accuracy of 0 (nothing to be a share of).
    """
    arr = _check_correct(correct)
    clean = arr[:, 0].mean()
    if not clean > 0:
        raise ValueError("the clean accuracy is 0, so accuracy relative to it is undefined")
    return 100.0 * arr[:, 1:].mean(axis=0) / clean


def relative_loss(correct: np.ndarray) -> float:
    """Accuracy lost, in % of the clean accuracy, averaged over the perturbation columns:
    ``100 − mean_b relative_accuracy(correct)_b``. Example: clean 0.8, columns 0.6 and 0.4 → 50."""
    return float(100.0 - relative_accuracy(correct).mean())
