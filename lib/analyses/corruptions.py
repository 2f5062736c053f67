"""Common corruptions of small grey images at five severities: a corrupted Fashion-MNIST, seeded.

Park & Kim (2022, Sec. 4) judge AlterNet's robustness on *corrupted data* (CIFAR-100-C and
ImageNet-C, Hendrycks & Dietterich 2019), not on noise of one frequency band. No corrupted
Fashion-MNIST ships with the data, so :func:`corrupt` builds one from recipes of the same kinds:
additive noise, blur, loss of contrast, pixelation, JPEG compression and an elastic warp. The
severities of the first five follow the CIFAR-10-C recipes, whose 32×32 images are the closest in
size to Fashion-MNIST's 28×28; the elastic warp is this book's own (a smooth random displacement
field of a few pixels), simpler than the benchmark's. They are a corrupted Fashion-MNIST built the
way the benchmarks are, not a published benchmark: numbers on it compare models with each other,
not with the papers' error rates.

Every corruption maps images in [0, 1] to images in [0, 1] of the same shape. Random draws (the
noise, the displacement field) come from a CPU generator seeded with ``seed``, so the same call
gives the same images on every machine, and every model can be tested on the very same corrupted
images (a paired comparison). How a model fares on them is
:func:`lib.analyses.robustness.corruption_robustness`.
"""
from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from ..core.running import check_images

#: The corruptions and the parameter of each at severities 1 to 5: the standard deviation of the
#: added Gaussian noise (pixel units), the blur's sigma (pixels), the contrast factor, the JPEG
#: quality, the side of the pixelated image as a share of the original, the largest displacement of
#: the elastic warp (pixels).
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "elastic": (0.5, 1.0, 1.5, 2.0, 2.5),
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
ELASTIC_SMOOTHING = 3.0  # sigma (pixels) of the Gaussian that smooths the elastic displacement field


def check_corruption(kind: object, severity: object) -> float:
    """The parameter of corruption ``kind`` at ``severity``, or a ``ValueError`` naming the choices."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return float(CORRUPTIONS[kind][int(severity) - 1])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_unit_range(x: Tensor) -> None:
    check_images(x)
    if not x.is_floating_point() or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("corruptions take float images with pixels in [0, 1] (as lib.core.data loads them); "
                         f"got dtype {x.dtype} with values in [{x.min().item():g}, {x.max().item():g}]")


def elastic_field(shape: tuple[int, int, int, int], amplitude: float, generator: torch.Generator) -> Tensor:
    """A smooth random displacement field ``(N, H, W, 2)`` in pixels, largest absolute value ``amplitude``.

    Uniform noise in [−1, 1] per pixel and direction, smoothed by a Gaussian of
    :data:`ELASTIC_SMOOTHING` pixels, then scaled per image so that its largest component is
    ``amplitude``: neighbouring pixels move together, so strokes bend instead of tearing.
    """
    n, _, h, w = shape
    noise = torch.rand((n, 2, h, w), generator=generator) * 2 - 1
    kernel = 2 * int(3 * ELASTIC_SMOOTHING) + 1
    smooth = gaussian_blur(noise, [kernel, kernel], [ELASTIC_SMOOTHING, ELASTIC_SMOOTHING])
    peak = smooth.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (smooth / peak * amplitude).permute(0, 2, 3, 1)


def _elastic(x: Tensor, amplitude: float, generator: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    field = elastic_field(tuple(x.shape), amplitude, generator)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    # grid_sample's coordinates run from −1 (first pixel's centre) to 1 (last pixel's centre)
    gx = (xs + field[..., 0]) / (w - 1) * 2 - 1
    gy = (ys + field[..., 1]) / (h - 1) * 2 - 1
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def _jpeg(x: Tensor, quality: int) -> Tensor:
    """Each image saved as a JPEG of ``quality`` and read back (Pillow), grey or RGB."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs grey (1 channel) or RGB (3 channel) images, got {x.shape[1]} channels")
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in pixels:
        buffer = BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(BytesIO(buffer.getvalue())), dtype=np.float32)
        out.append(torch.from_numpy(decoded.reshape(img.shape)))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.dtype) / 255


def _pixelate(x: Tensor, share: float) -> Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * share)), max(1, round(w * share))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def corrupt(x: Tensor, kind: str, severity: int, seed: int = 0) -> Tensor:
    """``x`` (images in [0, 1], ``(N, C, H, W)``, on the CPU) with corruption ``kind`` at ``severity``.

    ``kind`` is one of :data:`CORRUPTIONS`, ``severity`` one of :data:`SEVERITIES`. The noise and
    the elastic field are drawn from a generator seeded with ``seed``; the others are deterministic.
    Returns a new tensor in [0, 1]; ``x`` is not changed.
    """
    value = check_corruption(kind, severity)
    _check_unit_range(x)
    if x.device.type != "cpu":
        raise ValueError(f"corrupt() works on CPU tensors (JPEG coding runs there, in Pillow), got {x.device}")
    if kind == "gaussian_noise":
        out = x + value * torch.randn(x.shape, generator=_generator(seed), dtype=x.dtype)
    elif kind == "gaussian_blur":
        kernel = 2 * int(3 * value) + 1
        out = gaussian_blur(x, [kernel, kernel], [value, value])
    elif kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = mean + value * (x - mean)
    elif kind == "jpeg":
        out = _jpeg(x, int(value))
    elif kind == "pixelate":
        out = _pixelate(x, value)
    else:
        out = _elastic(x, value, _generator(seed))
    return out.clamp(0.0, 1.0)
