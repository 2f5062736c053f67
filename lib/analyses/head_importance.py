"""What each attention head is worth (Li et al. 2023; Michel et al. 2019): mask heads and measure
the damage image by image, or estimate it from a gradient, and prune heads in order.

* :func:`masked_heads`: zero the outputs of chosen heads (before each unit's output projection)
  inside a ``with`` block, on the fused and the explicit attention path alike.
* :func:`head_importance`: mask one head at a time and record each image's change of loss and
  correctness; :func:`gradient_importance`: the first-order proxy ``E|∂L/∂ξ_h|`` with a gate
  ``ξ_h`` on each head; :func:`pruning_curve`: accuracy as heads are masked one after another in
  a given order (:func:`pruning_order` ranks them by a score).

Heads are ``(unit, head)`` pairs, ``unit`` a position in
:func:`lib.analyses.attention.attention_units`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import residual
from ..core.metrics import per_image_outcomes
from ..core.running import (analysis_device, check_images, check_labels, check_positive_int, eval_mode,
                            progress_bar, rewritten_inputs)
from .attention import AttentionUnit, attention_units

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

    def zeroing(n_heads: int, zeroed: list[int]) -> Callable[[tuple], tuple]:
        def rewrite(args: tuple) -> tuple:
            (z,) = args
            keep = torch.ones(n_heads, dtype=z.dtype, device=z.device)
            keep[zeroed] = 0
            return (z * keep.repeat_interleave(z.shape[-1] // n_heads),)
        return rewrite

    with rewritten_inputs((units[u].module.proj, zeroing(units[u].heads, hs)) for u, hs in by_unit.items()):
        yield model


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
    check_images(x)
    check_positive_int(batch_size, "batch_size")
    check_labels(x, y)
    return attention_units(model), analysis_device(model, device), list(zip(x.split(batch_size), y.split(batch_size)))


@torch.no_grad()
def head_importance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250,
                    device: str | torch.device | None = None, progress: bool = False) -> HeadImportance:
    """Mask every head of every MSA unit alone and record each image's loss and correctness change.

    The residual stream entering each MSA unit is computed once per batch and the masked run starts
    there (the units before it are unchanged by the mask), so masking a head late in the model
    costs only the rest of the model.
    """
    units, device, batches = _labelled_batches(model, x, y, batch_size, device)
    all_units = residual.units(model)
    rises: list[list[np.ndarray]] = [[] for _ in units]
    drops: list[list[np.ndarray]] = [[] for _ in units]
    clean_losses, clean_correct = [], []
    with eval_mode(model):
        for xb, yb in progress_bar(batches, total=len(batches), desc="head importance", progress=progress):
            xb, yb = xb.to(device), yb.to(device)
            logits, outs = residual.run_units(all_units, xb, keep=True)
            loss0, ok0 = per_image_outcomes(logits, yb)
            clean_losses.append(loss0)
            clean_correct.append(ok0)
            for k, unit in enumerate(units):
                start = unit.index
                stream = xb if start == 0 else outs[start - 1]
                rise, drop = [], []
                for h in range(unit.heads):
                    with masked_heads(model, [(k, h)]):
                        masked = residual.run_units(all_units[start:], stream)
                    loss, ok = per_image_outcomes(masked, yb)
                    rise.append(loss - loss0)
                    drop.append(ok0 - ok)
                rises[k].append(np.stack(rise, axis=1))
                drops[k].append(np.stack(drop, axis=1))
    return HeadImportance(units, [np.concatenate(r) for r in rises], [np.concatenate(d) for d in drops],
                          np.concatenate(clean_losses), np.concatenate(clean_correct))


def _gating(gate: torch.Tensor, n_heads: int) -> Callable[[tuple], tuple]:
    """Multiply each head's channels of a projection's input by its per-image gate ``(B, heads)``
    (windowed units repeat an image's gate over its windows)."""
    def rewrite(args: tuple) -> tuple:
        (z,) = args
        per_image = gate.repeat_interleave(z.shape[0] // gate.shape[0], dim=0)
        g = per_image.repeat_interleave(z.shape[-1] // n_heads, dim=1)
        return (z * g.view(z.shape[0], *([1] * (z.ndim - 2)), z.shape[-1]),)
    return rewrite


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
            with rewritten_inputs((unit.module.proj, _gating(gate, unit.heads)) for unit, gate in zip(units, gates)):
                loss = F.cross_entropy(model(xb).float(), yb, reduction="sum")
                grads = torch.autograd.grad(loss, gates)
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
    check_images(x)
    check_positive_int(batch_size, "batch_size")
    check_labels(x, y)
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
                ok = [per_image_outcomes(model(xb.to(device)), yb.to(device))[1]
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
            rows.append(np.concatenate(ok))
    return PruningCurve(np.array(steps), np.stack(rows), list(order))


def top_share(rows: np.ndarray, columns: Sequence[int]) -> float:
    """The share of the summed mean loss rise that the heads ``columns`` carry, minus an equal share.

    ``rows`` is ``(images, heads)``, each head's loss rise when masked, image by image
    (:meth:`HeadImportance.per_image`). 0 when those heads matter as much as the average head,
    ``1 - len(columns) / heads`` when they carry all of it. A function of whole rows, so a bootstrap
    can resample images.
    """
    rows = np.asarray(rows, dtype=float)
    columns = list(columns)
    if rows.ndim != 2 or not columns or len(set(columns)) != len(columns) \
            or not all(0 <= c < rows.shape[1] for c in columns):
        raise ValueError(f"columns must be distinct head indices in [0, {rows.shape[-1]}), got {columns!r}")
    m = rows.mean(axis=0)
    total = m.sum()
    if total <= 0:
        raise ValueError(f"the heads' summed loss rise must be positive to share it out, got {total:.3g}")
    return float(m[columns].sum() / total - len(columns) / m.size)
