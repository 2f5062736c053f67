"""The one training recipe of the zoo, as a function and a command line.

Every zoo model is trained the same way (a fair comparison): AdamW, linear warm-up then cosine
decay (per step), weight decay on matrices only, label smoothing, gradient clipping, on-device
batch augmentation (random crop with padding 2, horizontal flip). On CUDA the whole dataset lives
on the GPU and the forward pass runs under bf16 autocast; on CPU everything is float32 and a seeded
run is bit-for-bit reproducible.

A checkpoint records everything needed to rebuild and judge the model: name and build arguments,
dataset and subset, the full recipe, seed, per-epoch history, final test accuracy and NLL (measured
on the float16 weights that are stored), device, library versions, wall time and throughput, plus
a snapshot of the weights at the end of warm-up (the Hessian chapter needs it), and the polar
training trajectory (r_t, θ_t) computed from per-epoch snapshots that are deleted afterwards.

Training survives interruption: after every epoch the full state (weights, optimiser, schedule,
random generators) goes to ``<out>.resume.pt``; ``--resume`` continues from it and the result is
identical to an uninterrupted run. Every file is written to a temporary name and renamed.

Usage::

    python -m lib.train --model vit --dataset fashion-mnist --subset 0.1 --epochs 60 --out vit.pt
    torchrun --nproc_per_node 4 -m lib.train --model vit --dataset cifar100 --epochs 300 --out v.pt

Under ``torchrun`` the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on
CPU): each process takes its share of every global batch, so the recipe (global batch size,
schedule) is unchanged.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # plain text bars: no widgets in stored notebooks or the offline book

from . import data, models
from .landscape import SnapshotFolder, flat_parameters
from .io import atomic_torch_save

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """The shared training recipe (defaults = the zoo's full recipe)."""

    epochs: int = 60
    warmup_epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    drop_path: float = 0.1
    augment: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


FULL_RECIPE = Recipe()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and conv kernels; not biases, norms, embeddings or position-bias tables."""
    no_decay_names = ("pos_embed", "cls_token", "relative_position_bias_table")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or any(k in name for k in no_decay_names) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Accuracy (%) and mean NLL (no label smoothing) of ``model`` in eval mode.

    Small batches are faster on a CPU: large ones spend their time allocating activations.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    for xb, yb in data.iterate_batches(x, y, batch_size):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(xb)
        nll += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return {"acc": 100.0 * correct / len(y), "nll": nll / len(y)}


def half_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights for storage: floating tensors as float16 on CPU (about 2 bytes per parameter)."""
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
            for k, v in model.state_dict().items()}


def load_half_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load stored weights, upcasting float16 back to the model's float32."""
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    order = torch.Generator().manual_seed(seed)
    aug = torch.Generator(device=device).manual_seed(seed + 1)
    return order, aug


def _rng_state(order: torch.Generator, aug: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"order": order.get_state(), "aug": aug.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], order: torch.Generator, aug: torch.Generator,
                   device: torch.device) -> None:
    order.set_state(state["order"])
    aug.set_state(state["aug"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_path(out: str | os.PathLike) -> Path:
    """Where the per-epoch resume state of a run writing ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".resume.pt")


def train(model_name: str, dataset: str = "fashion-mnist", subset: float | None = None,
          recipe: Recipe = FULL_RECIPE, seed: int = 0, out: str | os.PathLike | None = None,
          device: str | torch.device | None = None, resume: bool = False, progress: bool = True,
          data_root: str | os.PathLike | None = None, stop_after_epochs: int | None = None,
          status: str | None = None, layout: str | None = None,
          keep_snapshots: bool = True) -> dict[str, Any] | None:
    """Train ``model_name`` on ``dataset`` with ``recipe``; return the checkpoint record.

    With ``out`` the checkpoint is written there (atomically) and the resume state is kept beside
    it after each epoch; ``resume=True`` continues from that state. ``stop_after_epochs`` ends the
    run early as an interruption would (the resume state stays; returns ``None``), which is how the
    tests exercise resuming. ``status`` is "final" or "provisional" (default: "final" when the
    recipe is the full one, else "provisional"). ``layout`` places conv and MSA blocks in a
    ``resnet``/``alternet`` (see :func:`lib.models.parse_layout`). ``keep_snapshots=False`` stores no
    warm-up snapshot, which halves the file (the ablation zoo does without). Under torchrun, ranks
    other than 0 return ``None``.
    """
    if model_name not in models.MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(models.MODELS)}")
    if dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(data.DATASETS)}")
    if status not in (None, "final", "provisional"):
        raise ValueError(f"status must be 'final' or 'provisional', got {status!r}")
    if resume and out is None:
        raise ValueError("resume=True needs the out path whose resume state to continue from")
    status = status or ("final" if recipe == FULL_RECIPE else "provisional")
    layout = models.layout_override(model_name, layout)

    rank, world, local_rank = _dist_info()
    distributed = world > 1
    device = resolve_device(device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if recipe.batch_size % world:
            raise ValueError(f"batch_size {recipe.batch_size} must be divisible by the {world} processes")
    main_process = rank == 0

    meta = data.info(dataset)
    x_train, y_train = data.load(dataset, train=True, subset=subset, seed=0, root=data_root)
    x_test, y_test = data.load(dataset, train=False, root=data_root)
    mean = x_train.mean(dim=(0, 2, 3)).tolist()
    std = x_train.std(dim=(0, 2, 3)).tolist()
    build_kwargs = dict(in_chans=meta.in_chans, num_classes=meta.num_classes, img_size=meta.img_size,
                        mean=[round(m, 4) for m in mean], std=[round(s, 4) for s in std],
                        drop_path_rate=recipe.drop_path)
    if layout is not None:
        build_kwargs["layout"] = layout

    torch.manual_seed(seed)
    model = models.build(model_name, **build_kwargs).to(device)
    models.set_fused_attn(model, True)  # fast path for first-order training
    if device.type == "cuda":  # the whole dataset resident on the GPU
        x_train, y_train = x_train.to(device), y_train.to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if distributed else model

    steps_per_epoch = len(x_train) // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {recipe.batch_size} exceeds the {len(x_train)} training images")
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = recipe.warmup_epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, recipe.min_lr / recipe.lr))
    order_gen, aug_gen = _generators(seed, device)

    history: list[dict[str, float]] = []
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    start_epoch, wall, train_time = 0, 0.0, 0.0
    state_file = resume_path(out) if out is not None else None
    if resume:
        if not state_file.exists():
            raise FileNotFoundError(f"nothing to resume: {state_file} does not exist (run without --resume)")
        state = torch.load(state_file, map_location=device, weights_only=True)
        if (state["model"] != model_name or state["recipe"] != asdict(recipe) or state["seed"] != seed
                or state.get("layout") != layout):
            raise ValueError(f"{state_file} belongs to a different run ({state['model']}, seed {state['seed']}, "
                             f"layout {state.get('layout')}); delete it or use the same model, layout, "
                             f"recipe and seed")
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"], order_gen, aug_gen, device)
        history, snapshots = state["history"], state["snapshots"]
        start_epoch, wall, train_time = state["epoch"], state["wall_time_s"], state["train_time_s"]

    # Per-epoch weight snapshots for the polar trajectory (Park & Kim Fig. 1b): kept on disk beside
    # the checkpoint while training (so resuming keeps them), reduced to numbers at the end.
    trajectory_dir = None
    if main_process:
        trajectory_dir = SnapshotFolder(None if out is None else Path(str(out) + ".trajectory"))
        if start_epoch == 0:
            trajectory_dir.save(0, model)

    local_batch = recipe.batch_size // world
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=not (progress and main_process),
               desc=f"{model_name} {dataset}" + (f" {subset:g}" if subset else ""), unit="step",
               dynamic_ncols=True, file=sys.stderr)
    end_epoch = recipe.epochs if stop_after_epochs is None else min(recipe.epochs, stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        ddp_model.train()
        order = torch.randperm(len(x_train), generator=order_gen).to(x_train.device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            idx = idx[rank * local_batch:(rank + 1) * local_batch]
            xb = x_train[idx].to(device, non_blocking=True)
            yb = y_train[idx].to(device, non_blocking=True)
            if recipe.augment:
                xb = data.augment(xb, generator=aug_gen)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = ddp_model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{loss.item():.3f}")
        seen = steps_per_epoch * local_batch
        if distributed:
            stats = torch.stack([loss_sum, correct.float()])
            dist.all_reduce(stats)
            loss_sum, correct, seen = stats[0], stats[1], seen * world
        epoch_train_time = time.perf_counter() - t0
        train_time += epoch_train_time
        if keep_snapshots and epoch + 1 == recipe.warmup_epochs:
            snapshots["warmup"] = half_state_dict(model)
        if main_process:
            test = evaluate(model, x_test, y_test, device=device)
            history.append({"epoch": epoch + 1, "lr": schedule.get_last_lr()[0],
                            "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen,
                            "test_loss": test["nll"], "test_acc": test["acc"]})
            bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", test_acc=f"{test['acc']:.1f}")
        if main_process:
            trajectory_dir.save(epoch + 1, model)
        wall += time.perf_counter() - t0
        if main_process and state_file is not None:
            atomic_torch_save({
                "model": model_name, "layout": layout, "recipe": asdict(recipe), "seed": seed, "epoch": epoch + 1,
                "weights": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": _rng_state(order_gen, aug_gen, device),
                "history": history, "snapshots": snapshots, "wall_time_s": wall,
                "train_time_s": train_time}, state_file)
        if distributed:
            dist.barrier()
    bar.close()
    if end_epoch < recipe.epochs or not main_process:
        return None

    try:
        trajectory = trajectory_dir.trajectory(flat_parameters(model)).as_dict()
    except ValueError:  # resumed from a state that predates trajectory snapshots
        trajectory = None
    weights = half_state_dict(model)
    stored = models.build(model_name, **build_kwargs)
    load_half_state_dict(stored, weights)  # judge the model exactly as it is stored
    final = evaluate(stored.to(device), x_test, y_test, device=device)
    record = {
        "format": FORMAT_VERSION, "model": model_name, "build": build_kwargs, "dataset": dataset,
        "subset": subset, "n_train": len(y_train), "recipe": asdict(recipe), "seed": seed, "status": status,
        "history": history, "test_acc": final["acc"], "test_nll": final["nll"],
        "params": models.count_parameters(model), "device": _device_name(device), "world_size": world,
        "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version(),
        "wall_time_s": wall, "images_per_s": recipe.epochs * steps_per_epoch * recipe.batch_size / max(train_time, 1e-9),
        "weights": weights, "snapshots": snapshots, "trajectory": trajectory,
    }
    if out is not None:
        atomic_torch_save(record, out)
        state_file.unlink(missing_ok=True)
    trajectory_dir.remove()
    return record


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, choices=models.MODELS)
    p.add_argument("--dataset", default="fashion-mnist", choices=data.DATASETS)
    p.add_argument("--subset", type=float, default=None, help="class-balanced fraction of the training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default=None,
                   help="conv (C) / MSA (M) blocks per stage of resnet/alternet, e.g. CC,MC,MC")
    p.add_argument("--no-snapshots", action="store_true", help="store no warm-up snapshot (smaller file)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume.pt")
    p.add_argument("--status", choices=("final", "provisional"), default=None,
                   help="manifest status (default: final for the full recipe, else provisional)")
    p.add_argument("--register", action="store_true", help="add the checkpoint to data/checkpoints/MANIFEST.json")
    p.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(str(f.type), float), default=f.default)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    record = train(args.model, args.dataset, args.subset, recipe, seed=args.seed, out=args.out,
                   device=args.device, resume=args.resume, progress=not args.no_progress, status=args.status,
                   layout=args.layout, keep_snapshots=not args.no_snapshots)
    if record is not None:
        print(f"{args.model}" + (f" [{args.layout}]" if args.layout else "") + f" on {args.dataset}" + (f" (subset {args.subset:g})" if args.subset else "")
              + f": test accuracy {record['test_acc']:.2f}%, NLL {record['test_nll']:.4f}, "
              + f"{record['images_per_s']:.0f} images/s, {record['wall_time_s'] / 60:.1f} min")
        if args.register:
            from . import zoo
            zoo.register(args.out)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
