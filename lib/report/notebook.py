"""What every chapter does after its bootstrap cell: pick the device, seed, set the plot style.

The bootstrap cell of a chapter (clone on Colab, make ``lib`` importable) cannot live here, since
it runs before ``lib`` can be imported; everything after it does.
"""
from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from . import plots


def setup(seed: int = 0, device: str | None = None) -> torch.device:
    """Seed every generator, set the book's plot style and return the device to compute on.

    ``device=None`` picks CUDA when available, else the CPU.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    plots.setup_style()
    # Jupyter's own deprecation chatter would end up in the stored outputs.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="jupyter_client")
    # Libraries that import tqdm.auto warn that ipywidgets is missing; the book uses text bars.
    warnings.filterwarnings("ignore", message="IProgress not found")
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
