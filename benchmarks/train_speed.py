"""Training throughput of every zoo model with the zoo's own training loop, eager against compiled.

What is measured: ``lib.train.train`` on a seeded 10% of Fashion-MNIST (46 steps of 128 an epoch)
for ``--epochs`` epochs, with and without ``--compile``, on the device asked for; the number is the
images per second of the training steps (timed with the device synchronised at the end of
every epoch), the first epoch (compilation, cuDNN's algorithm search) left out. One line per
model and setting::

    bench train_speed model=vit compile=False images_per_s=…

Use it before a long zoo run on a new machine to choose ``--compile`` and the number of jobs:
    python benchmarks/train_speed.py --device cuda
    python benchmarks/train_speed.py --device cuda --models vit resnet --epochs 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import models, train  # noqa: E402


def throughput(model: str, device: str, epochs: int, compile: bool) -> float:
    """Images per second of the training steps after the first epoch."""
    epoch_rates: list[float] = []
    train.train(model, "fashion-mnist", subset=0.1, recipe=train.Recipe(epochs=epochs, warmup_epochs=1),
                device=device, progress=False, compile=compile,
                epoch_log=lambda e: epoch_rates.append(e["images_per_s"]))
    return float(len(epoch_rates) - 1) / sum(1 / r for r in epoch_rates[1:])  # equal images per epoch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--models", nargs="+", choices=models.MODELS, default=list(models.MODELS))
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    p.add_argument("--no-compile", action="store_true", help="measure the eager loop only")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch is not counted")
    for name in args.models:
        for compile in (False,) if args.no_compile else (False, True):
            speed = throughput(name, args.device, args.epochs, compile)
            print(f"bench train_speed model={name} compile={compile} images_per_s={speed:.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
