"""Train a list of zoo entries so that the run as a whole survives anything.

``python -m lib.zoo train`` (and ``make zoo``) come here. For each entry, in the order given (the
catalogue's priority: the seed-0 models the chapters load, then extra seeds, then ablations):

* a checkpoint that is already done (``final``, or trained with the recipe asked for) and matches
  its manifest checksum is skipped; one that is complete but unregistered (the runner died between
  the two) is registered;
* an interrupted entry continues from its resume state, losing at most the epoch in progress;
* anything else trains from scratch (a stale resume state of another recipe is discarded).

Each training is a ``lib.train`` child process; ``jobs`` of them run at once (several small models
share one GPU well). The runner registers each checkpoint as its child finishes (a file lock makes
that safe with several runners at once) and prints one line per finished entry. SIGTERM or Ctrl-C
stops every child, keeping their resume states; children also die with the runner if it is
killed outright (``kill -9``), so nothing trains on unseen. Run the same command again to continue.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from . import catalog, runstate
from .catalog import Entry, ZooError
from .recipe import FULL_RECIPE, Recipe, recipe_flags

ACTIONS: tuple[str, ...] = ("skip", "register", "resume", "train")


@dataclass(frozen=True)
class Step:
    """What the runner will do for one entry, and why."""

    entry: Entry
    recipe: Recipe
    action: str  # one of ACTIONS
    why: str


def _is_done(record: dict[str, Any], entry: Entry, recipe: Recipe) -> bool:
    """Whether a checkpoint record is the finished training of ``entry`` that the run asks for."""
    try:
        same_entry = catalog.entry_of(record) == entry
    except ZooError:
        return False
    good_enough = record["status"] == "final" or record["recipe"] == asdict(recipe)
    return same_entry and good_enough and (not entry.snapshots or "warmup" in record["snapshots"])


def plan(entry: Entry, recipe: Recipe, folder: Path, force: bool = False) -> Step:
    """Decide what to do for ``entry``, from what its folder holds (checkpoint, manifest, resume state)."""
    path = folder / entry.filename
    if path.exists() and not force:
        try:
            record = catalog.read_record(path)
        except ZooError:
            record = None
        if record is not None and _is_done(record, entry, recipe):
            listed = catalog.read_manifest(folder)["checkpoints"].get(entry.key)
            if listed is not None and listed["sha256"] == catalog.sha256(path):
                return Step(entry, recipe, "skip", f"{record['status']}, verified")
            return Step(entry, recipe, "register", "complete but not registered")
    try:
        state = runstate.peek_resume(path)
    except Exception:  # an unreadable state cannot be continued; the fresh run replaces it
        state = {"epoch": None}
    if state is None:
        return Step(entry, recipe, "train", "from scratch")
    identity = runstate.run_identity(entry.model, entry.dataset, entry.subset, recipe, entry.seed, entry.layout)
    if all(state.get(k) == v for k, v in identity.items()):
        return Step(entry, recipe, "resume", f"after epoch {state['epoch']} of {recipe.epochs}")
    return Step(entry, recipe, "train", "from scratch (an old run's resume state is discarded)")


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the runner dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop the children
        pass


def child_command(step: Step, folder: Path, device: str, progress: bool, compile: bool) -> list[str]:
    """The ``lib.train`` command line that carries out ``step``."""
    argv = [sys.executable, "-m", "lib.train", *step.entry.train_args(), "--out", str(folder / step.entry.filename),
            "--device", device, *recipe_flags(step.recipe)]
    if step.action == "resume":
        argv.append("--resume")
    if not progress:
        argv.append("--no-progress")
    if compile:
        argv.append("--compile")
    return argv


def _finished_line(listed: dict[str, Any]) -> str:
    return (f"done     {listed['file'][:-3]}: test acc. {listed['test_acc']:.2f}%, NLL {listed['test_nll']:.4f}, "
            f"{listed['images_per_s']:,.0f} images/s, {listed['wall_time_s'] / 60:.1f} min ({listed['status']})")


def _stop(running: dict[subprocess.Popen, Step], grace_s: float = 60.0) -> None:
    """SIGTERM every child, then SIGKILL whatever is still alive after ``grace_s``."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(work: list[tuple[Entry, Recipe]], folder: str | os.PathLike = catalog.CHECKPOINT_DIR, jobs: int = 1,
        device: str = "auto", threads: int = 0, force: bool = False, compile: bool = False,
        echo: Callable[[str], None] = print, poll_s: float = 0.2) -> int:
    """Train every ``(entry, recipe)`` of ``work`` into ``folder`` that is not done yet; 0 when all are done.

    Returns 1 when a training failed (the others still run), 130 when stopped by a signal.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    steps = [plan(entry, recipe, folder, force) for entry, recipe in work]
    counts = {a: sum(s.action == a for s in steps) for a in ACTIONS}
    echo(f"zoo: {len(steps)} entries in {catalog.shown(folder)}: {counts['skip']} done, {counts['register']} to register, "
         f"{counts['resume']} to resume, {counts['train']} to train; {jobs} at a time on {device}")
    for step in steps:
        if step.action == "skip":
            echo(f"skip     {step.entry.key}: {step.why}")
        elif step.action == "register":
            echo(_finished_line(catalog.register(folder / step.entry.filename, folder)) + ", registered now")
    queue = [s for s in steps if s.action in ("resume", "train")]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    running: dict[subprocess.Popen, Step] = {}
    failed: list[Step] = []
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                step = queue.pop(0)
                echo(f"{'resume' if step.action == 'resume' else 'train':8} {step.entry.key}: {step.why}")
                argv = child_command(step, folder, device, progress=jobs == 1, compile=compile)
                running[subprocess.Popen(argv, cwd=catalog.REPO, env=env, preexec_fn=_die_with_parent)] = step
            for proc in [p for p in running if p.poll() is not None]:
                step = running.pop(proc)
                if proc.returncode == 0:
                    echo(_finished_line(catalog.register(folder / step.entry.filename, folder)))
                else:
                    failed.append(step)
                    echo(f"FAILED   {step.entry.key} (exit {proc.returncode}); its resume state keeps every "
                         f"finished epoch: run the same command again to retry")
            time.sleep(poll_s if running else 0)
    except KeyboardInterrupt:
        _stop(running)
        echo(f"stopped: {len(running)} training(s) interrupted ({', '.join(s.entry.key for s in running.values())}); "
             f"their resume states keep every finished epoch. Run the same command again to continue.")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    trained = counts["resume"] + counts["train"] - len(failed)
    echo(f"zoo: {trained} trained, {counts['skip']} already done, {len(failed)} failed "
         f"in {(time.monotonic() - started) / 60:.1f} min")
    return 1 if failed else 0


def schedule(entries: list[Entry], recipe: Recipe | None, short: dict[float | None, tuple[int, int]] | None = None
             ) -> list[tuple[Entry, Recipe]]:
    """Pair each entry with its recipe: ``recipe``, or per subset the ``short`` (epochs, warm-up) schedule."""
    if short is None:
        return [(e, recipe or FULL_RECIPE) for e in entries]
    base = recipe or FULL_RECIPE
    return [(e, Recipe(**{**asdict(base), "epochs": short[e.subset][0], "warmup_epochs": short[e.subset][1]}))
            for e in entries]
