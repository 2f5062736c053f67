"""One way to run a model for an analysis: where it runs, in which mode, with what progress bar, and
the checks of its arguments.

Every analysis follows the same rules, so that a chapter never has to remember which function wants
what:

* **where**: on the model's own device unless the caller names another (:func:`analysis_device`);
* **mode**: eval mode for the analysis, the caller's train/eval mode restored afterwards, even
  after an error (:func:`eval_mode`, :func:`runs_in_eval_mode`);
* **progress**: a plain-text bar on stderr, off unless asked for (:func:`progress_bar`), so that
  stored notebooks never hold one;
* **hooks**: outputs captured by forward hooks that are removed on leaving (:func:`captured_outputs`);
* **checks**: sizes and counts are positive whole numbers, refused with the bad value named
  (:func:`check_positive_int`).
"""
from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # plain text bars: no widgets in stored notebooks or the offline book


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters (or, failing those, buffers) live; the CPU for an empty model."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def analysis_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """The device an analysis of ``model`` runs on: ``device`` when given, else the model's own."""
    return model_device(model) if device is None else torch.device(device)


@contextlib.contextmanager
def moved_to(model: nn.Module, device: str | torch.device | None = None) -> Iterator[torch.device]:
    """The model on :func:`analysis_device` inside the block, yielded; when ``device`` moved it,
    it goes back to where its parameters were on leaving (even after an error). For analyses that
    may be asked to run elsewhere than the model lives."""
    home = model_device(model)
    target = analysis_device(model, device)
    moved = target != home
    if moved:
        model.to(target)
    try:
        yield target
    finally:
        if moved:
            model.to(home)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its own train/eval mode restored on leaving (even
    after an error): analyses must not leave a model in a mode its caller did not choose."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


Result = TypeVar("Result")


def runs_in_eval_mode(analysis: Callable[..., Result]) -> Callable[..., Result]:
    """Decorate an analysis whose first argument is the model: it runs in :func:`eval_mode`."""
    @functools.wraps(analysis)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Result:
        with eval_mode(model):
            return analysis(model, *args, **kwargs)
    return wrapper


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 progress: bool = False, unit: str = "it") -> tqdm:
    """A plain-text progress bar on stderr over ``iterable`` (or updated by hand when it is None),
    shown only when ``progress`` is true and cleared when done."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=not progress, file=sys.stderr,
                dynamic_ncols=True)


@contextlib.contextmanager
def captured_outputs(modules: Mapping[Any, nn.Module]) -> Iterator[dict[Any, Any]]:
    """Inside the block, ``captured[name]`` is the latest output of ``modules[name]``; the forward
    hooks that record them are removed on leaving, even after an error."""
    captured: dict[Any, Any] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
               for name, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def rewritten_inputs(rewrites: Iterable[tuple[nn.Module, Callable[[tuple], tuple]]]) -> Iterator[None]:
    """Inside the block, each ``module`` of ``rewrites`` gets ``rewrite(args)`` in place of its
    positional inputs ``args`` (a forward pre-hook); the hooks are removed on leaving, even after
    an error. The way to mask or gate what flows into a module without editing the model."""
    handles = []
    try:
        for module, rewrite in rewrites:
            handles.append(module.register_forward_pre_hook(lambda _m, args, rewrite=rewrite: rewrite(args)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_positive_int(value: object, what: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is a whole number ``>= minimum`` (a size, a count): a
    Python or NumPy integer, never a bool or a float such as ``2.0``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{what} must be {wanted}, got {value!r}")


def check_images(x: object, at_least: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of at least ``at_least`` images ``(N, C, H, W)``."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] < at_least:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be at least {at_least} image(s) of shape (N, C, H, W), got {got}")


def check_labels(x: torch.Tensor, y: object) -> None:
    """Raise ``ValueError`` unless ``y`` is a 1-D tensor with one label per image of ``x``."""
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"x and y need the same number of images (one label each), got {x.shape[0]} images "
                         f"and labels of shape {got}")
