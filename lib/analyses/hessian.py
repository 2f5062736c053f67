"""The Hessian of the loss: products, top eigenvalues, per-mini-batch spectra, trace and density.

Park & Kim (2022, Figs. 1c, 3, 4) compute, for each training mini-batch, the few eigenvalues of
largest magnitude of that batch's loss Hessian and pool them into a density: positive values
measure sharpness, negative ones mark non-convex (saddle-like) batches. Their code was never
released; this module is a complete, tested implementation.

* :class:`HessianOperator` gives Hessian-vector products H·v by double backward. The gradient
  graph is built once per batch and reused by every product (one extra backward each).
* :func:`top_eigenvalues` finds a batch's top-k eigenvalues by magnitude with the solvers of
  :mod:`lib.analyses.krylov` (Lanczos by default; deflated power iteration, as PyHessian does, for
  comparison), and :func:`batch_spectra` runs one on each of a series of augmented training batches.
* :func:`directional_curvature`: dᵀHd, the exact local curvature along a landscape's direction.
* :func:`batch_extremes` gives both ends of each batch's spectrum, λ_max and λ_min with error
  bounds, so negative curvature is read from λ_min itself, not from a top-k that may hide it.
* The solvers, Hutchinson's trace and the stochastic-Lanczos-quadrature density work on any
  operator and live in :mod:`lib.analyses.krylov` (``krylov.lanczos_eigs``, ``krylov.slq_density``, ...).

Conventions, stated once: the loss is the mean cross-entropy (no label smoothing) of the batch,
plus ``l2/2·‖w‖²`` when ``l2 > 0`` (which shifts every eigenvalue by exactly ``l2``); the model is
in eval mode, so BatchNorm uses its running statistics (the loss is then a fixed function of the
weights, and the Hessian is symmetric and well defined) and drop-path is off; all trainable
parameters take part. Vectors are flat, in ``model.parameters()`` order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import data, models
from ..core.running import check_positive_int, eval_mode, progress_bar
from .krylov import (Eigs, MatVec, extreme_eigenvalues, lanczos_eigs, power_iteration)

METHODS = ("lanczos", "power")


# --------------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------------

def _check_batch(x: torch.Tensor, y: torch.Tensor, what: str = "the batch") -> None:
    """Refuse an empty batch (its mean loss is undefined) and images without one label each."""
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"{what} is empty (x has shape {tuple(x.shape)}, y {tuple(y.shape)}): the Hessian "
                         f"of a mean loss needs at least one image")
    if len(x) != len(y):
        raise ValueError(f"{what} needs one label per image, got {len(x)} images and {len(y)} labels")


def _check_explicit_attention(model: nn.Module) -> None:
    """Refuse a model with fused attention switched on, before any work is done.

    The fused kernels (``torch.nn.functional.scaled_dot_product_attention``) have no double
    backward, so a Hessian-vector product through them fails deep inside autograd. The switch is
    not flipped here: the caller's model is left exactly as it was, and the choice stays visible.
    """
    fused = [name or type(model).__name__ for name in models.fused_attention_modules(model)]
    if fused:
        raise ValueError(f"{len(fused)} attention module(s) of the model use the fused kernel (fused_attn=True, "
                         f"e.g. {fused[0]!r}), which has no double backward, so Hessian-vector products through "
                         f"them fail; call lib.core.models.use_fused_attention(model, False) first (the explicit path "
                         f"computes the same function, up to float rounding)")


class HessianOperator:
    """H·v for the loss of ``model`` on one batch ``(x, y)``, by double backward.

    The forward pass and the first backward (with ``create_graph=True``) run once, here; each
    product then costs one backward through that graph. ``n_products`` counts the products.
    Models with attention must compute it explicitly (``models.use_fused_attention(model, False)``,
    the zoo's default): fused attention kernels have no double backward. A model with any attention module
    on the fused kernel is refused with a ``ValueError`` before anything runs, rather than
    switched over silently (the two paths agree only up to float rounding).

    ``temperature`` divides the logits first (``T > 1`` softens the model's predictions): the
    Hessian of a model brought to a given NLL by temperature scaling, the matched-fit control of
    sharpness (a less confident model has smaller curvature for that reason alone).

    Raises:
        ValueError: ``l2 < 0``, ``temperature <= 0``, an empty batch, ``x`` and ``y`` of different
            lengths, a model without trainable parameters or with fused attention on.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0,
                 temperature: float = 1.0) -> None:
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        _check_batch(x, y)
        _check_explicit_attention(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        with eval_mode(model), torch.enable_grad():
            loss = F.cross_entropy(model(x.to(self.device)) / temperature, y.to(self.device))
            if l2 > 0:
                loss = loss + 0.5 * l2 * sum((p * p).sum() for p in self.params)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.loss = loss.item()
        self.grads = grads
        self.n_products = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for a flat vector ``v`` of length ``dim`` (returned flat, same dtype as the model)."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of length {self.dim}, got shape {tuple(v.shape)}")
        parts = torch.split(v.to(self.device, self.dtype), self.sizes)
        vs = [part.view(shape) for part, shape in zip(parts, self.shapes)]
        hv = torch.autograd.grad(self.grads, self.params, grad_outputs=vs, retain_graph=True)
        self.n_products += 1
        return torch.cat([h.reshape(-1) for h in hv]).detach()

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the loss at the current weights."""
        return torch.cat([g.detach().reshape(-1) for g in self.grads])


def dense_hessian(op: MatVec, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The full dim×dim Hessian, one product per column (only for tiny models: tests, teaching)."""
    eye = torch.eye(dim, device=device)
    return torch.stack([op(eye[i]) for i in range(dim)], dim=1)


def directional_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: Sequence[torch.Tensor],
                          batch_size: int = 256, temperature: float = 1.0) -> float:
    """dᵀHd / ``N``-weighted over chunks: the exact second derivative of the mean NLL at the current
    weights along ``direction`` (one tensor per trainable parameter, e.g. from
    :func:`lib.analyses.directions.random_directions`), on the images ``x`` in eval mode.

    The curvature a loss-landscape plot suggests, without a grid: a quadratic fitted to grid
    points is not local once the grid step is as large as the distance over which a model's
    accuracy collapses; this is. One Hessian-vector product per chunk of ``batch_size`` images;
    ``temperature`` as in :class:`HessianOperator` (no weight term). The weights are not changed.
    """
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if len(direction) != len(params) or any(t.shape != p.shape for t, p in zip(direction, params)):
        raise ValueError(f"direction must hold one tensor per trainable parameter, shaped like it "
                         f"({len(params)} tensors); got {len(direction)}")
    flat = torch.cat([t.detach().reshape(-1) for t in direction])
    total = 0.0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        op = HessianOperator(model, xb, yb, temperature=temperature)
        v = flat.to(op.device, op.dtype)
        total += len(yb) * torch.dot(v.double(), op(v).double()).item()
        del op
    return total / len(y)


# --------------------------------------------------------------------------------------------------
# Top eigenvalues
# --------------------------------------------------------------------------------------------------

def top_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 5, method: str = "lanczos",
                    tol: float = 1e-3, max_iter: int = 100, l2: float = 0.0, seed: int = 0,
                    return_vectors: bool = False) -> Eigs:
    """The ``k`` Hessian eigenvalues of largest magnitude of the loss of ``model`` on ``(x, y)``.

    The model stays on its device; ``x`` and ``y`` are moved there.

    Raises:
        ValueError: an unknown ``method``, or a batch or model that :class:`HessianOperator`
            refuses (an empty batch, fused attention on).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    op = HessianOperator(model, x, y, l2=l2)
    solver = lanczos_eigs if method == "lanczos" else power_iteration
    return solver(op, op.dim, k=k, tol=tol, max_iter=max_iter, seed=seed, device=op.device,
                  return_vectors=return_vectors)


# --------------------------------------------------------------------------------------------------
# Per-mini-batch spectra (Park & Kim Figs. 1c, 3, 4)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchSpectra:
    """Top-k eigenvalues of the loss Hessian of each of a series of training mini-batches.

    ``values[b]`` holds batch b's k eigenvalues of largest magnitude (decreasing magnitude);
    ``losses[b]`` its loss; ``n_products[b]`` the Hessian-vector products it took.
    """

    values: np.ndarray
    losses: np.ndarray
    n_products: np.ndarray
    converged: np.ndarray
    batch_size: int
    k: int
    settings: dict = field(default_factory=dict)

    @property
    def pooled(self) -> np.ndarray:
        """All eigenvalues of all batches in one array (what the density plots show)."""
        return self.values.reshape(-1)

    def summary(self) -> dict[str, float]:
        """Fraction of negative values, median and maximum of the positive ones, batch-max median."""
        v = self.pooled
        pos = v[v > 0]
        return {"fraction_negative": float(np.mean(v < 0)),
                "median_positive": float(np.median(pos)) if len(pos) else float("nan"),
                "max": float(v.max()),
                "min": float(v.min()),
                "median_top": float(np.median(self.values[:, 0]))}


def spectrum_batches(x: torch.Tensor, y: torch.Tensor, n_batches: int, batch_size: int, seed: int = 0,
                     augment: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` seeded random training batches, augmented as in training (crop, flip).

    The same seed gives the same batches, so different models are probed on identical data.
    """
    check_positive_int(n_batches, "n_batches")
    check_positive_int(batch_size, "batch_size")
    if n_batches * batch_size > len(x):
        raise ValueError(f"{n_batches} batches of {batch_size} need {n_batches * batch_size} images; "
                         f"only {len(x)} given")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    batches = []
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx], y[idx]
        if augment:
            xb = data.augment(xb, generator=gen)
        batches.append((xb, yb))
    return batches


PROBE_SUBSET = 0.1  # the class-balanced training subset (seed 0) the Hessian probes are drawn from


def probe_batches(n_batches: int, batch_size: int, seed: int = 0, dataset: str = "fashion-mnist",
                  root: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The book's Hessian probes: :func:`spectrum_batches` drawn from the class-balanced 10%
    training subset (seed 0), the same for every chapter.

    Every zoo model trained on these images (the 10%-data models on exactly this subset, the
    full-data models on a superset of it), so each probe is a batch of the model's own training
    loss, and chapters 3 and 6 probe identical batches: with one seed, the first ``n`` of a longer
    series are the ``n`` of a shorter one, so the same checkpoint gives the same values in both.
    """
    x, y = data.load(dataset, train=True, subset=PROBE_SUBSET, seed=0, root=root)
    return spectrum_batches(x, y, n_batches=n_batches, batch_size=batch_size, seed=seed)


def batch_spectra(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], k: int = 5,
                  method: str = "lanczos", tol: float = 1e-3, max_iter: int = 100, l2: float = 0.0,
                  seed: int = 0, progress: bool = False, desc: str = "batches",
                  temperature: float = 1.0) -> BatchSpectra:
    """Top-``k`` Hessian eigenvalues (by magnitude) for each batch of ``batches``.

    Power iteration and Lanczos return the largest-*magnitude* eigenvalues, so a negative value
    in a batch's top k means that batch's loss has a direction of strong negative curvature.

    Raises:
        ValueError: an unknown ``method``, no batches, an empty batch, or a model with fused
            attention on (all checked before the first batch is processed).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if len(batches) == 0:
        raise ValueError("batches is empty: give at least one (x, y) batch")
    for b, (xb, yb) in enumerate(batches):
        _check_batch(xb, yb, what=f"batch {b}")
    _check_explicit_attention(model)
    solver = lanczos_eigs if method == "lanczos" else power_iteration
    values, losses, products, converged = [], [], [], []
    for b, (xb, yb) in enumerate(progress_bar(batches, desc=desc, progress=progress)):
        op = HessianOperator(model, xb, yb, l2=l2, temperature=temperature)
        eigs = solver(op, op.dim, k=k, tol=tol, max_iter=max_iter, seed=seed + b, device=op.device)
        values.append(eigs.values)
        losses.append(op.loss)
        products.append(eigs.n_products)
        converged.append(eigs.converged)
        del op
    return BatchSpectra(values=np.stack(values), losses=np.array(losses), n_products=np.array(products),
                        converged=np.array(converged), batch_size=len(batches[0][1]), k=k,
                        settings={"method": method, "tol": tol, "max_iter": max_iter, "l2": l2,
                                  "temperature": temperature})


# --------------------------------------------------------------------------------------------------
# Both ends of each mini-batch's spectrum
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchExtremes:
    """λ_max and λ_min of the loss Hessian of each of a series of mini-batches, with error bounds.

    One entry per batch: the two ends from :func:`lib.analyses.krylov.extreme_eigenvalues`, their residual
    bounds, the products each took and whether both ends converged; ``losses`` the batch losses.
    ``top`` (batches × k) holds the ``k`` eigenvalues of largest magnitude from the same runs,
    Park & Kim's top-k spectrum, with their residual bounds in ``bound_top``.
    """

    lambda_max: np.ndarray
    lambda_min: np.ndarray
    bound_max: np.ndarray
    bound_min: np.ndarray
    losses: np.ndarray
    n_products: np.ndarray
    converged: np.ndarray
    batch_size: int
    settings: dict = field(default_factory=dict)
    top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bound_top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def negative(self) -> np.ndarray:
        """|λ_min| per batch where λ_min < 0, else 0: the most negative curvature of each batch."""
        return np.maximum(-self.lambda_min, 0.0)

    @property
    def ratio(self) -> np.ndarray:
        """|λ_min| / λ_max per batch (0 where λ_min ≥ 0): negative curvature against the sharpest."""
        return self.negative / self.lambda_max

    def means(self, n_batches: int | None = None) -> dict[str, float]:
        """The means over the first ``n_batches`` batches (all when ``None``) of λ_max, |λ_min|
        (:attr:`negative`), |λ_min| / λ_max (:attr:`ratio`) and the batch loss: one network's
        summary, the unit compared between training runs. Probes drawn by
        :func:`probe_batches` share their first batches whatever their number, so the first
        ``n`` batches of two series probed with one seed are the same batches.
        """
        if n_batches is not None and not (isinstance(n_batches, int) and 1 <= n_batches <= len(self.lambda_max)):
            raise ValueError(f"n_batches must be an integer from 1 to {len(self.lambda_max)} (the batches probed), "
                             f"got {n_batches!r}")
        n = slice(None) if n_batches is None else slice(n_batches)
        return {"lambda_max": float(self.lambda_max[n].mean()), "negative": float(self.negative[n].mean()),
                "ratio": float(self.ratio[n].mean()), "loss": float(self.losses[n].mean())}


def batch_extremes(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], tol: float = 1e-3,
                   min_steps: int = 20, stable_steps: int = 5, max_iter: int = 300, l2: float = 0.0,
                   seed: int = 0, progress: bool = False, desc: str = "batches",
                   temperature: float = 1.0, k: int = 0) -> BatchExtremes:
    """Both ends of the Hessian spectrum of each batch (Park & Kim's loss: NLL + ``l2`` term).

    Unlike :func:`batch_spectra`'s top-k by magnitude, this sees a negative eigenvalue however
    large the positive ones are, and says how well each end is known. Same checks as
    :func:`batch_spectra`, all before the first batch is processed; ``temperature`` as in
    :class:`HessianOperator`. ``k > 0`` also returns each batch's top ``k`` by magnitude from the
    same run (and waits until they too are converged), so a chapter needs one run per batch.
    """
    if len(batches) == 0:
        raise ValueError("batches is empty: give at least one (x, y) batch")
    for b, (xb, yb) in enumerate(batches):
        _check_batch(xb, yb, what=f"batch {b}")
    _check_explicit_attention(model)
    runs, losses = [], []
    for b, (xb, yb) in enumerate(progress_bar(batches, desc=desc, progress=progress)):
        op = HessianOperator(model, xb, yb, l2=l2, temperature=temperature)
        runs.append(extreme_eigenvalues(op, op.dim, tol=tol, min_steps=min_steps, stable_steps=stable_steps,
                                        max_iter=max_iter, seed=seed + b, device=op.device, k=k))
        losses.append(op.loss)
        del op
    field_of = lambda name: np.array([getattr(r, name) for r in runs])  # noqa: E731
    return BatchExtremes(lambda_max=field_of("lambda_max"), lambda_min=field_of("lambda_min"),
                         bound_max=field_of("bound_max"), bound_min=field_of("bound_min"),
                         losses=np.array(losses), n_products=field_of("n_products"),
                         converged=field_of("converged"), batch_size=len(batches[0][1]),
                         settings={"tol": tol, "min_steps": min_steps, "stable_steps": stable_steps,
                                   "max_iter": max_iter, "l2": l2, "temperature": temperature, "k": k},
                         top=_padded([r.top for r in runs], k), bound_top=_padded([r.bound_top for r in runs], k))


def _padded(rows: list[np.ndarray], k: int) -> np.ndarray:
    """Rows of up to ``k`` values as a batches × k array, NaN where a run found fewer (tiny models)."""
    out = np.full((len(rows), k), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out

