"""What ViT neurons respond to: feature visualisation, spatial information per block, and the CLS
token's role, after Ghiasi et al. (2022).

* **Neurons.** A ViT neuron is one hidden unit of a block's MLP after its GELU, averaged over the
  patch tokens (the CLS token left out); keys, queries and values give noisy images, the MLP's
  hidden units give structured ones (Ghiasi et al.). A ResNet neuron is one channel of a residual
  unit's output, averaged over positions. :func:`neuron_activations` computes any set of them in
  one forward pass.
* **Activation maximisation** (:func:`visualise`): start from a grey image, and at each step make
  augmented copies (a random shift of up to a patch, a brightness shift, Gaussian noise annealed to
  0), and climb the mean activation over the copies minus ``λ`` times the four-direction total
  variation (:func:`total_variation`); Adam with a cosine learning rate, pixels clamped to [0, 1]
  after every step, seeded (deterministic on the CPU). :func:`top_images` and
  :func:`activation_maps` give the test images a neuron responds to most, and where.
* **Spatial information** (:func:`position_probe`): how well a linear probe reads a token's grid
  position from the token at each unit's output, on images it was not trained on.
* **The CLS token** (:func:`isolated_cls`): inside one block at a time, the CLS query may attend only
  to itself, so it gathers nothing from the patches there; the accuracy that remains tells which
  blocks the CLS token needs.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import residual
from ..core.models import Classifier, PreActResNet
from ..core.residual import as_grid
from ..core.running import captured_outputs, check_positive_int, eval_mode, progress_bar

Objective = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Neurons
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Neuron:
    """One neuron: the residual unit named ``unit`` (a name from :func:`lib.core.residual.units`: an
    ``"....mlp"`` unit of a ViT, a ``"conv"`` unit of a ResNet) and the ``index`` of its hidden
    unit (ViT MLP) or output channel (ResNet)."""

    unit: str
    index: int

    def label(self) -> str:
        return f"{self.unit} #{self.index}"


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, Classifier):
        raise TypeError(f"feature visualisation needs a zoo model built by lib.core.models.build, got {type(model).__name__}")


def neuron_units(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """The units whose neurons can be visualised: name -> (module to hook, number of neurons).

    For the ViTs (and PiT) the MLP units, hooked at the GELU; for the ResNet (and AlterNet) the
    convolution units, hooked at their output.
    """
    _check_model(model)
    out = {}
    for unit in residual.units(model):
        if unit.kind == "mlp":
            mlp = unit.module.fn
            out[unit.name] = (mlp.act, mlp.fc1.out_features)
        elif unit.kind == "conv" and isinstance(model.net, PreActResNet):
            out[unit.name] = (unit.module.block, unit.module.block.conv2.out_channels)
    return out


def _check_neurons(model: nn.Module, neurons: Sequence[Neuron]) -> dict[str, tuple[nn.Module, int]]:
    units = neuron_units(model)
    if not neurons:
        raise ValueError("give at least one neuron")
    for n in neurons:
        if n.unit not in units:
            raise ValueError(f"unit {n.unit!r} has no neurons to visualise; choose one of {', '.join(units)}")
        if not 0 <= n.index < units[n.unit][1]:
            raise ValueError(f"{n.unit} has neurons 0..{units[n.unit][1] - 1}, got {n.index}")
    return units


def _spatial_mean(z: torch.Tensor) -> torch.Tensor:
    """A hooked output averaged over space: tokens ``(B, N, D)`` over the patch tokens (the CLS
    token, the leading ``N - side²`` tokens, left out), maps ``(B, C, H, W)`` over positions."""
    return as_grid(z).mean(dim=(2, 3))


def _run_through(model: nn.Module, names: set[str], x: torch.Tensor) -> None:
    """Run the units of ``model`` up to the last one named in ``names`` (the rest would not change
    what the hooks see, so the forward pass stops there)."""
    units = residual.units(model)
    last = max(i for i, u in enumerate(units) if u.name in names)
    residual.run_units(units[:last + 1], x)


def neuron_activations(model: nn.Module, neurons: Sequence[Neuron], x: torch.Tensor,
                       spatial: bool = False) -> torch.Tensor:
    """Activations of ``neurons`` on images ``x`` in one forward pass up to the last unit needed
    (gradients flow).

    Returns ``(B, K)``, each neuron averaged over the patch tokens or positions, or with
    ``spatial=True`` the maps ``(B, K, side, side)`` (patch-wise activations).
    """
    units = _check_neurons(model, neurons)
    with captured_outputs({n.unit: units[n.unit][0] for n in neurons}) as seen:
        _run_through(model, {n.unit for n in neurons}, x)
    cols = []
    for n in neurons:
        z = seen[n.unit]
        grid = as_grid(z)[:, n.index]
        cols.append(grid if spatial else grid.mean(dim=(1, 2)))
    if spatial and len({c.shape for c in cols}) > 1:
        raise ValueError("these neurons' maps differ in size (units of different stages); "
                         "use activation_maps, which returns one array per neuron")
    return torch.stack(cols, dim=1)


def neuron_objective(model: nn.Module, neurons: Sequence[Neuron]) -> Objective:
    """``images -> (B, K)`` activations of ``neurons``, for :func:`visualise`.

    The model is switched to eval mode here (and left there): a visualisation must use the stored
    normalisation statistics, not those of its own batch of augmented copies.
    """
    _check_neurons(model, neurons)
    model.eval()
    return lambda x: neuron_activations(model, neurons, x)


# --------------------------------------------------------------------------------------------
# Activation maximisation
# --------------------------------------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Four-direction total variation per image, ``(B,)``: the mean over the four directions
    (horizontal, vertical, both diagonals) of the mean absolute difference between neighbours in
    that direction. 0 for a constant image."""
    if x.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got {tuple(x.shape)}")
    diffs = [x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :],
             x[..., 1:, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, 1:]]
    return sum(d.abs().flatten(1).mean(dim=1) for d in diffs) / len(diffs)


@dataclass(frozen=True)
class Augment:
    """The random transformations of each step: a circular shift of up to ``jitter`` pixels in
    each direction, a brightness shift uniform in ``±brightness``, and Gaussian noise of standard
    deviation ``noise`` at the first step, annealed linearly to 0 at the last."""

    jitter: int = 4
    brightness: float = 0.1
    noise: float = 0.1

    def __post_init__(self) -> None:
        if self.jitter < 0 or self.brightness < 0 or self.noise < 0:
            raise ValueError(f"jitter, brightness and noise must be >= 0, got {self}")

    def __call__(self, x: torch.Tensor, progress: float, gen: torch.Generator) -> torch.Tensor:
        out = []
        for img in x:
            if self.jitter:
                dy, dx = (int(v) for v in torch.randint(-self.jitter, self.jitter + 1, (2,), generator=gen))
                img = torch.roll(img, shifts=(dy, dx), dims=(-2, -1))
            out.append(img)
        y = torch.stack(out)
        if self.brightness:
            y = y + (torch.rand(y.shape[0], 1, 1, 1, generator=gen) * 2 - 1) * self.brightness
        if self.noise:
            y = y + torch.randn(y.shape, generator=gen) * self.noise * (1 - progress)
        return y


NO_AUGMENT = Augment(0, 0.0, 0.0)


@dataclass(frozen=True)
class Visualisation:
    """The optimised ``images`` ``(K, C, H, W)`` in [0, 1], one per neuron, and the ``history``
    ``(steps, K)`` of each image's own objective (activation of the un-augmented image minus the
    TV penalty) before every step, plus its value at the end as the last row."""

    images: torch.Tensor
    history: np.ndarray


def visualise(objective: Objective, n: int, shape: tuple[int, int, int], steps: int = 300,
              copies: int = 8, lr: float = 0.1, tv_weight: float = 0.2, augment: Augment | None = None,
              seed: int = 0, progress: bool = False) -> Visualisation:
    """Maximise ``n`` activations at once by gradient ascent on ``n`` images of ``shape`` (C, H, W).

    ``objective(images)`` returns ``(B, n)``: column ``k`` is the activation image ``k`` should
    raise. Each step evaluates ``copies`` augmented copies of every image (see :class:`Augment`)
    and the un-augmented images, climbs ``mean over copies of the activation − tv_weight · TV``
    with Adam (learning rate ``lr``, cosine to 0), and clamps the pixels to [0, 1]. The images
    start grey (0.5) with a little seeded noise. Seeded: the same call gives the same images.
    """
    for name, v in (("n", n), ("steps", steps), ("copies", copies)):
        check_positive_int(v, name)
    if lr <= 0 or tv_weight < 0:
        raise ValueError(f"lr must be > 0 and tv_weight >= 0, got lr={lr}, tv_weight={tv_weight}")
    augment = Augment() if augment is None else augment
    gen = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.01 * torch.randn(n, *shape, generator=gen)).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    owner = torch.arange(n).repeat_interleave(copies)
    history = []
    bar = progress_bar(range(steps), desc="visualise", progress=progress)
    for step in bar:
        progress_made = step / (steps - 1) if steps > 1 else 1.0  # noise reaches 0 at the last step
        batch = torch.cat([augment(x.repeat_interleave(copies, dim=0), progress_made, gen), x])
        acts = objective(batch)
        if acts.shape != (batch.shape[0], n):
            raise ValueError(f"objective must return (B, {n}) activations, got {tuple(acts.shape)}")
        tv = total_variation(x)
        mine = acts[:-n].gather(1, owner[:, None]).squeeze(1).view(n, copies).mean(dim=1)
        clean = acts[-n:].diagonal()
        history.append((clean - tv_weight * tv).detach().numpy())
        loss = -(mine - tv_weight * tv).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    with torch.no_grad():
        final = objective(x.detach()).diagonal() - tv_weight * total_variation(x.detach())
    history.append(final.numpy())
    return Visualisation(x.detach(), np.stack(history))


@torch.no_grad()
def top_images(model: nn.Module, neurons: Sequence[Neuron], x: torch.Tensor, k: int = 3,
               batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` images of ``x`` that activate each neuron most: indices and activations ``(K, k)``."""
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must lie in [1, {x.shape[0]}] (the number of images), got {k}")
    with eval_mode(model):
        acts = torch.cat([neuron_activations(model, neurons, xb) for xb in x.split(batch_size)])  # (B, K)
    values, idx = acts.T.topk(k, dim=1)
    return idx.numpy(), values.numpy()


@torch.no_grad()
def activation_maps(model: nn.Module, neurons: Sequence[Neuron], x: torch.Tensor) -> list[np.ndarray]:
    """Patch-wise (or position-wise) activation of each neuron on each image: one array
    ``(B, side, side)`` per neuron (neurons of different stages have maps of different sizes)."""
    with eval_mode(model):
        return [neuron_activations(model, [n], x, spatial=True)[:, 0].numpy() for n in neurons]


@torch.no_grad()
def neuron_spread(model: nn.Module, unit: str, x: torch.Tensor, batch_size: int = 250) -> np.ndarray:
    """Standard deviation over the images ``x`` of every neuron of ``unit`` (averaged over space):
    how much a neuron tells images apart, the book's rule for choosing neurons to show."""
    units = _check_neurons(model, [Neuron(unit, 0)])
    if x.shape[0] < 2:
        raise ValueError(f"a spread over images needs at least 2 images, got {x.shape[0]}")
    rows = []
    with eval_mode(model):
        for xb in x.split(batch_size):
            with captured_outputs({unit: units[unit][0]}) as seen:
                _run_through(model, {unit}, xb)
            rows.append(_spatial_mean(seen[unit]))
    return torch.cat(rows).std(dim=0).numpy()


# --------------------------------------------------------------------------------------------
# Spatial information: a linear probe for the token's position
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositionProbe:
    """Per unit, whether the probe placed each test token at its true grid position:
    ``correct`` ``(units, test images, positions)`` of 1/0, with the units' ``names`` and the
    ``chance`` level (1 / positions)."""

    names: list[str]
    correct: np.ndarray
    chance: float

    @property
    def accuracy(self) -> np.ndarray:
        """Probe accuracy per unit, in %."""
        return self.correct.mean(axis=(1, 2)) * 100.0


def _fit_linear(features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int, seed: int,
                weight_decay: float) -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Linear(features.shape[1], classes)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def position_probe(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, steps: int = 100,
                   weight_decay: float = 1e-4, seed: int = 0, progress: bool = False) -> PositionProbe:
    """A linear probe per token-sequence unit that reads a patch token's grid position from it.

    For every unit of :func:`lib.core.residual.units` whose output is a token sequence, the patch tokens
    of ``x_train`` (standardised with their own mean and deviation) train a softmax regression onto
    the ``side²`` positions (L-BFGS, ``steps`` iterations, a small L2 penalty); the probe is then
    scored on the tokens of ``x_test``. High accuracy: the unit's tokens still know where they are.
    """
    _check_model(model)
    if isinstance(model.net, PreActResNet):
        raise ValueError("position_probe reads token positions; it applies to vit, vit_local3, vit_local5 and pit")
    units = [u for u in residual.units(model) if u.kind != "head"]
    with torch.no_grad(), eval_mode(model):
        _, train_outs = residual.run_units(units, x_train, keep=True)
        _, test_outs = residual.run_units(units, x_test, keep=True)
    names, correct, chance = [], [], None
    bar = progress_bar(list(zip(units, train_outs, test_outs)), desc="position probe", progress=progress)
    for unit, tr, te in bar:
        g_tr, g_te = as_grid(tr), as_grid(te)
        if unit.stage != units[-1].stage:  # PiT: probe the last stage's grid only, one class set
            continue
        side = g_tr.shape[-1]
        positions = side * side
        f_tr = g_tr.flatten(2).transpose(1, 2).reshape(-1, g_tr.shape[1]).double()
        f_te = g_te.flatten(2).transpose(1, 2).reshape(-1, g_te.shape[1]).double()
        mean, std = f_tr.mean(dim=0), f_tr.std(dim=0).clamp_min(1e-8)
        y_tr = torch.arange(positions).repeat(g_tr.shape[0])
        probe = _fit_linear(((f_tr - mean) / std).float(), y_tr, positions, steps, seed, weight_decay)
        with torch.no_grad():
            pred = probe(((f_te - mean) / std).float()).argmax(dim=1)
        ok = (pred == torch.arange(positions).repeat(g_te.shape[0])).double().view(g_te.shape[0], positions)
        names.append(unit.name)
        correct.append(ok.numpy())
        chance = 1.0 / positions
    return PositionProbe(names, np.stack(correct), float(chance))


# --------------------------------------------------------------------------------------------
# The CLS token
# --------------------------------------------------------------------------------------------
def cls_isolation_mask(tokens: int) -> torch.Tensor:
    """Boolean ``(tokens, tokens)`` attention mask in which the CLS query (token 0) may attend only
    to itself and every patch query to every token."""
    mask = torch.ones(tokens, tokens, dtype=torch.bool)
    mask[0, 1:] = False
    return mask


@contextmanager
def cls_isolated(model: nn.Module, block: int) -> Iterator[nn.Module]:
    """Inside the block, the CLS token of ViT block ``block`` gathers nothing from the patches.

    A forward pre-hook hands that block's attention the mask of :func:`cls_isolation_mask` (on the
    fused and the explicit path alike); it is removed on leaving, even after an error. Global ViT
    only: the local ViTs already carry a fixed mask.
    """
    _check_model(model)
    if model.arch != "vit":
        raise ValueError(f"cls_isolated applies to the global 'vit' only, got {model.arch!r}")
    n_blocks = len(model.net.blocks)
    if not 0 <= block < n_blocks:
        raise ValueError(f"block must lie in [0, {n_blocks - 1}], got {block}")
    attn = model.net.blocks[block].attn

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        tokens = args[0].shape[1]
        kwargs = dict(kwargs, attn_mask=cls_isolation_mask(tokens).to(args[0].device), is_causal=False)
        return args, kwargs

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


@dataclass(frozen=True)
class ClsIsolation:
    """Per-image correctness (1/0) with the CLS token isolated in each block in turn:
    ``correct`` ``(blocks, n)``; ``clean`` ``(n,)`` without isolation."""

    correct: np.ndarray
    clean: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy in % with the CLS token isolated in each block."""
        return self.correct.mean(axis=1) * 100.0


@torch.no_grad()
def isolated_cls(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250,
                 progress: bool = False) -> ClsIsolation:
    """Accuracy with the CLS token cut off from the patches in one block at a time (Ghiasi et al.'s
    test of where the CLS token matters), image by image."""
    _check_model(model)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y need the same number of images, got {x.shape[0]} and labels {tuple(y.shape)}")

    def correct() -> np.ndarray:
        return torch.cat([(model(xb).argmax(dim=1) == yb) for xb, yb in
                          zip(x.split(batch_size), y.split(batch_size))]).double().numpy()

    if model.arch != "vit":
        raise ValueError(f"isolated_cls applies to the global 'vit' only, got {model.arch!r}")
    rows = []
    with eval_mode(model):
        clean = correct()
        for b in progress_bar(range(len(model.net.blocks)), desc="CLS isolation", progress=progress):
            with cls_isolated(model, b):
                rows.append(correct())
    return ClsIsolation(np.stack(rows), clean)
