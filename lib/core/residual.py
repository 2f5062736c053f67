"""Every zoo model as a sequence of residual units.

Park & Kim walk a network as ``[embed, unit, unit, ..., head]``: one unit per MSA and per MLP
sub-layer in a transformer, one per basic block in a ResNet. :func:`units` returns exactly that
list for any zoo model, and applying the units in order reproduces ``model(x)`` bit for bit (the
units call the model's own sub-modules in the model's own order). Fourier analysis, feature-map
variance, lesions, CKA and the shading of plots all walk this one list.

What flows between units: an image-shaped map ``(B, C, H, W)`` in CNNs and AlterNet, and a token
sequence ``(B, 1 + H*W, D)`` with the CLS token first in the transformers (PiT included: its
units carry the CLS token in front of the flattened grid). :func:`as_grid` turns either into a
spatial map.

:class:`UnitInfo` is the one description of a unit (position, name, kind, stage, normalised
depth, whether it is residual) that every analysis result carries, so that plots and tables of
different analyses line up unit by unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .models import Classifier, MSABlock, PreActResNet

KINDS: tuple[str, ...] = ("embed", "conv", "msa", "mlp", "pool", "head")


@dataclass(frozen=True)
class UnitInfo:
    """Where a unit sits in its model and what it is.

    ``index`` is its position in :func:`units`; ``kind`` one of :data:`KINDS`; ``stage`` counts
    resolution stages from 0 (the embedding is in stage 0, the head in the last stage); ``depth``
    is the normalised depth ``index / (number of units - 1)``, 0 for the embedding and 1 for the
    head (what Park & Kim plot against). ``residual`` is True when the unit computes
    ``x + branch(x)`` with an identity shortcut, so that lesioning it means skipping it.
    """

    index: int
    name: str
    kind: str
    stage: int
    depth: float
    residual: bool


class AboutUnit:
    """For anything about one unit that holds its :class:`UnitInfo` as ``info``: the unit's
    ``index``, ``name``, ``kind``, ``stage``, ``depth`` and ``residual`` read through, so every
    analysis result describes its unit the same way."""

    info: UnitInfo

    index = property(lambda self: self.info.index)
    name = property(lambda self: self.info.name)
    kind = property(lambda self: self.info.kind)
    stage = property(lambda self: self.info.stage)
    depth = property(lambda self: self.info.depth)
    residual = property(lambda self: self.info.residual)


@dataclass(frozen=True)
class Unit(AboutUnit):
    """One unit of a model: its :class:`UnitInfo` and the module that computes it."""

    info: UnitInfo
    module: nn.Module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@dataclass(frozen=True)
class _Part:
    """A unit before its position is known (the builders list these; :func:`units` numbers them)."""

    name: str
    kind: str
    module: nn.Module
    stage: int = 0
    residual: bool = False


class _View(nn.Module):
    """A view onto sub-modules of a model.

    A unit registers exactly the sub-modules and parameters it uses (the same objects as the
    model's, so nothing is copied), which makes ``unit.parameters()`` the unit's own weights. When
    it needs a method of the whole model, it keeps the model as an unregistered reference.
    """

    def _refer(self, name: str, obj: nn.Module) -> None:
        object.__setattr__(self, name, obj)  # a plain attribute: not a registered sub-module


class _NormalizedStem(_View):
    def __init__(self, model: Classifier):
        super().__init__()
        self.normalize, self.stem = model.normalize, model.net.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(self.normalize(x))


class _ResNetHead(_View):
    def __init__(self, net: PreActResNet):
        super().__init__()
        self.norm, self.head = net.norm, net.head
        self._refer("_net", net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net.forward_head(x)


class _ConvUnit(_View):
    """A pre-activation block; with an identity shortcut it computes ``x + branch(x)``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.block, MSABlock):
            return self.block.branch(self.block.norm(x))
        b = self.block
        return b.drop_path(b.conv2(b.norm2(b.conv1(b.norm1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _TokenResidual(_View):
    """One pre-norm transformer sub-layer: ``x + drop_path(ls(fn(norm(x))))``."""

    def __init__(self, norm: nn.Module, fn: nn.Module, ls: nn.Module, drop_path: nn.Module):
        super().__init__()
        self.norm, self.fn, self.ls, self.drop_path = norm, fn, ls, drop_path

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.ls(self.fn(self.norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _transformer_units(block: nn.Module, prefix: str, stage: int) -> list[_Part]:
    msa = _TokenResidual(block.norm1, block.attn, block.ls1, block.drop_path1)
    mlp = _TokenResidual(block.norm2, block.mlp, block.ls2, block.drop_path2)
    return [_Part(f"{prefix}.msa", "msa", msa, stage, True),
            _Part(f"{prefix}.mlp", "mlp", mlp, stage, True)]


class _ViTEmbed(_View):
    """Normalisation, patch embedding, CLS token and position embedding (timm's own code path)."""

    def __init__(self, model: Classifier):
        super().__init__()
        vit = model.net
        self.normalize, self.patch_embed, self.norm_pre = model.normalize, vit.patch_embed, vit.norm_pre
        self.pos_drop, self.patch_drop = vit.pos_drop, vit.patch_drop
        self.pos_embed, self.cls_token = vit.pos_embed, vit.cls_token
        self._refer("_vit", vit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self._vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(self.normalize(x)))))


class _ViTHead(_View):
    def __init__(self, vit: nn.Module):
        super().__init__()
        self.norm, self.fc_norm, self.head = vit.norm, vit.fc_norm, vit.head
        self._refer("_vit", vit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._vit.forward_head(self._vit.norm(x))


class _PiTEmbed(_View):
    def __init__(self, model: Classifier):
        super().__init__()
        pit = model.net
        self.normalize, self.patch_embed, self.pos_drop = model.normalize, pit.patch_embed, pit.pos_drop
        self.pos_embed, self.cls_token = pit.pos_embed, pit.cls_token
        self.norm = pit.transformers[0].norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.pos_drop(self.patch_embed(self.normalize(x)) + self.pos_embed)
        cls = self.cls_token.expand(grid.shape[0], -1, -1)
        return self.norm(torch.cat((cls, grid.flatten(2).transpose(1, 2)), dim=1))


class _PiTPool(_View):
    """PiT's pooling between stages: depthwise strided conv on the grid, linear map on CLS."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.pool, self.norm = stage.pool, stage.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, grid = x[:, :1], as_grid(x)
        grid, cls = self.pool(grid, cls)
        return self.norm(torch.cat((cls, grid.flatten(2).transpose(1, 2)), dim=1))


class _PiTHead(_View):
    def __init__(self, pit: nn.Module):
        super().__init__()
        self.norm, self.head = pit.norm, pit.head
        self._refer("_pit", pit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pit.forward_head(self._pit.norm(x[:, :1]))


def _resnet_parts(model: Classifier) -> list[_Part]:
    net: PreActResNet = model.net
    out = [_Part("stem", "embed", _NormalizedStem(model), 0)]
    for s, stage in enumerate(net.stages):
        for i, blk in enumerate(stage):
            kind = "msa" if isinstance(blk, MSABlock) else "conv"
            out.append(_Part(f"stage{s + 1}.{i}.{kind}", kind, _ConvUnit(blk), s, blk.downsample is None))
    out.append(_Part("head", "head", _ResNetHead(net), len(net.stages) - 1))
    return out


def _vit_parts(model: Classifier) -> list[_Part]:
    vit = model.net
    out = [_Part("embed", "embed", _ViTEmbed(model), 0)]
    for i, blk in enumerate(vit.blocks):
        out += _transformer_units(blk, f"block{i}", 0)
    out.append(_Part("head", "head", _ViTHead(vit), 0))
    return out


def _pit_parts(model: Classifier) -> list[_Part]:
    pit = model.net
    out = [_Part("embed", "embed", _PiTEmbed(model), 0)]
    for s, stage in enumerate(pit.transformers):
        if stage.pool is not None:
            out.append(_Part(f"stage{s + 1}.pool", "pool", _PiTPool(stage), s))
        for i, blk in enumerate(stage.blocks):
            out += _transformer_units(blk, f"stage{s + 1}.{i}", s)
    out.append(_Part("head", "head", _PiTHead(pit), len(pit.transformers) - 1))
    return out


def units(model: nn.Module) -> list[Unit]:
    """The model as its sequence of residual units (see the module docstring).

    Raises ``TypeError`` for anything that is not a zoo :class:`~lib.core.models.Classifier`.
    """
    if not isinstance(model, Classifier):
        raise TypeError(f"units() needs a zoo model built by lib.core.models.build, got {type(model).__name__}")
    if isinstance(model.net, PreActResNet):
        parts = _resnet_parts(model)
    elif model.arch.startswith("vit"):
        parts = _vit_parts(model)
    elif model.arch == "pit":
        parts = _pit_parts(model)
    else:
        raise TypeError(f"no residual-unit decomposition for architecture {model.arch!r}")
    last = max(1, len(parts) - 1)
    return [Unit(UnitInfo(i, p.name, p.kind, p.stage, i / last, p.residual), p.module) for i, p in enumerate(parts)]


def unit_infos(model: nn.Module) -> list[UnitInfo]:
    """The :class:`UnitInfo` of every unit of ``units(model)``, head included."""
    return [b.info for b in units(model)]


def run_units(units: list[Unit], x: torch.Tensor, keep: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply ``units`` in order; with ``keep=True`` also return every unit's output."""
    outputs = []
    for unit in units:
        x = unit(x)
        if keep:
            outputs.append(x)
    return (x, outputs) if keep else x


def as_grid(x: torch.Tensor) -> torch.Tensor:
    """A unit's output as a spatial map ``(B, C, H, W)``.

    Maps pass through; token sequences ``(B, N, D)`` lose their prefix (CLS) tokens, found as
    ``N - side**2`` for the largest square grid that fits, and are reshaped to the square grid.
    Logits (2-D) have no spatial extent and raise ``ValueError``.
    """
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise ValueError(f"expected a (B, C, H, W) map or (B, N, D) tokens, got shape {tuple(x.shape)}")
    b, n, d = x.shape
    side = math.isqrt(n)
    return x[:, n - side * side:].transpose(1, 2).reshape(b, d, side, side)
