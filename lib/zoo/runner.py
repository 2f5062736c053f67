"""Train a list of zoo entries so that the run as a whole survives anything, and stage what finishes.

``python -m lib.zoo train`` (and ``make zoo``) come here. Each training runs in a *state folder*
outside the work tree (:func:`lib.zoo.runstate.state_dir`), where its per-epoch resume state and weight
snapshots live until it ends; a finished checkpoint is verified (it is the run asked for, its test
metrics are finite), copied into the destination folder (by default the staging area
``data/checkpoints/next/``, which the chapters never load) and registered in that folder's own
manifest. For each entry, in the order given (the catalogue's priority), resumable runs first:

* a checkpoint that is already done in the destination (``final``, or trained with the recipe
  asked for) and matches its manifest checksum is skipped; one that is complete but unregistered
  (the runner died between the two) is registered;
* a finished run still in the state folder (the runner died before staging it) is staged;
* an entry that another process is training is waited for (it takes a job slot), then staged or
  continued;
* an interrupted entry continues from its resume state, losing at most the epoch in progress;
* anything else trains from scratch; a resume state that cannot be read or belongs to another run
  is set aside by the training itself (renamed, with a one-line message), never blocking it.

Each training is a ``lib.zoo.train`` child process; ``jobs`` of them run at once (on two CPU cores two
1-thread jobs train 8-19% more images per second than one 2-thread job). SIGTERM or Ctrl-C stops
every child, keeping their resume states; children also die with the runner if it is killed
outright (``kill -9``), so nothing trains on unseen. Run the same command again to continue.
"""
from __future__ import annotations

import ctypes
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from . import catalog, runstate
from .catalog import Entry, ZooError
from ..core.io import atomic_write
from .recipe import Recipe, recipe_flags, zoo_recipe

ACTIONS: tuple[str, ...] = ("skip", "register", "stage", "busy", "resume", "train")

#: Runs on a subset measure the test set every this many epochs (and in each of the last few): on
#: 10% of the data an evaluation costs half an epoch.
SUBSET_EVAL_EVERY = 5


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


def plan(entry: Entry, recipe: Recipe, folder: Path, state: Path | None = None, force: bool = False) -> Step:
    """Decide what to do for ``entry``, from what ``folder`` (destination) and ``state`` hold.

    ``state`` is the folder the training runs in (default: ``folder`` itself, the old layout).
    """
    state = folder if state is None else state
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
    work = state / entry.filename
    if state != folder and work.exists():
        try:
            finished = _is_done(catalog.read_record(work), entry, recipe)
        except ZooError:
            finished = False
        if finished:
            return Step(entry, recipe, "stage", "finished, not yet staged")
    if runstate.is_training(work):
        return Step(entry, recipe, "busy", "another process is training it")
    try:
        resumable = runstate.peek_resume(work)
    except runstate.UnreadableState:
        return Step(entry, recipe, "train", "from scratch (its unreadable resume state will be set aside)")
    if resumable is None:
        return Step(entry, recipe, "train", "from scratch")
    identity = runstate.run_identity(entry.model, entry.dataset, entry.subset, recipe, entry.seed, entry.layout)
    if all(resumable.get(k) == v for k, v in identity.items()):
        within = f" and {resumable['step']} steps of the next" if resumable["step"] else ""
        return Step(entry, recipe, "resume", f"after epoch {resumable['epoch']} of {recipe.epochs}{within}")
    return Step(entry, recipe, "train", "from scratch (another run's resume state will be set aside)")


def stage(entry: Entry, recipe: Recipe, state: Path, folder: Path) -> dict[str, Any]:
    """Verify the finished run of ``entry`` in ``state``, copy it into ``folder`` and register it there.

    The copy is atomic and the state folder's file is removed only once the destination's manifest
    lists it. Raises :class:`~lib.zoo.catalog.ZooError` when the file is not the run asked for or its
    test metrics are not finite.
    """
    work, dest = state / entry.filename, folder / entry.filename
    record = catalog.read_record(work)
    if not _is_done(record, entry, recipe):
        raise ZooError(f"{catalog.shown(work)} is not the finished {entry.key} run asked for "
                       f"({record.get('model')}, subset {record.get('subset')}, seed {record.get('seed')}, "
                       f"{record.get('recipe', {}).get('epochs')} epochs)")
    if not all(math.isfinite(record[k]) for k in ("test_acc", "test_nll")):
        raise ZooError(f"{catalog.shown(work)} has non-finite test metrics "
                       f"(accuracy {record['test_acc']}, NLL {record['test_nll']}); it is not staged")
    if work.resolve() != dest.resolve():
        atomic_write(dest, lambda tmp: shutil.copyfile(work, tmp))
    listed = catalog.register(dest, folder)
    if work.resolve() != dest.resolve():
        work.unlink()
    return listed


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the runner dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: stopping the runner still stops the children
        pass


def child_command(step: Step, state: Path, device: str, progress: bool, compile: bool) -> list[str]:
    """The ``lib.zoo.train`` command line that carries out ``step`` in the state folder ``state``.

    Every child resumes where it can: ``lib.zoo.train --resume`` continues a state of the same run,
    and sets aside (with a line saying so) one it cannot continue.
    """
    argv = [sys.executable, "-m", "lib.zoo.train", *step.entry.train_args(), "--out", str(state / step.entry.filename),
            "--device", device, *recipe_flags(step.recipe, base=zoo_recipe(step.entry.subset)), "--resume"]
    if step.entry.subset is not None:
        argv += ["--eval-every", str(SUBSET_EVAL_EVERY)]
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


def _interrupt_once(signum: int, frame: Any) -> None:
    """Turn the first SIGTERM or Ctrl-C into KeyboardInterrupt and ignore the ones after it.

    A stop request often arrives twice (``make`` passes its SIGTERM on to the runner, and a ``kill``
    of the process group reaches it too); the second must not cut short the stopping of the children.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run(work: list[tuple[Entry, Recipe]], folder: str | os.PathLike = catalog.STAGING_DIR,
        state: str | os.PathLike | None = None, jobs: int = 1, device: str = "auto", threads: int = 0,
        force: bool = False, compile: bool = False, echo: Callable[[str], None] = print,
        poll_s: float = 0.2) -> int:
    """Train every ``(entry, recipe)`` of ``work`` that ``folder`` lacks, in ``state``; 0 when all are done.

    ``state`` defaults to :func:`lib.zoo.runstate.state_dir`. An entry that another process is training
    takes a job slot until that process ends; then the runner stages it, or continues it. Returns 1
    when a training failed (the others still run), 130 when stopped by a signal.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    folder = Path(folder)
    state = Path(state) if state is not None else runstate.state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    steps = [plan(entry, recipe, folder, state, force) for entry, recipe in work]
    counts = {a: sum(s.action == a for s in steps) for a in ACTIONS}
    echo(f"zoo: {len(steps)} entries into {catalog.shown(folder)}, training in {state}: {counts['skip']} done, "
         f"{counts['register'] + counts['stage']} to register, {counts['resume']} to resume, {counts['train']} to "
         f"train, {counts['busy']} busy elsewhere; {jobs} at a time on {device}")
    failed: list[Step] = []
    for step in steps:
        if step.action == "skip":
            echo(f"skip     {step.entry.key}: {step.why}")
        elif step.action == "busy":
            echo(f"busy     {step.entry.key}: {step.why}; waiting for it (it takes one of the {jobs} job slots)")
        elif step.action in ("register", "stage"):
            _finish(step, folder, state, failed, echo)
    queue = sorted((s for s in steps if s.action in ("resume", "train")), key=lambda s: s.action != "resume")
    waiting = [s for s in steps if s.action == "busy"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    running: dict[subprocess.Popen, Step] = {}
    trained = 0
    started = time.monotonic()
    previous = {signum: signal.signal(signum, _interrupt_once) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or running or waiting:
            for step in [s for s in waiting if not runstate.is_training(state / s.entry.filename)]:
                waiting.remove(step)  # the other process has ended: take over what it left
                again = plan(step.entry, step.recipe, folder, state)
                if again.action in ("resume", "train"):
                    queue.insert(0, again)
                elif again.action != "skip":
                    trained += _finish(again, folder, state, failed, echo)
            while queue and len(running) + len(waiting) < jobs:
                step = queue.pop(0)
                echo(f"{step.action:8} {step.entry.key}: {step.why}")
                argv = child_command(step, state, device, progress=jobs == 1, compile=compile)
                # Each child in a session of its own: a stop for the runner's process group (Ctrl-C
                # in a terminal, ``kill -- -PGID``, ``make`` passing its SIGTERM on) reaches the
                # runner alone, which asks each child exactly once. A second request would make the
                # child stop at once, losing the steps since its last save.
                running[subprocess.Popen(argv, cwd=catalog.REPO, env=env, start_new_session=True,
                                         preexec_fn=_die_with_parent)] = step
            for proc in [p for p in running if p.poll() is not None]:
                step = running.pop(proc)
                if proc.returncode != 0:
                    failed.append(step)
                    echo(f"FAILED   {step.entry.key}: exit {proc.returncode}; its resume state keeps every "
                         f"finished epoch: run the same command again to retry")
                else:
                    trained += _finish(replace(step, action="stage"), folder, state, failed, echo)
            time.sleep(poll_s if running or waiting else 0)
    except KeyboardInterrupt:
        _stop(running)
        echo(f"stopped: {len(running)} training(s) interrupted" + (
            f" ({', '.join(s.entry.key for s in running.values())}); their resume states keep every finished step"
            if running else "") + ". Run the same command again to continue.")
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    echo(f"zoo: {trained} trained, {counts['skip']} already done, {len(failed)} failed "
         f"in {(time.monotonic() - started) / 60:.1f} min")
    return 1 if failed else 0


def _finish(step: Step, folder: Path, state: Path, failed: list[Step], echo: Callable[[str], None]) -> bool:
    """Register (action ``register``) or stage (``stage``) a finished entry; say how it went."""
    try:
        listed = (catalog.register(folder / step.entry.filename, folder) if step.action == "register"
                  else stage(step.entry, step.recipe, state, folder))
    except ZooError as err:
        failed.append(step)
        echo(f"FAILED   {step.entry.key}: {err}")
        return False
    echo(_finished_line(listed) + f", {'registered' if step.action == 'register' else 'staged'}")
    return True


def schedule(entries: list[Entry], recipes: dict[float | None, Recipe] | None = None,
             short: dict[float | None, tuple[int, int]] | None = None) -> list[tuple[Entry, Recipe]]:
    """Pair each entry with its recipe: ``recipes[subset]``, else the zoo's recipe for its subset
    (:func:`lib.zoo.recipe.zoo_recipe`); with ``short``, shortened per subset to its (epochs, warm-up)."""
    work = []
    for e in entries:
        recipe = recipes[e.subset] if recipes is not None else zoo_recipe(e.subset)
        if short is not None:
            recipe = replace(recipe, epochs=short[e.subset][0], warmup_epochs=short[e.subset][1])
        work.append((e, recipe))
    return work


@dataclass(frozen=True)
class Progress:
    """Where one entry of a zoo run stands: staged, in progress (``epoch`` of ``epochs``) or waiting.

    ``hours`` is the wall time its training has taken so far; ``hours_left`` the estimate of what
    it still needs at the speed measured for the same model (``None`` when no run of it has been
    measured yet). ``test_acc``/``test_nll`` are the last measured values.
    """

    entry: Entry
    status: str  # "staged", "training", "interrupted", "waiting"
    epoch: int
    epochs: int
    hours: float
    hours_left: float | None
    test_acc: float | None
    test_nll: float | None


def _seconds_per_image(record: dict[str, Any], epochs_done: int) -> float:
    """Wall seconds per training image (evaluations included) of a record or resume state."""
    n_train = record.get("n_train") or round(60000 * (record.get("subset") or 1))
    return record["wall_time_s"] / max(1, epochs_done * n_train)


def progress(work: list[tuple[Entry, Recipe]], folder: str | os.PathLike = catalog.STAGING_DIR,
             state: str | os.PathLike | None = None) -> list[Progress]:
    """Where every ``(entry, recipe)`` of ``work`` stands, with measured hours and an estimate of those left.

    The estimate takes, per model, the seconds per training image of its staged runs (else of its
    unfinished ones) and assumes 60,000 training images times the subset.
    """
    folder = Path(folder)
    state = Path(state) if state is not None else runstate.state_dir()
    listed = catalog.read_manifest(folder)["checkpoints"] if folder.exists() else {}
    rows: list[tuple[Entry, Recipe, str, int, float, dict[str, Any] | None]] = []
    speed: dict[str, list[float]] = {}
    for entry, recipe in work:
        item = listed.get(entry.key)
        if item is not None and item["epochs"] == recipe.epochs:
            speed.setdefault(entry.model, []).insert(0, _seconds_per_image(item, recipe.epochs))
            rows.append((entry, recipe, "staged", recipe.epochs, item["wall_time_s"], {
                "test_acc": item["test_acc"], "test_loss": item["test_nll"]}))
            continue
        work_file = state / entry.filename
        try:
            resumable = runstate.read_state(runstate.resume_path(work_file)) \
                if runstate.resume_path(work_file).exists() else None
        except runstate.UnreadableState:
            resumable = None
        identity = runstate.run_identity(entry.model, entry.dataset, entry.subset, recipe, entry.seed, entry.layout)
        if resumable is not None and all(resumable.get(k) == v for k, v in identity.items()):
            status = "training" if runstate.is_training(work_file) else "interrupted"
            speed.setdefault(entry.model, []).append(_seconds_per_image(resumable, resumable["epoch"]))
            measured = [h for h in resumable["history"] if "test_acc" in h]
            rows.append((entry, recipe, status, resumable["epoch"], resumable["wall_time_s"],
                         measured[-1] if measured else None))
        else:
            rows.append((entry, recipe, "training" if runstate.is_training(work_file) else "waiting", 0, 0.0, None))
    result = []
    for entry, recipe, status, epoch, seconds, last in rows:
        per_image = speed.get(entry.model, [None])[0]
        images_left = (recipe.epochs - epoch) * round(60000 * (entry.subset or 1))
        left = 0.0 if status == "staged" else (None if per_image is None else per_image * images_left / 3600)
        result.append(Progress(entry, status, epoch, recipe.epochs, seconds / 3600, left,
                               None if last is None else last["test_acc"], None if last is None else last["test_loss"]))
    return result
