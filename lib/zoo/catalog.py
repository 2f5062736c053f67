"""The zoo's catalogue and its manifest: which checkpoints the book ships, and the record of each.

* :class:`Entry` names one checkpoint (model, dataset or subset, seed, block layout) and knows its
  file name and the exact command that trains it.
* :data:`ZOO`, :data:`SEEDS` and :data:`ABLATIONS` are the catalogue, in training priority
  (:data:`PRIORITY`): first the seed-0 models the chapters load, then extra seeds for error bars,
  then AlterNet's placement ablations.
* ``data/checkpoints/MANIFEST.json`` lists each trained checkpoint with its sha256, size, test
  accuracy and NLL, epochs, device and status (``provisional`` for short CPU schedules, ``final``
  for the full recipe). :func:`register` adds one (atomically, one process at a time), and
  :func:`check` says for every listed checkpoint whether it is intact, and if not why and how to
  fix it.

This module sits beside training (it reads checkpoint records, never trains): ``lib.zoo.train`` uses it
to check ``--register`` before a run, and the zoo's runner to register what training wrote.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core import models
from ..core.io import atomic_write_json
from .recipe import CONVERGENCE_EPOCHS

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_DIR = REPO / "data" / "checkpoints"
#: Where finished runs of the zoo's recipe wait, with their own manifest, until the set they
#: belong to is complete and replaces the shipped checkpoints (``python -m lib.zoo swap``). The
#: chapters never load from here.
STAGING_DIR = CHECKPOINT_DIR / "next"
MANIFEST_NAME = "MANIFEST.json"

#: Fields every manifest entry must have (``register`` also writes ``layout``; older entries
#: without it have the model's own layout).
MANIFEST_FIELDS: tuple[str, ...] = (
    "file", "sha256", "bytes", "model", "dataset", "subset", "seed", "params", "epochs",
    "test_acc", "test_nll", "device", "status", "stages", "wall_time_s", "images_per_s")
#: Fields of a checkpoint record that registration reads.
RECORD_FIELDS: tuple[str, ...] = ("model", "build", "dataset", "subset", "seed", "recipe", "status",
                                  "params", "test_acc", "test_nll", "device", "snapshots",
                                  "wall_time_s", "images_per_s")


class ZooError(RuntimeError):
    """A zoo checkpoint or the manifest is missing, corrupted, or not what it claims to be."""


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it (what a git command takes)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Entry:
    """One zoo checkpoint: a model (and block layout) trained on a dataset or subset with a seed.

    ``layout`` is stored only when it differs from the model's own (see
    :func:`lib.core.models.layout_override`); ``snapshots=False`` entries keep no warm-up snapshot.
    """

    model: str
    dataset: str = "fashion-mnist"
    subset: float | None = None
    seed: int = 0
    layout: str | None = None
    snapshots: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", models.layout_override(self.model, self.layout))

    @property
    def key(self) -> str:
        """File stem and manifest key, e.g. ``vit-fashion-mnist-sub10``, ``alternet-CC.MC.MC-fashion-mnist``."""
        key = self.model + (f"-{self.layout.replace(',', '.')}" if self.layout else "") + f"-{self.dataset}"
        if self.subset is not None:  # exact: a 10.4% subset is not filed under 10%
            key += f"-sub{round(self.subset * 100, 6):g}"
        if self.seed:
            key += f"-seed{self.seed}"
        return key

    @property
    def filename(self) -> str:
        return self.key + ".pt"

    def train_args(self) -> list[str]:
        """``lib.zoo.train`` arguments that select this entry (model, data, seed, layout, snapshots)."""
        args = ["--model", self.model, "--dataset", self.dataset]
        if self.subset is not None:
            args += ["--subset", f"{self.subset:g}"]
        if self.seed:
            args += ["--seed", str(self.seed)]
        if self.layout:
            args += ["--layout", self.layout]
        if not self.snapshots:
            args.append("--no-snapshots")
        return args

    def train_command(self, out: str | None = None, extra: str = "") -> str:
        """The exact command that (re)trains this entry with the full recipe."""
        cmd = " ".join(["python -m lib.zoo.train", *self.train_args(),
                        "--out", out or "data/checkpoints/" + self.filename, "--register"])
        return cmd + (" " + extra if extra else "")


# --------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------

#: The core zoo: every model on all of Fashion-MNIST, and the headline three on 10% (seed 0).
ZOO: tuple[Entry, ...] = tuple(Entry(m) for m in models.MODELS) + tuple(
    Entry(m, subset=0.1) for m in ("resnet", "vit", "alternet"))

#: The models compared across chapters, trained with several seeds for measured error bars.
HEADLINE_MODELS: tuple[str, ...] = ("resnet", "vit", "alternet")
HEADLINE_SEEDS: tuple[int, ...] = (0, 1, 2)

#: Seeds 1 and 2 of the headline models, on all the data and on 10% (no warm-up snapshots).
SEEDS: tuple[Entry, ...] = tuple(
    Entry(m, subset=subset, seed=s, snapshots=False)
    for subset in (None, 0.1) for s in HEADLINE_SEEDS[1:] for m in HEADLINE_MODELS)

#: AlterNet's placement ablations (chapter 6), by name: the build rule's first step (one MSA at the
#: end of the last stage), MSAs at the *start* of stages 2 and 3 instead of the end, MSAs in every
#: block of the last stage, and the rule's next step after AlterNet (an MSA at the end of stage 1 too).
ABLATION_LAYOUTS: dict[str, str] = {"last-stage end": "CC,CC,CM", "stage starts": "CC,MC,MC",
                                    "whole last stage": "CC,CC,MM", "every stage end": "CM,CM,CM"}
#: Trained on the full training set too (the rest only on 10%).
FULL_DATA_ABLATIONS: tuple[str, ...] = ("stage starts", "whole last stage", "last-stage end")

#: The placement ablations on 10%, then on the full set; no warm-up snapshots (size budget).
ABLATIONS: tuple[Entry, ...] = (
    tuple(Entry("alternet", subset=0.1, layout=lay, snapshots=False) for lay in ABLATION_LAYOUTS.values())
    + tuple(Entry("alternet", layout=ABLATION_LAYOUTS[name], snapshots=False) for name in FULL_DATA_ABLATIONS))

#: The whole zoo in training priority: a run cut short still delivers the most important models.
PRIORITY: tuple[Entry, ...] = ZOO + SEEDS + ABLATIONS

#: The models the chapters' main results load, trained first with the zoo's recipe and swapped in
#: together: every architecture on all the data (seed 0), then the headline models on 10% of the
#: data with every seed (their seed-to-seed spread is the error bar of the less-data contrasts).
MAIN: tuple[Entry, ...] = ZOO + tuple(e for e in SEEDS if e.subset is not None)

#: Named sets for ``python -m lib.zoo train --set`` (each in priority order).
SETS: dict[str, tuple[Entry, ...]] = {"main": MAIN, "all": PRIORITY, "core": ZOO, "seeds": SEEDS,
                                      "ablation": ABLATIONS}

#: The short CPU schedules of the provisional checkpoints, ``subset -> (epochs, warm-up epochs)``
#: (``--short``): the full recipe is 60 epochs, far beyond a CPU.
SHORT_SCHEDULE: dict[float | None, tuple[int, int]] = {None: (2, 1), 0.1: (10, 2)}


def catalogued(entry: Entry) -> Entry:
    """The catalogue's own version of ``entry`` (with its ``snapshots`` flag), else ``entry``.

    Entries on other datasets (e.g. ``synthetic`` in tests) take the flag of the same entry on
    Fashion-MNIST, so a rehearsal behaves like the real zoo.
    """
    for e in PRIORITY:
        if (e.model, e.subset, e.seed, e.layout) == (entry.model, entry.subset, entry.seed, entry.layout):
            return Entry(entry.model, entry.dataset, entry.subset, entry.seed, entry.layout, e.snapshots)
    return entry


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------

def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(checkpoint_dir: str | os.PathLike | None = None) -> Path:
    return Path(checkpoint_dir or CHECKPOINT_DIR) / MANIFEST_NAME


def _restore_hint(path: Path) -> str:
    return (f"restore it with `git checkout -- {shown(path)}` (from the repository root), or re-register "
            f"the checkpoints with `python -m lib.zoo register {shown(path.parent)}/*.pt`")


def read_manifest(checkpoint_dir: str | os.PathLike | None = None, must_exist: bool = False) -> dict[str, Any]:
    """The manifest as ``{"checkpoints": {key: entry}}``, checked field by field.

    A missing manifest reads as empty (a new folder), unless ``must_exist``. Anything malformed
    raises :class:`ZooError` saying what is wrong and how to restore it.
    """
    path = manifest_path(checkpoint_dir)
    if not path.exists():
        if must_exist:
            raise ZooError(f"there is no manifest at {shown(path)}; {_restore_hint(path)}")
        return {"checkpoints": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"{shown(path)} is not valid JSON ({err}); {_restore_hint(path)}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), dict):
        raise ZooError(f"{shown(path)} should hold {{\"checkpoints\": {{...}}}}, found "
                       f"{json.dumps(manifest)[:60]}; {_restore_hint(path)}")
    for key, listed in manifest["checkpoints"].items():
        if not isinstance(listed, dict):
            raise ZooError(f"{shown(path)}: entry {key!r} is not an object; {_restore_hint(path)}")
        missing = [f for f in MANIFEST_FIELDS if f not in listed]
        if missing:
            file = listed.get("file", key + ".pt")
            raise ZooError(f"{shown(path)}: entry {key!r} lacks {', '.join(missing)}; re-register it with "
                           f"`python -m lib.zoo register {shown(path.parent / file)}` or restore the manifest "
                           f"with `git checkout -- {shown(path)}`")
    return manifest


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's record (weights included); :class:`ZooError` if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise ZooError(f"cannot read checkpoint {shown(path)}: {type(err).__name__}: {err}") from err


def entry_of(record: dict[str, Any]) -> Entry:
    """The zoo entry a checkpoint record describes (with the catalogue's snapshots flag)."""
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise ZooError(f"the checkpoint record lacks {', '.join(missing)}: it was not written by lib.zoo.train")
    return catalogued(Entry(record["model"], record["dataset"], record["subset"], record["seed"],
                            record["build"].get("layout")))


def check_registrable(path: str | os.PathLike, entry: Entry, checkpoint_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`ZooError` unless ``path`` is where ``entry`` must be written to be registered.

    ``lib.zoo.train --register`` calls this before training, so a wrong name or folder is caught
    before the run rather than after it.
    """
    path, folder = Path(path).resolve(), Path(checkpoint_dir or CHECKPOINT_DIR).resolve()
    if path.parent != folder:
        raise ZooError(f"{shown(path)} is not in {shown(folder)}; write it there "
                       f"(--out {shown(folder / entry.filename)}) to register it")
    if path.name != entry.filename:
        raise ZooError(f"{path.name} should be named {entry.filename} for {entry.key} "
                       f"(--out {shown(folder / entry.filename)})")


def register(path: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Add (or update) a checkpoint in the manifest of ``checkpoint_dir`` (default: the zoo's).

    The file must already sit in that folder under its entry's name; its record supplies
    everything but the checksum. A catalogued entry that the chapters load at the end of warm-up
    must have that snapshot. Safe with several processes registering at once (a file lock, then
    an atomic rewrite).
    """
    path = Path(path).resolve()
    folder = Path(checkpoint_dir or CHECKPOINT_DIR).resolve()
    record = read_record(path)
    entry = entry_of(record)
    check_registrable(path, entry, folder)
    if entry.snapshots and "warmup" not in record["snapshots"]:
        raise ZooError(f"{path.name} has no warm-up snapshot, which the chapters load for {entry.key}; "
                       f"retrain it with a warm-up (--warmup-epochs >= 1) and without --no-snapshots")
    with open(folder / ".manifest.lock", "w") as lock:  # parallel trainings register one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(folder)
        manifest["checkpoints"][entry.key] = _manifest_entry(path, entry, record)
        atomic_write_json(manifest, folder / MANIFEST_NAME)
    return manifest["checkpoints"][entry.key]


def _manifest_entry(path: Path, entry: Entry, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": path.name, "sha256": sha256(path), "bytes": path.stat().st_size,
        "model": entry.model, "layout": entry.layout, "dataset": entry.dataset, "subset": entry.subset,
        "seed": entry.seed,
        "params": record["params"], "epochs": record["recipe"]["epochs"],
        "test_acc": round(record["test_acc"], 2), "test_nll": round(record["test_nll"], 4),
        "device": record["device"], "status": record["status"],
        "stages": ["final"] + sorted(record["snapshots"]),
        "wall_time_s": round(record["wall_time_s"], 1), "images_per_s": round(record["images_per_s"], 1),
        # evidence of convergence: the test NLL of the last epochs, all of which are measured
        "test_nll_last_epochs": [round(h["test_loss"], 4) for h in record.get("history", [])
                                 if "test_loss" in h][-CONVERGENCE_EPOCHS:],
    }


@dataclass(frozen=True)
class Problem:
    """What is wrong with one checkpoint of a folder, and how to fix it."""

    key: str
    what: str
    fix: str


def check(checkpoint_dir: str | os.PathLike | None = None) -> tuple[list[str], list[Problem]]:
    """Check every listed checkpoint against the manifest: ``(intact keys, problems)``.

    A missing manifest, a missing file, a size or checksum mismatch are problems; so is a
    checkpoint file in the folder that the manifest does not list (it would never be loaded).
    """
    folder = Path(checkpoint_dir or CHECKPOINT_DIR)
    listed = read_manifest(folder, must_exist=True)["checkpoints"]
    ok, problems = [], []
    for key, item in sorted(listed.items()):
        path = folder / item["file"]
        restore = f"`git checkout -- {shown(path)}`"
        retrain = "retrain it with `python -m lib.zoo train` (which registers it)"
        if not path.exists():
            problems.append(Problem(key, f"file {shown(path)} is missing", f"restore it with {restore}, or {retrain}"))
        elif path.stat().st_size != item["bytes"] or sha256(path) != item["sha256"]:
            problems.append(Problem(key, f"checksum mismatch: {path.name} changed since it was registered",
                                    f"restore it with {restore}; if the new file is the one you want, "
                                    f"register it with `python -m lib.zoo register {shown(path)}`"))
        else:
            ok.append(key)
    files = {item["file"] for item in listed.values()}
    for path in sorted(folder.glob("*.pt")):
        if path.name not in files and not path.name.endswith(".resume.pt"):
            problems.append(Problem(path.stem, f"{path.name} is in the folder but not in the manifest",
                                    f"register it with `python -m lib.zoo register {shown(path)}`, or delete it"))
    return ok, problems


def swap(entries: tuple[Entry, ...] | list[Entry], staging: str | os.PathLike = STAGING_DIR,
         checkpoint_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Move the staged checkpoints of ``entries`` into the zoo, replacing the ones of the same name.

    Only a complete set moves: every entry must be staged, ``final`` and intact, else
    :class:`ZooError` names what is missing and nothing moves. Safe to run again after an
    interruption (an entry already moved is recognised by its checksum). Returns the new
    manifest entries; the staging folder is left empty.
    """
    staging, folder = Path(staging), Path(checkpoint_dir or CHECKPOINT_DIR)
    staged = read_manifest(staging)["checkpoints"]
    zoo = read_manifest(folder, must_exist=True)["checkpoints"]
    missing, damaged, provisional = [], [], []
    for entry in entries:
        item = staged.get(entry.key)
        if item is None:
            missing.append(entry.key)
            continue
        if item["status"] != "final":
            provisional.append(entry.key)
        src, dest = staging / item["file"], folder / item["file"]
        moved = not src.exists() and zoo.get(entry.key, {}).get("sha256") == item["sha256"]
        if not moved and (not src.exists() or sha256(src) != item["sha256"]):
            damaged.append(entry.key)
    problems = [f"{what}: {', '.join(keys)}" for what, keys in
                (("not staged yet", missing), ("not final", provisional), ("damaged or missing", damaged)) if keys]
    if problems:
        raise ZooError(f"the staged set in {shown(staging)} is not complete ({'; '.join(problems)}); "
                       f"finish it with `make zoo` (python -m lib.zoo train), then swap")
    result = []
    for entry in entries:
        item = staged[entry.key]
        src, dest = staging / item["file"], folder / item["file"]
        if src.exists():
            os.replace(src, dest)
        result.append(register(dest, folder))
    for entry in entries:
        staged.pop(entry.key)
    if staged:
        atomic_write_json({"checkpoints": staged}, staging / MANIFEST_NAME)
    else:  # nothing left to stage: the area goes
        (staging / MANIFEST_NAME).unlink()
        (staging / ".manifest.lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            staging.rmdir()
    return result
