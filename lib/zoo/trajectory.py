"""Training trajectories in polar form (Park & Kim 2022, Fig. 1b), from per-epoch weight snapshots.

Training saves the flat weights after every epoch (:class:`SnapshotFolder`, on disk beside the
checkpoint so an interrupted run can resume), and at the end reduces them to numbers relative to
the final weights w*: r_t = ‖w_t − w*‖ / ‖w₀ − w*‖ and θ_t = angle(w_t − w*, w₀ − w*)
(:func:`polar_trajectory`). Only those numbers go into the checkpoint record.

This module belongs to the training layer: the loss-landscape analyses never need it.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..core.io import atomic_torch_save


# --------------------------------------------------------------------------------------------------

def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All trainable parameters of ``model`` as one float32 CPU vector (in ``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters() if p.requires_grad])


@dataclass(frozen=True)
class Trajectory:
    """Polar coordinates of a training run relative to its final weights (one entry per snapshot).

    ``r[t] = ‖w_t − w*‖ / ‖w₀ − w*‖`` (1 at the start, 0 at the end) and ``theta_deg[t]`` is the
    angle in degrees between ``w_t − w*`` and ``w₀ − w*`` (0 at the start; undefined, stored as 0,
    at the final snapshot where ``w_t = w*``). ``epoch[t]`` labels the snapshots.
    """

    epoch: list[int]
    r: list[float]
    theta_deg: list[float]

    def as_dict(self) -> dict[str, list]:
        return {"epoch": list(self.epoch), "r": list(self.r), "theta_deg": list(self.theta_deg)}


def polar_trajectory(snapshots: Iterable[torch.Tensor], final: torch.Tensor,
                     epochs: Iterable[int] | None = None) -> Trajectory:
    """Polar trajectory of flat weight ``snapshots`` (the first is w₀) relative to ``final`` (w*).

    Snapshots may be a lazy iterable (e.g. loaded one at a time from disk); sums run in float64.
    """
    final = final.double()
    r: list[float] = []
    theta: list[float] = []
    d0 = None
    d0_norm = 0.0
    for w in snapshots:
        d = w.double() - final
        norm = d.norm().item()
        if d0 is None:
            if norm == 0:
                raise ValueError("the first snapshot equals the final weights: no trajectory to measure")
            d0, d0_norm = d, norm
        r.append(norm / d0_norm)
        if norm == 0:
            theta.append(0.0)
        else:  # angle between unit vectors by the half-angle formula, accurate near 0 and 180 degrees
            u, u0 = d / norm, d0 / d0_norm
            theta.append(math.degrees(2 * math.atan2((u - u0).norm().item(), (u + u0).norm().item())))
    if d0 is None:
        raise ValueError("no snapshots given")
    labels = list(range(len(r))) if epochs is None else [int(e) for e in epochs]
    if len(labels) != len(r):
        raise ValueError(f"{len(labels)} epoch labels for {len(r)} snapshots")
    return Trajectory(epoch=labels, r=r, theta_deg=theta)


class SnapshotFolder:
    """Per-epoch flat weight snapshots on disk, for the trajectory; removed once the run is done.

    Training keeps one float32 vector per epoch (about 5 MB for the zoo models) in a folder beside
    the checkpoint (``<out>.trajectory/``, so an interrupted run can resume) or in a temporary
    folder; only the trajectory's numbers go into the checkpoint record.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="trajectory-")
            self.folder = Path(self._tmp.name)
        else:
            self._tmp = None
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch:04d}.pt"

    def save(self, epoch: int, model: nn.Module) -> None:
        atomic_torch_save(flat_parameters(model), self.path(epoch))

    def epochs(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("epoch-*.pt"))

    def trajectory(self, final: torch.Tensor) -> Trajectory:
        """The polar trajectory of the saved snapshots (epoch order) relative to ``final``."""
        epochs = self.epochs()
        if not epochs or epochs[0] != 0:
            raise ValueError(f"{self.folder} lacks the epoch-0 snapshot (the initial weights)")
        loader = (torch.load(self.path(e), weights_only=True) for e in epochs)
        return polar_trajectory(loader, final, epochs)

    def remove(self) -> None:
        for p in self.folder.glob("epoch-*.pt"):
            p.unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
        else:
            try:
                self.folder.rmdir()
            except OSError:
                pass
