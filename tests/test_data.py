"""Tests for lib/core/data.py and lib/core/datafiles.py: file resolution on fake files, subsets, augmentation, synthetic data, batching."""

from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from lib.core import data, datafiles  # noqa: E402
from lib.core.datafiles import DataNotFoundError  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Helpers that write fake data sets in the on-disk formats


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic 0x0800 + ndim (2049 labels, 2051 images), big-endian dims."""
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_fashion(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_raw(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (folder / name).write_bytes(idx_bytes(array))


def write_gz(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))


def check_fashion(root: Path, arrays: dict[str, np.ndarray], **kwargs) -> None:
    for train, prefix in ((True, "train"), (False, "t10k")):
        x, y = data.load("fashion-mnist", train=train, root=root, **kwargs)
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        assert x.shape == (len(images), 1, 28, 28)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, torch.from_numpy(images).float().unsqueeze(1) / 255)
        assert torch.equal(y, torch.from_numpy(arrays[f"{prefix}-labels-idx1-ubyte"]).long())


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    """Point the Debian folder at an empty directory."""
    empty = tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(datafiles, "DEBIAN_FASHION_MNIST", empty)
    return empty


@pytest.fixture
def failing_download(monkeypatch):
    """Make every torchvision download raise, and count the attempts."""
    calls = []

    def fail(self):
        calls.append(type(self).__name__)
        raise RuntimeError("no network in this test")

    for cls in (torchvision.datasets.FashionMNIST, torchvision.datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", fail)  # CIFAR100 inherits from CIFAR10
    return calls


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST resolution


def test_fashion_raw_files_are_used(tmp_path, no_debian, failing_download):
    arrays = fake_fashion()
    write_raw(tmp_path / "root" / "FashionMNIST" / "raw", arrays)
    check_fashion(tmp_path / "root", arrays)
    assert failing_download == []


def test_fashion_matches_torchvision_reader(tmp_path, no_debian):
    arrays = fake_fashion(seed=3)
    write_raw(tmp_path / "FashionMNIST" / "raw", arrays)
    x, y = data.load("fashion-mnist", root=tmp_path, download=False)
    ds = torchvision.datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    assert torch.equal(x, ds.data.unsqueeze(1).float() / 255)
    assert torch.equal(y, ds.targets)


def test_fashion_copied_from_debian(tmp_path, monkeypatch, failing_download):
    arrays = fake_fashion(seed=1)
    debian = tmp_path / "debian"
    write_gz(debian, arrays)
    monkeypatch.setattr(datafiles, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    assert data.ensure_fashion_mnist(root) == root / "FashionMNIST" / "raw"
    assert sorted(os.listdir(root / "FashionMNIST" / "raw")) == sorted(arrays)  # no temp files left
    assert all((root / "FashionMNIST" / "raw" / n).stat().st_mode & 0o777 == 0o644 for n in arrays)
    check_fashion(root, arrays)
    assert failing_download == []


def test_fashion_debian_needs_all_four_files(tmp_path, monkeypatch, failing_download):
    arrays = fake_fashion()
    debian = tmp_path / "debian"
    write_gz(debian, {k: v for k, v in arrays.items() if not k.startswith("t10k-labels")})
    monkeypatch.setattr(datafiles, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(DataNotFoundError):
        data.load("fashion-mnist", root=tmp_path / "root")
    assert failing_download == ["FashionMNIST"]


def test_fashion_corrupt_debian_file_leaves_no_partial_files(tmp_path, monkeypatch):
    arrays = fake_fashion()
    debian = tmp_path / "debian"
    write_gz(debian, arrays)
    (debian / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data" * 100)
    monkeypatch.setattr(datafiles, "DEBIAN_FASHION_MNIST", debian)
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError, match="copying from"):
        data.load("fashion-mnist", root=root, download=False)
    raw = root / "FashionMNIST" / "raw"
    assert "train-images-idx3-ubyte" not in os.listdir(raw)
    assert not [f for f in os.listdir(raw) if f.endswith(".tmp")]


def test_fashion_missing_error_names_all_ways(tmp_path, no_debian, failing_download):
    root = tmp_path / "root"
    with pytest.raises(DataNotFoundError) as excinfo:
        data.load("fashion-mnist", root=root)
    message = str(excinfo.value)
    assert str(root / "FashionMNIST" / "raw") in message
    assert "dataset-fashion-mnist" in message
    assert "download" in message and "internet" in message
    assert "no network in this test" in message  # the underlying download error
    assert failing_download == ["FashionMNIST"]
    assert isinstance(excinfo.value, FileNotFoundError)


def test_fashion_download_false_does_not_download(tmp_path, no_debian, failing_download):
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        data.load("fashion-mnist", root=tmp_path, download=False)
    assert failing_download == []


def test_fashion_real_debian_files(tmp_path):
    """Integration test on the real Debian package's files, where installed."""
    if not all((datafiles.DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in datafiles.FASHION_MNIST_FILES):
        pytest.skip(f"dataset-fashion-mnist not installed in {datafiles.DEBIAN_FASHION_MNIST}")
    x, y = data.load("fashion-mnist", train=False, root=tmp_path, download=False)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    xs, ys = data.load("fashion-mnist", subset=0.01, root=tmp_path, download=False)
    assert xs.shape == (600, 1, 28, 28)
    assert torch.equal(torch.bincount(ys), torch.full((10,), 60))


def test_default_root(monkeypatch, tmp_path):
    assert data.DATA_ROOT.is_absolute()
    monkeypatch.delenv("HOWVITS_DATA", raising=False)
    assert data._default_root() == Path(__file__).resolve().parent.parent / "data"  # the repository's data/
    monkeypatch.setenv("HOWVITS_DATA", str(tmp_path))
    assert data._default_root() == tmp_path


def test_root_defaults_to_module_data_root(tmp_path, monkeypatch, no_debian):
    arrays = fake_fashion(seed=2)
    write_raw(tmp_path / "FashionMNIST" / "raw", arrays)
    monkeypatch.setattr(data, "DATA_ROOT", tmp_path)
    check_fashion(tmp_path, arrays, download=False)


# --------------------------------------------------------------------------------------------------
# CIFAR on fake files in torchvision's format


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).tolist()


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_fake_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = cifar_arrays(2, 10, seed=i)
        dump(folder / f"data_batch_{i}", {"data": x, "labels": y})
        train_x.append(x)
        train_y += y
    test_x, test_y = cifar_arrays(3, 10, seed=99)
    dump(folder / "test_batch", {"data": test_x, "labels": test_y})
    dump(folder / "batches.meta", {"label_names": list(data.info("cifar10").classes)})
    return np.concatenate(train_x), train_y, test_x, test_y


def write_fake_cifar100(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train_x, train_y = cifar_arrays(7, 100, seed=5)
    test_x, test_y = cifar_arrays(4, 100, seed=6)
    for name, (x, y) in {"train": (train_x, train_y), "test": (test_x, test_y)}.items():
        dump(folder / name, {"data": x, "fine_labels": y, "coarse_labels": [v // 5 for v in y]})
    dump(folder / "meta", {"fine_label_names": list(data.info("cifar100").classes)})
    return train_x, train_y, test_x, test_y


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision checks the md5 sums of the real files; fake files need that check off."""
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # meta file


@pytest.mark.parametrize("name, writer", [("cifar10", write_fake_cifar10), ("cifar100", write_fake_cifar100)])
def test_cifar_fake_files(tmp_path, skip_md5, failing_download, name, writer):
    train_x, train_y, test_x, test_y = writer(tmp_path)
    for train, raw_x, raw_y in ((True, train_x, train_y), (False, test_x, test_y)):
        x, y = data.load(name, train=train, root=tmp_path)  # download=True, but files are present
        assert x.shape == (len(raw_x), 3, 32, 32)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(raw_x.reshape(-1, 3, 32, 32)).float() / 255)
        assert x[0, 1, 5, 7] == raw_x[0, 1024 + 5 * 32 + 7] / np.float32(255)  # green, row 5, col 7
        assert y.tolist() == raw_y
    assert failing_download == []


def test_cifar_subset(tmp_path, skip_md5):
    write_fake_cifar10(tmp_path)
    x, y = data.load("cifar10", subset=0.5, root=tmp_path, download=False)
    full_x, full_y = data.load("cifar10", root=tmp_path, download=False)
    idx = data.balanced_subset_indices(full_y, 0.5, seed=0)
    assert torch.equal(x, full_x[idx]) and torch.equal(y, full_y[idx])


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_error(tmp_path, failing_download, name, folder):
    with pytest.raises(DataNotFoundError) as excinfo:
        data.load(name, root=tmp_path)
    message = str(excinfo.value)
    assert folder in message and "internet" in message and "no network in this test" in message
    assert failing_download == ["CIFAR10" if name == "cifar10" else "CIFAR100"]
    with pytest.raises(DataNotFoundError, match=folder):
        data.load(name, root=tmp_path, download=False)
    assert len(failing_download) == 1


# --------------------------------------------------------------------------------------------------
# Names, info and argument errors


def test_info():
    assert data.DATASETS == ("fashion-mnist", "cifar10", "cifar100", "synthetic")
    fm = data.info("fashion-mnist")
    assert (fm.name, fm.in_chans, fm.num_classes, fm.img_size) == ("fashion-mnist", 1, 10, 28)
    assert fm.classes[0] == "T-shirt/top" and fm.classes[9] == "Ankle boot"
    assert fm.classes == tuple(torchvision.datasets.FashionMNIST.classes)
    c10, c100 = data.info("cifar10"), data.info("cifar100")
    assert (c10.in_chans, c10.num_classes, c10.img_size, len(c10.classes)) == (3, 10, 32, 10)
    assert (c100.in_chans, c100.num_classes, c100.img_size, len(c100.classes)) == (3, 100, 32, 100)
    assert list(c100.classes) == sorted(set(c100.classes))  # fine labels are in alphabetical order
    syn = data.info("synthetic")
    assert (syn.in_chans, syn.num_classes, syn.img_size) == (1, 10, 28)
    assert syn.classes == ("pattern 0", "pattern 1", "pattern 2", "pattern 3", "pattern 4", "pattern 5",
                           "pattern 6", "pattern 7", "pattern 8", "pattern 9")
    with pytest.raises(Exception):
        fm.num_classes = 3  # frozen


def test_unknown_name():
    for call in (lambda: data.info("mnist"), lambda: data.load("mnist")):
        with pytest.raises(ValueError, match="'mnist'") as excinfo:
            call()
        assert "fashion-mnist" in str(excinfo.value) and "synthetic" in str(excinfo.value)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, 2])
def test_bad_subset(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        data.load("synthetic", subset=bad)
    with pytest.raises(ValueError, match=repr(bad)):
        data.balanced_subset_indices(torch.arange(10), bad)


def test_subset_on_test_split():
    with pytest.raises(ValueError, match="train"):
        data.load("synthetic", train=False, subset=0.5)


# --------------------------------------------------------------------------------------------------
# Balanced subsets


def test_balanced_subset_indices():
    labels = torch.arange(10).repeat(50)[torch.randperm(500, generator=torch.Generator().manual_seed(0))]
    for fraction in (0.1, 0.25, 0.5, 1.0):
        idx = data.balanced_subset_indices(labels, fraction, seed=3)
        assert idx.dtype == torch.int64
        assert torch.equal(idx, torch.sort(idx).values) and len(torch.unique(idx)) == len(idx)
        assert torch.equal(torch.bincount(labels[idx], minlength=10), torch.full((10,), round(fraction * 50)))
    a = data.balanced_subset_indices(labels, 0.1, seed=1)
    assert torch.equal(a, data.balanced_subset_indices(labels, 0.1, seed=1))
    assert not torch.equal(a, data.balanced_subset_indices(labels, 0.1, seed=2))
    assert torch.equal(data.balanced_subset_indices(labels, 1.0), torch.arange(500))


def test_balanced_subset_unbalanced_labels_and_minimum_one():
    labels = torch.tensor([0] * 40 + [1] * 10 + [2] * 2)
    idx = data.balanced_subset_indices(labels, 0.1)
    assert torch.bincount(labels[idx]).tolist() == [4, 1, 1]  # round(0.2) = 0 -> at least 1


def test_subset_of_synthetic_through_load():
    x, y = data.load("synthetic", seed=4)
    xs, ys = data.load("synthetic", subset=0.25, seed=4)
    idx = data.balanced_subset_indices(y, 0.25, seed=4)
    assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])
    counts = torch.bincount(y, minlength=10)
    assert torch.bincount(ys, minlength=10).tolist() == [round(0.25 * int(c)) for c in counts]


# --------------------------------------------------------------------------------------------------
# Augmentation


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[i, j] = img[i + dy, j + dx]``, zero where that falls outside."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = img[
        :, max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
    ]
    return out


def find_transform(src: torch.Tensor, dst: torch.Tensor, pad: int = 2) -> list[tuple[int, int, bool]]:
    matches = []
    for flipped in (False, True):
        base = src.flip(-1) if flipped else src
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                if torch.equal(shifted(base, dy, dx), dst):
                    matches.append((dy, dx, flipped))
    return matches


def test_augment_is_shift_and_flip_per_image():
    x = torch.rand(64, 3, 12, 10, generator=torch.Generator().manual_seed(0)) + 0.1  # no zeros
    out = data.augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    transforms = []
    for src, dst in zip(x, out):
        matches = find_transform(src, dst)
        assert len(matches) == 1, matches  # exactly one of the 25 shifts x 2 flips
        transforms.append(matches[0])
    assert len(set(transforms)) > 10
    assert 10 < sum(t[2] for t in transforms) < 54  # both flips happen
    assert {t[0] for t in transforms} == set(range(-2, 3)) and {t[1] for t in transforms} == set(range(-2, 3))


def test_augment_identity_and_no_flip():
    x = torch.rand(8, 1, 28, 28)
    out = data.augment(x, pad=0, flip=False)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    flips_only = data.augment(x, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(flips_only, x))
    shifts_only = data.augment(x + 0.1, torch.Generator().manual_seed(0), pad=1, flip=False)
    assert all(any(not t[2] for t in find_transform(i + 0.1, o, pad=1)) for o, i in zip(shifts_only, x))


def test_augment_deterministic_and_dtypes():
    x = torch.rand(16, 1, 28, 28)
    before = x.clone()
    a = data.augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, data.augment(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, data.augment(x, torch.Generator().manual_seed(8)))
    assert torch.equal(x, before)  # input untouched
    for dtype in (torch.float64, torch.uint8):
        xd = (x * 255).to(dtype)
        assert data.augment(xd, torch.Generator().manual_seed(7)).dtype == dtype
    with pytest.raises(ValueError):
        data.augment(x[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_on_cuda_matches_semantics():
    x = torch.rand(32, 3, 16, 16, device="cuda") + 0.1
    out = data.augment(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == x.device
    assert all(len(find_transform(s, d)) == 1 for s, d in zip(x.cpu(), out.cpu()))
    with pytest.raises(ValueError, match="generator"):
        data.augment(x, torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_shapes_determinism_and_splits():
    x, y = data.load("synthetic")
    xt, yt = data.load("synthetic", train=False)
    assert x.shape == (1024, 1, 28, 28) and y.shape == (1024,)
    assert xt.shape == (256, 1, 28, 28) and yt.shape == (256,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
    assert set(y.tolist()) == set(range(10)) and set(yt.tolist()) == set(range(10))
    x2, y2 = data.load("synthetic")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x[:256], xt)
    assert not torch.equal(x, data.load("synthetic", seed=1)[0])


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    x, y = data.load("synthetic")
    xt, yt = data.load("synthetic", train=False)
    model = torch.nn.Linear(28 * 28, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x.flatten(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[2] < losses[0]
    accuracy = (model(xt.flatten(1)).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


# --------------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_iterate_batches(shuffle, drop_last):
    x = torch.arange(23).float().view(23, 1)
    y = torch.arange(23)
    g = torch.Generator().manual_seed(0) if shuffle else None
    batches = list(data.iterate_batches(x, y, 5, shuffle=shuffle, generator=g, drop_last=drop_last))
    sizes = [len(b[1]) for b in batches]
    assert sizes == ([5] * 4 if drop_last else [5] * 4 + [3])
    seen = torch.cat([b[1] for b in batches])
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in batches)  # pairs stay aligned
    assert len(torch.unique(seen)) == len(seen)
    if drop_last:
        assert len(seen) == 20
    else:
        assert sorted(seen.tolist()) == list(range(23))
    assert torch.equal(seen, torch.arange(len(seen))) != shuffle


def test_iterate_batches_shuffle_is_seeded_and_checks():
    x, y = torch.rand(10, 2), torch.arange(10)
    order = [torch.cat([b[1] for b in data.iterate_batches(x, y, 3, True, torch.Generator().manual_seed(s))])
             for s in (1, 1, 2)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert len(list(data.iterate_batches(x, y, 100))) == 1
    assert list(data.iterate_batches(x, y, 100, drop_last=True)) == []
    with pytest.raises(ValueError):
        list(data.iterate_batches(x, y[:5], 2))
    with pytest.raises(ValueError):
        list(data.iterate_batches(x, y, 0))


def test_seeded_sample_is_a_fixed_nested_random_sample():
    x = torch.arange(100.0).view(100, 1, 1, 1)
    y = torch.arange(100)
    small_x, small_y = data.seeded_sample(x, y, 10, seed=3)
    big_x, big_y = data.seeded_sample(x, y, 40, seed=3)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3))  # what the chapters did by hand
    assert torch.equal(small_y, order[:10]) and torch.equal(big_y[:10], small_y)  # nested
    assert torch.equal(small_x.view(-1), small_y.float())  # images and labels stay paired
    assert not torch.equal(data.seeded_sample(x, y, 10, seed=4)[1], small_y)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 100\], got 0"):
        data.seeded_sample(x, y, 0)
    with pytest.raises(ValueError, match="differ in length"):
        data.seeded_sample(x, y[:5], 3)


def test_held_out_training_images_lie_outside_the_subset_and_are_nested():
    x, y = data.load("synthetic", train=True)
    inside = data.load("synthetic", train=True, subset=0.1)[0].flatten(1)
    held, labels = data.held_out_training("synthetic", n=50, seed=3)
    assert held.shape[1:] == x.shape[1:] and len(labels) == 50
    # no held-out image is one of the subset's (images of the synthetic set are distinct)
    def same(a, b):  # exact equality of images, pair by pair
        return torch.cdist(a.flatten(1), b.flatten(1), compute_mode="donot_use_mm_for_euclid_dist") == 0
    assert not same(held, inside.view(-1, *x.shape[1:])).any()
    # and every one is a training image with its own label
    hits = same(held, x)
    assert hits.any(1).all()
    assert torch.equal(y[hits.float().argmax(1)], labels)
    fewer, _ = data.held_out_training("synthetic", n=20, seed=3)
    assert torch.equal(fewer, held[:20])
    with pytest.raises(ValueError, match="n must be an integer in"):
        data.held_out_training("synthetic", n=10**9)
