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


def check_positive_int(value: object, what: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is a whole number ``>= minimum`` (a size, a count)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{what} must be {wanted}, got {value!r}")
