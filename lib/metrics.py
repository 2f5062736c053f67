"""Accuracy and NLL of a model on a set of images: the one evaluation that training, the analyses
and the chapters share (so a number measured in one place means the same everywhere).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import data


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Accuracy (%) and mean NLL (no label smoothing) of ``model`` in eval mode.

    Small batches are faster on a CPU: large ones spend their time allocating activations.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    for xb, yb in data.iterate_batches(x, y, batch_size):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(xb)
        nll += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train(was_training)
    return {"acc": 100.0 * correct / len(y), "nll": nll / len(y)}
