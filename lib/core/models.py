"""The model zoo's architectures, built from timm parts.

Every model is small (about 1M parameters) so that the book's analyses run on a laptop CPU, and
every model is wrapped in :class:`Classifier`, which normalises its input itself: analyses that
work in pixel space (noise, filtering, feature visualisation) feed images in ``[0, 1]``.

=============  ==================================================================================
name           architecture
=============  ==================================================================================
``resnet``     pre-activation ResNet: 3x3 stem (stride 1), 3 stages x 2 basic blocks, widths
               40/80/160, global average pooling (timm's ``PreActBasic`` blocks)
``vit``        ViT (timm's ``VisionTransformer``): patch 4, dim 128, depth 6, 8 heads, MLP x4, CLS
``vit_local3`` the same ViT, each patch query attending only to its 3x3 token neighbourhood
``vit_local5`` ... 5x5 neighbourhood
``alternet``   the ResNet with the last block of stages 2 and 3 replaced by an MSA block working
               at twice the stage width with 20-dim heads (8 and 16 heads): layout ``"CC,CM,CM"``
               (``build(..., layout=...)`` builds any other placement)
``pit``        a pooling-based multi-stage ViT (timm's ``PoolingVisionTransformer``), dims
               40/80/160, depths 2/4/2
=============  ==================================================================================

Models are built with fused attention *off* (see :func:`use_fused_attention`): the fused CPU kernel has
no double backward (Hessian-vector products fail) and bypasses attention hooks. Training switches
it on for speed; the outputs agree to floating-point rounding either way.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from timm.layers import BatchNormAct2d, DropPath, create_conv2d
from timm.layers.attention import Attention
from timm.models.pit import PoolingVisionTransformer
from timm.models.resnetv2 import DownsampleConv, PreActBasic
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse
from timm.models.vision_transformer import VisionTransformer

from .running import check_positive_int

MODELS: tuple[str, ...] = ("resnet", "vit", "vit_local3", "vit_local5", "alternet", "pit")

RESNET_LAYOUT = "CC,CC,CC"
ALTERNET_LAYOUT = "CC,CM,CM"
RESNET_WIDTHS = (40, 80, 160)
MSA_HEAD_DIM = 20
MSA_EXPANSION = 2  # MSA blocks work at twice the stage width: wider, more heads (Park & Kim)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """A zoo model: input normalisation followed by the network ``net``.

    ``arch`` is the zoo name, kept so that :func:`lib.core.residual.units` and checkpoint loading know
    what they hold; :func:`build` also records its arguments as ``build_kwargs`` (so a model can
    be rebuilt or transformed, see :func:`lib.analyses.alternet.from_resnet`).
    """

    def __init__(self, arch: str, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.arch = arch
        self.build_kwargs: dict = {}
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# --------------------------------------------------------------------------------------------
# ResNet and AlterNet
# --------------------------------------------------------------------------------------------
class MSABlock(nn.Module):
    """AlterNet's MSA block (Park & Kim 2022, Sec. 4), hand-written around timm's ``WindowAttention``.

    Pre-activation (BatchNorm -> GELU), 1x1 convolution down to ``hidden`` channels, multi-head
    self-attention inside non-overlapping ``window`` x ``window`` windows with a learned
    relative-position bias, 1x1 convolution up, drop-path, plus the identity. There is no MLP inside:
    the next convolution block plays that role. When the block changes resolution or width, the
    shortcut is a 1x1 projection of the pre-activated input (as in timm's ``PreActBasic``). A block
    that subsamples (``stride > 1``, an MSA at the start of a stage) first reduces the resolution
    with a strided 3x3 convolution, as a convolution block does, instead of the 1x1: a strided 1x1
    would keep one position in four and filter nothing, so an MSA placed there would be compared
    through a worse downsampler (see :func:`strided_msa_hidden` for its width).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, heads: int = 4,
                 window: int = 7, hidden: int | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        hidden = hidden or out_chs
        self.window = window
        self.norm = BatchNormAct2d(in_chs, act_layer=nn.GELU)
        self.downsample = (DownsampleConv(in_chs, out_chs, stride=stride, preact=True, conv_layer=create_conv2d)
                           if stride != 1 or in_chs != out_chs else None)
        self.down = create_conv2d(in_chs, hidden, 3 if stride != 1 else 1, stride=stride)
        self.attn = WindowAttention(hidden, num_heads=heads, head_dim=hidden // heads, window_size=window)
        self.up = create_conv2d(hidden, out_chs, 1)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def branch(self, x_preact: torch.Tensor) -> torch.Tensor:
        """The residual branch, from the pre-activated input."""
        y = self.down(x_preact)
        b, c, h, w = y.shape
        win = (self.window, self.window)
        windows = window_partition(y.permute(0, 2, 3, 1), win).reshape(-1, self.window * self.window, c)
        windows = self.attn(windows).reshape(-1, self.window, self.window, c)
        y = window_reverse(windows, win, h, w).permute(0, 3, 1, 2)
        return self.drop_path(self.up(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        return self.branch(x_preact) + shortcut


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=None)
def strided_msa_hidden(in_chs: int, width: int, window: int) -> int:
    """The hidden width of an MSA block that starts a stage (``stride 2``, ``in_chs -> width``).

    Chosen so that moving an MSA from the end of a stage to its start leaves the parameter count
    unchanged: of the multiples of :data:`MSA_HEAD_DIM` up to ``MSA_EXPANSION · width``, the one
    for which *strided MSA block + convolution block* has the parameters closest to those of
    *strided convolution block + MSA block at* ``MSA_EXPANSION · width`` (the pair it replaces).
    Its strided 3x3 downsampler costs parameters that a full-width MSA would add on top, so a
    placement ablation would otherwise also be a size ablation.
    """
    def conv_block(cin: int, stride: int) -> nn.Module:
        return PreActBasic(cin, width, stride=stride, conv_layer=create_conv2d, norm_layer=BatchNormAct2d,
                           proj_layer=DownsampleConv)

    def msa_block(cin: int, stride: int, hidden: int) -> nn.Module:
        return MSABlock(cin, width, stride=stride, hidden=hidden, heads=max(1, hidden // MSA_HEAD_DIM),
                        window=window)

    full = MSA_EXPANSION * width
    # Candidate blocks are built only to be counted: on the meta device (no memory, no work) and
    # with the random state restored, so building a model stays seeded exactly as before.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        target = _n_params(conv_block(in_chs, 2)) + _n_params(msa_block(width, 1, full))
        rest = _n_params(conv_block(width, 1))
        sizes = {h: _n_params(msa_block(in_chs, 2, h)) for h in range(MSA_HEAD_DIM, full + 1, MSA_HEAD_DIM)}
    return min(sizes, key=lambda h: (abs(sizes[h] + rest - target), -h))


def _window_for(resolution: int, largest: int = 8) -> int:
    """The largest window size <= ``largest`` that tiles a ``resolution`` x ``resolution`` map."""
    return max(d for d in range(1, min(largest, resolution) + 1) if resolution % d == 0)


def parse_layout(layout: str) -> list[str]:
    """Split a layout string such as ``"CC,CM,CM"`` into one string per stage, checking it."""
    stages = [s.strip().upper() for s in layout.split(",")]
    if not stages or any(not s or set(s) - {"C", "M"} for s in stages):
        raise ValueError(f"bad layout {layout!r}: expected comma-separated stages of 'C' (conv block) "
                         f"and 'M' (MSA block), e.g. {ALTERNET_LAYOUT!r}")
    return stages


def layout_override(name: str, layout: str | None) -> str | None:
    """``layout`` in canonical form (``"CC,MC,MC"``), or ``None`` when it is ``name``'s own layout.

    Checkpoints and zoo keys store a layout only when it differs from the model's default, so
    ``build("alternet", layout="cc,cm,cm")`` and ``build("alternet")`` name the same model.
    """
    if layout is None:
        return None
    if name not in ("resnet", "alternet"):
        raise ValueError(f"layout applies only to 'resnet' and 'alternet', not {name!r}")
    canonical = ",".join(parse_layout(layout))
    default = RESNET_LAYOUT if name == "resnet" else ALTERNET_LAYOUT
    return None if canonical == default else canonical


class PreActResNet(nn.Module):
    """A pre-activation ResNet whose blocks are conv (``C``) or MSA (``M``) blocks per ``layout``.

    Stage ``s`` has width ``widths[s]`` and (for ``s > 0``) starts with stride 2. The stem is a
    3x3 stride-1 convolution (no max-pool), as in Park & Kim's CIFAR ResNets.
    """

    def __init__(self, layout: str = RESNET_LAYOUT, widths: Sequence[int] = RESNET_WIDTHS,
                 in_chans: int = 1, num_classes: int = 10, img_size: int = 28,
                 drop_path_rate: float = 0.0):
        super().__init__()
        stages = parse_layout(layout)
        if len(widths) != len(stages):
            raise ValueError(f"layout {layout!r} has {len(stages)} stages but widths {tuple(widths)} "
                             f"has {len(widths)}")
        self.layout = ",".join(stages)
        self.stem = create_conv2d(in_chans, widths[0], 3, stride=1)
        n_blocks = sum(len(s) for s in stages)
        rates = torch.linspace(0, drop_path_rate, n_blocks).tolist()
        self.stages = nn.ModuleList()
        in_chs, resolution, k = widths[0], img_size, 0
        for s, (kinds, width) in enumerate(zip(stages, widths)):
            blocks = []
            for i, kind in enumerate(kinds):
                stride = 2 if (s > 0 and i == 0) else 1
                resolution = math.ceil(resolution / stride)
                if kind == "C":
                    blocks.append(PreActBasic(in_chs, width, stride=stride, conv_layer=create_conv2d,
                                              norm_layer=BatchNormAct2d, proj_layer=DownsampleConv,
                                              drop_path_rate=rates[k]))
                else:
                    hidden = (MSA_EXPANSION * width if stride == 1
                              else strided_msa_hidden(in_chs, width, _window_for(resolution)))
                    blocks.append(MSABlock(in_chs, width, stride=stride, hidden=hidden,
                                           heads=max(1, hidden // MSA_HEAD_DIM),
                                           window=_window_for(resolution), drop_path_rate=rates[k]))
                in_chs, k = width, k + 1
            self.stages.append(nn.Sequential(*blocks))
        self.norm = BatchNormAct2d(in_chs)
        self.head = nn.Linear(in_chs, num_classes)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Final pre-activation, global average pooling and the linear classifier."""
        return self.head(self.norm(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.forward_head(x)


# --------------------------------------------------------------------------------------------
# ViTs
# --------------------------------------------------------------------------------------------
def neighbourhood_mask(grid: int, window: int) -> torch.Tensor:
    """Boolean ``(1 + grid**2, 1 + grid**2)`` mask of which keys each query may attend to.

    Token 0 is CLS, tokens ``1..grid**2`` the patches in row-major order. A patch query sees only
    the patches within its ``window`` x ``window`` neighbourhood (Chebyshev distance
    ``<= window // 2``) and not the CLS token, so patch representations stay truly local; the CLS
    query sees every token (it collects the evidence for the classifier).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window}")
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    dist = torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs())
    mask = torch.zeros(1 + grid * grid, 1 + grid * grid, dtype=torch.bool)
    mask[0, :] = True
    mask[1:, 1:] = dist <= window // 2
    return mask


class LocalAttention(Attention):
    """timm's ``Attention`` with a fixed neighbourhood mask (see :func:`neighbourhood_mask`)."""

    def __init__(self, dim: int, num_heads: int, grid: int, window: int, qkv_bias: bool = True):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.window = window
        self.register_buffer("allowed", neighbourhood_mask(grid, window), persistent=False)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("LocalAttention has a fixed mask; attn_mask/is_causal are not supported")
        return super().forward(x, attn_mask=self.allowed)


def build_vit(in_chans: int = 1, num_classes: int = 10, img_size: int = 28, patch_size: int = 4,
              embed_dim: int = 128, depth: int = 6, num_heads: int = 8, local_window: int | None = None,
              drop_path_rate: float = 0.0) -> VisionTransformer:
    """timm's ViT at zoo scale; ``local_window=k`` restricts every MSA to k x k neighbourhoods."""
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                            num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                            num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, class_token=True,
                            global_pool="token", drop_path_rate=drop_path_rate)
    if local_window is not None:
        grid = img_size // patch_size
        for blk in vit.blocks:
            local = LocalAttention(embed_dim, num_heads, grid, local_window)
            local.load_state_dict(blk.attn.state_dict())  # keep timm's initialisation
            blk.attn = local
    return vit


def build_pit(in_chans: int = 1, num_classes: int = 10, img_size: int = 28,
              drop_path_rate: float = 0.0) -> PoolingVisionTransformer:
    """timm's PiT scaled down: patch 2 (14x14 tokens), pooling to 7x7 and 4x4, dims 40/80/160."""
    return PoolingVisionTransformer(img_size=img_size, patch_size=2, stride=2, base_dims=(20, 20, 20),
                                    depth=(2, 4, 2), heads=(2, 4, 8), mlp_ratio=4, in_chans=in_chans,
                                    num_classes=num_classes, drop_path_rate=drop_path_rate)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def _attention_switches(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that choose between timm's fused and explicit attention (``fused_attn``)."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "fused_attn")]


def use_fused_attention(model: nn.Module, enabled: bool) -> nn.Module:
    """Put every attention module of this ``model`` on the fused (SDPA) kernel or on the explicit path.

    Fused attention is faster but on CPU has no double backward and bypasses hooks; the explicit
    path computes the same function. Only this model changes (timm's process-wide default for new
    modules is left alone). Returns ``model`` for chaining.
    """
    for _, module in _attention_switches(model):
        module.fused_attn = enabled
    return model


def fused_attention_modules(model: nn.Module) -> list[str]:
    """The names of the attention modules of ``model`` now on the fused kernel (``""`` is the model itself)."""
    return [name for name, module in _attention_switches(model) if module.fused_attn]


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention module of ``model`` on its explicit path inside the block.

    The fused kernel computes the same function but never forms the attention probabilities, so
    hooks cannot see them. Each module's own setting is restored on leaving, even after an error.
    """
    modules = [module for _, module in _attention_switches(model)]
    saved = [m.fused_attn for m in modules]
    try:
        for m in modules:
            m.fused_attn = False
        yield model
    finally:
        for m, flag in zip(modules, saved):
            m.fused_attn = flag


def build(name: str, in_chans: int = 1, num_classes: int = 10, img_size: int = 28,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          drop_path_rate: float = 0.0, layout: str | None = None) -> Classifier:
    """Build zoo model ``name`` (one of :data:`MODELS`) with fused attention off.

    ``mean``/``std`` are the per-channel input statistics (default 0.5/0.25 per channel); training
    computes them from the training images and stores them with the other build arguments.
    ``layout`` overrides the stage layout of ``resnet``/``alternet`` (e.g. ``"CC,MC,MC"``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    layout = layout_override(name, layout)
    for arg, value in (("in_chans", in_chans), ("num_classes", num_classes), ("img_size", img_size)):
        check_positive_int(value, arg)
    mean = [0.5] * in_chans if mean is None else list(mean)
    std = [0.25] * in_chans if std is None else list(std)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values (one per channel), got {mean}, {std}")
    common = dict(in_chans=in_chans, num_classes=num_classes, img_size=img_size,
                  drop_path_rate=drop_path_rate)
    if name in ("resnet", "alternet"):
        default = RESNET_LAYOUT if name == "resnet" else ALTERNET_LAYOUT
        net = PreActResNet(layout=layout or default, **common)
    elif name.startswith("vit"):
        window = {"vit": None, "vit_local3": 3, "vit_local5": 5}[name]
        net = build_vit(local_window=window, **common)
    else:
        net = build_pit(**common)
    model = Classifier(name, net, mean, std)
    model.build_kwargs = dict(in_chans=in_chans, num_classes=num_classes, img_size=img_size, mean=mean,
                              std=std, drop_path_rate=drop_path_rate, layout=layout)
    return use_fused_attention(model, False)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
