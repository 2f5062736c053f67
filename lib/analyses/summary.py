"""Descriptions of zoo models: size, compute, and the residual units with their output shapes."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..core import residual
from ..core.models import count_parameters
from ..core.running import eval_mode


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one forward pass on one input of ``input_shape`` (C, H, W).

    Counted by PyTorch's ``FlopCounterMode`` over matrix multiplications and convolutions, where a
    multiply-add counts as 2 FLOPs; element-wise work (norms, activations, softmax) is not counted.
    """
    params = list(model.parameters())
    needs_grad = [p.requires_grad for p in params]
    # The counter hooks every module output that requires grad; a parameter passed through as
    # an output (PiT's CLS token) would trip it, so count with gradients off entirely.
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=params[0].device))
    finally:
        for p, flag in zip(params, needs_grad):
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class UnitRow(residual.AboutUnit):
    """One residual unit (its :class:`lib.core.residual.UnitInfo`), what it outputs and how many weights it owns."""

    info: residual.UnitInfo
    output_shape: tuple[int, ...]
    params: int


def unit_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[UnitRow]:
    """The units of :func:`lib.core.residual.units` with the shape of each output for one input
    and the number of weights each unit owns (every parameter belongs to exactly one unit)."""
    units = residual.units(model)
    device = next(model.parameters()).device
    with torch.no_grad():
        _, outs = residual.run_units(units, torch.zeros(1, *input_shape, device=device), keep=True)
    return [UnitRow(unit.info, tuple(out.shape[1:]), sum(p.numel() for p in unit.module.parameters()))
            for unit, out in zip(units, outs)]


def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters, forward FLOPs per image and the number of units of each kind."""
    kinds: dict[str, int] = {}
    for unit in residual.units(model):
        kinds[unit.kind] = kinds.get(unit.kind, 0) + 1
    return {"params": count_parameters(model), "flops": count_flops(model, input_shape),
            **{f"{k}_units": v for k, v in kinds.items()}}
