"""Loss landscapes: filter-normalised random directions and 1-D and 2-D surfaces.

Park & Kim (2022, Fig. 1a) draw the loss around trained weights w₀ along two random directions,
L(w₀ + x·d₁ + y·d₂), following Li et al. (2018); Fig. 1b follows training in polar form relative to
the final weights w*: r_t = ‖w_t − w*‖ / ‖w₀ − w*‖ and θ_t = angle(w_t − w*, w₀ − w*).

* :func:`lib.analyses.directions.random_directions` draws filter-normalised Gaussian directions
  (Li et al.); biases, norm affines and positional embeddings get zero.
* :func:`landscape_data` fixes the images every grid point is evaluated on: a seeded,
  class-balanced training subset, augmented once.
* :func:`surface_1d` and :func:`surface_2d` evaluate NLL, accuracy and the weight term
  ``0.05·Σ‖p‖`` on a grid and return a :class:`Surface`; :func:`sharpness` reduces a surface to a
  few numbers (rise at the ends, curvature at the centre); :func:`lib.analyses.hessian.directional_curvature`
  gives the exact local curvature dᵀHd along a direction, with no grid.

Conventions, stated once: the loss is the mean cross-entropy (no label smoothing) over the fixed
images; the model is in eval mode, so BatchNorm uses its running statistics (the surface is a
fixed function of the weights, not of the batch) and drop-path is off; only trainable parameters
move; directions are lists of tensors in ``model.parameters()`` order (trainable ones only).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # the type of the progress bar the point loops update

from ..core import data
from ..core.running import analysis_device, check_positive_int, eval_mode, moved_to, progress_bar
from .directions import trainable_parameters
from .hessian import directional_curvature


# --------------------------------------------------------------------------------------------------
# The fixed data every grid point sees
# --------------------------------------------------------------------------------------------------

def _balanced_indices(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices, as equal a number per class as possible (the first classes get the remainder)."""
    classes = torch.unique(labels, sorted=True)
    base, extra = divmod(n, len(classes))
    chosen = []
    for i, c in enumerate(classes.tolist()):
        idx = torch.nonzero(labels == c).squeeze(1)
        k = base + (1 if i < extra else 0)
        if k > len(idx):
            raise ValueError(f"class {c} has only {len(idx)} images but a balanced sample of {n} needs {k}")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.sort(torch.cat(chosen)).values


def landscape_data(dataset: str = "fashion-mnist", n: int = 1024, seed: int = 0, augment: bool = True,
                   root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded, class-balanced training subset of ``n`` images, augmented once.

    Park & Kim evaluate the landscape on the augmented training set; doing the augmentation once,
    with a generator seeded by ``seed``, means every grid point sees exactly the same images, so
    differences between points come from the weights alone. Each class contributes ``n // C``
    images (the first ``n % C`` classes one more), drawn with a CPU generator seeded by ``seed``
    and kept in ascending index order; the same generator then drives :func:`lib.core.data.augment`
    (random crop with padding 2 and horizontal flip). Returns CPU tensors ``(x, y)``.

    Raises:
        ValueError: ``n`` is not a positive integer or is larger than a class allows.
    """
    check_positive_int(n, "n")
    x, y = data.load(dataset, train=True, root=root)
    if n > len(y):
        raise ValueError(f"n={n} is more than the {len(y)} training images of {dataset!r}")
    generator = torch.Generator().manual_seed(seed)
    idx = _balanced_indices(y, n, generator)
    x, y = x[idx], y[idx]
    if augment:
        x = data.augment(x, generator=generator)
    return x.contiguous(), y


# --------------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Surface:
    """The loss around w₀ on a grid: ``L(w₀ + x·d₁)`` (1-D) or ``L(w₀ + x·d₁ + y·d₂)`` (2-D).

    ``xs`` (and ``ys`` for 2-D; ``None`` for 1-D) are the grid coordinates. ``nll`` (mean
    cross-entropy), ``acc`` (accuracy in %) and ``l2`` (the weight term ``l2_coef · Σ_p ‖p‖₂`` over
    the trainable parameter tensors, unsquared norms, as Park & Kim plot it) have shape
    ``(len(xs),)`` for 1-D and ``(len(ys), len(xs))`` for 2-D (row ``i`` is ``y = ys[i]``, the
    layout of ``np.meshgrid(xs, ys)`` and of ``plt.contour``). ``n_images`` is how many images
    each point was evaluated on.
    """

    xs: np.ndarray
    ys: np.ndarray | None
    nll: np.ndarray
    acc: np.ndarray
    l2: np.ndarray
    l2_coef: float
    n_images: int

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return 1 if self.ys is None else 2

    def loss(self, with_l2: bool) -> np.ndarray:
        """NLL alone (``with_l2=False``) or NLL + the weight term (``True``, Park & Kim's Fig. 1a).

        The weight term is large and smooth and tends to dominate the picture (Park & Kim agree,
        issue #10 of their repository), so show NLL alone as well.
        """
        return self.nll + self.l2 if with_l2 else self.nll

    def line_through_centre(self, axis: int) -> Surface:
        """The 1-D surface through w₀ along one axis of a 2-D one: along d₁ (``axis=0``, the row
        ``y = 0``) or along d₂ (``axis=1``, the column ``x = 0``), with the same images and weight
        term, so that it compares with the 1-D slices of :func:`surface_1d`."""
        if self.ndim != 2:
            raise ValueError("line_through_centre() needs a 2-D surface")
        if axis not in (0, 1) or isinstance(axis, bool):
            raise ValueError(f"axis must be 0 (along d₁) or 1 (along d₂), got {axis!r}")
        if axis == 0:
            i, xs = _zero_index(self.ys, "ys"), self.xs
            cut = (lambda a: a[i, :])
        else:
            i, xs = _zero_index(self.xs, "xs"), self.ys
            cut = (lambda a: a[:, i])
        return dataclasses.replace(self, xs=xs, ys=None, nll=cut(self.nll), acc=cut(self.acc), l2=cut(self.l2))


def _coords(values: Iterable[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be a non-empty 1-D sequence of finite numbers, got {values!r}")
    return arr


def _check_direction(direction: Sequence[torch.Tensor], params: list[tuple[str, nn.Parameter]], what: str) -> None:
    if (isinstance(direction, (list, tuple)) and direction
            and isinstance(direction[0], (list, tuple))):
        raise ValueError(f"{what} is a list of directions, not one direction; pass one of them, "
                         f"e.g. random_directions(model, n=1)[0]")
    if len(direction) != len(params):
        raise ValueError(f"{what} has {len(direction)} tensors but the model has {len(params)} "
                         f"trainable parameter tensors")
    for d, (name, p) in zip(direction, params):
        if d.shape != p.shape:
            raise ValueError(f"{what}: the tensor for {name!r} has shape {tuple(d.shape)}, "
                             f"the parameter {tuple(p.shape)}")


def _forward_sums(model: nn.Module, chunks: list[tuple[torch.Tensor, torch.Tensor]], temperature: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (of the logits divided by ``temperature``) and number of correct predictions over
    the chunks, kept on the device."""
    nll = torch.zeros((), device=chunks[0][0].device)
    correct = torch.zeros((), device=chunks[0][0].device)
    for xb, yb in chunks:
        logits = model(xb).float()
        nll += F.cross_entropy(logits / temperature, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return nll, correct


class _FlatWeights:
    """The trainable parameters temporarily backed by one flat buffer.

    Moving the model to a grid point is then one or two vectorised operations on the buffer
    (``torch.add(w₀, d₁, alpha=x, out=buffer)``, ``buffer.add_(d₂, alpha=y)``) instead of a few
    per parameter tensor: on a busy CPU each small parallel operation can wait for a core, and on
    a GPU each is a kernel launch. The parameters' own tensors are set aside untouched and put
    back by :meth:`restore`, so w₀ comes back bit for bit.
    """

    def __init__(self, params: list[nn.Parameter], dirs: list[list[torch.Tensor]]) -> None:
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"the trainable parameters mix dtypes {sorted(map(str, dtypes))}; "
                             f"convert the model to one dtype first")
        self.params = params
        self.originals = [p.data for p in params]
        # each tensor starts on a 64-byte boundary, as separately allocated tensors do: matrix
        # kernels run slower on misaligned weights
        self.offsets, total = [], 0
        for p in params:
            self.offsets.append(total)
            total += -(-p.numel() // self.ALIGN) * self.ALIGN
        self.w0 = self._pack([p.detach() for p in params], total)  # the one copy of w₀
        self.dirs = [self._pack(direction, total) for direction in dirs]
        self.buffer = self.w0.clone()
        for p, offset in zip(params, self.offsets):
            p.data = self.buffer[offset:offset + p.numel()].view_as(p)

    ALIGN = 16  # elements: 64 bytes of float32

    def _pack(self, tensors: Sequence[torch.Tensor], total: int) -> torch.Tensor:
        flat = torch.zeros(total, dtype=self.params[0].dtype, device=self.params[0].device)
        for t, offset in zip(tensors, self.offsets):
            flat[offset:offset + t.numel()] = t.reshape(-1)
        return flat

    def set(self, coeffs: Sequence[float]) -> None:
        """Parameters ← w₀ + Σ_k coeffs[k]·d_k (exactly w₀ where every coefficient is 0)."""
        first = True
        for c, d in zip(coeffs, self.dirs):
            if c == 0.0:
                continue
            if first:
                torch.add(self.w0, d, alpha=c, out=self.buffer)
                first = False
            else:
                self.buffer.add_(d, alpha=c)
        if first:
            self.buffer.copy_(self.w0)

    def restore(self) -> None:
        for p, original in zip(self.params, self.originals):
            p.data = original


def _sequential(model: nn.Module, params: list[nn.Parameter], dirs: list[list[torch.Tensor]],
                chunks: list[tuple[torch.Tensor, torch.Tensor]], points: np.ndarray, bar: tqdm,
                temperature: float) -> torch.Tensor:
    """One point at a time: move the weights, forward, and put w₀ back exactly at the end."""
    flat = _FlatWeights(params, dirs)
    rows = []
    try:
        for point in points:
            flat.set(point.tolist())
            nll, correct = _forward_sums(model, chunks, temperature)
            l2 = torch.stack(torch._foreach_norm(params)).float().sum()
            rows.append(torch.stack([nll, correct, l2]))
            bar.update(1)
    finally:
        flat.restore()
    return torch.stack(rows)


def _batched(model: nn.Module, names: list[str], params: list[nn.Parameter], dirs: list[list[torch.Tensor]],
             chunks: list[tuple[torch.Tensor, torch.Tensor]], points: np.ndarray, per_pass: int,
             bar: tqdm, temperature: float) -> torch.Tensor:
    """``per_pass`` points per forward with ``torch.func.vmap`` over stacked weights (model untouched).

    Every zoo model can be vmapped (BatchNorm in eval mode included); a model that cannot fails on
    the first pass with an error that says to use ``points_per_pass=1``.
    """
    from torch.func import functional_call, vmap

    def forward(weights: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, weights, (xb,))

    batched = vmap(forward, in_dims=(0, None))
    w0 = torch.cat([p.detach().reshape(-1) for p in params])
    basis = torch.stack([torch.cat([d.reshape(-1) for d in direction]) for direction in dirs])  # (k, dim)
    sizes = [p.numel() for p in params]
    rows = []
    for start in range(0, len(points), per_pass):
        coeffs = torch.as_tensor(points[start:start + per_pass], dtype=w0.dtype, device=w0.device)
        b = len(coeffs)
        stacked_flat = torch.addmm(w0.unsqueeze(0), coeffs, basis)  # (b, dim): w₀ + Σ_k c_k·d_k
        stacked = {name: part.view(b, *p.shape)
                   for name, p, part in zip(names, params, stacked_flat.split(sizes, dim=1))}
        nll = torch.zeros(b, device=w0.device)
        correct = torch.zeros(b, device=w0.device)
        try:
            for xb, yb in chunks:
                logits = batched(stacked, xb).float()  # (b, batch, classes)
                nll += F.cross_entropy(logits.flatten(0, 1) / temperature, yb.repeat(b),
                                       reduction="none").view(b, -1).sum(1)
                correct += (logits.argmax(-1) == yb).sum(1)
        except (RuntimeError, NotImplementedError) as err:
            if start > 0:
                raise
            raise RuntimeError(f"evaluating points_per_pass={per_pass} grid points per forward with "
                               f"torch.func.vmap failed on the first pass ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}); if this "
                               f"{type(model).__name__} cannot be vmapped, use points_per_pass=1") from err
        l2 = sum(torch.linalg.vector_norm(part.float(), dim=1) for part in stacked_flat.split(sizes, dim=1))
        rows.append(torch.stack([nll, correct, l2], dim=1))
        bar.update(b)
    return torch.cat(rows)


def _evaluate_grid(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: list[Sequence[torch.Tensor]],
                   points: np.ndarray, batch_size: int, l2_coef: float, device: str | torch.device | None,
                   progress: bool, points_per_pass: int, desc: str, temperature: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NLL, accuracy (%) and weight term at ``w₀ + Σ_k points[j, k]·directions[k]`` for every row j."""
    check_positive_int(batch_size, "batch_size")
    check_positive_int(points_per_pass, "points_per_pass")
    if not (isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters")
    for k, direction in enumerate(directions):
        _check_direction(direction, named, f"direction {k + 1}")

    home = named[0][1].device
    target = analysis_device(model, device)
    bar = progress_bar(total=len(points), desc=desc, unit="point", progress=progress)
    try:
        if device is not None:
            model.to(target)
        names = [name for name, _ in named]
        params = [p for _, p in named]
        dirs = [[d.detach().to(target, p.dtype) for d, p in zip(direction, params)] for direction in directions]
        chunks = [(xb.to(target), yb.to(target)) for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
        with torch.no_grad(), eval_mode(model):
            if points_per_pass > 1:
                rows = _batched(model, names, params, dirs, chunks, points, points_per_pass, bar, temperature)
            else:
                rows = _sequential(model, params, dirs, chunks, points, bar, temperature)
        rows = rows.double().cpu().numpy()  # the one synchronisation with the device
    finally:
        bar.close()
        if device is not None:
            model.to(home)
    n = len(y)
    return rows[:, 0] / n, 100.0 * rows[:, 1] / n, l2_coef * rows[:, 2]


_SURFACE_ARGS = """
    The model is evaluated in eval mode under ``torch.no_grad`` (BatchNorm uses its running
    statistics, drop-path is off) on the fixed images ``x`` (labels ``y``; e.g. from
    :func:`landscape_data`), in chunks of ``batch_size``. Nothing is deep-copied: one copy of w₀ is
    kept, the trainable parameters are pointed at one flat buffer that is overwritten in place for
    each point (one ``torch.add(..., out=)`` per direction), and the parameters' own tensors, never
    written to, are put back afterwards, also when an error interrupts the loop: w₀ comes back bit
    for bit. The model's train/eval mode and device are restored too. Results stay on the device
    until the end (one synchronisation per surface).

    Args:
        batch_size: images per forward pass.
        l2_coef: coefficient of the weight term ``l2_coef · Σ_p ‖p‖₂`` (Park & Kim: 0.05).
        device: where to compute; the model is moved there for the computation and back
            afterwards. ``None``: where the model's parameters are.
        progress: show a tqdm bar over grid points (on stderr).
        points_per_pass: evaluate this many grid points in one batched forward with
            ``torch.func.vmap`` over stacked weights (the model's own parameters are then not
            touched). This pays on a GPU, which these small models cannot fill one point at a time;
            memory grows with ``points_per_pass · batch_size``. On a CPU, 1 is as fast. A model
            that ``vmap`` cannot run raises a ``RuntimeError`` on the first pass.
        temperature: divide the logits by it before the NLL (accuracy is unchanged): the landscape
            of a model brought to a given NLL by temperature scaling (the matched-fit control;
            see :func:`lib.core.metrics.temperature_for_nll`).
"""


def surface_1d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: Sequence[torch.Tensor],
               coords: Iterable[float], *, batch_size: int = 256, l2_coef: float = 0.05,
               device: str | torch.device | None = None, progress: bool = False,
               points_per_pass: int = 1, temperature: float = 1.0) -> Surface:
    """The loss along one direction, ``L(w₀ + x·d)`` for ``x`` in ``coords`` (``ys`` is ``None``).
    """
    xs = _coords(coords, "coords")
    nll, acc, l2 = _evaluate_grid(model, x, y, [direction], xs[:, None], batch_size, l2_coef, device,
                                  progress, points_per_pass, "landscape 1-D", temperature)
    return Surface(xs=xs, ys=None, nll=nll, acc=acc, l2=l2, l2_coef=float(l2_coef), n_images=len(y))


def surface_2d(model: nn.Module, x: torch.Tensor, y: torch.Tensor, directions: Sequence[Sequence[torch.Tensor]],
               xs: Iterable[float], ys: Iterable[float], *, batch_size: int = 256, l2_coef: float = 0.05,
               device: str | torch.device | None = None, progress: bool = False,
               points_per_pass: int = 1, temperature: float = 1.0) -> Surface:
    """The loss on a plane, ``L(w₀ + x·d₁ + y·d₂)`` for ``x`` in ``xs`` and ``y`` in ``ys``.

    ``directions`` is the pair ``(d₁, d₂)``, e.g. ``random_directions(model, n=2)``. Arrays of
    the result have shape ``(len(ys), len(xs))``.
    """
    if len(directions) != 2:
        raise ValueError(f"surface_2d needs two directions (d1, d2), got {len(directions)}")
    gx, gy = _coords(xs, "xs"), _coords(ys, "ys")
    grid_x, grid_y = np.meshgrid(gx, gy)
    points = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    nll, acc, l2 = _evaluate_grid(model, x, y, list(directions), points, batch_size, l2_coef, device,
                                  progress, points_per_pass, "landscape 2-D", temperature)
    shape = (len(gy), len(gx))
    return Surface(xs=gx, ys=gy, nll=nll.reshape(shape), acc=acc.reshape(shape), l2=l2.reshape(shape),
                   l2_coef=float(l2_coef), n_images=len(y))


surface_1d.__doc__ += _SURFACE_ARGS
surface_2d.__doc__ += _SURFACE_ARGS


# --------------------------------------------------------------------------------------------------
# Sharpness in numbers
# --------------------------------------------------------------------------------------------------

def _zero_index(values: np.ndarray, what: str) -> int:
    i = int(np.argmin(np.abs(values)))
    if abs(values[i]) > 1e-9 * max(1.0, float(np.abs(values).max())):
        raise ValueError(f"{what} must contain 0 (the centre w₀), got {values.tolist()}")
    return i


def sharpness(surface: Surface, fit_fraction: float = 0.25) -> dict[str, float]:
    """How sharp the minimum is along x: rises at the ends and the curvature at the centre.

    Works on a 1-D surface, or on the x-axis slice ``y = 0`` of a 2-D one (``ys`` must contain 0;
    so must ``xs``). With ``L(0)`` the value at ``x = 0`` and the ends ``x_left = min(xs)`` and
    ``x_right = max(xs)`` (``∓max|x|`` on a symmetric grid), the returned dict holds:

    * ``x_left``, ``x_right``: the ends.
    * ``nll_centre``: NLL at ``x = 0``; ``loss_centre``: NLL + weight term there.
    * ``rise_nll_left``, ``rise_nll_right``: ``NLL(end) − NLL(0)``; ``rise_nll``: their mean.
    * ``rise_loss_left``, ``rise_loss_right``, ``rise_loss``: the same for NLL + weight term
      (the quantity Park & Kim quote: ≈ +20 for ResNet-50, ≈ +12 for ViT-Ti at ``x = ±1``).
    * ``fit_a``, ``fit_b``, ``fit_c``: the least-squares quadratic ``a·x² + b·x + c`` fitted to
      NLL over the points with ``|x| ≤ fit_fraction · max|x|`` (``fit_halfwidth``; ``fit_points``
      of them, at least 3).
    * ``curvature``: ``2·fit_a``, the second derivative of the fit — the NLL's curvature along
      the direction at w₀.

    Raises:
        ValueError: no ``x = 0`` (or ``y = 0``) on the grid, or fewer than 3 points in the fit window.
    """
    if not 0 < fit_fraction <= 1:
        raise ValueError(f"fit_fraction must be in (0, 1], got {fit_fraction!r}")
    xs = np.asarray(surface.xs, dtype=np.float64)
    nll = np.asarray(surface.nll, dtype=np.float64)
    total = np.asarray(surface.loss(with_l2=True), dtype=np.float64)
    if surface.ys is not None:
        row = _zero_index(np.asarray(surface.ys, dtype=np.float64), "ys")
        nll, total = nll[row], total[row]
    centre = _zero_index(xs, "xs")
    left, right = int(np.argmin(xs)), int(np.argmax(xs))
    halfwidth = fit_fraction * float(np.abs(xs).max())
    window = np.abs(xs) <= halfwidth * (1 + 1e-9)
    if window.sum() < 3:
        raise ValueError(f"only {int(window.sum())} grid points lie within |x| <= {halfwidth:g}; a quadratic "
                         f"fit needs at least 3 (use a finer grid or a larger fit_fraction)")
    a, b, c = np.polyfit(xs[window], nll[window], 2)
    out = {
        "x_left": float(xs[left]), "x_right": float(xs[right]),
        "nll_centre": float(nll[centre]), "loss_centre": float(total[centre]),
        "rise_nll_left": float(nll[left] - nll[centre]), "rise_nll_right": float(nll[right] - nll[centre]),
        "rise_loss_left": float(total[left] - total[centre]), "rise_loss_right": float(total[right] - total[centre]),
        "fit_a": float(a), "fit_b": float(b), "fit_c": float(c), "curvature": float(2 * a),
        "fit_halfwidth": halfwidth, "fit_points": int(window.sum()),
    }
    out["rise_nll"] = (out["rise_nll_left"] + out["rise_nll_right"]) / 2
    out["rise_loss"] = (out["rise_loss_left"] + out["rise_loss_right"]) / 2
    return out


RISE_POINTS: tuple[float, float, float] = (-1.0, 0.0, 1.0)  #: the ends of the rise and w₀ (direction_sharpness)


@dataclass(frozen=True)
class DirectionSharpness:
    """How sharp one model's minimum is along each of several directions, at one ``temperature``:
    per direction, :func:`sharpness`'s ``rise_nll`` and ``rise_loss`` (the mean rise at α = ±1 of
    the NLL, and of NLL + weight term) and ``curvature``, the exact dᵀHd of the NLL at w₀."""

    rise_nll: np.ndarray
    rise_loss: np.ndarray
    curvature: np.ndarray
    temperature: float

    def means(self) -> dict[str, float]:
        """The mean over the directions of each measure: one model's summary, the unit that is
        compared between training runs."""
        return {"rise_nll": float(self.rise_nll.mean()), "rise_loss": float(self.rise_loss.mean()),
                "curvature": float(self.curvature.mean())}


def direction_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        directions: Sequence[Sequence[torch.Tensor]], *, temperature: float = 1.0,
                        batch_size: int = 256, device: str | torch.device | None = None,
                        progress: bool = False) -> DirectionSharpness:
    """The rise at α = ±1 and the exact curvature at w₀ of ``model`` along each of ``directions``:
    what comparing many models needs, three points per direction (:func:`surface_1d`) and one
    Hessian-vector product per chunk of images. ``temperature`` divides the logits in both (the
    matched-fit control). Arguments as for :func:`surface_1d`; the weights come back unchanged."""
    if not directions:
        raise ValueError("direction_sharpness needs at least one direction")
    rise_nll, rise_loss, curvature = [], [], []
    for direction in progress_bar(directions, desc="sharpness", unit="direction", progress=progress):
        line = surface_1d(model, x, y, direction, RISE_POINTS, batch_size=batch_size, device=device,
                          temperature=temperature)
        measured = sharpness(line, fit_fraction=1.0)
        rise_nll.append(measured["rise_nll"])
        rise_loss.append(measured["rise_loss"])
        with moved_to(model, device) as target:
            curvature.append(directional_curvature(model, x.to(target), y.to(target), direction,
                                                   batch_size=batch_size, temperature=temperature))
    return DirectionSharpness(np.array(rise_nll), np.array(rise_loss), np.array(curvature), float(temperature))
