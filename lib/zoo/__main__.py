"""The zoo's command line: list, verify, register, train (restartable), progress, swap.

Usage (``make zoo`` runs ``train``)::

    python -m lib.zoo list [--markdown]        # the manifest as a table
    python -m lib.zoo verify                   # check every checkpoint; say what is wrong and how to fix it
    python -m lib.zoo train [--set main|all|core|seeds|ablation] [--only vit ...] [--data full|sub10]
                            [--short | --epochs N ...] [--jobs 2] [--threads 1] [--device cuda] [--compile]
    python -m lib.zoo progress                 # staged, in progress, hours left
    python -m lib.zoo swap                     # a complete staged set replaces the zoo's checkpoints
    python -m lib.zoo register PATH.pt ...     # add checkpoints written by ``lib.zoo.train``

``train`` is restartable as a whole (:mod:`lib.zoo.runner`): run it again after any interruption and
it skips what is done, continues what was interrupted and trains the rest, in priority order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import data, models
from . import catalog, runner, runstate
from .catalog import SETS, SHORT_SCHEDULE, STAGING_DIR, Entry, ZooError, check, read_manifest, register
from .recipe import RECIPE_TYPES, Recipe, add_recipe_arguments, recipe_from_args, zoo_recipe


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
