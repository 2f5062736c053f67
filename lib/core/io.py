"""File helpers: atomic writes, and the float16 storage of weights.

Atomic writes: a reader never sees a half-written checkpoint, manifest or result.

Each writer writes to a temporary file in the destination's folder, flushes it to disk and
renames it over the destination (``os.replace`` is atomic on one file system). If anything fails
in between, the temporary file is removed and the destination is untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def _atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make the result private
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(dest: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``dest`` atomically."""
    with _atomic_path(dest) as tmp:
        write(tmp)
    return Path(dest)


def atomic_torch_save(obj: Any, dest: str | os.PathLike) -> Path:
    """``torch.save(obj, dest)``, atomically."""
    return atomic_write(dest, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj: Any, dest: str | os.PathLike) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (stable diffs), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(dest, lambda tmp: tmp.write_text(text))


def half_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights for storage: floating tensors as float16 on CPU (about 2 bytes per parameter)."""
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
            for k, v in model.state_dict().items()}


def load_half_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load stored weights, upcasting float16 back to the model's float32."""
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})


def remove_stale_temporaries(dest: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an atomic write of ``dest`` left behind when its process was killed.

    Only call this while no other process writes ``dest`` (e.g. holding the run's lock).
    """
    dest = Path(dest)
    stale = list(dest.parent.glob(f".{dest.name}.*.tmp")) if dest.parent.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
