"""Filter-normalised random directions in weight space (Li et al. 2018), for loss landscapes.

:func:`random_directions` draws Gaussian directions, one tensor per trainable parameter tensor,
rescaled to the weights' norms per output filter (Li et al., the default) or across the first axis
(what Park & Kim's code does); biases, norm affines and positional embeddings get zero, so a
direction is comparable across architectures whose weights have different scales.
:func:`direction_cosine` measures how alike two directions are. :mod:`lib.analyses.landscape` evaluates the
loss along them. Directions are lists of tensors in ``model.parameters()`` order (trainable only).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..core.running import check_positive_int



#: How a random direction is rescaled to the weights (see :func:`normalize_direction`).
NORMALIZATIONS: tuple[str, ...] = ("filter", "axis0")
_EPS = 1e-10  # keeps a zero-norm slice of the direction from dividing by zero


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every trainable parameter, in ``named_parameters`` order.

    Directions and surfaces use this order (as does :func:`lib.zoo.trajectory.flat_parameters`).
    """
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def normalize_direction(direction: torch.Tensor, weight: torch.Tensor, normalization: str = "filter") -> torch.Tensor:
    """``direction`` rescaled to the norms of ``weight`` (a new tensor; both need >= 2 dims).

    * ``"filter"`` (Li et al. 2018): each output filter ``d[i]`` (the slice along dim 0) is
      rescaled to ``‖w[i]‖``, i.e. ``d[i] ← d[i] · ‖w[i]‖ / ‖d[i]‖``.
    * ``"axis0"`` (Park & Kim's code, ``torch.norm(w, dim=0, keepdim=True)``): norms are taken
      *across* dim 0, one per position of the remaining axes (per input channel and kernel tap of
      a convolution, per input feature of a linear layer): ``d ← d · ‖w‖₀ / ‖d‖₀``.
    """
    _check_normalization(normalization)
    if direction.shape != weight.shape:
        raise ValueError(f"direction shape {tuple(direction.shape)} differs from weight shape {tuple(weight.shape)}")
    if direction.dim() < 2:
        raise ValueError(f"normalisation needs a tensor with >= 2 dims, got shape {tuple(direction.shape)}; "
                         f"1-D tensors (biases, norm affines) get a zero direction instead")
    if normalization == "filter":
        w_norm = weight.flatten(1).norm(dim=1)
        d_norm = direction.flatten(1).norm(dim=1)
        scale = (w_norm / (d_norm + _EPS)).view(-1, *([1] * (direction.dim() - 1)))
    else:
        w_norm = torch.linalg.vector_norm(weight, dim=0, keepdim=True)
        d_norm = torch.linalg.vector_norm(direction, dim=0, keepdim=True)
        scale = w_norm / (d_norm + _EPS)
    return direction * scale


def random_directions(model: nn.Module, n: int = 2, normalization: str = "filter", seed: int = 0,
                      ignore: Sequence[str] | str = ("pos_embed",)) -> list[list[torch.Tensor]]:
    """``n`` random directions in weight space, each a list of tensors shaped like the trainable parameters.

    Every entry is drawn from N(0, 1) with a CPU ``torch.Generator`` seeded by ``seed`` (so the
    directions do not depend on the device; direction ``k`` is the same whatever ``n`` is), then
    rescaled to the weights with :func:`normalize_direction`, and finally moved to the parameter's
    device and dtype.

    ``normalization="filter"`` is the default because it is the published method (Li et al. 2018)
    and because it makes the picture meaningful: ReLU networks and networks with normalisation
    layers compute the same function when a filter's weights are multiplied by a positive constant
    (and the next layer's divided by it, or the normalisation absorbs it), yet an unnormalised step
    of fixed size would look flat in a large-norm filter and steep in a small-norm one. Scaling each
    filter's step to that filter's norm makes the surface invariant to this rescaling symmetry, so
    the surfaces of different models can be compared. ``"axis0"`` reproduces what Park & Kim's code
    does (norms across dim 0), for comparison with their figures.

    Tensors with fewer than 2 dims (biases, norm affines) get a zero direction, as in Li et al.:
    per-filter normalisation means nothing for a vector, whose every entry would be its own filter.
    So do tensors whose name contains an entry of ``ignore`` (by default positional embeddings,
    which Park & Kim's code also keeps fixed). Random numbers are drawn for them anyway, so
    ``ignore`` does not change the other tensors' directions.

    Raises:
        ValueError: unknown ``normalization``, ``n < 1`` or a model without trainable parameters.
    """
    _check_normalization(normalization)
    check_positive_int(n, "n")
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable parameters: there is no direction to draw")
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(n):
        direction = []
        for name, p in params:
            d = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if p.dim() < 2 or any(key in name for key in ignore):
                d = torch.zeros_like(d)
            else:
                d = normalize_direction(d, p.detach().to("cpu", torch.float32), normalization)
            direction.append(d.to(p.device, p.dtype))
        directions.append(direction)
    return directions


def direction_cosine(d1: Sequence[torch.Tensor], d2: Sequence[torch.Tensor]) -> float:
    """Cosine of the angle between two directions, as flat vectors (float64).

    Random directions in a million dimensions are nearly orthogonal (|cos| ~ 1/√dim), which is why
    Li et al. and Park & Kim do not orthogonalise them; this checks it.
    """
    if len(d1) != len(d2):
        raise ValueError(f"directions have {len(d1)} and {len(d2)} tensors")
    dot = sum((a.double() * b.double()).sum().item() for a, b in zip(d1, d2))
    n1 = math.sqrt(sum(a.double().pow(2).sum().item() for a in d1))
    n2 = math.sqrt(sum(b.double().pow(2).sum().item() for b in d2))
    if n1 == 0 or n2 == 0:
        raise ValueError("a direction is zero: its angle is undefined")
    return dot / (n1 * n2)
