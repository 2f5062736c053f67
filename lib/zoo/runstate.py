"""Where a training run keeps its state between epochs, and who may write it.

A run writing ``<out>`` keeps, beside it, ``<out>.resume.pt`` (weights, optimiser, schedule and
random generators after the last finished epoch, written atomically) and ``<out>.trajectory/``
(per-epoch weight snapshots for the polar trajectory). A resume state continues only the run it
came from (:data:`IDENTITY`); a fresh run clears what an older one left, and says so. A state that
cannot be read (a truncated file) or that belongs to another run is set aside (renamed
``<out>.resume.pt.set-aside``) with a one-line message, and the run starts fresh: nothing blocks
it. A lock in ``.locks/`` beside ``<out>`` keeps two processes from training into one file; the
system releases it when its process dies, even by ``kill -9``.

The zoo's runner trains in a state folder outside the work tree (:func:`state_dir`), so the
weights of unfinished runs never mix with what is committed and survive a fresh checkout.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

from ..core.io import remove_stale_temporaries
from .recipe import Recipe


#: The environment variable that moves the zoo runner's state folder.
STATE_DIR_ENV = "HOWVITS_ZOO_STATE"


def state_dir() -> Path:
    """Where the zoo runner keeps unfinished runs: ``$HOWVITS_ZOO_STATE``, else the user's cache folder.

    ``~/.cache/howvits/zoo`` (or under ``$XDG_CACHE_HOME``): outside the work tree, so a run
    interrupted in one checkout continues from another on the same machine.
    """
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "howvits" / "zoo"


def say(message: str) -> None:
    """A note for the person running the training (standard error, so stdout stays the result)."""
    print(message, file=sys.stderr, flush=True)


def resume_path(out: str | os.PathLike) -> Path:
    """Where the per-epoch resume state of a run writing ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".resume.pt")


def trajectory_path(out: str | os.PathLike) -> Path:
    """Where the per-epoch weight snapshots of a run writing ``out`` live until it ends."""
    out = Path(out)
    return out.with_name(out.name + ".trajectory")


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file that keeps two processes from training into ``out`` at once."""
    out = Path(out)
    return out.parent / ".locks" / (out.name + ".lock")


@contextlib.contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold ``out``'s lock for the run; the system releases it when the process dies, even by kill -9."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is training into {out}; wait for it to finish or stop it") from None
        yield


def is_training(out: str | os.PathLike) -> bool:
    """Whether some live process holds ``out``'s run lock (is training into it now)."""
    path = lock_path(out)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


#: What makes two runs the same run: a resume state continues only the run it came from.
IDENTITY: tuple[str, ...] = ("model", "layout", "dataset", "subset", "recipe", "seed")


def run_identity(model_name: str, dataset: str, subset: float | None, recipe: Recipe, seed: int,
                 layout: str | None) -> dict[str, Any]:
    return {"model": model_name, "layout": layout, "dataset": dataset, "subset": subset,
            "recipe": asdict(recipe), "seed": seed}


class UnreadableState(RuntimeError):
    """A resume state that cannot be read (truncated, damaged, or not written by ``lib.zoo.train``)."""


def read_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A resume state file's contents; :class:`UnreadableState` (one line) if it cannot be used."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise UnreadableState(f"{path.name} cannot be read ({type(err).__name__})") from None
    if not isinstance(state, dict) or "epoch" not in state or "weights" not in state:
        raise UnreadableState(f"{path.name} is not a training state written by lib.zoo.train")
    return state


def peek_resume(out: str | os.PathLike) -> dict[str, Any] | None:
    """The identity and last finished epoch of the resume state beside ``out``; ``None`` if there is none.

    Raises :class:`UnreadableState` when the file is there but cannot be used.
    """
    path = resume_path(out)
    if not path.exists():
        return None
    state = read_state(path)
    return {**{k: state.get(k) for k in IDENTITY}, "epoch": state["epoch"],
            "step": (state.get("partial") or {}).get("step", 0)}


def set_aside(out: str | os.PathLike, why: str) -> Path:
    """Rename the resume state beside ``out`` out of the way (kept for inspection) and say so in one line.

    The trajectory snapshots that went with it are removed: they belong to that run alone.
    """
    state_file = resume_path(out)
    aside = state_file.with_name(state_file.name + ".set-aside")
    os.replace(state_file, aside)
    shutil.rmtree(trajectory_path(out), ignore_errors=True)
    say(f"set aside {state_file.name} ({why}) as {aside.name}: this run starts fresh")
    return aside


def describe(state: dict[str, Any]) -> str:
    """A resume state's run in a few words: model, layout, data, seed, epochs."""
    subset = state.get("subset")
    return (f"{state.get('model')}{' [' + str(state.get('layout')) + ']' if state.get('layout') else ''} on "
            f"{state.get('dataset')}{f' (subset {subset:g})' if isinstance(subset, float) else ''}, "
            f"seed {state.get('seed')}, {(state.get('recipe') or {}).get('epochs')} epochs")


def load_or_discard(out: Path, identity: dict[str, Any], resume: bool,
                           device: torch.device) -> dict[str, Any] | None:
    """The resume state to continue from, or ``None`` after clearing whatever an older run left."""
    state_file, snapshots = resume_path(out), trajectory_path(out)
    remove_stale_temporaries(out)
    remove_stale_temporaries(state_file)
    if resume and state_file.exists():
        try:
            state = read_state(state_file, device)
        except UnreadableState as err:
            set_aside(out, str(err).removeprefix(state_file.name + " "))
            return None
        if any(state.get(k) != v for k, v in identity.items()):
            set_aside(out, f"it continues another run: {describe(state)}")
            return None
        return state
    if resume:
        say(f"no resume state at {state_file}: starting fresh")
    if state_file.exists() or snapshots.exists():
        try:
            old = peek_resume(out) if state_file.exists() else None
        except UnreadableState:
            old = None
        say(f"discarding an old run's resume state beside {out}"
             + (f" (epoch {old['epoch']} of {(old['recipe'] or {}).get('epochs')})" if old else "")
             + ": this run starts fresh")
        state_file.unlink(missing_ok=True)
        shutil.rmtree(snapshots, ignore_errors=True)
    return None
