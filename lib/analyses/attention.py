"""Attention in the zoo's transformers: maps, distances, strength by distance and rollout (what
each head is worth: :mod:`lib.analyses.head_importance`; the vocabulary of attention patterns:
:mod:`lib.analyses.attention_patterns`).

Every multi-head self-attention (MSA) unit of :func:`lib.core.residual.units` is described by an
:class:`AttentionUnit`: the ViTs' and PiT's timm ``Attention`` and AlterNet's windowed MSA blocks
(timm's ``WindowAttention``). What this module measures, after Raghu et al. (2021), the ViT paper
and Li et al. (2023):

* :func:`attention_maps`: the attention probabilities of every MSA unit for a batch. timm's fused
  kernel never forms them (hooks see nothing), so the capture switches every unit to the explicit
  path for the one forward pass (:func:`lib.core.models.explicit_attention`) and restores the switch after; the
  two paths compute the same function, so the model's outputs do not change.
* :func:`attention_statistics`: per image and head, the *mean attention distance* in input pixels
  (CLS query and key dropped and each query's row renormalised; the mass the patch queries give to
  CLS reported apart) and the *attention strength by ring distance* ``max(|Δr|, |Δc|)`` (the mean
  weight of a query-key pair at that ring).
* :func:`rollout`: Abnar & Zuidema's attention rollout (heads averaged, identity added, rows
  normalised, layers multiplied).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core import residual
from ..core.models import Classifier, MSABlock, PreActResNet, explicit_attention
from ..core.residual import AboutUnit, UnitInfo
from ..core.running import (analysis_device, captured_outputs, check_images, check_positive_int,
                            eval_mode, progress_bar)


# --------------------------------------------------------------------------------------------
# Which units attend, and how to see their attention
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionUnit(AboutUnit):
    """One MSA unit: its :class:`~lib.core.residual.UnitInfo`, the attention module and its geometry.

    ``module`` is the timm attention module (its ``proj`` is the output projection that heads feed);
    ``heads`` its number of heads; ``pixels`` the distance in input pixels between neighbouring
    tokens (the patch size of a ViT, the cumulative stride elsewhere); ``cls`` whether token 0 of
    its sequence is a CLS token; ``windowed`` whether it attends inside non-overlapping windows
    (AlterNet), in which case positions and distances are those inside a window.
    """

    info: UnitInfo
    module: nn.Module
    heads: int
    pixels: int
    cls: bool
    windowed: bool


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, Classifier):
        raise TypeError(f"attention analyses need a zoo model built by lib.core.models.build, got {type(model).__name__}")


def attention_units(model: nn.Module) -> list[AttentionUnit]:
    """The MSA units of ``model`` in the order of :func:`lib.core.residual.units`.

    Raises ``ValueError`` for a model without attention (the ResNet), naming the models that have it.
    """
    _check_model(model)
    net = model.net
    out = []
    for unit in residual.units(model):
        if unit.kind != "msa":
            continue
        if isinstance(net, PreActResNet):
            block: MSABlock = unit.module.block
            out.append(AttentionUnit(unit.info, block.attn, block.attn.num_heads, 2 ** unit.stage,
                                     cls=False, windowed=True))
        elif model.arch.startswith("vit"):
            attn = unit.module.fn
            out.append(AttentionUnit(unit.info, attn, attn.num_heads, int(net.patch_embed.patch_size[0]),
                                     cls=True, windowed=False))
        else:  # PiT: the embedding's stride, doubled by every pooling stage
            attn = unit.module.fn
            stride = int(net.patch_embed.conv.stride[0])
            out.append(AttentionUnit(unit.info, attn, attn.num_heads, stride * 2 ** unit.stage,
                                     cls=True, windowed=False))
    if not out:
        raise ValueError(f"model {model.arch!r} has no attention units; attention analyses apply to "
                         f"vit, vit_local3, vit_local5, pit and alternet")
    return out


@dataclass(frozen=True)
class AttentionMaps(AboutUnit):
    """The attention probabilities of one unit for a batch.

    ``probs`` has shape ``(B, W, H, N, N)``: images, windows (1 for global attention), heads,
    queries, keys; each query's row sums to 1. Token 0 is CLS when ``unit.cls``; the others are the
    grid positions in row-major order (inside a window for windowed units).
    """

    unit: AttentionUnit
    probs: torch.Tensor

    @property
    def info(self) -> UnitInfo:  # type: ignore[override]
        return self.unit.info

    @property
    def grid(self) -> int:
        """Side of the square token grid (of one window for windowed units)."""
        return math.isqrt(self.probs.shape[-1] - int(self.unit.cls))


@torch.no_grad()
def attention_maps(model: nn.Module, x: torch.Tensor, device: str | torch.device | None = None
                   ) -> tuple[list[AttentionMaps], torch.Tensor]:
    """The attention probabilities of every MSA unit on images ``x``, and the model's logits.

    One forward pass in eval mode on the explicit attention path (see :func:`lib.core.models.explicit_attention`);
    a forward hook on each unit's attention dropout (the identity in eval mode) sees the softmax
    output. The logits are those of the same pass, equal to ``model(x)`` on either path up to
    floating-point rounding. Maps come back on the CPU as float32.
    """
    units = attention_units(model)
    device = analysis_device(model, device)
    with captured_outputs({k: u.module.attn_drop for k, u in enumerate(units)}) as seen, \
            eval_mode(model), explicit_attention(model):
        logits = model(x.to(device))
    if len(seen) != len(units):
        raise RuntimeError(f"saw attention in {len(seen)} of {len(units)} units; the hooks missed some")
    b = x.shape[0]
    maps = []
    for k, unit in enumerate(units):
        p = seen[k].detach().float().cpu()
        maps.append(AttentionMaps(unit, p.reshape(b, p.shape[0] // b, *p.shape[1:])))
    return maps, logits.float().cpu()


# --------------------------------------------------------------------------------------------
# Distances and strength by distance
# --------------------------------------------------------------------------------------------
def grid_positions(grid: int) -> torch.Tensor:
    """``(grid², 2)`` row and column of every position of a ``grid`` x ``grid`` map, row-major."""
    if grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid}")
    idx = torch.arange(grid * grid)
    return torch.stack((idx // grid, idx % grid), dim=1).double()


def pixel_distances(grid: int, pixels: float = 1.0) -> torch.Tensor:
    """Euclidean distance between every pair of positions of the grid, in pixels, ``(grid², grid²)``."""
    g = grid_positions(grid)
    return torch.cdist(g, g) * pixels


def ring_distances(grid: int) -> torch.Tensor:
    """Chebyshev ("ring") distance ``max(|Δr|, |Δc|)`` between every pair of positions, as integers."""
    g = grid_positions(grid).long()
    return (g[:, None] - g[None]).abs().amax(dim=-1)


def patch_attention(maps: AttentionMaps) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-to-patch attention with each query's row renormalised, and the CLS mass apart.

    Returns ``(A, cls_mass)``: ``A`` of shape ``(B, W, H, P, P)`` over the ``P = grid²`` patch
    queries and keys, every row summing to 1, and ``cls_mass`` of shape ``(B, W, H, P)``, the
    attention each patch query gave to the CLS key (0 without a CLS token). Dropping CLS without
    renormalising would make every distance shrink by the CLS mass.
    """
    p = maps.probs.double()
    if not maps.unit.cls:
        return p, torch.zeros(p.shape[:-1], dtype=p.dtype)
    cls_mass = p[..., 1:, 0]
    a = p[..., 1:, 1:]
    rest = a.sum(dim=-1, keepdim=True)
    if (rest <= 0).any():
        raise ValueError(f"unit {maps.name}: a patch query attends only to CLS; its patch distance is undefined")
    return a / rest, cls_mass


def mean_distance(maps: AttentionMaps) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention distance in pixels and mean CLS mass, per image and head, ``(B, H)`` each.

    ``Σ_k A[q, k] · ‖g_q − g_k‖ · pixels`` over the renormalised patch-to-patch attention, averaged
    over patch queries (and windows).
    """
    a, cls_mass = patch_attention(maps)
    d = pixel_distances(maps.grid, maps.unit.pixels)
    per_query = (a * d).sum(dim=-1)  # (B, W, H, P)
    return per_query.mean(dim=(1, 3)).numpy(), cls_mass.mean(dim=(1, 3)).numpy()


def ring_strength(maps: AttentionMaps) -> np.ndarray:
    """Attention strength by ring distance per image and head, ``(B, H, grid)``.

    Entry ``r`` is the mean renormalised weight of the query-key pairs at ring distance ``r``
    (``r = 0`` is the query itself). Uniform attention over ``P`` positions gives ``1/P`` at every
    ring; attention that falls with distance gives a falling profile.
    """
    a, _ = patch_attention(maps)
    rings = ring_distances(maps.grid)
    out = []
    for r in range(maps.grid):
        sel = rings == r
        out.append(a[..., sel].mean(dim=-1).mean(dim=1))  # mean over pairs, then windows: (B, H)
    return torch.stack(out, dim=-1).numpy()


@dataclass(frozen=True)
class UnitStatistics(AboutUnit):
    """Per-image attention statistics of one unit: ``distance`` and ``cls_mass`` ``(n, H)``,
    ``strength`` ``(n, H, grid)`` (see :func:`mean_distance` and :func:`ring_strength`)."""

    unit: AttentionUnit
    grid: int
    distance: np.ndarray
    cls_mass: np.ndarray
    strength: np.ndarray

    @property
    def info(self) -> UnitInfo:  # type: ignore[override]
        return self.unit.info

    @property
    def head_distance(self) -> np.ndarray:
        """Mean attention distance of each head over all images, ``(H,)``, in pixels."""
        return self.distance.mean(axis=0)

    @property
    def positions(self) -> int:
        """The positions of the unit's grid (``grid²``): evenly spread attention gives each
        ``1 / positions``, so ``strength × positions`` reads as "× even attention"."""
        return self.grid * self.grid

    def even_distance(self, window: int | None = None) -> float:
        """The mean distance of evenly spread attention on this unit's grid (within ``window`` for
        the local ViTs), in pixels: the reference line of a distance plot (:func:`uniform_distance`)."""
        return uniform_distance(self.grid, self.unit.pixels, window)


def attention_statistics(model: nn.Module, x: torch.Tensor, batch_size: int = 250,
                         device: str | torch.device | None = None, progress: bool = False
                         ) -> list[UnitStatistics]:
    """Mean attention distance, CLS mass and strength by ring distance of every MSA unit,
    image by image (so that comparisons can pair images), batch by batch to bound memory."""
    check_images(x)
    check_positive_int(batch_size, "batch_size")
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    units: list[AttentionUnit] = []
    grids: list[int] = []
    batches = x.split(batch_size)
    for xb in progress_bar(batches, total=len(batches), desc="attention", progress=progress):
        maps, _ = attention_maps(model, xb, device)
        if not parts:
            parts = [[] for _ in maps]
            units, grids = [m.unit for m in maps], [m.grid for m in maps]
        for k, m in enumerate(maps):
            dist, cls_mass = mean_distance(m)
            parts[k].append((dist, cls_mass, ring_strength(m)))
    return [UnitStatistics(u, g, *(np.concatenate([p[i] for p in part]) for i in range(3)))
            for u, g, part in zip(units, grids, parts)]


def uniform_distance(grid: int, pixels: float = 1.0, window: int | None = None) -> float:
    """The mean attention distance of uniform attention on a ``grid`` x ``grid`` map, in pixels.

    With ``window=None`` every query spreads its attention evenly over all positions: the mean
    distance between two positions drawn independently and uniformly. With an odd ``window``, each
    query spreads it evenly over its ``window`` x ``window`` neighbourhood (the local ViTs), so
    queries at the border see fewer keys. A reference line: a head at this distance attends as far
    as it can, on average.
    """
    d = pixel_distances(grid, pixels)
    if window is None:
        return float(d.mean())
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer or None, got {window}")
    inside = (ring_distances(grid) <= window // 2).double()
    return float(((d * inside).sum(dim=1) / inside.sum(dim=1)).mean())


def local_heads(statistics: Sequence[UnitStatistics], window: int | None = None, share: float = 0.75) -> int:
    """How many heads of the units ``statistics`` attend locally: those whose mean distance
    (:attr:`UnitStatistics.head_distance`) is below ``share`` of the distance of evenly spread
    attention on their grid (:func:`uniform_distance`, within ``window`` for the local ViTs)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share!r}")
    return sum(int((s.head_distance < share * s.even_distance(window)).sum()) for s in statistics)


def spread_contrast(rows: np.ndarray, first_heads: int) -> float:
    """How much more the heads' distances spread in one unit than in another, from per-image rows.

    ``rows`` is ``(n, H1 + H2)``: per image, the mean distance of each head of the first unit (the
    first ``first_heads`` columns), then of each head of the second. The statistic is the range
    (largest − smallest head) of the first unit's mean distances over the rows minus that of the
    second's: positive when the first unit mixes near and far heads more. A function of whole rows,
    so a bootstrap can resample images.
    """
    rows = np.asarray(rows, dtype=float)
    if rows.ndim != 2 or not 0 < first_heads < rows.shape[1]:
        raise ValueError(f"rows must be (images, heads of both units) with 0 < first_heads < columns, "
                         f"got shape {rows.shape} and first_heads={first_heads!r}")
    m = rows.mean(axis=0)
    first, second = m[:first_heads], m[first_heads:]
    return float((first.max() - first.min()) - (second.max() - second.min()))


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------
def rollout(maps: Sequence[AttentionMaps]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) through the units ``maps``, ``(B, N, N)``.

    Per unit: heads averaged, identity added (the residual stream), rows normalised; then the units
    multiplied from first to last. Row ``i`` tells how much of token ``i``'s final representation
    traces back to each input token. Needs global attention on one token sequence throughout
    (the ViTs); PiT changes its sequence between stages and AlterNet attends in windows.
    """
    if not maps:
        raise ValueError("rollout needs the maps of at least one unit")
    sizes = {tuple(m.probs.shape[-2:]) for m in maps}
    if any(m.unit.windowed or m.probs.shape[1] != 1 for m in maps) or len(sizes) != 1:
        raise ValueError("rollout needs global attention over one token sequence in every unit "
                         "(vit, vit_local3, vit_local5); PiT pools between stages and AlterNet attends in windows")
    out = None
    for m in maps:
        a = m.probs[:, 0].double().mean(dim=1)
        a = a + torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    return out


def cls_rollout(maps: Sequence[AttentionMaps]) -> torch.Tensor:
    """The CLS token's rollout over the patches as maps ``(B, grid, grid)`` (CLS's own share
    dropped): which input patches the classifier's token traces back to."""
    if not maps[0].unit.cls:
        raise ValueError("cls_rollout needs a model with a CLS token")
    r = rollout(maps)
    grid = maps[0].grid
    return r[:, 0, 1:].reshape(-1, grid, grid)
