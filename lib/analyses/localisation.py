"""Spatial localisation (Raghu et al. 2021): does a token still know where in the image it is?

:func:`localisation` measures CKA between the representation at grid position ``(a, b)`` of a
unit and the raw input patch at every position (the minibatch HSIC of
:mod:`lib.analyses.similarity`): a token that still "knows where it is" resembles its own patch
more than the others, which :func:`localisation_score` condenses into one number per unit. Input
patches that are (nearly) constant across images, the empty borders of Fashion-MNIST, carry no
signal and are masked out, never turned into NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import residual
from ..core.residual import UnitInfo
from ..core.running import analysis_device, progress_bar, runs_in_eval_mode
from .similarity import HSICAccumulator, HSICBatches, cka_batches, grams

MASK_SHARE = 0.01  # input patches whose self-HSIC is below this share of the median are masked


def patches(x: torch.Tensor, side: int) -> list[torch.Tensor]:
    """The images ``(B, C, H, W)`` cut into a ``side × side`` grid of non-overlapping patches, each
    ``(B, C·h·w)``, in row-major order of the grid."""
    if x.ndim != 4 or x.shape[2] % side or x.shape[3] % side:
        raise ValueError(f"images of shape {tuple(x.shape)} do not split into a {side}x{side} grid of patches")
    ph, pw = x.shape[2] // side, x.shape[3] // side
    cols = F.unfold(x.float(), kernel_size=(ph, pw), stride=(ph, pw))  # (B, C*ph*pw, side²)
    return list(cols.permute(2, 0, 1))


@dataclass(frozen=True)
class Localisation:
    """CKA between each grid position of one unit and each input patch.

    ``cka[p, q]`` compares position ``p`` of the unit (row-major on the ``side × side`` grid) with
    input patch ``q``; ``valid[q]`` is False where input patch ``q`` is (nearly) constant across the
    images or the unit's position ``q`` is exactly constant (e.g. a stem's output over an empty
    corner): those rows and columns are excluded from every score and masked in every map. ``hsic`` keeps the per-batch values for
    :func:`shared_batches` and :func:`localisation_score`.
    """

    unit: UnitInfo
    side: int
    hsic: HSICBatches
    valid: np.ndarray

    @property
    def cka(self) -> np.ndarray:
        return self.hsic.cka()

    def map(self, row: int, col: int) -> np.ma.MaskedArray:
        """The ``side × side`` map of CKA between position ``(row, col)`` and every input patch,
        masked where the patch or the position is constant (rows of invalid positions are all masked)."""
        if not (0 <= row < self.side and 0 <= col < self.side):
            raise ValueError(f"position ({row}, {col}) is outside the {self.side}x{self.side} grid")
        p = row * self.side + col
        mask = ~self.valid.reshape(self.side, self.side) | (not self.valid[p])
        values = np.where(mask, 0.0, np.nan_to_num(self.cka[p].reshape(self.side, self.side)))
        return np.ma.masked_array(values, mask=mask)


def localisation_score(cka: np.ndarray, valid: np.ndarray) -> float:
    """How much positions resemble their own input patch more than the others: the mean over
    valid positions ``p`` of ``cka[p, p] − mean over valid q ≠ p of cka[p, q]``."""
    v = np.flatnonzero(valid)
    if v.size < 2:
        raise ValueError("localisation needs at least 2 valid positions")
    sub = cka[np.ix_(v, v)]
    own = np.diag(sub)
    others = (sub.sum(axis=1) - own) / (v.size - 1)
    return float(np.mean(own - others))


@torch.no_grad()
@runs_in_eval_mode
def localisation(model: nn.Module, x: torch.Tensor, unit_indices: Sequence[int] | None = None,
                 batch_size: int = 256, device: str | torch.device | None = None,
                 progress: bool = False) -> list[Localisation]:
    """Spatial localisation of the units ``unit_indices`` of ``model`` (default: every unit with a
    spatial grid, i.e. all but the head) on the images ``x``.

    The unit's output is taken as a grid (:func:`lib.core.residual.as_grid`, CLS dropped); the images are
    cut into the same grid of patches (28×28 images and a 7×7 grid give 4×4 patches, the ViT's own
    patches). Patches whose self-HSIC is below :data:`MASK_SHARE` of the median patch's, and
    positions whose features are constant, are masked (``Localisation.valid``). Units on a fine grid
    cost ``side⁴`` HSIC pairs: pick them on purpose (a 28×28 grid is 614,656 pairs per batch).
    """
    device = analysis_device(model, device)
    units = residual.units(model)
    spatial = [i for i, u in enumerate(units) if u.kind != "head"]
    chosen = spatial if unit_indices is None else [spatial[i] if i < 0 else i for i in unit_indices]
    for i in chosen:
        if i not in spatial:
            raise ValueError(f"unit index {i} has no spatial grid; choose among {spatial}")
    accs = {i: HSICAccumulator() for i in chosen}
    sides: dict[int, int] = {}
    parts = cka_batches(x, batch_size)
    last = max(chosen)
    for xb in progress_bar(parts, total=len(parts), desc="localisation", progress=progress):
        patch_grams: dict[int, torch.Tensor] = {}  # per grid side, computed once per batch
        z = xb.to(device)
        for i, unit in enumerate(units[:last + 1]):
            z = unit(z)
            if i not in accs:
                continue
            grid = residual.as_grid(z).float().cpu()
            side = grid.shape[2]
            if grid.shape[3] != side:
                raise ValueError(f"unit {unit.name} has a non-square {grid.shape[2]}x{grid.shape[3]} grid")
            sides[i] = side
            if side not in patch_grams:
                patch_grams[side] = grams(patches(xb.cpu(), side))
            accs[i].add_grams(grams(list(grid.flatten(2).permute(2, 0, 1))), patch_grams[side])  # side² positions (B, C)
    out = []
    for i in chosen:
        side = sides[i]
        labels = [f"({r}, {c})" for r in range(side) for c in range(side)]
        hsic = accs[i].result(labels, labels, allow_constant=True)
        patch_self = hsic.self_b.mean(axis=0)
        valid = (~accs[i].constant("a") & ~accs[i].constant("b")
                 & (patch_self > MASK_SHARE * np.median(patch_self)))
        out.append(Localisation(units[i].info, side, hsic, valid))
    return out
