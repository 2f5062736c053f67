"""Where the data sets' files come from: found on disk, copied from Debian's package, or downloaded.

Fashion-MNIST must work offline, so its four raw idx files are looked for under
``<root>/FashionMNIST/raw/``, then un-gzipped from Debian's ``dataset-fashion-mnist`` package
(:data:`DEBIAN_FASHION_MNIST`), and only then downloaded through torchvision. CIFAR-10/100 are read
with torchvision (online, e.g. on Colab). Every copy is atomic (a temporary file, then a rename), and
a data set that cannot be had raises :class:`DataNotFoundError` with every way to get it.
:mod:`lib.core.data` builds tensors, subsets and batches on top of this.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEBIAN_FASHION_MNIST: Path = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not on disk and could not be fetched; the message says how to get them."""


# Fashion-MNIST ------------------------------------------------------------------------------------


def _fashion_raw_dir(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def _missing(folder: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not (folder / n).is_file()]


def _gunzip_atomic(src: Path, dst: Path) -> None:
    """Decompress ``src`` to ``dst`` through a temporary file in ``dst``'s folder and ``os.replace``,
    so ``dst`` is either absent or complete, never half written."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=1 << 20)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a data file should be readable like any other
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_from_debian(raw: Path) -> None:
    """Un-gzip the Debian package's files into ``raw`` (only those missing there)."""
    debian = Path(DEBIAN_FASHION_MNIST)
    raw.mkdir(parents=True, exist_ok=True)
    for name in _missing(raw, FASHION_MNIST_FILES):
        _gunzip_atomic(debian / f"{name}.gz", raw / name)


def _download_fashion_mnist(root: Path) -> None:
    """Let torchvision download the raw files (stdout silenced so notebook outputs stay stable)."""
    from torchvision import datasets

    with contextlib.redirect_stdout(io.StringIO()):
        datasets.FashionMNIST(str(root), train=True, download=True)


def ensure_fashion_mnist(root: str | os.PathLike, download: bool = True) -> Path:
    """Make sure the four raw Fashion-MNIST idx files exist under ``<root>/FashionMNIST/raw/``.

    Tries, in order: the files already there; copying and un-gzipping them from Debian's
    ``dataset-fashion-mnist`` package (:data:`DEBIAN_FASHION_MNIST`); a torchvision download (only if
    ``download``). Returns the raw folder.

    Raises:
        DataNotFoundError: none of the three ways worked; the message names all of them.
    """
    root_path = Path(root)
    raw = _fashion_raw_dir(root_path)
    if not _missing(raw, FASHION_MNIST_FILES):
        return raw

    problems: list[str] = []
    debian = Path(DEBIAN_FASHION_MNIST)
    gz_names = tuple(f"{n}.gz" for n in FASHION_MNIST_FILES)
    if not _missing(debian, gz_names):
        try:
            _copy_from_debian(raw)
        except (OSError, EOFError) as err:
            problems.append(f"copying from {debian} failed: {type(err).__name__}: {err}")
        if not _missing(raw, FASHION_MNIST_FILES):
            return raw

    if download:
        try:
            _download_fashion_mnist(root_path)
        except Exception as err:  # noqa: BLE001 - any failure means "not available"; reported below
            problems.append(f"torchvision download failed: {type(err).__name__}: {err}")
        if not _missing(raw, FASHION_MNIST_FILES):
            return raw
    else:
        problems.append("torchvision download not attempted (download=False)")

    raise DataNotFoundError(_fashion_missing_message(raw, problems))


def _fashion_missing_message(raw: Path, problems: list[str]) -> str:
    lines = [
        f"Fashion-MNIST not found. Missing in {raw}: {', '.join(_missing(raw, FASHION_MNIST_FILES))}.",
        "Any one of these provides it:",
        f"  1. put the four un-gzipped idx files {', '.join(FASHION_MNIST_FILES)} in {raw}/",
        "  2. install the Debian package: sudo apt-get install dataset-fashion-mnist "
        f"(files in {DEBIAN_FASHION_MNIST}/; they are copied from there automatically)",
        "  3. let torchvision download them (needs internet): load('fashion-mnist', download=True)",
    ]
    if problems:
        lines.append("What was tried:")
        lines.extend(f"  - {p}" for p in problems)
    return "\n".join(lines)


def _read_idx(path: Path, ndim: int) -> Tensor:
    """Parse an unsigned-byte idx file (magic 0x0801 for 1-D labels, 0x0803 for 3-D images)."""
    data = path.read_bytes()
    magic = int.from_bytes(data[0:4], "big")
    if magic != 0x0800 + ndim:
        raise ValueError(f"{path}: expected an unsigned-byte idx file with {ndim} dims, magic {magic:#x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = math.prod(dims)
    if len(data) - offset != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes) but has {len(data) - offset}")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)
    return torch.from_numpy(array.copy())


def read_fashion_mnist(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    raw = ensure_fashion_mnist(root, download=download)
    prefix = "train" if train else "t10k"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", 3)
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", 1)
    if len(images) != len(labels):
        raise ValueError(f"{raw}: {len(images)} images but {len(labels)} labels for split {prefix!r}")
    return images.unsqueeze(1).float().div(255), labels.long()


# CIFAR --------------------------------------------------------------------------------------------


def read_cifar(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """Read CIFAR-10/100 with torchvision; download only if reading what is on disk fails."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(root), train=train, download=False)
    except Exception as first:  # noqa: BLE001 - missing or corrupt; maybe download below
        if not download:
            raise DataNotFoundError(_cifar_missing_message(name, root, cls.base_folder, first, False)) from first
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ds = cls(str(root), train=train, download=True)
        except Exception as err:  # noqa: BLE001 - reported in the message
            raise DataNotFoundError(_cifar_missing_message(name, root, cls.base_folder, err, True)) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float().div(255)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def _cifar_missing_message(name: str, root: Path, folder: str, err: Exception, tried: bool) -> str:
    how = "download failed" if tried else "download not attempted (download=False)"
    return (
        f"{name} not found or corrupted under {root}. CIFAR needs either internet access for the "
        f"torchvision download (e.g. on Colab; load({name!r}, download=True)) or the extracted "
        f"{folder!r} folder placed at {Path(root) / folder}. {how}: {type(err).__name__}: {err}"
    )
