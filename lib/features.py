"""Unit outputs, feature-map variance and the lesion study, on the residual units of :mod:`lib.blocks`.

Park & Kim (2022) walk a model unit by unit: Fig. 6 measures how much each unit's output varies
over space (MSAs reduce the variance, convolutions and MLPs increase it), Fig. 7 removes one
residual unit at a time and measures the drop in accuracy (the drop repeats with every stage: a
multi-stage model behaves like a series of small models).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import blocks as blocks_lib
from .blocks import UnitInfo, unit_infos  # noqa: F401  (the chapters find them here too)
from . import data


def unit_roles(units: list) -> list[str]:
    """What each unit does, for per-kind tables: its ``kind``, or ``"subsampling"`` where it starts
    a new stage (its input and output differ in resolution, so its change is not the kind's).

    ``units`` are :class:`lib.blocks.UnitInfo` or anything else with ``kind`` and ``stage`` (e.g.
    :class:`lib.fourier.UnitProfile`); the first unit keeps its kind.
    """
    return [u.kind if i == 0 or u.stage == units[i - 1].stage else "subsampling" for i, u in enumerate(units)]


@torch.no_grad()
def unit_outputs(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None
                 ) -> list[tuple[UnitInfo, torch.Tensor]]:
    """Every spatial unit's output on ``x`` as a map ``(B, C, H, W)`` on the CPU.

    Token outputs are reshaped to their grid with the CLS token dropped (:func:`blocks.as_grid`);
    the head, whose output has no spatial extent, is left out. The model runs in eval mode.
    """
    device = torch.device(device or next(model.parameters()).device)
    model.eval()
    units = blocks_lib.blocks(model)
    _, outs = blocks_lib.run_blocks(units, x.to(device), keep=True)
    return [(unit.info, blocks_lib.as_grid(out).float().cpu())
            for unit, out in zip(units, outs) if unit.kind != "head"]


def feature_map_variance(maps: torch.Tensor) -> float:
    """Park & Kim's feature-map variance of a batch of maps ``(B, C, H, W)``.

    The unbiased variance over the H·W spatial positions of each (image, channel) map, averaged over
    images and channels. A spatially constant map has variance 0; maps with a single position
    (1×1) are rejected, since their spatial variance is undefined.
    """
    if maps.ndim != 4:
        raise ValueError(f"expected maps of shape (B, C, H, W), got {tuple(maps.shape)}")
    if maps.shape[2] * maps.shape[3] < 2:
        raise ValueError(f"spatial variance needs at least 2 positions, got a {maps.shape[2]}x{maps.shape[3]} map")
    return maps.double().flatten(2).var(dim=2, unbiased=True).mean().item()


@dataclass(frozen=True)
class VarianceProfile:
    """Feature-map variance of every spatial unit, in order (``units[i]`` describes ``variance[i]``)."""

    units: list[UnitInfo]
    variance: np.ndarray

    @property
    def change(self) -> np.ndarray:
        """Change of log10 variance from each unit's input to its output (for ``units[1:]``)."""
        return np.diff(np.log10(self.variance))


def variance_profile(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                     batch_size: int = 64) -> VarianceProfile:
    """Feature-map variance of each unit output over the images ``x`` (Park & Kim Fig. 6).

    Computed batch by batch and averaged with weights by batch size, so the result equals the
    variance on all of ``x`` at once while memory stays that of one batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    totals: np.ndarray | None = None
    infos: list[UnitInfo] = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        outs = unit_outputs(model, xb, device)
        infos = [info for info, _ in outs]
        values = np.array([feature_map_variance(m) for _, m in outs]) * len(xb)
        totals = values if totals is None else totals + values
    if totals is None:
        raise ValueError("x holds no images")
    return VarianceProfile(units=infos, variance=totals / len(x))


@dataclass(frozen=True)
class Lesion:
    """Test accuracy with each residual unit removed (replaced by its skip connection).

    ``accuracy[i]`` and ``drop[i]`` (baseline − lesioned, in points) belong to ``units[i]``; units
    that cannot be removed (the embedding, subsampling units, the head) have NaN.
    """

    units: list[UnitInfo]
    baseline: float
    accuracy: np.ndarray
    drop: np.ndarray


@torch.no_grad()
def lesion_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                 device: str | torch.device | None = None, progress: bool = True) -> Lesion:
    """Remove one residual unit at a time and measure the test accuracy (Park & Kim Fig. 7).

    A lesioned unit passes its input through unchanged (``x + branch(x)`` becomes ``x``). For each
    batch the clean run is done once and every lesion restarts from the cached input of its unit,
    which halves the work of running all lesions from scratch.
    """
    device = torch.device(device or next(model.parameters()).device)
    model.eval()
    units = blocks_lib.blocks(model)
    infos = [u.info for u in units]
    lesionable = [i for i, u in enumerate(units) if u.residual]
    correct = np.zeros(len(units))
    base_correct = 0
    batches = list(data.iterate_batches(x, y, batch_size))
    for xb, yb in tqdm(batches, desc="lesions", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        xb, yb = xb.to(device), yb.to(device)
        _, outs = blocks_lib.run_blocks(units, xb, keep=True)
        base_correct += (outs[-1].argmax(1) == yb).sum().item()
        for i in lesionable:
            h = xb if i == 0 else outs[i - 1]  # the unit's input, passed through unchanged
            logits = blocks_lib.run_blocks(units[i + 1:], h)
            correct[i] += (logits.argmax(1) == yb).sum().item()
    baseline = 100.0 * base_correct / len(y)
    accuracy = np.full(len(units), np.nan)
    accuracy[lesionable] = 100.0 * correct[lesionable] / len(y)
    return Lesion(units=infos, baseline=baseline, accuracy=accuracy, drop=baseline - accuracy)
