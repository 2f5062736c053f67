"""Where a training run keeps its state between epochs, and who may write it.

A run writing ``<out>`` keeps, beside it, ``<out>.resume.pt`` (weights, optimiser, schedule and
random generators after the last finished epoch, written atomically) and ``<out>.trajectory/``
(per-epoch weight snapshots for the polar trajectory). A resume state continues only the run it
came from (:data:`IDENTITY`); a fresh run clears what an older one left, and says so. A lock in
``.locks/`` beside ``<out>`` keeps two processes from training into one file; the system releases
it when its process dies, even by ``kill -9``.
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

from .io import remove_stale_temporaries
from .recipe import Recipe


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


#: What makes two runs the same run: a resume state continues only the run it came from.
IDENTITY: tuple[str, ...] = ("model", "layout", "dataset", "subset", "recipe", "seed")


def run_identity(model_name: str, dataset: str, subset: float | None, recipe: Recipe, seed: int,
                 layout: str | None) -> dict[str, Any]:
    return {"model": model_name, "layout": layout, "dataset": dataset, "subset": subset,
            "recipe": asdict(recipe), "seed": seed}


def peek_resume(out: str | os.PathLike) -> dict[str, Any] | None:
    """The identity and last finished epoch of the resume state beside ``out``; ``None`` if there is none."""
    path = resume_path(out)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {**{k: state.get(k) for k in IDENTITY}, "epoch": state["epoch"]}


def load_or_discard(out: Path, identity: dict[str, Any], resume: bool,
                           device: torch.device) -> dict[str, Any] | None:
    """The resume state to continue from, or ``None`` after clearing whatever an older run left."""
    state_file, snapshots = resume_path(out), trajectory_path(out)
    remove_stale_temporaries(out)
    remove_stale_temporaries(state_file)
    if resume and state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=True)
        if any(state.get(k) != v for k, v in identity.items()):
            raise ValueError(f"{state_file} belongs to a different run ({state.get('model')}, seed {state.get('seed')}, "
                             f"layout {state.get('layout')}, epochs {state.get('recipe', {}).get('epochs')}); delete it, "
                             f"or drop resume to start fresh, or use the same model, layout, data, recipe and seed")
        return state
    if resume:
        say(f"no resume state at {state_file}: starting fresh")
    if state_file.exists() or snapshots.exists():
        old = peek_resume(out) if state_file.exists() else None
        say(f"discarding an old run's resume state beside {out}"
             + (f" (epoch {old['epoch']} of {old['recipe']['epochs']})" if old else "") + ": this run starts fresh")
        state_file.unlink(missing_ok=True)
        shutil.rmtree(snapshots, ignore_errors=True)
    return None
