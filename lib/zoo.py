"""The trained model zoo that ships with the book, and its manifest.

Checkpoints live in ``data/checkpoints/`` next to ``MANIFEST.json``, which lists each one with its
sha256, size, test accuracy and NLL, epochs, device and status (``provisional`` for short CPU
schedules, ``final`` for the full recipe). :func:`load` verifies the checksum before it trusts a
file, rebuilds the architecture from the stored build arguments and upcasts the float16 weights.

Command line (``make zoo`` runs ``train``)::

    python -m lib.zoo list [--markdown]        # the manifest as a table
    python -m lib.zoo verify                   # check every checksum
    python -m lib.zoo train [--set core|ablation|all] [--only vit] [--data full|sub10]
                            [--short | --epochs N --warmup-epochs W] [--jobs 3] [--device cuda]
    python -m lib.zoo register PATH.pt         # add a checkpoint written by ``lib.train``
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import models
from .io import atomic_write_json
from .train import load_half_state_dict

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = REPO / "data" / "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
STAGES: tuple[str, ...] = ("final", "warmup")


class ZooError(RuntimeError):
    """A zoo checkpoint is missing, corrupted, or not what it claims to be."""


@dataclass(frozen=True)
class Entry:
    """One zoo checkpoint: a model (and block layout) trained on a dataset or subset with a seed.

    ``layout`` is stored only when it differs from the model's own (see
    :func:`lib.models.layout_override`); ``snapshots=False`` entries keep no warm-up snapshot.
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
        if self.subset is not None:
            key += f"-sub{round(self.subset * 100):g}"
        if self.seed:
            key += f"-seed{self.seed}"
        return key

    @property
    def filename(self) -> str:
        return self.key + ".pt"

    def train_command(self, out: str | None = None, extra: str = "") -> str:
        """The exact command that (re)trains this entry with the full recipe."""
        cmd = f"python -m lib.train --model {self.model} --dataset {self.dataset}"
        if self.subset is not None:
            cmd += f" --subset {self.subset:g}"
        if self.seed:
            cmd += f" --seed {self.seed}"
        if self.layout:
            cmd += f" --layout {self.layout}"
        if not self.snapshots:
            cmd += " --no-snapshots"
        cmd += f" --out {out or 'data/checkpoints/' + self.filename} --register"
        return cmd + (" " + extra if extra else "")


#: The core zoo (``make zoo``): every model on all of Fashion-MNIST, and the headline three on 10%.
ZOO: tuple[Entry, ...] = tuple(Entry(m) for m in models.MODELS) + tuple(
    Entry(m, subset=0.1) for m in ("resnet", "vit", "alternet"))

#: AlterNet's placement ablations (chapter 6), by name: the build rule's first step (one MSA at the
#: end of the last stage), MSAs at the *start* of stages 2 and 3 instead of the end, MSAs in every
#: block of the last stage, and the rule's next step after AlterNet (an MSA at the end of stage 1 too).
ABLATION_LAYOUTS: dict[str, str] = {"last-stage end": "CC,CC,CM", "stage starts": "CC,MC,MC",
                                    "whole last stage": "CC,CC,MM", "every stage end": "CM,CM,CM"}
#: Trained on the full training set too (the rest only on 10%).
FULL_DATA_ABLATIONS: tuple[str, ...] = ("stage starts", "whole last stage", "last-stage end")
HEADLINE_SEEDS: tuple[int, ...] = (0, 1, 2)

#: The ablation zoo (``python -m lib.zoo train --set ablation``), in training priority: two more
#: seeds of the headline three on 10%, the placement ablations on 10%, then on the full set.
#: No warm-up snapshots, to stay within the size budget.
ABLATIONS: tuple[Entry, ...] = (
    tuple(Entry(m, subset=0.1, seed=s, snapshots=False) for s in HEADLINE_SEEDS[1:] for m in ("resnet", "vit", "alternet"))
    + tuple(Entry("alternet", subset=0.1, layout=lay, snapshots=False) for lay in ABLATION_LAYOUTS.values())
    + tuple(Entry("alternet", layout=ABLATION_LAYOUTS[name], snapshots=False) for name in FULL_DATA_ABLATIONS))

#: Named sets for ``python -m lib.zoo train --set``.
SETS: dict[str, tuple[Entry, ...]] = {"core": ZOO, "ablation": ABLATIONS, "all": ZOO + ABLATIONS}

#: The short CPU schedules of the provisional checkpoints, ``subset -> (epochs, warm-up epochs)``
#: (``--short``): the full recipe is 60 epochs, far beyond a CPU.
SHORT_SCHEDULE: dict[float | None, tuple[int, int]] = {None: (2, 1), 0.1: (10, 2)}


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest as a dict ``{"checkpoints": {key: entry}}`` (empty if there is none yet)."""
    path = Path(checkpoint_dir or CHECKPOINT_DIR) / MANIFEST_NAME
    if not path.exists():
        return {"checkpoints": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"{path} is not valid JSON ({err}); restore it with `git checkout {MANIFEST_NAME}` "
                       f"or re-register the checkpoints with `python -m lib.zoo register`") from err


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise ZooError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def register(path: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Add (or update) a checkpoint in the manifest of ``checkpoint_dir`` (default: the zoo's).

    The file must already sit in that folder; its record supplies everything but the checksum.
    """
    path = Path(path).resolve()
    folder = Path(checkpoint_dir or CHECKPOINT_DIR).resolve()
    if path.parent != folder:
        raise ZooError(f"{path} is not in {folder}; move it there before registering it")
    record = _read_record(path)
    entry = Entry(record["model"], record["dataset"], record["subset"], record["seed"],
                  record["build"].get("layout"))
    if path.name != entry.filename:
        raise ZooError(f"{path.name} should be named {entry.filename} for {entry}")
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
    }


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
    """Load any checkpoint file written by :mod:`lib.train` (no manifest check)."""
    record = _read_record(Path(path))
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
    entry = Entry(name, dataset, subset, seed, layout)
    entry = next((e for e in SETS["all"] if e == entry), entry)  # the zoo's own train command
    folder = Path(checkpoint_dir or CHECKPOINT_DIR)
    listed = read_manifest(folder)["checkpoints"].get(entry.key)
    how = f"train it with `{entry.train_command()}` (or `make zoo` for the whole zoo)"
    if listed is None:
        raise ZooError(f"the zoo has no checkpoint {entry.key!r} in {folder / MANIFEST_NAME}; {how}")
    path = folder / listed["file"]
    if not path.exists():
        raise ZooError(f"checkpoint file {path} is missing; restore it with `git checkout -- "
                       f"data/checkpoints/{listed['file']}` or {how}")
    if sha256(path) != listed["sha256"]:
        raise ZooError(f"checksum mismatch for {path}: the file is corrupted or was replaced without "
                       f"re-registering it; restore it with `git checkout -- data/checkpoints/{listed['file']}`, "
                       f"or {how}")
    model, record = load_checkpoint(path, stage, expect_model=name, device=device)
    record["manifest"] = listed
    return model, record


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    rows = read_manifest()["checkpoints"]
    if args.markdown:
        print("| checkpoint | params | epochs | device | test acc. (%) | test NLL | status |")
        print("|---|---:|---:|---|---:|---:|---|")
        for key in sorted(rows):
            r = rows[key]
            print(f"| `{key}` | {r['params']:,} | {r['epochs']} | {r['device']} | {r['test_acc']:.2f} | "
                  f"{r['test_nll']:.3f} | {r['status']} |")
        return 0
    print(f"{'checkpoint':34} {'params':>9} {'epochs':>6} {'acc %':>6} {'NLL':>7}  {'status':11} device")
    for key in sorted(rows):
        r = rows[key]
        print(f"{key:34} {r['params']:>9,} {r['epochs']:>6} {r['test_acc']:>6.2f} {r['test_nll']:>7.4f}  "
              f"{r['status']:11} {r['device']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    bad = 0
    for key, r in sorted(read_manifest()["checkpoints"].items()):
        path = CHECKPOINT_DIR / r["file"]
        ok = path.exists() and sha256(path) == r["sha256"]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {key}")
    return 1 if bad else 0


def _cmd_register(args: argparse.Namespace) -> int:
    for path in args.paths:
        r = register(path)
        print(f"registered {r['file']}: {r['test_acc']:.2f}% ({r['status']})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    unknown = set(args.only or []) - set(models.MODELS)
    if unknown:
        raise SystemExit(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(models.MODELS)}")
    if args.short and (args.epochs is not None or args.warmup_epochs is not None):
        raise SystemExit("--short sets the epochs itself; drop --epochs/--warmup-epochs")
    wanted_subset = {"all": None, "full": [None], "sub10": [0.1]}[args.data]
    entries = [e for e in SETS[args.set] if (not args.only or e.model in args.only)
               and (wanted_subset is None or e.subset in wanted_subset)]
    if not entries:
        raise SystemExit("nothing to train: no zoo entry matches --set/--only/--data")
    commands = []
    for e in entries:
        extra = [f"--device {args.device}"]
        epochs, warmup = (SHORT_SCHEDULE[e.subset] if args.short else (args.epochs, args.warmup_epochs))
        if epochs is not None:
            extra.append(f"--epochs {epochs}")
        if warmup is not None:
            extra.append(f"--warmup-epochs {warmup}")
        if args.resume:
            extra.append("--resume")
        if args.jobs > 1:
            extra.append("--no-progress")
        commands.append(e.train_command(extra=" ".join(extra)))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    def run(cmd: str) -> int:
        print(f"$ {cmd}", flush=True)
        return subprocess.run([sys.executable, *shlex.split(cmd)[1:]], cwd=REPO, env=env).returncode

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(run, commands))
    failed = [c for c, code in zip(commands, codes) if code]
    for c in failed:
        print(f"FAILED: {c}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.zoo", description="The book's model zoo.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="show the manifest")
    ls.add_argument("--markdown", action="store_true", help="as a Markdown table (for the README)")
    ls.set_defaults(fn=_cmd_list)
    sub.add_parser("verify", help="check every checksum").set_defaults(fn=_cmd_verify)
    reg = sub.add_parser("register", help="add checkpoints to the manifest")
    reg.add_argument("paths", nargs="+")
    reg.set_defaults(fn=_cmd_register)
    tr = sub.add_parser("train", help="train the zoo (full recipe unless --epochs is given)")
    tr.add_argument("--set", choices=tuple(SETS), default="core",
                    help="core: the zoo of chapters 1-5; ablation: chapter 6's seeds and placements")
    tr.add_argument("--only", nargs="*", help="models to train (default: all)")
    tr.add_argument("--data", choices=("all", "full", "sub10"), default="all",
                    help="only the full training set, or only the 10%% subset")
    tr.add_argument("--short", action="store_true",
                    help="the short CPU schedule of the provisional checkpoints (2 epochs on full, 10 on 10%%)")
    tr.add_argument("--epochs", type=int, help="shorter schedule: the checkpoints become provisional")
    tr.add_argument("--warmup-epochs", type=int)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--jobs", type=int, default=1, help="trainings run at once (several can share a GPU)")
    tr.add_argument("--threads", type=int, default=0, help="CPU threads per job (0: torch's default)")
    tr.add_argument("--resume", action="store_true", help="continue interrupted runs")
    tr.set_defaults(fn=_cmd_train)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
