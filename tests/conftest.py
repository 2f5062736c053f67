"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids waiting on parallel regions on a busy 2-core machine.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the previous
    thread count is restored after the module.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- factories: call them inside a test, e.g. ``seeded_model("vit")`` ----------------------------

@pytest.fixture(scope="session")
def seeded_model():
    """``seeded_model(name, seed=0)``: zoo model ``name`` freshly built from ``torch.manual_seed(seed)``,
    in eval mode (a new model each call, so a test may change it)."""
    from lib.core import models

    def build(name: str, seed: int = 0) -> models.Classifier:
        torch.manual_seed(seed)
        return models.build(name).eval()
    return build


@pytest.fixture(scope="session")
def random_images():
    """``random_images(n, seed=0, size=28)``: ``n`` seeded one-channel images in [0, 1]."""
    def make(n: int, seed: int = 0, size: int = 28) -> torch.Tensor:
        return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return make


@pytest.fixture(scope="session")
def random_labels():
    """``random_labels(n, seed=0)``: ``n`` seeded labels of the ten classes."""
    def make(n: int, seed: int = 0) -> torch.Tensor:
        return torch.randint(10, (n,), generator=torch.Generator().manual_seed(seed))
    return make


@pytest.fixture(scope="session")
def random_rows():
    """``random_rows(*shape, seed=0)``: random distributions along the last axis (float64)."""
    def make(*shape: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*shape, generator=g, dtype=torch.float64).mul(2).softmax(dim=-1)
    return make


@pytest.fixture(scope="session")
def hand_maps():
    """``hand_maps(probs, cls=True, windowed=False, pixels=4, name="hand")``: attention maps of one
    made-up MSA unit holding the probabilities ``probs`` ``(B, windows, heads, N, N)``."""
    from torch import nn

    from lib.analyses import attention
    from lib.core.residual import UnitInfo

    def make(probs: torch.Tensor, cls: bool = True, windowed: bool = False, pixels: int = 4,
             name: str = "hand") -> attention.AttentionMaps:
        info = UnitInfo(0, name, "msa", 0, 0.0, True)
        unit = attention.AttentionUnit(info, nn.Identity(), probs.shape[2], pixels, cls=cls, windowed=windowed)
        return attention.AttentionMaps(unit, probs)
    return make
