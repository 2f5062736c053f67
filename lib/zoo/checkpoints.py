"""The trained model zoo that ships with the book: loading it, checking it, and (re)training it.

The catalogue of checkpoints and the manifest that records them live in :mod:`lib.catalog`
(re-exported here); :func:`load` verifies a checkpoint's sha256 against the manifest before it
trusts the file, rebuilds the architecture from the stored build arguments and upcasts the
float16 weights.

Command line (``make zoo`` runs ``train``)::

    python -m lib.zoo list [--markdown]        # the manifest as a table
    python -m lib.zoo verify                   # check every checkpoint; say what is wrong and how to fix it
    python -m lib.zoo train [--set all|core|seeds|ablation] [--only vit ...] [--data full|sub10]
                            [--short | --epochs N ...] [--jobs 3] [--device cuda] [--compile]
    python -m lib.zoo register PATH.pt ...     # add checkpoints written by ``lib.train``

``train`` is restartable as a whole (:mod:`lib.runner`): run it again after any interruption and
it skips what is done, continues what was interrupted and trains the rest, in priority order.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import catalog, data, models, runner, runstate
from .catalog import (ABLATION_LAYOUTS, ABLATIONS, CHECKPOINT_DIR, FULL_DATA_ABLATIONS,  # noqa: F401
                      HEADLINE_MODELS, HEADLINE_SEEDS, MANIFEST_NAME, PRIORITY, REPO, SEEDS, SETS,
                      SHORT_SCHEDULE, STAGING_DIR, ZOO, Entry, ZooError, catalogued, check, read_manifest, read_record,
                      register, sha256, shown)
from .io import load_half_state_dict
from .recipe import RECIPE_TYPES, Recipe, add_recipe_arguments, recipe_from_args, zoo_recipe

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
    """Load any checkpoint file written by :mod:`lib.train` (no manifest check)."""
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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _cmd_list(args: argparse.Namespace) -> int:
    rows = read_manifest(must_exist=True)["checkpoints"]
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
    ok, problems = check(args.checkpoint_dir)
    for key in ok:
        print(f"ok  {key}")
    for p in problems:
        print(f"BAD {p.key}: {p.what}\n    fix: {p.fix}")
    print(f"{len(ok)} checkpoint(s) intact, {len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_register(args: argparse.Namespace) -> int:
    for path in args.paths:
        r = register(path, args.checkpoint_dir)  # the zoo's folder unless told otherwise
        print(f"registered {r['file']}: {r['test_acc']:.2f}% ({r['status']})")
    return 0


def _cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.short and (args.epochs is not None or args.warmup_epochs is not None):
        parser.error("--short sets the epochs itself; drop --epochs/--warmup-epochs")
    wanted_subset = {"all": None, "full": [None], "sub10": [0.1]}[args.data]
    entries = [Entry(e.model, args.dataset, e.subset, e.seed, e.layout, e.snapshots) for e in SETS[args.set]
               if (not args.only or e.model in args.only) and (wanted_subset is None or e.subset in wanted_subset)]
    if not entries:
        parser.error(f"nothing to train: no entry of --set {args.set} matches --only/--data")
    subsets = dict.fromkeys(e.subset for e in entries)  # the zoo's recipe for each, under the flags given
    recipes = {s: recipe_from_args(args, parser, zoo_recipe(s), note=i == 0) for i, s in enumerate(subsets)}
    work = runner.schedule(entries, recipes, SHORT_SCHEDULE if args.short else None)
    needs_warmup = [e.key for e, r in work if e.snapshots and r.warmup_epochs == 0]
    if needs_warmup:
        parser.error(f"{', '.join(needs_warmup)} keep the warm-up snapshot the chapters load: "
                     f"--warmup-epochs must be >= 1")
    folder = Path(args.checkpoint_dir or STAGING_DIR)
    state = Path(args.state_dir) if args.state_dir else runstate.state_dir()
    for flag, path in (("--checkpoint-dir", folder), ("--state-dir", state)):
        if path.exists() and not path.is_dir():
            parser.error(f"{flag} {path} is a file, not a folder")
    if state.resolve() == folder.resolve() or catalog.REPO in state.resolve().parents:
        parser.error(f"--state-dir {state} must lie outside the work tree (the weights of unfinished runs are "
                     f"never committed), e.g. {Path.home() / '.cache' / 'howvits' / 'zoo'}")
    return runner.run(work, folder, state, jobs=args.jobs, device=args.device, threads=args.threads,
                      force=args.force, compile=args.compile)


def _work(args: argparse.Namespace) -> list[tuple[Entry, Recipe]]:
    return runner.schedule([Entry(e.model, args.dataset, e.subset, e.seed, e.layout, e.snapshots)
                            for e in SETS[args.set]])


def _cmd_progress(args: argparse.Namespace) -> int:
    rows = runner.progress(_work(args), Path(args.checkpoint_dir or STAGING_DIR),
                           Path(args.state_dir) if args.state_dir else None)
    print(f"{'entry':36} {'status':11} {'epoch':>7} {'hours':>6} {'left':>6} {'acc %':>6} {'NLL':>7}")
    for r in rows:
        left = "?" if r.hours_left is None else f"{r.hours_left:.1f}"
        acc = "" if r.test_acc is None else f"{r.test_acc:.2f}"
        nll = "" if r.test_nll is None else f"{r.test_nll:.4f}"
        print(f"{r.entry.key:36} {r.status:11} {f'{r.epoch}/{r.epochs}':>7} {r.hours:>6.2f} {left:>6} {acc:>6} {nll:>7}")
    spent = sum(r.hours for r in rows)
    known = [r.hours_left for r in rows if r.hours_left is not None]
    unknown = sum(r.hours_left is None for r in rows)
    print(f"{sum(r.status == 'staged' for r in rows)} of {len(rows)} staged; {spent:.1f} run-hours spent, "
          f"{sum(known):.1f} left at the measured speeds" + (f" (+ {unknown} run(s) not yet measured)" if unknown else "")
          + f"; with {args.jobs} job(s) at once that is {sum(known) / args.jobs:.1f} machine hours")
    return 0


def _cmd_swap(args: argparse.Namespace) -> int:
    entries = [Entry(e.model, args.dataset, e.subset, e.seed, e.layout, e.snapshots) for e in SETS[args.set]]
    for listed in catalog.swap(entries, Path(args.staging_dir or STAGING_DIR), args.checkpoint_dir):
        print(f"swapped in {listed['file']}: {listed['test_acc']:.2f}% ({listed['status']})")
    print(f"{len(entries)} checkpoint(s) swapped in; re-execute the chapters with `make execute`")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.zoo", description="The book's model zoo.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="show the manifest")
    ls.add_argument("--markdown", action="store_true", help="as a Markdown table (for the README)")
    ls.set_defaults(fn=_cmd_list)
    ver = sub.add_parser("verify", help="check every checkpoint against the manifest")
    ver.add_argument("--checkpoint-dir", default=None, help=argparse.SUPPRESS)
    ver.set_defaults(fn=_cmd_verify)
    reg = sub.add_parser("register", help="add checkpoints to the manifest of their folder")
    reg.add_argument("paths", nargs="+")
    reg.add_argument("--checkpoint-dir", default=None, help=argparse.SUPPRESS)
    reg.set_defaults(fn=_cmd_register)
    pr = sub.add_parser("progress", help="where a zoo run stands: staged, in progress, left (hours)")
    pr.add_argument("--set", choices=tuple(SETS), default="main")
    pr.add_argument("--dataset", choices=data.DATASETS, default="fashion-mnist")
    pr.add_argument("--jobs", type=RECIPE_TYPES["epochs"], default=2, help="trainings at once, for machine hours")
    pr.add_argument("--checkpoint-dir", default=None, help="the staging folder (default: data/checkpoints/next)")
    pr.add_argument("--state-dir", default=None, help="the runs' state folder (default: as for train)")
    pr.set_defaults(fn=_cmd_progress)
    sw = sub.add_parser("swap", help="replace the zoo's checkpoints with a complete staged set")
    sw.add_argument("--set", choices=tuple(SETS), default="main")
    sw.add_argument("--dataset", choices=data.DATASETS, default="fashion-mnist")
    sw.add_argument("--staging-dir", default=None, help=argparse.SUPPRESS)
    sw.add_argument("--checkpoint-dir", default=None, help=argparse.SUPPRESS)
    sw.set_defaults(fn=_cmd_swap)
    tr = sub.add_parser("train", help="train what the zoo lacks (restartable; full recipe unless --epochs/--short)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--set", choices=tuple(SETS), default="main",
                    help="main (the chapters' main models, staged and swapped in together), all (in priority "
                         "order), core (the seed-0 models the chapters load), seeds, ablation")
    tr.add_argument("--only", nargs="+", choices=models.MODELS, metavar="MODEL",
                    help=f"only these models ({', '.join(models.MODELS)})")
    tr.add_argument("--data", choices=("all", "full", "sub10"), default="all",
                    help="only the full training set, or only the 10%% subset")
    tr.add_argument("--dataset", choices=data.DATASETS, default="fashion-mnist",
                    help="train the entries on another dataset (synthetic: a rehearsal in seconds)")
    tr.add_argument("--short", action="store_true",
                    help="the short CPU schedule of the provisional checkpoints (2 epochs on full, 10 on 10%%)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--jobs", type=RECIPE_TYPES["epochs"], default=1,
                    help="trainings run at once (several small models share one GPU well)")
    tr.add_argument("--threads", type=RECIPE_TYPES["warmup_epochs"], default=0,
                    help="CPU threads per job (0: torch's default)")
    tr.add_argument("--compile", action="store_true", help="train through torch.compile")
    tr.add_argument("--force", action="store_true", help="retrain entries that are already done")
    tr.add_argument("--checkpoint-dir", default=None, help="where finished checkpoints are registered "
                    "(default: the staging area data/checkpoints/next, which the chapters never load)")
    tr.add_argument("--state-dir", default=None, help=f"where unfinished runs keep their resume state, outside "
                    f"the work tree (default: ${runstate.STATE_DIR_ENV}, else ~/.cache/howvits/zoo)")
    tr.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # resuming is automatic now
    add_recipe_arguments(tr)
    tr.set_defaults(fn=lambda args: _cmd_train(args, tr))
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
