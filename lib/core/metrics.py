"""Accuracy and NLL of a model on a set of images: the one evaluation that training, the analyses
and the chapters share (so a number measured in one place means the same everywhere).

Also temperature scaling, the matched-fit control of sharpness: a model whose logits are divided
by ``T > 1`` is less confident, and its loss curvature shrinks with its confidence. Bringing two
models to the same NLL (:func:`temperature_for_nll`) before comparing their Hessians or landscapes
separates "flatter" from "less well fitted".
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize
from torch import nn

from . import data
from .running import analysis_device, eval_mode


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
             device: str | torch.device | None = None) -> dict[str, float]:
    """Accuracy (%) and mean NLL (no label smoothing) of ``model`` in eval mode, on the model's
    own device unless ``device`` names another (the rules of :mod:`lib.core.running`).

    Small batches are faster on a CPU: large ones spend their time allocating activations.
    """
    result = evaluate_per_image(model, x, y, batch_size, device)
    return {"acc": result["acc"], "nll": result["nll"]}


@torch.no_grad()
def evaluate_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                       device: str | torch.device | None = None) -> dict:
    """:func:`evaluate` plus ``"correct"``: a float64 array, 1.0 where an image is classified right.

    Per-image outcomes are what a paired comparison of two models (or of clean and perturbed
    images) needs: the same images on both sides. ``acc`` is ``100 * correct.mean()`` exactly.
    """
    device = analysis_device(model, device)
    nll, hits = 0.0, []
    with eval_mode(model):
        for xb, yb in data.iterate_batches(x, y, batch_size):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(xb)
            nll += F.cross_entropy(logits.float(), yb, reduction="sum").item()
            hits.append((logits.argmax(1) == yb).cpu())
    correct = torch.cat(hits).double().numpy() if hits else np.zeros(0)
    return {"acc": 100.0 * int(correct.sum()) / len(y), "nll": nll / len(y), "correct": correct}


def per_image_outcomes(logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each image's cross-entropy (no label smoothing) and correctness (1.0 or 0.0), float64 on the CPU.

    The one per-image scoring of the analyses that change a model and compare image by image
    (lesions, masked heads): the loss is computed in float32, as :func:`evaluate` computes it.
    """
    logits = logits.float()
    loss = F.cross_entropy(logits, y, reduction="none")
    return loss.double().cpu().numpy(), (logits.argmax(dim=1) == y).double().cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------------

_LOG_T_RANGE = (math.log(1e-2), math.log(1e3))  # temperatures searched, 0.01 to 1000


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 128,
              device: str | torch.device | None = None) -> torch.Tensor:
    """The model's logits on ``x`` in eval mode, float32 on the CPU (the model's mode restored)."""
    device = analysis_device(model, device)
    with eval_mode(model):
        return torch.cat([model(xb.to(device)).float().cpu() for xb in x.split(batch_size)])


def nll_at_temperature(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean cross-entropy of ``logits / temperature`` (computed in float64)."""
    _check_logits(logits, labels)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return F.cross_entropy(logits.double() / temperature, labels).item()


def best_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the NLL (Guo et al.'s calibration), searched in [0.01, 1000].

    The NLL is convex in 1/T (log-sum-exp is convex), so there is one minimum.
    """
    _check_logits(logits, labels)
    result = optimize.minimize_scalar(lambda u: nll_at_temperature(logits, labels, math.exp(u)),
                                      bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-8})
    return float(math.exp(result.x))


def temperature_for_nll(logits: torch.Tensor, labels: torch.Tensor, target_nll: float) -> float:
    """The temperature ``T >= best_temperature`` at which the NLL equals ``target_nll``.

    Above the best temperature the NLL rises monotonically towards ``log C`` (the uniform
    prediction over ``C`` classes), so any target between the best NLL and ``log C`` is met by
    exactly one softer temperature: the matched-fit control brings a better-fitted model down to
    a worse-fitted one's NLL this way.

    Raises:
        ValueError: ``target_nll`` below the best NLL the temperature can reach, or not below
            ``log C``.
    """
    _check_logits(logits, labels)
    t_best = best_temperature(logits, labels)
    best = nll_at_temperature(logits, labels, t_best)
    ceiling = math.log(logits.shape[1])
    if not best <= target_nll < ceiling:
        raise ValueError(f"target_nll={target_nll!r} cannot be reached by a temperature: it must lie in "
                         f"[{best:.4f}, {ceiling:.4f}) (this model's best NLL, log of {logits.shape[1]} classes)")
    if target_nll == best:
        return t_best

    def gap(u: float) -> float:
        return nll_at_temperature(logits, labels, math.exp(u)) - target_nll

    high = math.log(t_best)
    while gap(high) < 0:  # the NLL reaches log C only in the limit: widen until it passes the target
        high += 1.0
    return float(math.exp(optimize.brentq(gap, math.log(t_best), high, xtol=1e-12)))


def matched_temperatures(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """One temperature per model that brings every model's NLL on these images to the same value:
    the highest NLL among the models at ``T = 1``.

    The matched-fit control of sharpness: a model that fits less has smaller logits, hence smaller
    curvature, for that reason alone, so sharpness is compared again with every model softened to
    the least-fitted model's NLL. That model keeps ``T = 1``; the others get the unique softer
    temperature of :func:`temperature_for_nll`. Fit it on held-out images
    (:func:`lib.core.data.held_out_training`), not on the images whose loss is then measured.
    """
    if not logits:
        raise ValueError("logits is empty: give one (N, C) tensor of logits per model")
    nll = {name: nll_at_temperature(values, labels, 1.0) for name, values in logits.items()}
    target = max(nll.values())
    return {name: 1.0 if nll[name] == target else temperature_for_nll(values, labels, target)
            for name, values in logits.items()}


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits (N, C) and labels (N,) with N >= 1, got shapes "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")

