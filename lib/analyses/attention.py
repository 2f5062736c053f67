"""Attention in the zoo's transformers: maps, distances, strength by distance, rollout, head
importance and the vocabulary of attention patterns.

Every multi-head self-attention (MSA) unit of :func:`lib.core.blocks.blocks` is described by an
:class:`AttentionUnit`: the ViTs' and PiT's timm ``Attention`` and AlterNet's windowed MSA blocks
(timm's ``WindowAttention``). What this module measures, after Raghu et al. (2021), the ViT paper
and Li et al. (2023):

* :func:`attention_maps`: the attention probabilities of every MSA unit for a batch. timm's fused
  kernel never forms them (hooks see nothing), so the capture switches every unit to the explicit
  path for the one forward pass (:func:`explicit_attention`) and restores the switch after; the
  two paths compute the same function, so the model's outputs do not change.
* :func:`attention_statistics`: per image and head, the *mean attention distance* in input pixels
  (CLS query and key dropped and each query's row renormalised; the mass the patch queries give to
  CLS reported apart) and the *attention strength by ring distance* ``max(|Δr|, |Δc|)`` (the mean
  weight of a query-key pair at that ring).
* :func:`rollout`: Abnar & Zuidema's attention rollout (heads averaged, identity added, rows
  normalised, layers multiplied).
* :func:`head_importance`: mask one head's output (before the output projection) at a time and
  measure the change of accuracy and loss image by image; :func:`gradient_importance`: the proxy
  ``E|∂L/∂ξ_h|`` of Michel et al. (2019) with a gate ``ξ_h`` on each head; :func:`pruning_curve`:
  accuracy as heads are masked one after another in a given order.
* :func:`attention_patterns`: a small autoencoder over per-query attention maps, k-means of its
  latents, the decoded centroids as the vocabulary of patterns and each head's mix of them.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import blocks as blocks_lib
from ..core.blocks import AboutUnit, UnitInfo
from ..core.models import Classifier, MSABlock, PreActResNet
from ..core.running import analysis_device, captured_outputs, check_positive_int, eval_mode, progress_bar


# --------------------------------------------------------------------------------------------
# Which units attend, and how to see their attention
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionUnit(AboutUnit):
    """One MSA unit: its :class:`~lib.core.blocks.UnitInfo`, the attention module and its geometry.

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
    """The MSA units of ``model`` in the order of :func:`lib.core.blocks.blocks`.

    Raises ``ValueError`` for a model without attention (the ResNet), naming the models that have it.
    """
    _check_model(model)
    net = model.net
    out = []
    for unit in blocks_lib.blocks(model):
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


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every timm attention module of ``model`` on its explicit path inside the block.

    The fused kernel computes the same function but never forms the attention probabilities, so
    hooks cannot see them. Each module's own setting is restored on leaving, even after an error.
    """
    modules = _attention_modules(model)
    saved = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield model
    finally:
        for m, flag in zip(modules, saved):
            m.fused_attn = flag


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

    One forward pass in eval mode on the explicit attention path (see :func:`explicit_attention`);
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


def _check_images(x: torch.Tensor, at_least: int = 1) -> None:
    if x.ndim != 4 or x.shape[0] < at_least:
        raise ValueError(f"expected at least {at_least} images of shape (B, C, H, W), got {tuple(x.shape)}")


def _check_labels(x: torch.Tensor, y: torch.Tensor) -> None:
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y need the same number of images (one label each), got {x.shape[0]} images "
                         f"and labels of shape {tuple(y.shape)}")


def attention_statistics(model: nn.Module, x: torch.Tensor, batch_size: int = 250,
                         device: str | torch.device | None = None, progress: bool = False
                         ) -> list[UnitStatistics]:
    """Mean attention distance, CLS mass and strength by ring distance of every MSA unit,
    image by image (so that comparisons can pair images), batch by batch to bound memory."""
    _check_images(x)
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


# --------------------------------------------------------------------------------------------
# Head importance
# --------------------------------------------------------------------------------------------
Head = tuple[int, int]  # (position in attention_units(model), head index)


def _check_heads(units: Sequence[AttentionUnit], heads: Iterable[Head]) -> list[Head]:
    heads = [tuple(h) for h in heads]
    for u, h in heads:
        if not 0 <= u < len(units):
            raise ValueError(f"attention unit {u} does not exist: the model has units 0..{len(units) - 1}")
        if not 0 <= h < units[u].heads:
            raise ValueError(f"unit {u} ({units[u].name}) has heads 0..{units[u].heads - 1}, got head {h}")
    return heads


@contextmanager
def masked_heads(model: nn.Module, heads: Iterable[Head]) -> Iterator[nn.Module]:
    """Zero the outputs of ``heads`` (pairs ``(unit, head)``) before each unit's output projection.

    A forward pre-hook on the projection multiplies the masked heads' channels by 0, on the fused
    and the explicit path alike; the hooks are removed on leaving, even after an error.
    """
    units = attention_units(model)
    heads = _check_heads(units, heads)
    by_unit: dict[int, list[int]] = {}
    for u, h in heads:
        by_unit.setdefault(u, []).append(h)
    hooks = []

    def make_hook(n_heads: int, zeroed: list[int]):
        def hook(_module: nn.Module, args: tuple) -> tuple:
            (z,) = args
            keep = torch.ones(n_heads, dtype=z.dtype, device=z.device)
            keep[zeroed] = 0
            return (z * keep.repeat_interleave(z.shape[-1] // n_heads),)
        return hook

    try:
        for u, hs in by_unit.items():
            hooks.append(units[u].module.proj.register_forward_pre_hook(make_hook(units[u].heads, hs)))
        yield model
    finally:
        for h in hooks:
            h.remove()


@dataclass(frozen=True)
class HeadImportance:
    """What masking each head alone does, image by image.

    ``units`` are the attention units; ``loss_rise[u][:, h]`` and ``correct_drop[u][:, h]`` hold, per
    image, the cross-entropy with head ``h`` of unit ``u`` masked minus the clean one, and the clean
    correctness (1/0) minus the masked one. ``clean_loss`` and ``clean_correct`` are per image.
    """

    units: list[AttentionUnit]
    loss_rise: list[np.ndarray]
    correct_drop: list[np.ndarray]
    clean_loss: np.ndarray
    clean_correct: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.clean_loss.shape[0])

    def matrix(self, what: str = "loss") -> np.ndarray:
        """Layers x heads mean importance: ``"loss"`` (mean loss rise) or ``"accuracy"`` (drop in
        points). Needs the same number of heads in every unit."""
        arrays = self._arrays(what)
        if len({a.shape[1] for a in arrays}) != 1:
            raise ValueError("the units have different numbers of heads; use se() or the per-unit arrays")
        scale = 100.0 if what == "accuracy" else 1.0
        return np.stack([a.mean(axis=0) for a in arrays]) * scale

    def se(self, what: str = "loss") -> np.ndarray:
        """Standard errors of :meth:`matrix` over images (the changes are paired with the clean run)."""
        scale = 100.0 if what == "accuracy" else 1.0
        return np.stack([a.std(axis=0, ddof=1) / math.sqrt(a.shape[0]) for a in self._arrays(what)]) * scale

    def _arrays(self, what: str) -> list[np.ndarray]:
        if what not in ("loss", "accuracy"):
            raise ValueError(f"what must be 'loss' or 'accuracy', got {what!r}")
        return self.loss_rise if what == "loss" else self.correct_drop

    def per_image(self, what: str = "loss") -> np.ndarray:
        """All heads' changes per image, ``(n, total heads)`` in :meth:`heads` order."""
        return np.concatenate(self._arrays(what), axis=1)

    def heads(self) -> list[Head]:
        """Every ``(unit, head)`` in the order of :meth:`per_image`'s columns."""
        return [(u, h) for u, unit in enumerate(self.units) for h in range(unit.heads)]


def _labelled_batches(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                      device: str | torch.device | None) -> tuple[list[AttentionUnit], torch.device, list]:
    """Check images, labels and batch size; the model's attention units, its device and the
    ``(images, labels)`` batches, for the analyses that score heads on labelled images."""
    _check_images(x)
    check_positive_int(batch_size, "batch_size")
    _check_labels(x, y)
    return attention_units(model), analysis_device(model, device), list(zip(x.split(batch_size), y.split(batch_size)))


def _per_image_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    return loss.cpu().double().numpy(), (logits.argmax(dim=1) == y).cpu().double().numpy()


@torch.no_grad()
def head_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250,
                    device: str | torch.device | None = None, progress: bool = False) -> HeadImportance:
    """Mask every head of every MSA unit alone and record each image's loss and correctness change.

    The residual stream entering each MSA unit is computed once per batch and the masked run starts
    there (the units before it are unchanged by the mask), so masking a head late in the model
    costs only the rest of the model.
    """
    units, device, batches = _labelled_batches(model, x, y, batch_size, device)
    all_units = blocks_lib.blocks(model)
    rises: list[list[np.ndarray]] = [[] for _ in units]
    drops: list[list[np.ndarray]] = [[] for _ in units]
    clean_losses, clean_correct = [], []
    with eval_mode(model):
        for xb, yb in progress_bar(batches, total=len(batches), desc="head importance", progress=progress):
            xb, yb = xb.to(device), yb.to(device)
            logits, outs = blocks_lib.run_blocks(all_units, xb, keep=True)
            loss0, ok0 = _per_image_loss(logits, yb)
            clean_losses.append(loss0)
            clean_correct.append(ok0)
            for k, unit in enumerate(units):
                start = unit.index
                stream = xb if start == 0 else outs[start - 1]
                rise, drop = [], []
                for h in range(unit.heads):
                    with masked_heads(model, [(k, h)]):
                        masked = blocks_lib.run_blocks(all_units[start:], stream)
                    loss, ok = _per_image_loss(masked, yb)
                    rise.append(loss - loss0)
                    drop.append(ok0 - ok)
                rises[k].append(np.stack(rise, axis=1))
                drops[k].append(np.stack(drop, axis=1))
    return HeadImportance(units, [np.concatenate(r) for r in rises], [np.concatenate(d) for d in drops],
                          np.concatenate(clean_losses), np.concatenate(clean_correct))


def gradient_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250,
                        device: str | torch.device | None = None, progress: bool = False) -> list[np.ndarray]:
    """The gradient proxy of head importance, ``|∂L/∂ξ_h|`` per image, ``(n, H)`` per unit.

    Each head's output is multiplied by a gate ``ξ_h = 1`` (one per image); the derivative of the
    image's cross-entropy with respect to its gate estimates, to first order, the loss change of
    removing the head (Michel et al. 2019). Its mean over images is the proxy ``E|∂L/∂ξ_h|``.
    """
    units, device, batches = _labelled_batches(model, x, y, batch_size, device)
    out: list[list[np.ndarray]] = [[] for _ in units]
    with eval_mode(model):
        for xb, yb in progress_bar(batches, total=len(batches), desc="gradient proxy", progress=progress):
            xb, yb = xb.to(device), yb.to(device)
            gates = [torch.ones(xb.shape[0], u.heads, device=device, requires_grad=True) for u in units]
            hooks = []
            for unit, gate in zip(units, gates):
                def hook(_module: nn.Module, args: tuple, gate: torch.Tensor = gate, n_heads: int = unit.heads):
                    (z,) = args
                    per_image = gate.repeat_interleave(z.shape[0] // gate.shape[0], dim=0)  # windows
                    g = per_image.repeat_interleave(z.shape[-1] // n_heads, dim=1)
                    return (z * g.view(z.shape[0], *([1] * (z.ndim - 2)), z.shape[-1]),)
                hooks.append(unit.module.proj.register_forward_pre_hook(hook))
            try:
                loss = F.cross_entropy(model(xb).float(), yb, reduction="sum")
                grads = torch.autograd.grad(loss, gates)
            finally:
                for h in hooks:
                    h.remove()
            for k, g in enumerate(grads):
                out[k].append(g.abs().detach().cpu().double().numpy())
    return [np.concatenate(o) for o in out]


def pruning_order(scores: Sequence[np.ndarray] | np.ndarray) -> list[Head]:
    """Every head ``(unit, head)`` from the least to the most important by ``scores`` (one array of
    per-head scores per unit, larger = more important); ties keep the model's order."""
    flat = [(float(s), u, h) for u, row in enumerate(scores) for h, s in enumerate(np.asarray(row))]
    return [(u, h) for _, u, h in sorted(flat, key=lambda t: (t[0], t[1], t[2]))]


@dataclass(frozen=True)
class PruningCurve:
    """Accuracy as heads are masked in order: ``n_masked[i]`` heads masked give per-image
    correctness ``correct[i]`` (``(steps, n)``, 1/0); ``order`` is the masking order used."""

    n_masked: np.ndarray
    correct: np.ndarray
    order: list[Head]

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy in % at every step."""
        return self.correct.mean(axis=1) * 100.0


@torch.no_grad()
def pruning_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, order: Sequence[Head],
                  steps: Sequence[int], batch_size: int = 250, device: str | torch.device | None = None,
                  progress: bool = False) -> PruningCurve:
    """Mask the first ``k`` heads of ``order`` for every ``k`` in ``steps`` and record each image's
    correctness. Rank heads on other images than ``x`` (e.g. with :func:`head_importance` on a
    separate split), or the curve is flattered by the choice of order."""
    _check_images(x)
    check_positive_int(batch_size, "batch_size")
    _check_labels(x, y)
    units = attention_units(model)
    order = _check_heads(units, order)
    steps = [int(k) for k in steps]
    if any(not 0 <= k <= len(order) for k in steps):
        raise ValueError(f"steps must lie in [0, {len(order)}] (the heads in order), got {steps}")
    device = analysis_device(model, device)
    rows = []
    with eval_mode(model):
        for k in progress_bar(steps, total=len(steps), desc="pruning", progress=progress):
            with masked_heads(model, order[:k]):
                ok = [(model(xb.to(device)).argmax(dim=1).cpu() == yb).double().numpy()
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
            rows.append(np.concatenate(ok))
    return PruningCurve(np.array(steps), np.stack(rows), list(order))


# --------------------------------------------------------------------------------------------
# Attention patterns
# --------------------------------------------------------------------------------------------
def query_maps(maps: Sequence[AttentionMaps]) -> tuple[torch.Tensor, np.ndarray]:
    """Every patch query's renormalised patch attention as a row, with the head it came from.

    Returns ``(rows, owners)``: ``rows`` of shape ``(M, grid²)`` (each a distribution over the
    positions) and ``owners`` ``(M, 3)``, the ``(position in maps, head, query position)`` of each
    row. All units
    need the same grid (the ViTs: 7x7).
    """
    if not maps:
        raise ValueError("query_maps needs the maps of at least one unit")
    grids = {m.grid for m in maps}
    if len(grids) != 1:
        raise ValueError(f"all units need the same grid for one pattern vocabulary, got grids {sorted(grids)}")
    rows, owners = [], []
    for k, m in enumerate(maps):
        a, _ = patch_attention(m)  # (B, W, H, P, P)
        a = a.permute(2, 0, 1, 3, 4)  # heads first
        n_heads = a.shape[0]
        a = a.reshape(n_heads, -1, a.shape[-1])
        rows.append(a.reshape(-1, a.shape[-1]))
        head = np.repeat(np.arange(n_heads), a.shape[1])
        query = np.tile(np.arange(a.shape[-1]), a.shape[1] // a.shape[-1] * n_heads)
        owners.append(np.stack((np.full_like(head, k), head, query), axis=1))
    return torch.cat(rows).float(), np.concatenate(owners)


class PatternAutoencoder(nn.Module):
    """A small autoencoder for attention maps: ``P -> hidden -> latent -> hidden -> P``.

    The decoder ends in a softmax, so a decoded latent is itself an attention map (a distribution
    over the positions); training minimises the cross-entropy between a map and its reconstruction.
    """

    def __init__(self, positions: int, latent: int = 8, hidden: int = 64):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(positions, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, positions))

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encoder(rows)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded attention maps, rows summing to 1."""
        return self.decoder(z).softmax(dim=-1)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the reconstructions against the maps ``rows``."""
        log_q = self.decoder(self.encoder(rows)).log_softmax(dim=-1)
        return -(rows * log_q).sum(dim=-1).mean()


def fit_autoencoder(rows: torch.Tensor, latent: int = 8, hidden: int = 64, epochs: int = 10,
                    batch_size: int = 512, lr: float = 3e-3, seed: int = 0,
                    progress: bool = False) -> tuple[PatternAutoencoder, list[float]]:
    """Train a :class:`PatternAutoencoder` on ``rows`` (``(M, P)`` maps) with Adam; seeded.

    Returns the model (in eval mode) and the mean training loss of each epoch.
    """
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"rows must be (M, P) with M >= 2 maps, got {tuple(rows.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PatternAutoencoder(rows.shape[1], latent, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in progress_bar(range(epochs), total=epochs, desc="autoencoder", progress=progress):
        perm = torch.randperm(rows.shape[0], generator=gen)
        total, count = 0.0, 0
        for idx in perm.split(batch_size):
            loss = model.loss(rows[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        history.append(total / count)
    return model.eval(), history


def kmeans(z: torch.Tensor, k: int, iterations: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded k-means (k-means++ start, Lloyd iterations) of the rows of ``z``.

    Returns ``(centroids (k, d), labels (M,))``, each centroid the mean of its points. A cluster
    left empty takes the point farthest from every centroid (a different one for each empty
    cluster), so there are always ``k`` non-empty clusters.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= z.shape[0]:
        raise ValueError(f"k must be a whole number in [1, {z.shape[0]}] (the number of points), got {k!r}")
    z = z.double()
    gen = torch.Generator().manual_seed(seed)
    centroids = z[torch.randint(z.shape[0], (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(z, centroids).min(dim=1).values ** 2
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centroids = torch.cat((centroids, z[torch.multinomial(weights, 1, generator=gen)]))
    labels = torch.full((z.shape[0],), -1, dtype=torch.long)
    for _ in range(iterations):
        dist = torch.cdist(z, centroids)
        new = dist.argmin(dim=1)
        empty = [c for c in range(k) if not (new == c).any()]
        if empty:  # re-seed each empty cluster with a different far point from a cluster that can spare it
            far = dist.min(dim=1).values.clone()
            counts = torch.bincount(new, minlength=k)
            for c in empty:
                far[counts[new] <= 1] = -1.0
                i = int(far.argmax())
                counts[new[i]] -= 1
                new[i], far[i], counts[c] = c, -1.0, 1
        if torch.equal(new, labels):
            break
        labels = new
        for c in range(k):
            centroids[c] = z[labels == c].mean(dim=0)
    return centroids, labels


@dataclass(frozen=True)
class Patterns:
    """The vocabulary of attention patterns and how each head uses it.

    ``vocabulary`` ``(k, grid, grid)``: the decoded cluster centroids, each an attention map;
    ``query`` ``(k,)``: the query position whose maps a pattern most often comes from (row-major);
    ``mix`` ``(units, heads, k)``: the share of each head's maps in each pattern (rows sum to 1);
    ``labels`` ``(M,)`` and ``owners`` ``(M, 3)``: each map's pattern and ``(unit, head, query)``;
    ``history``: the autoencoder's training loss per epoch.
    """

    vocabulary: np.ndarray
    query: np.ndarray
    mix: np.ndarray
    labels: np.ndarray
    owners: np.ndarray
    history: list[float]


def attention_patterns(maps: Sequence[AttentionMaps], k: int = 8, latent: int = 8, hidden: int = 64,
                       epochs: int = 10, seed: int = 0, progress: bool = False) -> Patterns:
    """Learn a vocabulary of ``k`` attention patterns from the per-query maps of ``maps``.

    Every patch query's map of every head (:func:`query_maps`) is encoded by a small autoencoder
    (:func:`fit_autoencoder`); k-means groups the latents (:func:`kmeans`); each centroid, decoded,
    is a pattern. A head is then described by the share of its maps in each pattern.
    """
    rows, owners = query_maps(maps)
    ae, history = fit_autoencoder(rows, latent, hidden, epochs, seed=seed, progress=progress)
    with torch.no_grad():
        z = ae.encode(rows)
        centroids, labels = kmeans(z, k, seed=seed)
        vocab = ae.decode(centroids.float()).double().numpy()
    grid = maps[0].grid
    positions = grid * grid
    n_heads = max(m.unit.heads for m in maps)
    labels_np = labels.numpy()
    mix = np.zeros((len(maps), n_heads, k))
    np.add.at(mix, (owners[:, 0], owners[:, 1], labels_np), 1.0)
    mix /= np.maximum(mix.sum(axis=-1, keepdims=True), 1.0)
    query = np.array([np.bincount(owners[labels_np == c, 2], minlength=positions).argmax() for c in range(k)])
    return Patterns(vocab.reshape(k, grid, grid), query, mix, labels_np, owners, history)
