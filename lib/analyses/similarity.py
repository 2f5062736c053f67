"""Representation similarity (Raghu et al. 2021): minibatch linear CKA between the residual units
of :mod:`lib.core.residual`, within a model and across models (spatial localisation, CKA against
input patches, is :mod:`lib.analyses.localisation`; skip-connection ratios, a unit's effect on its
residual stream, live with the lesions in :mod:`lib.analyses.unit_effects`).

**Linear CKA.** Two representations of the same ``n`` images, ``X`` (n × p) and ``Y`` (n × q),
are compared through their Gram matrices ``K = X Xᵀ`` and ``L = Y Yᵀ``: CKA is the normalised
Hilbert-Schmidt independence criterion ``HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))``. It is 1
for representations that differ only by a rotation and an isotropic scaling, and it does not
depend on the widths ``p`` and ``q``, so any two units of any two models can be compared.

**Minibatches** (Nguyen et al. 2021). Features of every unit of a 256-image batch fit in memory,
those of 10,000 images do not. Each batch gives the *unbiased* estimate HSIC₁ of Song et al.
(2012) for every pair of units; CKA is then ``mean HSIC₁(K, L) / sqrt(mean HSIC₁(K, K) · mean
HSIC₁(L, L))`` over batches. Because HSIC₁ is unbiased, the average over batches estimates the
population HSIC whatever the batch size (the biased estimator of Kornblith et al. 2019 would
depend on it). :class:`HSICBatches` keeps the per-batch values, so intervals come from a
bootstrap over batches (:func:`shared_batches` lays them out for :func:`lib.report.stats.bootstrap`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core import residual
from ..core.residual import UnitInfo
from ..core.running import analysis_device, eval_mode, progress_bar

MIN_BATCH = 4  # the unbiased HSIC divides by n(n − 3)
DEGENERATE = 1e-9  # self-HSIC below this share of its scale: features constant across images


# --- Gram matrices and the unbiased HSIC -------------------------------------------------------

def flatten(features: torch.Tensor) -> torch.Tensor:
    """Features of ``n`` images, any shape ``(n, ...)``, as a float64 matrix ``(n, p)``."""
    if features.ndim < 2:
        raise ValueError(f"features need a batch axis and at least one feature axis, got shape "
                         f"{tuple(features.shape)}")
    return features.reshape(features.shape[0], -1).to(torch.float64)


def _check_batch(n: int) -> None:
    if n < MIN_BATCH:
        raise ValueError(f"the unbiased HSIC needs batches of at least {MIN_BATCH} images, got {n}")


def gram(features: torch.Tensor) -> torch.Tensor:
    """The linear-kernel Gram matrix ``X Xᵀ`` (float64) of features ``(n, ...)``."""
    x = flatten(features)
    return x @ x.T


def grams(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Gram matrices of several representations of the same ``n`` images, stacked ``(U, n, n)``,
    with their diagonals set to zero as the unbiased HSIC needs."""
    if len(features) == 0:
        raise ValueError("grams() needs at least one representation")
    n = features[0].shape[0]
    _check_batch(n)
    for i, f in enumerate(features):
        if f.shape[0] != n:
            raise ValueError(f"representation {i} has {f.shape[0]} images, the first has {n}")
    g = torch.stack([gram(f) for f in features])
    g.diagonal(dim1=1, dim2=2).zero_()
    return g


def hsic_pairs(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC₁ (Song et al. 2012) of every pair of zero-diagonal Gram matrices.

    ``ka`` is ``(U, n, n)``, ``kb`` is ``(V, n, n)``; returns ``(U, V)`` with
    ``[tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))``.
    The Grams are symmetric, so ``tr(K̃L̃)`` is the sum of the elementwise product and
    ``1ᵀK̃L̃1`` the dot product of the row sums.
    """
    if ka.ndim != 3 or kb.ndim != 3 or ka.shape[1:] != kb.shape[1:] or ka.shape[1] != ka.shape[2]:
        raise ValueError(f"expected stacks of n×n Gram matrices of the same n, got {tuple(ka.shape)} "
                         f"and {tuple(kb.shape)}")
    n = ka.shape[1]
    _check_batch(n)
    trace = ka.reshape(ka.shape[0], -1) @ kb.reshape(kb.shape[0], -1).T  # tr(K̃L̃) for symmetric Grams
    rows_a, rows_b = ka.sum(dim=2), kb.sum(dim=2)
    total_a, total_b = rows_a.sum(dim=1), rows_b.sum(dim=1)
    value = (trace + torch.outer(total_a, total_b) / ((n - 1) * (n - 2))
             - 2.0 / (n - 2) * rows_a @ rows_b.T)
    return value / (n * (n - 3))


def _self_hsic(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HSIC₁(K, K) of each Gram in a stack, and its scale ``tr(K̃K̃) / (n(n−3))`` (what it is compared
    with to tell constant features from informative ones)."""
    n = k.shape[1]
    trace = (k * k).sum(dim=(1, 2))
    rows = k.sum(dim=2)
    total = rows.sum(dim=1)
    value = (trace + total ** 2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rows * rows).sum(dim=1)) / (n * (n - 3))
    return value, trace / (n * (n - 3))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same images, from one batch (unbiased HSIC₁)."""
    result = HSICAccumulator()
    result.add([x], [y])
    return float(result.result(["x"], ["y"]).cka()[0, 0])


def biased_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA with the biased (full-batch) HSIC of Kornblith et al. (2019):
    ``‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F)`` on column-centred features. An independent route to
    the same population quantity, which the minibatch estimate approaches as the sample grows."""
    a, b = flatten(x), flatten(y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must describe the same images, got {a.shape[0]} and {b.shape[0]} rows")
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    cross = torch.linalg.matrix_norm(b.T @ a) ** 2
    denom = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    if denom <= 0:
        raise ValueError("CKA is undefined for features that are constant across images")
    return float(cross / denom)


# --- Minibatch CKA ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HSICBatches:
    """Per-batch unbiased HSIC values of two sets of representations of the same images.

    ``labels_a`` (U of them) and ``labels_b`` (V) name the representations (units, positions);
    ``cross[k, i, j]`` is HSIC₁ between ``a_i`` and ``b_j`` on batch ``k``, ``self_a[k, i]`` and
    ``self_b[k, j]`` the self terms; ``batch_sizes`` the images per batch. Within one model ``b``
    is ``a``.
    """

    labels_a: tuple[str, ...]
    labels_b: tuple[str, ...]
    cross: np.ndarray
    self_a: np.ndarray
    self_b: np.ndarray
    batch_sizes: tuple[int, ...]

    @property
    def n_batches(self) -> int:
        return self.cross.shape[0]

    @property
    def n_images(self) -> int:
        return int(sum(self.batch_sizes))

    def cka(self, batches: np.ndarray | None = None) -> np.ndarray:
        """The ``(U, V)`` CKA matrix from the mean HSIC over ``batches`` (indices; default all)."""
        idx = slice(None) if batches is None else np.asarray(batches)
        return _cka_from_means(self.cross[idx].mean(axis=0), self.self_a[idx].mean(axis=0),
                               self.self_b[idx].mean(axis=0))

    def rows(self) -> np.ndarray:
        """One row per batch holding its cross and self terms (what a bootstrap resamples)."""
        k = self.n_batches
        return np.concatenate([self.cross.reshape(k, -1), self.self_a, self.self_b], axis=1)

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        """The CKA matrix from the mean of ``rows`` laid out as :meth:`rows` lays them out."""
        u, v = len(self.labels_a), len(self.labels_b)
        mean = rows.mean(axis=0)
        return _cka_from_means(mean[:u * v].reshape(u, v), mean[u * v:u * v + u], mean[u * v + u:])


def _cka_from_means(cross: np.ndarray, self_a: np.ndarray, self_b: np.ndarray) -> np.ndarray:
    # a constant representation (self-HSIC 0) gives 0/0 here; model_cka refuses those before, and
    # Localisation masks them, so the NaN never reaches a table or a figure
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(np.outer(self_a, self_b))


class HSICAccumulator:
    """Collects :class:`HSICBatches` one batch at a time (features are dropped after each batch).

    ``add(features_a, features_b)`` takes the representations of one batch (lists of tensors
    ``(n, ...)``; ``features_b=None`` compares ``a`` with itself). :meth:`result` checks that no
    representation is constant across images (CKA would be 0/0) and names the culprit if one is.
    """

    def __init__(self) -> None:
        self._cross: list[np.ndarray] = []
        self._self_a: list[np.ndarray] = []
        self._self_b: list[np.ndarray] = []
        self._scale_a: list[np.ndarray] = []
        self._scale_b: list[np.ndarray] = []
        self._sizes: list[int] = []

    def add(self, features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor] | None = None) -> None:
        """Add one batch given as representations (lists of tensors ``(n, ...)``)."""
        self.add_grams(grams(features_a), None if features_b is None else grams(features_b))

    def add_grams(self, ka: torch.Tensor, kb: torch.Tensor | None = None) -> None:
        """Add one batch given as zero-diagonal Gram stacks (:func:`grams`), so that Grams shared by
        several comparisons are computed once."""
        self_a, scale_a = _self_hsic(ka)
        if kb is None:
            kb, self_b, scale_b = ka, self_a, scale_a
        else:
            if kb.shape[1] != ka.shape[1]:
                raise ValueError(f"a and b must hold the same images, got batches of {ka.shape[1]} and {kb.shape[1]}")
            self_b, scale_b = _self_hsic(kb)
        if self._sizes and (len(self_a) != self._self_a[0].size or len(self_b) != self._self_b[0].size):
            raise ValueError("every batch must give the same number of representations")
        self._cross.append(hsic_pairs(ka, kb).numpy())
        self._self_a.append(self_a.numpy())
        self._self_b.append(self_b.numpy())
        self._scale_a.append(scale_a.numpy())
        self._scale_b.append(scale_b.numpy())
        self._sizes.append(int(ka.shape[1]))

    def constant(self, side: str = "a") -> np.ndarray:
        """Which representations of ``side`` ("a" or "b") are constant across the images so far."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}")
        if not self._sizes:
            raise ValueError("no batches were added")
        values, scales = (self._self_a, self._scale_a) if side == "a" else (self._self_b, self._scale_b)
        return _constant(np.stack(values), np.stack(scales))

    def result(self, labels_a: Sequence[str], labels_b: Sequence[str] | None = None,
               allow_constant: bool = False) -> HSICBatches:
        """The collected batches, labelled. Raises ``ValueError`` naming any representation that is
        constant across the images (its self-HSIC is at rounding level), unless ``allow_constant``
        (then the caller masks it; :meth:`constant` tells which)."""
        if not self._sizes:
            raise ValueError("no batches were added")
        labels_b = labels_a if labels_b is None else labels_b
        out = HSICBatches(tuple(labels_a), tuple(labels_b), np.stack(self._cross), np.stack(self._self_a),
                          np.stack(self._self_b), tuple(self._sizes))
        if len(out.labels_a) != out.self_a.shape[1] or len(out.labels_b) != out.self_b.shape[1]:
            raise ValueError(f"got {len(out.labels_a)} and {len(out.labels_b)} labels for "
                             f"{out.self_a.shape[1]} and {out.self_b.shape[1]} representations")
        if not allow_constant:
            for labels, side in ((out.labels_a, "a"), (out.labels_b, "b")):
                bad = self.constant(side)
                if bad.any():
                    names = [labels[i] for i in np.flatnonzero(bad)]
                    raise ValueError(f"features constant across images (CKA is undefined) for {names}")
        return out


def _constant(self_hsic: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return self_hsic.mean(axis=0) <= DEGENERATE * np.maximum(scale.mean(axis=0), np.finfo(float).tiny)


def cka_batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``x`` split into batches of ``batch_size`` images for the unbiased HSIC, which needs at least
    :data:`MIN_BATCH` images per batch: a smaller remainder joins the batch before it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < MIN_BATCH:
        raise ValueError(f"batch_size must be a whole number >= {MIN_BATCH}, got {batch_size!r}")
    n = x.shape[0]
    if n < MIN_BATCH:
        raise ValueError(f"need at least {MIN_BATCH} images, got {n}")
    out = list(x.split(batch_size))
    if len(out) > 1 and out[-1].shape[0] < MIN_BATCH:  # fold a tiny remainder into the batch before
        out[-2:] = [torch.cat(out[-2:])]
    return out


def _units(model: nn.Module, include_head: bool) -> list[residual.Unit]:
    return [u for u in residual.units(model) if include_head or u.kind != "head"]


@torch.no_grad()
def _unit_grams(model: nn.Module, units: list[residual.Unit], xb: torch.Tensor,
                device: torch.device) -> torch.Tensor:
    """The zero-diagonal Gram matrix of every unit's output on one batch, ``(U, n, n)``.

    Raw outputs, CLS token included (it is part of what the next unit sees); the head keeps its
    logits. Each output is turned into its Gram matrix as soon as it is computed and then dropped,
    so memory holds one unit's features at a time, not the whole model's.
    """
    z = xb.to(device)
    out = []
    for unit in units:
        z = unit(z)
        out.append(gram(z.float().cpu()))
    _check_batch(xb.shape[0])
    g = torch.stack(out)
    g.diagonal(dim1=1, dim2=2).zero_()
    return g


@dataclass(frozen=True)
class CKAResult:
    """Minibatch CKA between every unit of ``units_a`` and every unit of ``units_b``."""

    units_a: tuple[UnitInfo, ...]
    units_b: tuple[UnitInfo, ...]
    hsic: HSICBatches

    @property
    def matrix(self) -> np.ndarray:
        """The ``(U, V)`` CKA matrix, rows in the order of ``units_a``, columns of ``units_b``."""
        return self.hsic.cka()


def model_cka(model_a: nn.Module, x: torch.Tensor, model_b: nn.Module | None = None, batch_size: int = 256,
              include_head: bool = False, device: str | torch.device | None = None,
              progress: bool = False) -> CKAResult:
    """CKA between every pair of units of ``model_a`` (and ``model_b``, if given) on the images ``x``.

    One pass over ``x`` in batches of ``batch_size``: each batch runs the model(s) unit by unit and
    adds its unbiased HSIC of every pair of units. Units are those of :func:`lib.core.residual.units`,
    the head (logits) left out unless ``include_head``. Models run in eval mode.
    """
    named = {"a": model_a} if model_b is None else {"a": model_a, "b": model_b}
    pair = ("a", "a") if model_b is None else ("a", "b")
    return models_cka(named, x, [pair], batch_size, include_head, device, progress)[pair]


def models_cka(models: dict[str, nn.Module], x: torch.Tensor, pairs: Sequence[tuple[str, str]],
               batch_size: int = 256, include_head: bool = False, device: str | torch.device | None = None,
               progress: bool = False) -> dict[tuple[str, str], CKAResult]:
    """CKA for several pairs of models in one pass over ``x``: every model runs once per batch and
    every unit's Gram matrix is computed once, however many comparisons use it.

    ``pairs`` name models of ``models``; ``(m, m)`` compares a model with itself. All results share
    their image batches, so :func:`shared_batches` can compare them paired.
    """
    if not pairs:
        raise ValueError("models_cka() needs at least one pair to compare")
    for pair in pairs:
        for name in pair:
            if name not in models:
                raise ValueError(f"unknown model {name!r} in pairs; choose among {sorted(models)}")
    used = sorted({name for pair in pairs for name in pair}, key=list(models).index)
    first = models[used[0]]
    device = analysis_device(first, device)
    units = {name: _units(models[name], include_head) for name in used}
    accs = {pair: HSICAccumulator() for pair in pairs}
    parts = cka_batches(x, batch_size)
    with contextlib.ExitStack() as modes:
        for name in used:
            modes.enter_context(eval_mode(models[name]))
        for xb in progress_bar(parts, total=len(parts), desc="CKA", progress=progress):
            gram_stacks = {name: _unit_grams(models[name], units[name], xb, device) for name in used}
            for (a, b), acc in accs.items():
                acc.add_grams(gram_stacks[a], None if a == b else gram_stacks[b])
    out = {}
    for (a, b), acc in accs.items():
        infos_a = tuple(u.info for u in units[a])
        infos_b = tuple(u.info for u in units[b])
        hsic = acc.result([u.name for u in infos_a], [u.name for u in infos_b])
        out[(a, b)] = CKAResult(infos_a, infos_b, hsic)
    return out


@dataclass(frozen=True)
class SharedBatches:
    """Several :class:`HSICBatches` from the same image batches, laid side by side for a bootstrap.

    ``rows`` holds one row per batch (every result's cross and self terms); resampling rows
    resamples the same batches for every result, so a contrast between two models on the same
    images is a paired comparison. ``label`` names the rows for the test's description. Pass
    ``rows`` and ``statistic(fn)`` to :func:`lib.report.stats.bootstrap`, which draws the resamples.
    """

    results: tuple[HSICBatches, ...]
    rows: np.ndarray
    bounds: tuple[int, ...]
    label: str

    def statistic(self, fn: Callable[..., float]) -> Callable[[np.ndarray], float]:
        """A statistic of resampled rows: ``fn(cka_1, cka_2, ...)`` with each result's CKA matrix
        recomputed from the mean HSIC of the resampled batches, as the estimator itself does."""
        def stat(sample: np.ndarray) -> float:
            return float(fn(*(r.from_rows(sample[:, lo:hi]) for r, lo, hi in
                              zip(self.results, self.bounds[:-1], self.bounds[1:]))))
        return stat


def shared_batches(results: Sequence[HSICBatches]) -> SharedBatches:
    """Lay ``results`` side by side, batch by batch (see :class:`SharedBatches`). They must come
    from the same image batches in the same order, e.g. from one :func:`models_cka` call."""
    if not results:
        raise ValueError("shared_batches() needs at least one HSICBatches")
    sizes = {r.batch_sizes for r in results}
    if len(sizes) != 1:
        raise ValueError(f"results must come from the same batches, got batch sizes {sorted(sizes)}")
    parts = [r.rows() for r in results]
    bounds = tuple(int(b) for b in np.cumsum([0] + [p.shape[1] for p in parts]))
    label = f"batches of {results[0].batch_sizes[0]} images"
    if len(results) > 1:
        label += " (the same batches for both)" if len(results) == 2 else f" (the same batches for all {len(results)})"
    return SharedBatches(tuple(results), np.concatenate(parts, axis=1), bounds, label)


def block_mean(matrix: np.ndarray, rows: Sequence[int] | np.ndarray, cols: Sequence[int] | np.ndarray,
               skip_diagonal: bool = False) -> float:
    """The mean of ``matrix[rows][:, cols]``, leaving out entries with equal row and column index
    when ``skip_diagonal`` (self-similarity is 1 by construction)."""
    r, c = np.asarray(rows, dtype=int), np.asarray(cols, dtype=int)
    if r.size == 0 or c.size == 0:
        raise ValueError("block_mean() needs at least one row and one column")
    sub = matrix[np.ix_(r, c)]
    if skip_diagonal:
        keep = r[:, None] != c[None, :]
        if not keep.any():
            raise ValueError("no off-diagonal entries in this block")
        return float(sub[keep].mean())
    return float(sub.mean())


def depth_groups(units: Sequence[UnitInfo], edges: Sequence[float]) -> list[np.ndarray]:
    """Indices of ``units`` in consecutive depth ranges: with ``edges = (0, 0.5, 1)`` the lower
    half (depth < 0.5) and the upper half (depth ≥ 0.5), depth being the unit's position among the
    units given, 0 for the first and 1 for the last."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] != 0 or edges[-1] != 1:
        raise ValueError(f"edges must rise strictly from 0 to 1, got {list(edges)}")
    n = len(units)
    if n < 2:
        raise ValueError(f"need at least 2 units, got {n}")
    depth = np.arange(n) / (n - 1)
    groups = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        last = i == len(edges) - 2
        groups.append(np.flatnonzero((depth >= lo) & ((depth <= hi) if last else (depth < hi))))
    return groups


def uniformity(matrix: np.ndarray, units: Sequence[UnitInfo]) -> float:
    """How uniform a model's representations are across depth (Raghu et al.): the mean CKA between
    its lower-half and its upper-half units (:func:`depth_groups` with edges 0, 0.5, 1) in its own
    unit-by-unit CKA ``matrix``. 1 when every layer represents the images alike."""
    lower, upper = depth_groups(units, (0, 0.5, 1))
    return block_mean(matrix, lower, upper)
