"""What each residual unit does to its stream: unit outputs, feature-map variance, the lesion study
and skip-connection ratios, on the residual units of :mod:`lib.core.residual`.

Park & Kim (2022) walk a model unit by unit: Fig. 6 measures how much each unit's output varies
over space (MSAs reduce the variance, convolutions and MLPs increase it), Fig. 7 removes one
residual unit at a time and measures the drop in accuracy (the drop repeats with every stage: a
multi-stage model behaves like a series of small models).

The raw variance grows with the scale of the residual stream, so beside it this module measures a
scale-free version (:func:`relative_variance`: the spatial variance of a map as a share of its mean
square) and the mean square itself. The lesion study keeps every test image's outcome, clean and
lesioned, so that the chapters can compare lesions with paired intervals over images.

**Skip connections** (Raghu et al. 2021, :func:`skip_ratios`): for a residual unit ``z + f(z)``,
the ratio ``‖z‖ / ‖f(z)‖`` per token (or per feature-map position), the CLS token apart from the
spatial ones: how much of the unit's output is just its input passed on, where a lesion asks what
is lost without ``f``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..core import data, residual
from ..core.metrics import per_image_outcomes
from ..core.residual import UnitInfo
from ..core.running import analysis_device, check_positive_int, progress_bar, runs_in_eval_mode


def unit_roles(units: list) -> list[str]:
    """What each unit does, for per-kind tables: its ``kind``, or ``"subsampling"`` where it starts
    a new stage (its input and output differ in resolution, so its change is not the kind's).

    ``units`` are :class:`lib.core.residual.UnitInfo` or anything else with ``kind`` and ``stage`` (e.g.
    :class:`lib.analyses.fourier.UnitProfile`); the first unit keeps its kind.
    """
    return [u.kind if i == 0 or u.stage == units[i - 1].stage else "subsampling" for i, u in enumerate(units)]


@torch.no_grad()
@runs_in_eval_mode
def unit_outputs(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None
                 ) -> list[tuple[UnitInfo, torch.Tensor]]:
    """Every spatial unit's output on ``x`` as a map ``(B, C, H, W)`` on the CPU.

    Token outputs are reshaped to their grid with the CLS token dropped (:func:`residual.as_grid`);
    the head, whose output has no spatial extent, is left out. The model runs in eval mode.
    """
    device = analysis_device(model, device)
    units = residual.units(model)
    _, outs = residual.run_units(units, x.to(device), keep=True)
    return [(unit.info, residual.as_grid(out).float().cpu())
            for unit, out in zip(units, outs) if unit.kind != "head"]


def _check_maps(maps: torch.Tensor) -> None:
    if maps.ndim != 4:
        raise ValueError(f"expected maps of shape (B, C, H, W), got {tuple(maps.shape)}")
    if maps.shape[2] * maps.shape[3] < 2:
        raise ValueError(f"spatial variance needs at least 2 positions, got a {maps.shape[2]}x{maps.shape[3]} map")


def feature_map_variance(maps: torch.Tensor) -> float:
    """Park & Kim's feature-map variance of a batch of maps ``(B, C, H, W)``.

    The unbiased variance over the H·W spatial positions of each (image, channel) map, averaged over
    images and channels. A spatially constant map has variance 0; maps with a single position
    (1×1) are rejected, since their spatial variance is undefined.
    """
    _check_maps(maps)
    return maps.double().flatten(2).var(dim=2, unbiased=True).mean().item()


def relative_variance_per_map(maps: torch.Tensor) -> torch.Tensor:
    """The scale-free spatial variance of each (image, channel) map of ``maps`` ``(B, C, H, W)``.

    ``var / mean_square`` over the H·W positions, with the population variance (divided by H·W),
    which equals ``1 - mean² / mean_square``: the share of the map's energy that varies over space.
    It lies in [0, 1] (0 for a constant map, 1 for a map of mean 0) and does not change when the
    map is multiplied by any non-zero number, so a growing residual stream cannot move it. A map
    that is 0 everywhere has no energy and no variation; it counts as 0. Returns ``(B, C)`` float64.
    """
    _check_maps(maps)
    flat = maps.double().flatten(2)
    var = flat.var(dim=2, unbiased=False)
    mean_square = flat.square().mean(dim=2)
    return torch.where(mean_square > 0, var / mean_square.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.zeros_like(var)).clamp(0.0, 1.0)


def relative_variance(maps: torch.Tensor) -> float:
    """:func:`relative_variance_per_map` averaged over images and channels, as Park & Kim average
    their raw variance (:func:`feature_map_variance`)."""
    return relative_variance_per_map(maps).mean().item()


def mean_square(maps: torch.Tensor) -> float:
    """The energy of a batch of maps ``(B, C, H, W)``: the mean of ``z²`` over images, channels and
    positions. Its growth from unit to unit is the part of the raw variance's growth that
    :func:`relative_variance` leaves out."""
    if maps.ndim != 4:
        raise ValueError(f"expected maps of shape (B, C, H, W), got {tuple(maps.shape)}")
    return maps.double().square().mean().item()


def log10_change(values: np.ndarray) -> np.ndarray:
    """Change of ``log10(values)`` from each entry to the next (one fewer than ``values``).

    A unit's change is measured from its input, the previous unit's output, to its own output.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need a 1-D profile of at least 2 values, got shape {values.shape}")
    if np.any(values <= 0):
        raise ValueError(f"log10 changes need positive values, got {values[values <= 0][:5].tolist()}")
    return np.diff(np.log10(values))


@dataclass(frozen=True)
class VarianceProfile:
    """Feature-map statistics of every spatial unit, in order (``units[i]`` describes entry ``i``).

    ``variance`` is Park & Kim's raw spatial variance (:func:`feature_map_variance`), ``relative``
    the scale-free share of it (:func:`relative_variance`) and ``mean_square`` the maps' energy
    (:func:`mean_square`). The last two are ``None`` in a profile built by hand without them.
    """

    units: list[UnitInfo]
    variance: np.ndarray
    relative: np.ndarray | None = None
    mean_square: np.ndarray | None = None

    @property
    def change(self) -> np.ndarray:
        """Change of log10 raw variance from each unit's input to its output (for ``units[1:]``)."""
        return log10_change(self.variance)

    @property
    def relative_change(self) -> np.ndarray:
        """Change of log10 scale-free variance from each unit's input to its output (``units[1:]``)."""
        if self.relative is None:
            raise ValueError("this profile holds no relative variance; build it with variance_profile")
        return log10_change(self.relative)

    @property
    def mean_square_change(self) -> np.ndarray:
        """Change of log10 mean square (energy) from each unit's input to its output (``units[1:]``)."""
        if self.mean_square is None:
            raise ValueError("this profile holds no mean square; build it with variance_profile")
        return log10_change(self.mean_square)


def variance_profile(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                     batch_size: int = 64) -> VarianceProfile:
    """Raw and scale-free feature-map variance, and mean square, of each unit output over ``x``
    (Park & Kim Fig. 6).

    Computed batch by batch and averaged with weights by batch size, so the result equals the
    statistics on all of ``x`` at once while memory stays that of one batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    totals: np.ndarray | None = None
    infos: list[UnitInfo] = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        outs = unit_outputs(model, xb, device)
        infos = [info for info, _ in outs]
        values = np.array([[feature_map_variance(m), relative_variance(m), mean_square(m)]
                           for _, m in outs]) * len(xb)
        totals = values if totals is None else totals + values
    if totals is None:
        raise ValueError("x holds no images")
    totals = totals / len(x)
    return VarianceProfile(units=infos, variance=totals[:, 0], relative=totals[:, 1], mean_square=totals[:, 2])


@dataclass(frozen=True)
class Lesion:
    """Test accuracy with each residual unit removed (replaced by its skip connection), in total and
    image by image.

    ``accuracy[i]`` and ``drop[i]`` (baseline − lesioned, in points) belong to ``units[i]``; units
    that cannot be removed (the embedding, subsampling units, the head) have NaN. Per image ``n``:
    ``clean_correct[n]`` is 1.0 if the intact model is right, ``correct[i, n]`` the same with unit
    ``i`` removed (NaN rows for units that cannot be removed), and ``clean_loss``, ``loss`` the
    cross-entropy of the true class. ``drop[i] == 100 * mean(clean_correct - correct[i])``, so the
    paired difference of the two per-image arrays is the drop image by image.
    """

    units: list[UnitInfo]
    baseline: float
    accuracy: np.ndarray
    drop: np.ndarray
    clean_correct: np.ndarray
    correct: np.ndarray
    clean_loss: np.ndarray
    loss: np.ndarray

    @property
    def removable(self) -> list[int]:
        """Indices of the units that can be removed (those with an identity shortcut)."""
        return [i for i, u in enumerate(self.units) if u.residual]


@torch.no_grad()
@runs_in_eval_mode
def lesion_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                 device: str | torch.device | None = None, progress: bool = False) -> Lesion:
    """Remove one residual unit at a time and measure the test accuracy (Park & Kim Fig. 7).

    A lesioned unit passes its input through unchanged (``x + branch(x)`` becomes ``x``). For each
    batch the clean run is done once and every lesion restarts from the cached input of its unit,
    which halves the work of running all lesions from scratch. Every image's correctness and loss
    are kept, clean and lesioned, for paired comparisons over the same images.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(y) == 0:
        raise ValueError("x holds no images")
    device = analysis_device(model, device)
    units = residual.units(model)
    infos = [u.info for u in units]
    lesionable = [i for i, u in enumerate(units) if u.residual]
    n = len(y)
    correct = np.full((len(units), n), np.nan)
    loss = np.full((len(units), n), np.nan)
    clean_correct, clean_loss = np.empty(n), np.empty(n)

    batches = list(data.iterate_batches(x, y, batch_size))
    start = 0
    for xb, yb in progress_bar(batches, desc="lesions", progress=progress):
        xb, yb = xb.to(device), yb.to(device)
        sl = slice(start, start + len(yb))
        _, outs = residual.run_units(units, xb, keep=True)
        clean_loss[sl], clean_correct[sl] = per_image_outcomes(outs[-1], yb)
        for i in lesionable:
            h = xb if i == 0 else outs[i - 1]  # the unit's input, passed through unchanged
            loss[i, sl], correct[i, sl] = per_image_outcomes(residual.run_units(units[i + 1:], h), yb)
        start += len(yb)
    baseline = 100.0 * clean_correct.mean()
    accuracy = np.full(len(units), np.nan)
    accuracy[lesionable] = 100.0 * correct[lesionable].mean(axis=1)
    return Lesion(units=infos, baseline=baseline, accuracy=accuracy, drop=baseline - accuracy,
                  clean_correct=clean_correct, correct=correct, clean_loss=clean_loss, loss=loss)


@torch.no_grad()
@runs_in_eval_mode
def logits_without(model: nn.Module, x: torch.Tensor, removed: Iterable[str], batch_size: int = 500,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """The logits of ``model`` on ``x`` with the residual units named in ``removed`` skipped at
    once (each replaced by its identity shortcut, as a lesion replaces one), float32 on the CPU:
    what a model loses without several units together, e.g. the blocks AlterNet replaces."""
    units = residual.units(model)
    removable = [u.name for u in units if u.residual]
    removed = set(removed)
    unknown = sorted(removed - set(removable))
    if unknown:
        raise ValueError(f"no removable residual unit named {', '.join(map(repr, unknown))}; "
                         f"choose among {', '.join(removable)}")
    check_positive_int(batch_size, "batch_size")
    device = analysis_device(model, device)
    kept = [u for u in units if u.name not in removed]
    return torch.cat([residual.run_units(kept, xb.to(device)).float().cpu() for xb in x.split(batch_size)])


def block_name(unit: UnitInfo | str) -> str:
    """The block a unit (or a unit's name) belongs to: its name up to the last dot
    (``"stage2.1.msa"`` → ``"stage2.1"``).

    :mod:`lib.core.residual` names the MSA and MLP units of one transformer block ``<block>.msa`` and
    ``<block>.mlp``, and a ResNet's basic block ``<block>.conv``, so a block is one unit of a CNN
    and one MSA-MLP pair of a transformer.
    """
    name = unit if isinstance(unit, str) else unit.name
    return name.rsplit(".", 1)[0]


def stage_blocks(units: list[UnitInfo]) -> list[list[list[int]]]:
    """The removable units (``residual``), grouped by block (:func:`block_name`) within each stage.

    ``result[s][b]`` lists the unit indices of the ``b``-th removable block of the ``s``-th stage
    that has any; stages and blocks keep the model's order.
    """
    stages: dict[int, dict[str, list[int]]] = {}
    for i, u in enumerate(units):
        if u.residual:
            stages.setdefault(u.stage, {}).setdefault(block_name(u), []).append(i)
    return [list(blocks_.values()) for _, blocks_ in sorted(stages.items())]


@dataclass(frozen=True)
class StageContrast:
    """Lesion damage at the start against the end of each stage, image by image (Park & Kim Fig. 7).

    For each stage with at least two removable blocks (``stages``, 0-based), ``first[:, k]`` is the
    drop per image (points: 100 × (clean − lesioned correctness)) of removing a unit of the stage's
    first block, ``last[:, k]`` the same for its last block; with ``kind=None`` a block's drop is
    the mean over its units. ``blocks_per_stage`` counts every stage's removable blocks. A pattern
    within a stage can repeat only where at least two stages have one, else ``testable`` is False
    and ``reason`` says why.
    """

    stages: list[int]
    first_block: list[str]
    last_block: list[str]
    first: np.ndarray
    last: np.ndarray
    blocks_per_stage: list[int]
    kind: str | None = None

    @property
    def per_image(self) -> np.ndarray:
        """``first - last``: per image and stage, how much more the stage's start costs than its end."""
        return self.first - self.last

    @property
    def testable(self) -> bool:
        """Whether a within-stage pattern exists in at least two stages, so that it can repeat."""
        return len(self.stages) >= 2

    @property
    def reason(self) -> str:
        """Why the repetition cannot be tested ("" when it can)."""
        if self.testable:
            return ""
        what = f"{self.kind} units" if self.kind else "blocks"
        counts = ", ".join(str(c) for c in self.blocks_per_stage)
        return (f"removable {what} per stage: {counts}; a damage profile within a stage needs two "
                f"removable {what} in the stage, and a repetition needs such a profile in two stages")


def stage_contrast(lesion: Lesion, kind: str | None = None) -> StageContrast:
    """First against last removable block of every stage, from the per-image lesion outcomes.

    ``kind`` (e.g. ``"mlp"``) restricts each block to its units of that kind, so that "an MLP
    matters more at the start of a stage" compares the MLP of the first block with that of the last;
    blocks without such a unit are left out. ``None`` uses every unit of a block (their mean).
    """
    kinds = {u.kind for u in lesion.units if u.residual}
    if kind is not None and kind not in kinds:
        raise ValueError(f"kind must be None or one of the removable kinds {sorted(kinds)}, got {kind!r}")
    per_unit = 100.0 * (lesion.clean_correct[None, :] - lesion.correct)
    stages, first_names, last_names, first, last, counts = [], [], [], [], [], []
    for stage in stage_blocks(lesion.units):
        chosen = [[i for i in block if kind is None or lesion.units[i].kind == kind] for block in stage]
        chosen = [block for block in chosen if block]
        counts.append(len(chosen))
        if len(chosen) < 2:
            continue
        stages.append(lesion.units[chosen[0][0]].stage)
        first_names.append(block_name(lesion.units[chosen[0][0]]))
        last_names.append(block_name(lesion.units[chosen[-1][0]]))
        first.append(per_unit[chosen[0]].mean(axis=0))
        last.append(per_unit[chosen[-1]].mean(axis=0))
    n = lesion.clean_correct.size
    as_columns = (lambda cols: np.stack(cols, axis=1) if cols else np.empty((n, 0)))
    return StageContrast(stages=stages, first_block=first_names, last_block=last_names,
                         first=as_columns(first), last=as_columns(last), blocks_per_stage=counts, kind=kind)


def smallest_stage_contrast(rows: np.ndarray) -> float:
    """The stage-by-stage rule's statistic: over the stages, the smallest mean (first − last) drop.

    ``rows`` is :attr:`StageContrast.per_image` (images × stages), or a resample of its rows: the
    claim that the damage repeats with every stage holds only if even the smallest stage's contrast
    is above 0.
    """
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"rows must be (images, stages) with at least one stage, got shape {rows.shape}")
    return float(rows.mean(axis=0).min())


# --- Skip connections ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SkipRatios:
    """``‖z‖ / ‖f(z)‖`` for every residual unit ``z + f(z)`` of a model.

    ``spatial[i, u]`` is image i's mean over spatial tokens (or feature-map positions) of unit u's
    ratio, each token's norm taken over its channels; ``cls[i, u]`` the CLS token's ratio (``None``
    for models without one).
    """

    units: tuple[UnitInfo, ...]
    spatial: np.ndarray
    cls: np.ndarray | None

    @property
    def spatial_mean(self) -> np.ndarray:
        return self.spatial.mean(axis=0)

    @property
    def cls_mean(self) -> np.ndarray | None:
        return None if self.cls is None else self.cls.mean(axis=0)


@torch.no_grad()
@runs_in_eval_mode
def skip_ratios(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                device: str | torch.device | None = None, progress: bool = False) -> SkipRatios:
    """Skip-connection ratios of every residual unit of ``model`` on the images ``x``.

    Token models (``(B, N, D)`` between units) have their CLS token first (:mod:`lib.core.residual`); the
    grid is the last ``side²`` tokens. Feature maps ``(B, C, H, W)`` have no CLS token.
    """
    check_positive_int(batch_size, "batch_size")
    device = analysis_device(model, device)
    units = residual.units(model)
    skippable = [i for i, u in enumerate(units) if u.residual]
    if not skippable:
        raise ValueError(f"{type(model).__name__} has no residual units")
    spatial, cls = [], []
    parts = x.split(batch_size)
    for xb in progress_bar(parts, total=len(parts), desc="skip ratios", progress=progress):
        z = xb.to(device)
        s_rows, c_rows = [], []
        for i, unit in enumerate(units):
            if i in skippable:
                ratio = _token_norms(z) / _token_norms(unit.module.branch(z)).clamp_min(1e-12)
                if z.ndim == 3:
                    side = math.isqrt(z.shape[1])
                    prefix = z.shape[1] - side * side
                    s_rows.append(ratio[:, prefix:].mean(dim=1))
                    c_rows.append(ratio[:, 0] if prefix else None)
                else:
                    s_rows.append(ratio.flatten(1).mean(dim=1))
                    c_rows.append(None)
            z = unit(z)
        spatial.append(torch.stack(s_rows, dim=1).double().cpu())
        if all(c is not None for c in c_rows):
            cls.append(torch.stack(c_rows, dim=1).double().cpu())
    return SkipRatios(tuple(units[i].info for i in skippable), torch.cat(spatial).numpy(),
                      torch.cat(cls).numpy() if len(cls) == len(spatial) else None)


def _token_norms(z: torch.Tensor) -> torch.Tensor:
    """The norm over channels of every token ``(B, N)`` or every map position ``(B, H, W)``."""
    return z.float().norm(dim=-1) if z.ndim == 3 else z.float().norm(dim=1)
