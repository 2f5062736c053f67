"""Training one model with the zoo's recipe (:mod:`lib.zoo.recipe`), as a function and a command line.

On CUDA the whole dataset lives on the GPU and the forward pass runs under bf16 autocast; on CPU
everything is float32 and a seeded run is bit-for-bit reproducible.

A checkpoint records everything needed to rebuild and judge the model: name and build arguments,
dataset and subset, the full recipe, seed, per-epoch history, final test accuracy and NLL (measured
on the float16 weights that are stored), device, library versions, wall time and throughput, plus
a snapshot of the weights at the end of warm-up (the Hessian chapter needs it), and the polar
training trajectory (r_t, θ_t) computed from per-epoch snapshots that are deleted afterwards.

Training survives interruption (:mod:`lib.zoo.runstate`): after every epoch the full state goes to
``<out>.resume.pt``; ``--resume`` continues from it (or starts fresh when there is none) and the
result is identical to an uninterrupted run. A run without ``--resume`` starts clean: it discards,
and says so, any resume state an older run left beside ``--out``. Every file is written to a
temporary name and renamed; a lock keeps two processes from writing one ``--out``; SIGTERM ends a
run like Ctrl-C, keeping the last finished epoch.

On CUDA one step costs what the GPU needs rather than what Python needs: the data stays on the
device, nothing waits for the GPU inside an epoch (the loss is read every 20 steps, and only for
the progress bar), AdamW is fused, convolutional models run channels-last, and ``--compile`` adds
``torch.compile``.

Usage::

    python -m lib.zoo.train --model vit --dataset fashion-mnist --subset 0.1 --epochs 60 --out vit.pt
    torchrun --nproc_per_node 4 -m lib.zoo.train --model vit --dataset cifar100 --epochs 300 --out v.pt

Under ``torchrun`` the same command trains with DistributedDataParallel (NCCL on GPUs, gloo on
CPU): each process takes its share of every global batch, so the recipe (global batch size,
schedule) is unchanged.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # plain text bars: no widgets in stored notebooks or the offline book

from . import catalog, runstate

from ..core import data, models
from ..core.metrics import evaluate
from ..core.running import check_positive_int
from ..core.io import atomic_torch_save, half_state_dict, load_half_state_dict
from .recipe import (CONVERGENCE_EPOCHS, FULL_RECIPE, RECIPE_TYPES, Recipe, add_recipe_arguments, fraction,
                     lr_factor, param_groups, recipe_from_args, zoo_recipe)
from .runstate import resume_path, run_lock, trajectory_path
from .trajectory import SnapshotFolder, flat_parameters

FORMAT_VERSION = 1


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def training_step(step_model: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                  schedule: torch.optim.lr_scheduler.LRScheduler, xb: torch.Tensor, yb: torch.Tensor,
                  recipe: Recipe, aug_gen: torch.Generator, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recipe on the batch ``(xb, yb)``: augment, forward, loss, backward, clip, update.

    ``step_model`` is what runs the batch (``model`` itself, or wrapped by DDP or ``torch.compile``);
    gradients are clipped on ``model``'s parameters. On CUDA the forward pass runs under bf16
    autocast. Returns the loss and the logits (both still attached to the device).
    """
    if recipe.augment:
        xb = data.augment(xb, generator=aug_gen)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=xb.device.type == "cuda"):
        logits = step_model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    schedule.step()
    return loss, logits


#: Models with convolutions throughout: channels-last memory makes their kernels faster, on CUDA and
#: on the CPU (oneDNN: the ResNet's training step 1.31x, AlterNet's 1.15x on two cores).
CHANNELS_LAST_MODELS: tuple[str, ...] = ("resnet", "alternet")


def train(model_name: str, dataset: str = "fashion-mnist", subset: float | None = None,
          recipe: Recipe = FULL_RECIPE, seed: int = 0, out: str | os.PathLike | None = None,
          device: str | torch.device | None = None, resume: bool = False, progress: bool = True,
          data_root: str | os.PathLike | None = None, stop_after_epochs: int | None = None,
          stop_after_steps: int | None = None,
          status: str | None = None, layout: str | None = None, keep_snapshots: bool = True,
          compile: bool = False, epoch_log: Callable[[dict[str, Any]], None] | None = None,
          eval_every: int = 1) -> dict[str, Any] | None:
    """Train ``model_name`` on ``dataset`` with ``recipe``; return the checkpoint record.

    With ``out`` the checkpoint is written there (atomically) and the resume state is kept beside
    it after each epoch. ``resume=True`` continues from that state, or starts fresh (saying so)
    when there is none; a state from a different run (model, layout, data, recipe or seed) is an
    error. Without ``resume`` the run starts clean and discards any old state (saying so).
    ``stop_after_epochs`` ends the run early as an interruption would (the resume state stays;
    returns ``None``), which is how the tests exercise resuming; ``stop_after_steps`` does the same
    after that many optimisation steps in all, inside an epoch, as SIGTERM does to the command line:
    the resume state then keeps the epoch's progress, and the continued run is identical to an
    uninterrupted one. ``status`` is "final" or
    "provisional" (default: "final" when the recipe is the full one, else "provisional").
    ``layout`` places conv and MSA blocks in a ``resnet``/``alternet`` (see
    :func:`lib.core.models.parse_layout`). ``keep_snapshots=False`` stores no warm-up snapshot, which
    halves the file (the ablation zoo does without). ``compile`` runs the training step through
    ``torch.compile``. ``epoch_log`` receives, after every epoch, its history entry plus
    ``epochs``, ``train_time_s`` and ``images_per_s`` of that epoch. Under torchrun, ranks
    other than 0 return ``None``.
    """
    if model_name not in models.MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(models.MODELS)}")
    if dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(data.DATASETS)}")
    if status not in (None, "final", "provisional"):
        raise ValueError(f"status must be 'final' or 'provisional', got {status!r}")
    check_positive_int(eval_every, "eval_every")
    if resume and out is None:
        raise ValueError("resume=True needs the out path whose resume state to continue from")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the checkpoint's file path, e.g. {Path(out) / 'model.pt'}")
    layout = models.layout_override(model_name, layout)
    args = dict(model_name=model_name, dataset=dataset, subset=subset, recipe=recipe, seed=seed, out=out,
                device=device, resume=resume, progress=progress, data_root=data_root,
                stop_after_epochs=stop_after_epochs, stop_after_steps=stop_after_steps, status=status, layout=layout,
                keep_snapshots=keep_snapshots, compile=compile, epoch_log=epoch_log, eval_every=eval_every)
    if out is None or _dist_info()[0] != 0:  # one lock per run: rank 0 holds it
        return _train(**args)
    with run_lock(out):
        return _train(**args)


def _train(model_name: str, dataset: str, subset: float | None, recipe: Recipe, seed: int,
           out: str | os.PathLike | None, device: str | torch.device | None, resume: bool, progress: bool,
           data_root: str | os.PathLike | None, stop_after_epochs: int | None, stop_after_steps: int | None,
           status: str | None,
           layout: str | None, keep_snapshots: bool, compile: bool,
           epoch_log: Callable[[dict[str, Any]], None] | None, eval_every: int) -> dict[str, Any] | None:
    status = status or ("final" if recipe == zoo_recipe(subset) else "provisional")
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
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once

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
    models.use_fused_attention(model, True)  # fast path for first-order training
    channels_last = model_name in CHANNELS_LAST_MODELS
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    eval_batch = 1024 if cuda else 128
    if cuda:  # the whole dataset resident on the GPU
        x_train, y_train = x_train.to(device), y_train.to(device)
        x_test, y_test = x_test.to(device), y_test.to(device)
    ddp_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    step_model = torch.compile(ddp_model) if compile else ddp_model

    steps_per_epoch = len(x_train) // recipe.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {recipe.batch_size} exceeds the {len(x_train)} training images")
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = recipe.warmup_epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  **({"fused": True} if cuda else {}))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, recipe.min_lr / recipe.lr))
    order_gen, aug_gen = _generators(seed, device)

    history: list[dict[str, float]] = []
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    start_epoch, wall, train_time = 0, 0.0, 0.0
    partial: dict[str, Any] | None = None  # the epoch a stop interrupted, when resumed inside it
    identity = runstate.run_identity(model_name, dataset, subset, recipe, seed, layout)
    state_file = resume_path(out) if out is not None else None
    state = runstate.load_or_discard(Path(out), identity, resume, device) if out is not None and main_process else None
    if distributed and out is not None:  # every rank resumes from the same state
        state = torch.load(state_file, map_location=device, weights_only=True) if resume and state_file.exists() else None
    if state is not None:
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"], order_gen, aug_gen, device)
        history, snapshots = state["history"], state["snapshots"]
        start_epoch, wall, train_time = state["epoch"], state["wall_time_s"], state["train_time_s"]
        partial = state.get("partial")
        if main_process:
            within = f" and {partial['step']} of its {steps_per_epoch} steps" if partial else ""
            runstate.say(f"resuming {Path(out).name} after epoch {start_epoch} of {recipe.epochs}{within}")

    # Per-epoch weight snapshots for the polar trajectory (Park & Kim Fig. 1b): kept on disk beside
    # the checkpoint while training (so resuming keeps them), reduced to numbers at the end.
    trajectory_dir = None
    if main_process:
        trajectory_dir = SnapshotFolder(None if out is None else trajectory_path(out))
        if start_epoch == 0:
            trajectory_dir.save(0, model)

    local_batch = recipe.batch_size // world
    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch + (partial["step"] if partial else 0),
               disable=not (progress and main_process),
               desc=f"{model_name} {dataset}" + (f" {subset:g}" if subset else ""), unit="step",
               dynamic_ncols=True, file=sys.stderr)
    end_epoch = recipe.epochs if stop_after_epochs is None else min(recipe.epochs, stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        ddp_model.train()
        if partial is not None:  # continue the interrupted epoch: same order, same running sums
            order, first_step = partial["order"].to(x_train.device), partial["step"]
            loss_sum, correct = partial["loss_sum"].to(device), partial["correct"].to(device)
            time_before = partial["epoch_time_s"]
            partial = None
        else:
            order = torch.randperm(len(x_train), generator=order_gen).to(x_train.device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            first_step, time_before = 0, 0.0
        for step in range(first_step, steps_per_epoch):
            done = epoch * steps_per_epoch + step
            if STOP.is_set() and distributed:  # ranks cannot agree on a step: the last epoch's state stays
                raise KeyboardInterrupt
            stop_now = STOP.is_set()
            asked = stop_after_steps is not None and done >= stop_after_steps
            if (stop_now or asked) and step > first_step:
                # A stop between two steps keeps this epoch's progress (the next run continues it);
                # at an epoch's first step the state of the epoch before is already on disk.
                elapsed = time.perf_counter() - t0
                if state_file is not None:
                    atomic_torch_save({
                        **identity, "epoch": epoch,
                        "weights": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": _rng_state(order_gen, aug_gen, device),
                        "history": history, "snapshots": snapshots, "wall_time_s": wall + elapsed,
                        "train_time_s": train_time + elapsed,
                        "partial": {"step": step, "order": order.cpu(), "loss_sum": loss_sum.cpu(),
                                    "correct": correct.cpu(), "epoch_time_s": time_before + elapsed}}, state_file)
                bar.close()
                if stop_now:
                    raise KeyboardInterrupt
                return None
            if stop_now:
                raise KeyboardInterrupt
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            idx = idx[rank * local_batch:(rank + 1) * local_batch]
            xb = x_train[idx].to(device, non_blocking=True)
            yb = y_train[idx].to(device, non_blocking=True)
            loss, logits = training_step(step_model, model, optimizer, schedule, xb, yb, recipe, aug_gen,
                                         channels_last)
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            bar.update(1)
            if step % 20 == 0 and not bar.disable:  # the only read of a GPU value inside the epoch
                bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{loss.item():.3f}")
        seen = steps_per_epoch * local_batch
        if distributed:
            stats = torch.stack([loss_sum, correct.float()])
            dist.all_reduce(stats)
            loss_sum, correct, seen = stats[0], stats[1], seen * world
        if cuda:
            torch.cuda.synchronize(device)  # time the epoch's work, not its launches
        elapsed = time.perf_counter() - t0
        epoch_train_time = time_before + elapsed  # the whole epoch, across an interruption
        train_time += elapsed
        if keep_snapshots and epoch + 1 == recipe.warmup_epochs:
            snapshots["warmup"] = half_state_dict(model)
        if main_process:
            history.append({"epoch": epoch + 1, "lr": schedule.get_last_lr()[0],
                            "train_loss": loss_sum.item() / seen, "train_acc": 100.0 * correct.item() / seen})
            if is_evaluated(epoch + 1, recipe.epochs, eval_every):
                test = evaluate(model, x_test, y_test, batch_size=eval_batch, device=device)
                history[-1].update(test_loss=test["nll"], test_acc=test["acc"])
                bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", test_acc=f"{test['acc']:.1f}")
            if epoch_log is not None:
                epoch_log({**history[-1], "epochs": recipe.epochs, "train_time_s": epoch_train_time,
                           "images_per_s": seen / epoch_train_time})
            trajectory_dir.save(epoch + 1, model)
        wall += time.perf_counter() - t0
        if main_process and state_file is not None:
            atomic_torch_save({
                **identity, "epoch": epoch + 1,
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
    final = evaluate(stored.to(device), x_test, y_test, batch_size=eval_batch, device=device)
    record = {
        "format": FORMAT_VERSION, "model": model_name, "build": build_kwargs, "dataset": dataset,
        "subset": subset, "n_train": len(y_train), "recipe": asdict(recipe), "seed": seed, "status": status,
        "history": history, "test_acc": final["acc"], "test_nll": final["nll"],
        "params": models.count_parameters(model), "device": _device_name(device), "world_size": world,
        "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version(),
        "wall_time_s": wall, "images_per_s": recipe.epochs * steps_per_epoch * recipe.batch_size / max(train_time, 1e-9),
        "speedups": {"compile": compile, "channels_last": channels_last, "fused_adamw": cuda},
        "weights": weights, "snapshots": snapshots, "trajectory": trajectory,
    }
    if out is not None:
        atomic_torch_save(record, out)
        state_file.unlink(missing_ok=True)
    trajectory_dir.remove()
    return record


#: Set by SIGTERM or Ctrl-C in the command line: the run stops between two optimisation steps,
#: keeping everything done so far in its resume state (the runner's trainings lose nothing).
STOP = threading.Event()


def is_evaluated(epoch: int, epochs: int, eval_every: int) -> bool:
    """Whether epoch ``epoch`` (1-based) of ``epochs`` is measured on the test set."""
    return epoch % eval_every == 0 or epoch > epochs - CONVERGENCE_EPOCHS


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores)"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.zoo.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, choices=models.MODELS)
    p.add_argument("--dataset", default="fashion-mnist", choices=data.DATASETS)
    p.add_argument("--subset", type=fraction, default=None, help="class-balanced fraction (0, 1] of the training set")
    p.add_argument("--seed", type=RECIPE_TYPES["warmup_epochs"], default=0)
    p.add_argument("--layout", default=None,
                   help="conv (C) / MSA (M) blocks per stage of resnet/alternet, e.g. CC,MC,MC")
    p.add_argument("--no-snapshots", action="store_true", help="store no warm-up snapshot (smaller file)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>.resume.pt when it exists (else start fresh)")
    p.add_argument("--status", choices=("final", "provisional"), default=None,
                   help="manifest status (default: final for the full recipe, else provisional)")
    p.add_argument("--register", action="store_true", help="add the checkpoint to data/checkpoints/MANIFEST.json")
    p.add_argument("--compile", action="store_true", help="run the training step through torch.compile")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; one line per epoch instead")
    p.add_argument("--eval-every", type=RECIPE_TYPES["epochs"], default=1, metavar="K",
                   help=f"measure the test set after every K-th epoch (and each of the last {CONVERGENCE_EPOCHS})")
    add_recipe_arguments(p)
    p.epilog = (f"Without recipe flags a run on all the data uses the zoo's recipe ({FULL_RECIPE.epochs} epochs); "
                f"on a subset the same recipe at {zoo_recipe(0.1).epochs // FULL_RECIPE.epochs}x the epochs and warm-up.")
    return p


def _epoch_line(name: str) -> Callable[[dict[str, Any]], None]:
    """One line per epoch, for runs without a progress bar (several jobs at once, logs)."""
    def log(e: dict[str, Any]) -> None:
        test = f"test acc. {e['test_acc']:.2f}%, NLL {e['test_loss']:.4f}, " if "test_acc" in e else ""
        print(f"{name}: epoch {e['epoch']}/{e['epochs']}: train loss {e['train_loss']:.3f}, {test}"
              f"{e['images_per_s']:,.0f} images/s", flush=True)
    return log


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM and Ctrl-C ask the run to stop after the optimisation step in progress."""
    if STOP.is_set():  # a second signal: stop at once (the last saved state stays)
        raise KeyboardInterrupt
    STOP.set()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    recipe = recipe_from_args(args, parser, base=zoo_recipe(args.subset))
    try:
        layout = models.layout_override(args.model, args.layout)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the checkpoint's file path, e.g. {out / 'model.pt'}")
    entry = catalog.Entry(args.model, args.dataset, args.subset, args.seed, layout, snapshots=not args.no_snapshots)
    if args.register:
        try:
            catalog.check_registrable(out, entry)
        except catalog.ZooError as err:
            parser.error(f"--register: {err}")
        if catalog.catalogued(entry).snapshots and (args.no_snapshots or recipe.warmup_epochs == 0):
            parser.error(f"--register: the chapters load {entry.key} at the end of warm-up; "
                         f"drop --no-snapshots and keep --warmup-epochs >= 1")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        record = train(args.model, args.dataset, args.subset, recipe, seed=args.seed, out=out,
                       device=args.device, resume=args.resume, progress=not args.no_progress, status=args.status,
                       layout=layout, keep_snapshots=not args.no_snapshots, compile=args.compile,
                       epoch_log=_epoch_line(entry.key) if args.no_progress else None,
                       eval_every=args.eval_every)
    except KeyboardInterrupt:
        state = resume_path(out)
        runstate.say(f"interrupted: {'the resume state ' + str(state) + ' keeps every finished step; rerun with --resume' if state.exists() else 'nothing had been trained yet'}")
        return 130
    except (ValueError, RuntimeError) as err:
        runstate.say(f"error: {err}")
        return 1
    if record is not None:
        print(f"{args.model}" + (f" [{layout}]" if layout else "") + f" on {args.dataset}"
              + (f" (subset {args.subset:g})" if args.subset else "")
              + f": test accuracy {record['test_acc']:.2f}%, NLL {record['test_nll']:.4f}, "
              + f"{record['images_per_s']:.0f} images/s, {record['wall_time_s'] / 60:.1f} min", flush=True)
        if args.register:
            listed = catalog.register(out)
            print(f"registered {listed['file']} ({listed['status']})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
