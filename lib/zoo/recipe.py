"""The one training recipe of the zoo: its settings, its learning-rate schedule, and its flags.

Every zoo model is trained the same way (a fair comparison): AdamW, linear warm-up then cosine
decay (per step), weight decay on matrices only, label smoothing, gradient clipping, drop-path,
on-device batch augmentation. :data:`FULL_RECIPE` is the zoo's on all the training data; a run on
a subset follows :func:`zoo_recipe` (the same recipe, :data:`SUBSET_EPOCH_FACTOR` times the epochs
and the warm-up). A shorter run (``--epochs``) scales the warm-up with it. ``lib.zoo.train`` and the zoo's runner share the command-line flags, so
bad values fail the same way, in one line, before any work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """The shared training recipe (defaults = the zoo's full recipe on all the training data).

    30 epochs with 3 of warm-up: the length a pilot of the slowest-converging model (the ViT) on
    this book's 2-core CPU could afford; the README gives the pilot's learning curve.
    """

    epochs: int = 30
    warmup_epochs: int = 3
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

#: The last epochs of every run are all measured on the test set, however rarely the rest are:
#: their test NLL is the evidence of convergence that the manifest records.
CONVERGENCE_EPOCHS = 5

#: Runs on a fraction of the training data take this many times the full recipe's epochs (and
#: warm-up): on 10% of the data that is a fifth of the full run's steps, enough for the small set
#: to converge without the cost of matching the full run step for step.
SUBSET_EPOCH_FACTOR = 2


def zoo_recipe(subset: float | None) -> Recipe:
    """The zoo's recipe for training on ``subset`` of the data (``None``: all of it)."""
    if subset is None or subset == 1:
        return FULL_RECIPE
    return dataclasses.replace(FULL_RECIPE, epochs=FULL_RECIPE.epochs * SUBSET_EPOCH_FACTOR,
                               warmup_epochs=FULL_RECIPE.warmup_epochs * SUBSET_EPOCH_FACTOR)


def scaled_warmup(epochs: int) -> int:
    """The full recipe's warm-up share (3 of 30 epochs) of a run of ``epochs``, at least one epoch.

    A shorter run then needs no second flag, and still ends its warm-up (whose snapshot the
    Hessian chapter loads) inside the run.
    """
    return max(1, min(epochs, round(epochs * FULL_RECIPE.warmup_epochs / FULL_RECIPE.epochs)))


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


def _typed(kind: type, low: float, low_inclusive: bool, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within bounds, with a one-line error naming the valid range."""
    rng = ("[" if low_inclusive else "(") + f"{low:g}, " + (f"{high:g}]" if high is not None else "∞)")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} in {rng}, "
                                             f"got {text!r}") from None
        if (value < low if low_inclusive else value <= low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be in {rng}, got {text}")
        return value
    return parse


def _boolean(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


#: argparse types of the recipe's fields: what each may be.
RECIPE_TYPES: dict[str, Callable[[str], Any]] = {
    "epochs": _typed(int, 1, True), "warmup_epochs": _typed(int, 0, True), "batch_size": _typed(int, 1, True),
    "lr": _typed(float, 0, False), "min_lr": _typed(float, 0, True), "weight_decay": _typed(float, 0, True),
    "label_smoothing": _typed(float, 0, True, 1), "grad_clip": _typed(float, 0, True),
    "drop_path": _typed(float, 0, True, 1), "augment": _boolean}
#: An argparse type for fractions in (0, 1], such as ``--subset``.
fraction = _typed(float, 0, False, 1)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """``--epochs``, ``--warmup-epochs``, ... one flag per recipe field (default: the full recipe)."""
    group = parser.add_argument_group("recipe (default: the zoo's full recipe)")
    for f in dataclasses.fields(Recipe):
        group.add_argument("--" + f.name.replace("_", "-"), type=RECIPE_TYPES[f.name], default=None,
                           metavar=f.name.upper(), help=f"default {f.default}")


def recipe_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser, base: Recipe = FULL_RECIPE,
                     note: bool = True) -> Recipe:
    """The recipe the flags ask for: ``base`` (the zoo's recipe for the run's data) with every flag
    given in place of its field. ``--epochs`` alone scales the warm-up (and says so, unless ``note``
    is false)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    if "epochs" in given and "warmup_epochs" not in given and given["epochs"] != base.epochs:
        given["warmup_epochs"] = scaled_warmup(given["epochs"])
        if note:
            print(f"note: warm-up scaled to {given['warmup_epochs']} epoch(s) for --epochs {given['epochs']} "
                  f"(the full recipe warms up for {FULL_RECIPE.warmup_epochs} of {FULL_RECIPE.epochs}); "
                  f"--warmup-epochs sets it", file=sys.stderr)
    try:
        return dataclasses.replace(base, **given)
    except ValueError as err:
        parser.error(str(err).replace("warmup_epochs", "--warmup-epochs").replace("epochs=", "--epochs "))


def recipe_flags(recipe: Recipe, base: Recipe = FULL_RECIPE) -> list[str]:
    """Command-line flags for every field where ``recipe`` differs from ``base`` (what a command
    without flags would use: the zoo's recipe for the run's data)."""
    flags = []
    for f in dataclasses.fields(Recipe):
        value = getattr(recipe, f.name)
        if value != getattr(base, f.name):
            flags += ["--" + f.name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else repr(value)]
    return flags
