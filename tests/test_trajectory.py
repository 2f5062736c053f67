"""Training trajectories in polar form: exact on hand-made vectors; snapshots round-trip and vanish."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lib.zoo import trajectory


def test_polar_trajectory_by_hand():
    final = torch.zeros(2)
    snaps = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5]), torch.tensor([-0.25, 0.0]),
             torch.tensor([0.3, 0.3]), torch.zeros(2)]
    t = trajectory.polar_trajectory(snaps, final, epochs=[0, 1, 2, 3, 4])
    assert t.epoch == [0, 1, 2, 3, 4]
    assert t.r == pytest.approx([1.0, 0.5, 0.25, 0.3 * math.sqrt(2), 0.0])
    assert t.theta_deg == pytest.approx([0.0, 90.0, 180.0, 45.0, 0.0])
    # relative to a non-zero w*: only differences matter
    shifted = trajectory.polar_trajectory([s + 2 for s in snaps], final + 2)
    assert shifted.r == pytest.approx(t.r) and shifted.theta_deg == pytest.approx(t.theta_deg)
    assert shifted.epoch == [0, 1, 2, 3, 4]
    assert t.as_dict() == {"epoch": t.epoch, "r": t.r, "theta_deg": t.theta_deg}


def test_polar_trajectory_errors():
    with pytest.raises(ValueError, match="no snapshots"):
        trajectory.polar_trajectory([], torch.zeros(2))
    with pytest.raises(ValueError, match="equals the final"):
        trajectory.polar_trajectory([torch.ones(2)], torch.ones(2))
    with pytest.raises(ValueError, match="3 epoch labels for 2"):
        trajectory.polar_trajectory([torch.ones(2), torch.zeros(2)], torch.zeros(2), epochs=[0, 1, 2])


@pytest.mark.parametrize("own_folder", [True, False])
def test_snapshot_folder_round_trip_and_removal(tmp_path, own_folder):
    model = nn.Linear(3, 2)
    folder = trajectory.SnapshotFolder(tmp_path / "run.trajectory" if own_folder else None)
    flats = []
    for epoch in range(3):
        folder.save(epoch, model)
        flats.append(trajectory.flat_parameters(model))
        with torch.no_grad():
            model.weight.mul_(0.5)
    assert folder.epochs() == [0, 1, 2]
    assert torch.equal(torch.load(folder.path(1), weights_only=True), flats[1])
    final = flats[-1]
    got = folder.trajectory(final)
    want = trajectory.polar_trajectory(flats, final, [0, 1, 2])
    assert got.r == want.r and got.theta_deg == want.theta_deg and got.r[-1] == 0.0
    path = folder.folder
    folder.remove()
    assert not path.exists()


def test_snapshot_folder_needs_epoch_zero(tmp_path):
    folder = trajectory.SnapshotFolder(tmp_path / "t")
    folder.save(1, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="epoch-0"):
        folder.trajectory(torch.zeros(6))
