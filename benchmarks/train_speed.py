"""Training speed of every zoo model against the machine's floor: images/s, GFLOP/s, share of peak.

What is measured: the zoo's own training step (:func:`lib.zoo.train.training_step`: augmentation,
forward, label-smoothed loss, backward, clipping, AdamW, schedule) on batches of Fashion-MNIST at
the recipe's batch size, for ``--steps`` steps after ``--warmup`` untimed ones, on the CPU with
``--threads`` threads. The FLOPs of one training image (forward and backward, counted by
``torch.utils.flop_counter``) turn images/s into achieved GFLOP/s, printed next to the machine's
peak on the same threads: a large fp32 matmul and a 3x3 convolution of the ResNet's middle stage
(forward and backward). When the step reaches a large share of that peak, only fewer FLOPs
(epochs × runs) make the zoo cheaper.

Settings (``--settings``), one line each::

    bench train_speed model=vit setting=fp32 threads=2 images_per_s=… gflops=… peak_gflops=… share=…

* ``fp32``: what ``lib.zoo.train`` does (channels-last memory for the convolutional models);
* ``contiguous``: the convolutional models without channels-last memory;
* ``bf16``: oneDNN's bf16 arithmetic for fp32 matmuls and convolutions (``torch.backends.mkldnn``);
* ``compile``: the step's model through ``torch.compile``;
* ``2x1``: two processes of one thread each at once (their images/s summed), against one process
  of ``--threads`` threads.

Usage (stop any training first: two jobs on two cores slow each other many times over)::

    python benchmarks/train_speed.py                                  # every model, fp32, then the peak
    python benchmarks/train_speed.py --models vit resnet --settings fp32 contiguous bf16 2x1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lib.core import data, models  # noqa: E402
from lib.zoo import train  # noqa: E402
from lib.zoo.recipe import FULL_RECIPE, lr_factor, param_groups  # noqa: E402

SETTINGS = ("fp32", "contiguous", "bf16", "compile", "2x1")


def _set_bf16(on: bool) -> None:
    """oneDNN's fp32 matmuls and convolutions in bf16 arithmetic (``on``), or in full fp32."""
    precision = "bf16" if on else "none"
    torch.backends.mkldnn.matmul.fp32_precision = precision
    torch.backends.mkldnn.conv.fp32_precision = precision


def _setup(name: str, channels_last: bool, compile: bool):
    """The model, optimiser, schedule and step model exactly as ``lib.zoo.train`` builds them."""
    torch.manual_seed(0)
    model = models.build(name, in_chans=1, num_classes=10, img_size=28, mean=[0.286], std=[0.353],
                         drop_path_rate=FULL_RECIPE.drop_path)
    models.use_fused_attention(model, True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(param_groups(model, FULL_RECIPE.weight_decay), lr=FULL_RECIPE.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 10_000, 100, 0.01))
    return model, optimizer, schedule, (torch.compile(model) if compile else model)


def training_flops_per_image(name: str) -> float:
    """FLOPs of one training image: the forward and backward pass of a batch, divided by its size."""
    model, _, _, _ = _setup(name, channels_last=False, compile=False)
    x = torch.rand(8, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long))
        loss.backward()
    return counter.get_total_flops() / len(x)


def images_per_s(name: str, setting: str, threads: int, steps: int, warmup: int) -> float:
    """Images per second of ``steps`` training steps of ``name`` in one process (``setting``)."""
    torch.set_num_threads(threads)
    _set_bf16(setting == "bf16")
    channels_last = name in train.CHANNELS_LAST_MODELS and setting != "contiguous"
    model, optimizer, schedule, step_model = _setup(name, channels_last, compile=setting == "compile")
    x, y = data.load("fashion-mnist", train=True, subset=0.05)
    generator = torch.Generator().manual_seed(1)
    batch = FULL_RECIPE.batch_size
    model.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        idx = torch.randint(len(x), (batch,), generator=generator)
        train.training_step(step_model, model, optimizer, schedule, x[idx], y[idx], FULL_RECIPE, generator,
                            channels_last)
    _set_bf16(False)
    return steps * batch / (time.perf_counter() - start)


def two_single_thread_jobs(name: str, steps: int, warmup: int) -> float:
    """Summed images/s of two 1-thread processes training ``name`` at once."""
    argv = [sys.executable, __file__, "--models", name, "--settings", "fp32", "--threads", "1",
            "--steps", str(steps), "--warmup", str(warmup), "--json"]
    procs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["images_per_s"] for p in procs)


def peak_gflops(threads: int, repeats: int = 10) -> dict[str, float]:
    """The floor: GFLOP/s of a 2048² fp32 matmul, and of a 3x3 convolution (80 channels at 14x14,
    batch 128, channels-last) forward and backward, on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(80, 80, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(128, 80, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()

    def rate(fn, flops: float) -> float:
        for _ in range(3):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return flops * repeats / (time.perf_counter() - start) / 1e9

    conv_flops = 3 * 2 * 128 * 14 * 14 * 80 * 80 * 9  # forward, and backward to input and weights
    return {"matmul": rate(lambda: a @ b, 2 * 2048 ** 3),
            "conv": rate(lambda: conv(x).sum().backward(), conv_flops)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=models.MODELS, default=list(models.MODELS))
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=["fp32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocation)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one result, for the 2x1 setting
    args = p.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        p.error(f"--threads and --steps must be >= 1 and --warmup >= 0, got {args.threads}, {args.steps}, "
                f"{args.warmup}")
    if args.json:
        print(json.dumps({"images_per_s": images_per_s(args.models[0], "fp32", args.threads, args.steps,
                                                       args.warmup)}))
        return 0
    peak = peak_gflops(args.threads)
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"bench train_speed peak threads={args.threads} cpu={torch.backends.cpu.get_cpu_capability()} "
          f"bf16={'yes' if bf16 else 'no'} matmul_gflops={peak['matmul']:.0f} conv_gflops={peak['conv']:.0f}",
          flush=True)
    floor = max(peak.values())
    for name in args.models:
        flops = training_flops_per_image(name)
        for setting in args.settings:
            if setting == "contiguous" and name not in train.CHANNELS_LAST_MODELS:
                continue
            if setting == "bf16" and not bf16:
                print(f"bench train_speed model={name} setting=bf16 unsupported (no bf16 arithmetic on this CPU)")
                continue
            if setting == "2x1":
                speed, threads = two_single_thread_jobs(name, args.steps, args.warmup), 1
            else:
                speed, threads = images_per_s(name, setting, args.threads, args.steps, args.warmup), args.threads
            gflops = speed * flops / 1e9
            print(f"bench train_speed model={name} setting={setting} threads={threads} "
                  f"mflop_per_image={flops / 1e6:.0f} images_per_s={speed:.0f} gflops={gflops:.0f} "
                  f"peak_gflops={floor:.0f} share={gflops / floor:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
