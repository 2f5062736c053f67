"""Loss-landscape benchmark: our surfaces against a plain forward pass and against ``loss-landscapes``.

What is measured, on one zoo model at a time (``lib.zoo.checkpoints.load``), the same fixed images
(``landscape_data``: ``--n`` augmented, class-balanced training images) and one batch of all of them
per forward pass, in eval mode, on the CPU with ``--threads`` torch threads for every measurement:

* **ours**: seconds per grid point of ``random_directions`` + ``surface_2d`` (NLL, accuracy and the
  weight term per point) on a grid that contains every point ``loss-landscapes`` evaluates (see
  ``peer_grid``), total time divided by the number of points.
* **forward floor**: seconds of one plain forward pass over the same images (``torch.no_grad``, same
  batch size), timed as a run of as many passes as our grid has points. No landscape tool can do a
  grid point for less; ``ratio = floor / ours`` says how close we come (1.00 = no overhead at all;
  the target is >= 0.83, i.e. at most 20% overhead).
* **loss-landscapes** (``loss_landscapes.random_plane``, 3.0.6): seconds per grid point of one
  ``steps`` x ``steps`` plane with filter normalisation (the whole call: its direction drawing and
  its one model copy, as for ours). ``ratio = peer / ours``; above 1 means we are faster.

Each timing is the median of ``--repeats`` runs (``time.perf_counter``) after one warm-up run, the
contenders taking turns within each round so that a busy machine slows them alike.
``agreement`` says whether the two sides computed the same thing:

* floor line: |our NLL at the centre w₀ − the mean cross-entropy of the plain forward pass|.
* loss-landscapes line: the largest |difference| between the peer's loss and ours over every point
  of its plane. Its directions are uniform random, not ours, so the warm-up run records the weights
  at each point it evaluates; from them we recover its two step vectors and each point's
  coordinates, then evaluate ``surface_2d`` along those very vectors at those coordinates. (Its
  odd-numbered columns sit one step lower along the second direction than its even ones, which is
  why our grid has one more row than its plane.)

Output: exactly one line per comparison and model on stdout, 3 significant digits::

    bench landscape_vs_forward_floor: ours=S peer=S ratio=R.RR agreement=D model=NAME
    bench landscape_vs_loss_landscapes: ours=S peer=S ratio=R.RR agreement=D model=NAME

Settings go to stderr. The peers are installed outside the project's environment::

    .venv/bin/pip install --no-deps --target .bench-peers -r benchmarks/requirements-peers.txt
    PYTHONPATH=.bench-peers .venv/bin/python benchmarks/landscape.py [--models resnet vit]

One thread by default: on a shared 2-core machine single-threaded timings are the steadiest, and
only the ratios matter. The default run (ResNet and ViT, 128 images, a 3 x 3 plane) takes about
two minutes on a busy 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lib.zoo import checkpoints  # noqa: E402
from lib.analyses import directions, landscape  # noqa: E402

DISTANCE = 10  # loss_landscapes.random_plane's scale: its plane spans ±‖w₀‖/(2·DISTANCE) per direction

try:
    import loss_landscapes
    from loss_landscapes.metrics import Loss, Metric
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("loss-landscapes is not importable: install the peers with\n"
             "  .venv/bin/pip install --no-deps --target .bench-peers -r benchmarks/requirements-peers.txt\n"
             "and run with PYTHONPATH=.bench-peers")


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds; each round calls every function once.

    Interleaving the contenders round by round, rather than timing one after the other, spreads a
    busy machine's slow and fast moments evenly over them.
    """
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


class Recorder(Metric):
    """A loss-landscapes metric that also keeps the flat weights of every point it evaluates."""

    def __init__(self, inner: Metric) -> None:
        super().__init__()
        self.inner = inner
        self.points: list[torch.Tensor] = []
        self.values: list[float] = []

    def __call__(self, model_wrapper) -> float:
        module = model_wrapper.get_modules()[0]
        self.points.append(torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()]))
        value = self.inner(model_wrapper)
        self.values.append(value)
        return value


def peer_grid(model: nn.Module, points: list[torch.Tensor], steps: int
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray]:
    """The peer's two step vectors (as per-parameter lists) and each point's coordinates along them.

    ``random_plane`` walks each column along the second direction one step at a time (down the even
    columns, back up the odd ones) and moves one step along the first between columns, so
    ``points[1] − points[0]`` is the second step and ``points[steps] − points[steps − 1]`` is the
    first step minus the second. Coordinates come from least squares on these two vectors.
    """
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    step2 = (points[1] - points[0]).double()
    step1 = (points[steps] - points[steps - 1]).double() + step2
    basis = torch.stack([step1, step2], dim=1)  # (dim, 2)
    offsets = torch.stack([p.double() - w0 for p in points], dim=1)  # (dim, points)
    coords = torch.linalg.lstsq(basis, offsets).solution.T.numpy()  # (points, 2)

    def as_direction(flat: torch.Tensor) -> list[torch.Tensor]:
        parts = flat.float().split([p.numel() for p in model.parameters()])
        return [part.view_as(p) for part, p in zip(parts, model.parameters())]

    return as_direction(step1), as_direction(step2), coords


def bench_model(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int) -> None:
    model, _ = checkpoints.load(name)
    model.eval()
    n = len(y)
    if any(not p.requires_grad for p in model.parameters()):
        raise SystemExit(f"{name}: the peer moves every parameter, ours only trainable ones; they differ here")

    # Warm-up runs, which also give the values to compare. loss-landscapes first: its run records
    # its points. distance=10 keeps its plane (±‖w₀‖/20 along each direction) where the loss stays
    # moderate: its directions are uniform in [0, 1], not centred, and at its default distance=1
    # the loss reaches 1e9, where only relative differences would mean anything.
    recorder = Recorder(Loss(nn.CrossEntropyLoss(), x, y))
    torch.manual_seed(0)
    loss_landscapes.random_plane(model, recorder, distance=DISTANCE, steps=steps, normalization="filter",
                                 deepcopy_model=True)
    metric = Loss(nn.CrossEntropyLoss(), x, y)

    # ours, along the peer's step vectors, on a grid that holds each of its points
    d1, d2, coords = peer_grid(model, recorder.points, steps)
    coords = np.round(coords, 6)
    xs, ys = np.unique(coords[:, 0]), np.unique(coords[:, 1])

    def ours_run() -> landscape.Surface:
        directions.random_directions(model, n=2)  # what drawing directions costs us
        return landscape.surface_2d(model, x, y, (d1, d2), xs, ys, batch_size=n, progress=False)

    surface = ours_run()
    ours_at = {(float(a), float(b)): surface.nll[j, i] for j, b in enumerate(ys) for i, a in enumerate(xs)}
    agree_peer = max(abs(ours_at[(float(a), float(b))] - v) for (a, b), v in zip(coords, recorder.values))

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    points = len(xs) * len(ys)

    def forwards() -> None:  # as many passes as our grid has points: the same span of time
        for _ in range(points):
            forward()

    plain_nll = F.cross_entropy(forward(), y).item()
    (direction,) = directions.random_directions(model, n=1)
    centre = landscape.surface_1d(model, x, y, direction, [0.0], batch_size=n, progress=False).nll[0]
    agree_floor = abs(centre - plain_nll)

    t = interleaved_medians({
        "peer": lambda: loss_landscapes.random_plane(model, metric, distance=DISTANCE, steps=steps,
                                                     normalization="filter", deepcopy_model=True),
        "ours": ours_run,
        "floor": forwards,
    }, repeats)
    peer, ours, floor = t["peer"] / steps ** 2, t["ours"] / points, t["floor"] / points

    print(f"bench landscape_vs_forward_floor: ours={ours:.3g} peer={floor:.3g} ratio={floor / ours:.2f} "
          f"agreement={agree_floor:.3g} model={name}", flush=True)
    print(f"bench landscape_vs_loss_landscapes: ours={ours:.3g} peer={peer:.3g} ratio={peer / ours:.2f} "
          f"agreement={agree_peer:.3g} model={name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet", "vit"], help="zoo models (default: resnet vit)")
    parser.add_argument("--n", type=int, default=128, help="images per grid point (default 128)")
    parser.add_argument("--steps", type=int, default=3, help="loss-landscapes plane size steps x steps (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every measurement (default 1)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the step vectors are read off the first two columns)")
    torch.set_num_threads(args.threads)
    x, y = landscape.landscape_data(n=args.n, seed=0)
    print(f"# landscape benchmark: models={','.join(args.models)} images={args.n} plane={args.steps}x{args.steps} "
          f"repeats={args.repeats} threads={args.threads} torch={torch.__version__} device=cpu",
          file=sys.stderr, flush=True)
    for name in args.models:
        bench_model(name, x, y, args.steps, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
