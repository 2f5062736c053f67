"""Datasets as whole in-memory tensors, plus batch augmentation that runs on the device.

Why this shape:

* The models in this book are small (~1M parameters) and the data sets are small (Fashion-MNIST,
  CIFAR), so a whole split fits in memory as one float tensor. Training and the analyses then index
  tensors directly instead of going through a ``DataLoader`` with worker processes, which on a GPU
  would be the bottleneck and on a 2-core CPU costs more than it saves.
* Images are returned in ``[0, 1]`` and are **not** normalised: every model normalises inside its
  ``forward``. Pixel-space analyses (adding noise, Fourier filtering, feature visualisation) can thus
  work on plain images without undoing a normalisation first.
* Augmentation (random crop with zero padding, horizontal flip) is one vectorised gather over the
  batch, so it runs wherever the batch lives.
* Fashion-MNIST, the default, must be available offline: :mod:`lib.core.datafiles` finds its raw files,
  copies them from Debian's ``dataset-fashion-mnist`` package or, last, downloads them.
  CIFAR-10/100 are read with torchvision (online, e.g. Colab).
* ``synthetic`` is a tiny procedural data set (oriented bars) that needs no files at all, so unit
  tests and smoke runs of the training code are fast and deterministic.

Nothing here prints on success, so notebooks that call :func:`load` keep stable stored outputs.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import datafiles

__all__ = [
    "DATA_ROOT",
    "DATASETS",
    "DatasetInfo",
    "augment",
    "balanced_subset_indices",
    "ensure_fashion_mnist",
    "info",
    "iterate_batches",
    "load",
]


def _default_root() -> Path:
    """``$HOWVITS_DATA`` if set and non-empty, else ``<repo>/data`` (repo = parent of ``lib/``)."""
    env = os.environ.get("HOWVITS_DATA", "")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "data"


DATA_ROOT: Path = _default_root()
DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "synthetic")

SYNTHETIC_SIZES: dict[bool, int] = {True: 1024, False: 256}  # train -> count

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# The fine label names of CIFAR-100 in label order (alphabetical, as in the data set's meta file).
_CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray
road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
wardrobe whale willow_tree wolf woman worm
""".split())


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set: what a model needs to be built for it, and the class names."""

    name: str
    in_chans: int
    num_classes: int
    img_size: int
    classes: tuple[str, ...]


_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 10, 28, _FASHION_CLASSES),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32, _CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 3, 100, 32, _CIFAR100_CLASSES),
    "synthetic": DatasetInfo("synthetic", 1, 10, 28, tuple(f"pattern {i}" for i in range(10))),
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def info(name: str) -> DatasetInfo:
    """Channels, number of classes, image size and class names of data set ``name``.

    Needs no files, so models can be built before (or without) loading the data.
    """
    _check_name(name)
    return _INFO[name]


# --------------------------------------------------------------------------------------------------
# Loading


def load(
    name: str,
    train: bool = True,
    subset: float | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load a whole split in memory.

    Returns ``(images, labels)``: images float32 ``(N, C, H, W)`` in ``[0, 1]`` (no normalisation;
    the models normalise inside), labels int64 ``(N,)``, both on the CPU.

    Args:
        name: one of :data:`DATASETS`.
        train: training split if True, else the test split.
        subset: if given (``0 < subset <= 1``, training split only), a class-balanced, seeded
            fraction of the training set, in ascending index order (see
            :func:`balanced_subset_indices`).
        seed: seeds the subset choice and, for ``synthetic``, the generated images.
        root: data folder; defaults to :data:`DATA_ROOT`.
        download: whether a missing data set may be downloaded (needs internet).

    Raises:
        ValueError: unknown ``name``, ``subset`` out of range or ``subset`` on the test split.
        lib.core.datafiles.DataNotFoundError: the files are missing and could not be fetched.
    """
    _check_name(name)
    if subset is not None:
        _check_fraction(subset, "subset")
        if not train:
            raise ValueError(f"subset={subset!r} is only supported for the training split (train=True)")
    root_path = Path(root) if root is not None else DATA_ROOT

    if name == "fashion-mnist":
        x, y = datafiles.read_fashion_mnist(root_path, train, download)
    elif name in ("cifar10", "cifar100"):
        x, y = datafiles.read_cifar(name, root_path, train, download)
    else:
        x, y = _make_synthetic(train, seed)

    if subset is not None:
        idx = balanced_subset_indices(y, subset, seed)
        x, y = x[idx], y[idx]
    return x, y


def ensure_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Make sure Fashion-MNIST's raw files are under ``<root>/FashionMNIST/raw/`` (root defaults to
    :data:`DATA_ROOT`) and return that folder; see :func:`lib.core.datafiles.ensure_fashion_mnist`."""
    return datafiles.ensure_fashion_mnist(Path(root) if root is not None else DATA_ROOT, download)


def _check_fraction(fraction: float, what: str) -> None:
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and 0 < fraction <= 1
    if not ok:
        raise ValueError(f"{what} must be a number in (0, 1], got {fraction!r}")


def balanced_subset_indices(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Indices of a class-balanced, seeded fraction of a labelled set.

    For each class ``c`` (in ascending order) ``max(1, round(fraction * count_c))`` of its indices
    are drawn without replacement with a ``torch.Generator`` seeded by ``seed``. The result is an
    int64 tensor sorted ascending, so the same ``(labels, fraction, seed)`` always give the same
    indices in the same order.
    """
    _check_fraction(fraction, "fraction")
    labels = labels.detach().cpu().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels, sorted=True):
        idx = torch.nonzero(labels == c).squeeze(1)
        k = max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    if not chosen:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(chosen)).values.to(torch.int64)


# Synthetic ----------------------------------------------------------------------------------------


def _split_seed(seed: int, train: bool) -> int:
    """Independent generator seeds for the two splits (no collisions between (seed, split) pairs)."""
    return int(np.random.SeedSequence([seed, 0 if train else 1]).generate_state(1)[0])


def _make_synthetic(train: bool, seed: int, n: int | None = None, size: int = 28) -> tuple[Tensor, Tensor]:
    """Oriented bars: class ``c`` is a blurred line segment at angle ``c * 18°`` through (roughly)
    the centre, with random angle jitter (±4°), sideways and lengthwise offsets, width, contrast and
    a little Gaussian noise. Linearly separable enough for a linear model, yet not trivial."""
    n = SYNTHETIC_SIZES[train] if n is None else n
    num_classes = _INFO["synthetic"].num_classes
    g = torch.Generator().manual_seed(_split_seed(seed, train))

    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    angle = labels.view(n, 1, 1) * (math.pi / num_classes) + uniform(-4, 4) * (math.pi / 180)
    across = uniform(-2.0, 2.0)  # sideways offset of the bar, pixels
    along = uniform(-3.0, 3.0)  # shift of the segment's centre along the bar, pixels
    width = uniform(1.0, 1.8)  # Gaussian sigma of the bar's cross-section
    contrast = uniform(0.6, 1.0)

    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = torch.cos(angle), torch.sin(angle)
    u = xx * cos + yy * sin  # along the bar
    v = -xx * sin + yy * cos  # across the bar
    bar = torch.exp(-0.5 * ((v - across) / width) ** 2) * torch.exp(-0.5 * ((u - along) / 8.0) ** 2)
    images = contrast * bar + 0.05 * torch.randn(n, size, size, generator=g)
    return images.clamp_(0, 1).unsqueeze(1).contiguous(), labels.to(torch.int64)


# --------------------------------------------------------------------------------------------------
# Augmentation and batching


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator lives on {generator.device.type!r} but the data is on {device.type!r}; "
            f"create it with torch.Generator(device={device.type!r})"
        )


def augment(
    x: Tensor, generator: torch.Generator | None = None, pad: int = 2, flip: bool = True
) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on ``x``'s device.

    Each image of the batch ``x`` ``(N, C, H, W)`` is shifted by a random ``(dy, dx)`` with
    ``|dy|, |dx| <= pad`` (uncovered pixels become 0) — i.e. a random ``H × W`` crop of the image
    zero-padded by ``pad`` — and, if ``flip``, mirrored left-right with probability 1/2. Done as one
    gather over the whole batch (no Python loop over images). Random numbers come from
    ``generator`` (on ``x.device``'s type) or the global RNG. Returns a new tensor of ``x``'s shape
    and dtype.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    _check_generator(generator, x.device)
    n, c, h, w = x.shape
    dev = x.device

    offset_y = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    offset_x = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    rows = offset_y[:, None] + torch.arange(h, device=dev)  # (N, H) rows of the padded image
    cols_fwd = torch.arange(w, device=dev)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=dev) < 0.5
        cols_fwd = torch.where(mirrored[:, None], cols_fwd.flip(0), cols_fwd)  # (N, W)
    cols = offset_x[:, None] + cols_fwd  # (N, W)

    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x_batch, y_batch)`` of at most ``batch_size`` samples from in-memory tensors.

    Every sample appears exactly once per pass (except a short last batch when ``drop_last``).
    With ``shuffle`` the order is ``torch.randperm(len(x), generator=generator, device=x.device)``.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    order = None
    if shuffle:
        _check_generator(generator, x.device)
        order = torch.randperm(n, generator=generator, device=x.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx.to(y.device)]


def seeded_sample(x: Tensor, y: Tensor, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The first ``n`` samples of a seeded random order of ``(x, y)``: a fixed random sample.

    The order is ``torch.randperm(len(x))`` from a CPU generator seeded with ``seed``, so samples of
    different sizes drawn with one seed are nested (the 500 images are the first 500 of the 2,000),
    and a chapter can size each analysis separately while they all share their images.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(x):
        raise ValueError(f"n must be an integer in [1, {len(x)}], got {n!r}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[order], y[order]


def held_out_training(name: str = "fashion-mnist", n: int = 2000, seed: int = 0, subset: float = 0.1,
                      subset_seed: int = 0, root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """``n`` seeded training images from *outside* the class-balanced ``subset`` (as :func:`load`
    draws it with ``subset_seed``), unaugmented.

    The zoo's small-data models train on that subset and the Hessian chapters draw their probe
    mini-batches from it, so these images are held out from both: the place to fit a calibration
    (e.g. a temperature) without touching what is measured. A seeded random sample
    (:func:`seeded_sample` of the complement), so sizes drawn with one seed are nested.

    Raises:
        ValueError: ``n`` is not an integer in [1, the size of the complement].
    """
    x, y = load(name, train=True, seed=subset_seed, root=root)
    inside = torch.zeros(len(y), dtype=torch.bool)
    inside[balanced_subset_indices(y, subset, subset_seed)] = True
    outside = torch.nonzero(~inside).squeeze(1)
    return seeded_sample(x[outside], y[outside], n, seed=seed)
