"""The trained model zoo that ships with the book: loading its checkpoints, verified.

:func:`load` finds a model's entry in the manifest (:mod:`lib.zoo.catalog`), verifies the file's
sha256 and identity against it before it trusts the file, rebuilds the architecture from the stored
build arguments and upcasts the float16 weights. The command line that lists, verifies, trains and
swaps the zoo is ``python -m lib.zoo`` (:mod:`lib.zoo.__main__`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..core import models
from ..core.io import load_half_state_dict
from .catalog import (CHECKPOINT_DIR, HEADLINE_MODELS, HEADLINE_SEEDS, MANIFEST_NAME, Entry, ZooError, catalogued,
                      read_manifest, read_record, sha256, shown)

STAGES: tuple[str, ...] = ("final", "warmup")


def model_from_record(record: dict[str, Any], stage: str = "final",
                      expect_model: str | None = None) -> nn.Module:
    """Rebuild the architecture a checkpoint record names and load its weights (eval mode)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    name = record.get("model")
    if expect_model is not None and name != expect_model:
        raise ZooError(f"this checkpoint holds a {name!r} model, not {expect_model!r}")
    if name not in models.MODELS:
        raise ZooError(f"checkpoint names unknown architecture {name!r}; known: {', '.join(models.MODELS)}")
    if stage == "final":
        weights = record["weights"]
    elif stage in record.get("snapshots", {}):
        weights = record["snapshots"][stage]
    else:
        raise ZooError(f"this {name} checkpoint has no {stage!r} snapshot (it has: "
                       f"{', '.join(['final', *record.get('snapshots', {})])})")
    model = models.build(name, **record["build"])
    try:
        load_half_state_dict(model, weights)
    except RuntimeError as err:
        raise ZooError(f"the weights do not fit the {name!r} architecture: {str(err).splitlines()[0]}") from err
    return model.eval()


def load_checkpoint(path: str | os.PathLike, stage: str = "final", expect_model: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load any checkpoint file written by :mod:`lib.zoo.train` (no manifest check)."""
    record = read_record(Path(path))
    model = model_from_record(record, stage, expect_model).to(device)
    return model, {k: v for k, v in record.items() if k not in ("weights", "snapshots")}


def load(name: str, dataset: str = "fashion-mnist", subset: float | None = None, stage: str = "final",
         seed: int = 0, device: str | torch.device = "cpu",
         checkpoint_dir: str | os.PathLike | None = None,
         layout: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load zoo model ``name`` in eval mode, verifying its sha256 against the manifest.

    ``layout`` picks a placement ablation of ``alternet``/``resnet`` (e.g. ``"CC,MC,MC"``).
    Returns ``(model, record)``; the record is the checkpoint's provenance and history (without the
    weights) plus ``"manifest"``, its manifest entry. ``stage="warmup"`` gives the snapshot taken
    at the end of warm-up. Errors say how to get the checkpoint back.
    """
    if name not in models.MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(models.MODELS)}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    entry = catalogued(Entry(name, dataset, subset, seed, layout))  # the zoo's own train command
    folder = Path(checkpoint_dir or CHECKPOINT_DIR)
    listed = read_manifest(folder, must_exist=True)["checkpoints"].get(entry.key)
    how = f"train it with `{entry.train_command()}` (or `make zoo` for the whole zoo)"
    if listed is None:
        raise ZooError(f"the zoo has no checkpoint {entry.key!r} in {folder / MANIFEST_NAME}; {how}")
    path = folder / listed["file"]
    if not path.exists():
        raise ZooError(f"checkpoint file {shown(path)} is missing; restore it with `git checkout -- "
                       f"{shown(path)}` or {how}")
    if sha256(path) != listed["sha256"]:
        raise ZooError(f"checksum mismatch for {shown(path)}: the file is corrupted or was replaced without "
                       f"re-registering it; restore it with `git checkout -- {shown(path)}`, or {how}")
    model, record = load_checkpoint(path, stage, expect_model=name, device=device)
    found = Entry(record["model"], record["dataset"], record["subset"], record["seed"], record["build"].get("layout"))
    if found != entry:
        raise ZooError(f"{shown(path)} holds {found.key} ({found.model}, subset {found.subset}, seed {found.seed}, "
                       f"layout {found.layout}), not the {entry.key} asked for; {how}")
    record["manifest"] = listed
    return model, record


def entry_for(model_or_layout: str, subset: float | None = None, seed: int = 0,
              dataset: str = "fashion-mnist") -> Entry:
    """The zoo entry of a model name (``"vit"``) or of a ResNet/AlterNet block layout (``"CC,MC,MC"``).

    A layout names a ``resnet`` when it is the ResNet's own (no MSA block), else an ``alternet``
    variant; the AlterNet's own layout is the ``alternet`` entry itself.
    """
    if model_or_layout in models.MODELS:
        return catalogued(Entry(model_or_layout, dataset, subset, seed))
    layout = ",".join(models.parse_layout(model_or_layout))
    model = "resnet" if layout == models.RESNET_LAYOUT else "alternet"
    return catalogued(Entry(model, dataset, subset, seed, layout))


def is_trained(entry: Entry, checkpoint_dir: str | os.PathLike | None = None) -> bool:
    """Whether the manifest lists a checkpoint for ``entry`` (the catalogue may name more than is trained)."""
    return entry.key in read_manifest(checkpoint_dir, must_exist=True)["checkpoints"]


def record(entry: Entry, checkpoint_dir: str | os.PathLike | None = None,
           device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint record of ``entry`` (history, test metrics, provenance; verified like
    :func:`load`), or ``None`` when it is not trained."""
    if not is_trained(entry, checkpoint_dir):
        return None
    return load(entry.model, entry.dataset, entry.subset, seed=entry.seed, layout=entry.layout,
                checkpoint_dir=checkpoint_dir, device=device)[1]


#: The data fractions that train every headline model with every headline seed, in the order
#: :func:`seed_runs_subset` prefers them: all of the data, then 10%.
SEED_RUN_SUBSETS: tuple[float | None, ...] = (None, 0.1)


def seed_runs_subset(names: Sequence[str] = HEADLINE_MODELS, seeds: Sequence[int] = HEADLINE_SEEDS,
                     checkpoint_dir: str | os.PathLike | None = None) -> float | None:
    """The training-data fraction on which the zoo has a run of every model in ``names`` with every
    seed in ``seeds``: all of the data (``None``) when it has those runs, else 10% (``0.1``).

    A claim about a difference between architectures is replicated over such runs (seeds); the
    full-data regime is the one the chapters describe, so it is preferred once it is trained, and a
    chapter that asks here follows the zoo without an edit.

    Raises:
        ZooError: neither fraction has every run, naming what is missing.
    """
    missing = {}
    for subset in SEED_RUN_SUBSETS:
        entries = [entry_for(name, subset, seed) for name in names for seed in seeds]
        lacking = [entry.key for entry in entries if not is_trained(entry, checkpoint_dir)]
        if not lacking:
            return subset
        missing[subset] = lacking
    smallest = SEED_RUN_SUBSETS[-1]
    raise ZooError("the zoo has no data fraction with a run of every one of " + ", ".join(names) + " for seeds "
                   + ", ".join(map(str, seeds)) + f"; missing on {smallest:.0%} of the data: "
                   + ", ".join(missing[smallest]) + "; train them with `make zoo`")


def load_seed_runs(names: Sequence[str], seeds: Sequence[int], subset: float | None,
                   device: str | torch.device = "cpu", checkpoint_dir: str | os.PathLike | None = None
                   ) -> tuple[dict[tuple[str, int], nn.Module], dict[tuple[str, int], dict[str, Any]]]:
    """Every model in ``names`` with every seed in ``seeds`` trained on ``subset`` (e.g. from
    :func:`seed_runs_subset`), loaded and verified as :func:`load` does: ``(models, records)``,
    both keyed by ``(name, seed)`` in the order of ``names``, then ``seeds``."""
    models_, records = {}, {}
    for name in names:
        for seed in seeds:
            models_[name, seed], records[name, seed] = load(name, subset=subset, seed=seed, device=device,
                                                            checkpoint_dir=checkpoint_dir)
    return models_, records
