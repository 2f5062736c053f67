"""Accuracy and NLL of a model on a set of images: the one evaluation that training, the analyses
and the chapters share (so a number measured in one place means the same everywhere).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
             device: str | torch.device = "cpu") -> dict[str, float]:
    """Accuracy (%) and mean NLL (no label smoothing) of ``model`` in eval mode.

    Small batches are faster on a CPU: large ones spend their time allocating activations.
    """
    result = evaluate_per_image(model, x, y, batch_size, device)
    return {"acc": result["acc"], "nll": result["nll"]}


@torch.no_grad()
def evaluate_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                       device: str | torch.device = "cpu") -> dict:
    """:func:`evaluate` plus ``"correct"``: a float64 array, 1.0 where an image is classified right.

    Per-image outcomes are what a paired comparison of two models (or of clean and perturbed
    images) needs: the same images on both sides. ``acc`` is ``100 * correct.mean()`` exactly.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    nll, hits = 0.0, []
    for xb, yb in data.iterate_batches(x, y, batch_size):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(xb)
        nll += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        hits.append((logits.argmax(1) == yb).cpu())
    model.train(was_training)
    correct = torch.cat(hits).double().numpy() if hits else np.zeros(0)
    return {"acc": 100.0 * int(correct.sum()) / len(y), "nll": nll / len(y), "correct": correct}
