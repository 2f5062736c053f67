"""Benchmark: minibatch linear CKA with lib.analyses.similarity vs the torch-cka package.

Both tools get the same two models (the zoo ViT and ResNet, eval mode), the same units (every
residual unit of :func:`lib.core.residual.units` but the head; torch-cka hooks them by name on an
``nn.Sequential`` of the same unit modules), the same test images in the same batches, and the same
estimator (the unbiased HSIC of Song et al. averaged over batches, Nguyen et al. 2021). The
difference is the implementation: torch-cka computes every Gram matrix once per *pair* of units,
in float32, with a host sync per pair; lib.analyses.similarity computes each Gram once per batch, in
float64, and every pair's HSIC in one contraction. Agreement is the largest absolute difference of
the two CKA matrices (float32 rounding in the peer bounds it from below).

Prints one line, read by scripts::

    bench cka_vs_torch_cka: ours=<s> peer=<s> ratio=<peer/ours> agreement=<max abs diff>

then an indented line with the sizes. Needs torch-cka on the path: ``make bench`` installs it into
``.bench-peers``.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core import data, residual  # noqa: E402
from lib.zoo import checkpoints  # noqa: E402
from lib.analyses import similarity  # noqa: E402

try:
    from torch_cka import CKA  # noqa: E402
except ImportError:  # pragma: no cover - only without the benchmark peers
    sys.exit("torch-cka is not installed: run `make bench` (it installs the peers into .bench-peers)")

MODELS, IMAGES, BATCH, SEED = ("vit", "resnet"), 2560, 256, 0


def as_sequential(model: nn.Module) -> tuple[nn.Sequential, list[str]]:
    """The model's units (head left out) as an ``nn.Sequential`` whose children torch-cka can hook
    by name; calling it runs the units in order, exactly as :func:`residual.run_units` does."""
    units = [u.module for u in residual.units(model) if u.kind != "head"]
    return nn.Sequential(*units).eval(), [str(i) for i in range(len(units))]


def main() -> int:
    torch.manual_seed(SEED)
    model_a, _ = checkpoints.load(MODELS[0])
    model_b, _ = checkpoints.load(MODELS[1])
    x, y = data.load("fashion-mnist", train=False)
    x, y = data.seeded_sample(x, y, IMAGES, seed=SEED)

    t0 = time.perf_counter()
    ours = similarity.model_cka(model_a, x, model_b, batch_size=BATCH, progress=False).matrix
    t_ours = time.perf_counter() - t0

    seq_a, layers_a = as_sequential(model_a)
    seq_b, layers_b = as_sequential(model_b)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    print(f"    {MODELS[0]} × {MODELS[1]}: timing lib.analyses.similarity done, now torch-cka (a minute or two on a CPU)",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # it warns that one loader serves both models, as intended
        peer = CKA(seq_a, seq_b, MODELS[0], MODELS[1], layers_a, layers_b, device="cpu")
        peer.compare(loader)
    t_peer = time.perf_counter() - t0
    theirs = peer.export()["CKA"].double().numpy()

    agreement = float(np.max(np.abs(ours - theirs)))
    print(f"bench cka_vs_torch_cka: ours={t_ours:.3g}s peer={t_peer:.3g}s ratio={t_peer / t_ours:.2f} "
          f"agreement={agreement:.2g}")
    print(f"    {MODELS[0]} ({len(layers_a)} units) × {MODELS[1]} ({len(layers_b)} units), "
          f"{IMAGES} test images in batches of {BATCH}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
