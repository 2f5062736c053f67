"""Benchmark: the top-5 Hessian eigenvalues with lib.analyses.hessian (Lanczos) vs PyHessian (power iteration).

Both tools get the same model (the zoo ViT, eval mode, explicit attention), the same augmented
training batch, the same loss (mean cross-entropy) and the same tolerance (1e-3), and build the
gradient graph the same way (one double-backward product per iteration), after one untimed
warm-up product in the same process, so the difference is the algorithm: deflated power iteration spends tens of products per eigenvalue, Lanczos with full
re-orthogonalisation gets all five from one Krylov space. Our stopping rule (Ritz residual
≤ tol·|λ|) is the stricter of the two.

Prints one line, read by scripts::

    bench hessian_top5_vs_pyhessian: ours=<s> peer=<s> ratio=<peer/ours> agreement=<max rel. diff>

then indented lines with product counts, each tool's error against a tight reference (Lanczos to
1e-6), and our time and error at a ten times looser tolerance. Then ``bench hessian_minmax``: the
certified two-ended run against power iteration with a shift (see :func:`minmax`). Needs PyHessian on the path: ``make bench`` installs it into ``.bench-peers``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core import data  # noqa: E402
from lib.zoo import checkpoints  # noqa: E402
from lib.analyses import hessian, krylov  # noqa: E402

try:
    import pyhessian  # noqa: E402
    # the package re-exports the class `hessian` under the module's name; fetch the module itself
    pyhessian_module = sys.modules["pyhessian.hessian"]
except ImportError:  # pragma: no cover - only without the benchmark peers
    sys.exit("PyHessian is not installed: run `make bench` (it installs the peers into .bench-peers)")

MODEL, BATCH, K, TOL, SEED = "vit", 32, 5, 1e-3, 0


def _sorted(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.argsort(-np.abs(v), kind="stable")]


def main() -> int:
    torch.manual_seed(SEED)
    model, _ = checkpoints.load(MODEL)
    x, y = data.load("fashion-mnist", train=True)
    (xb, yb), = hessian.spectrum_batches(x, y, n_batches=1, batch_size=BATCH, seed=SEED)

    # Warm-up, untimed: the first forward and double backward of a process pay one-time costs
    # (kernel selection, allocator growth) that would otherwise fall on whichever tool runs first.
    warm = hessian.HessianOperator(model, xb, yb)
    warm(torch.ones(warm.dim))
    del warm

    # ours: graph + Lanczos
    print(f"    {MODEL}, batch {BATCH}: timing lib.analyses.hessian, then PyHessian (a few minutes on a CPU)",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    ours = hessian.top_eigenvalues(model, xb, yb, k=K, method="lanczos", tol=TOL, seed=SEED)
    t_ours = time.perf_counter() - t0

    # peer: graph + deflated power iteration; count its products by wrapping its HVP function
    counter = {"n": 0}
    hvp = pyhessian_module.hessian_vector_product

    def counting_hvp(*args, **kwargs):
        counter["n"] += 1
        return hvp(*args, **kwargs)

    pyhessian_module.hessian_vector_product = counting_hvp
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    peer_h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(xb, yb), cuda=False)
    peer_values, _ = peer_h.eigenvalues(maxIter=100, tol=TOL, top_n=K)
    t_peer = time.perf_counter() - t0
    pyhessian_module.hessian_vector_product = hvp
    del peer_h
    model.zero_grad(set_to_none=True)

    ours_v, peer_v = _sorted(ours.values), _sorted(peer_values)
    agreement = float(np.max(np.abs(ours_v - peer_v) / np.abs(peer_v)))
    t0 = time.perf_counter()
    loose = hessian.top_eigenvalues(model, xb, yb, k=K, method="lanczos", tol=10 * TOL, seed=SEED)
    t_loose = time.perf_counter() - t0
    reference = _sorted(hessian.top_eigenvalues(model, xb, yb, k=K, method="lanczos", tol=1e-6,
                                                max_iter=300, seed=SEED + 1).values)
    err_ours = float(np.max(np.abs(ours_v - reference) / np.abs(reference)))
    err_peer = float(np.max(np.abs(peer_v - reference) / np.abs(reference)))

    print(f"bench hessian_top5_vs_pyhessian: ours={t_ours:.3g}s peer={t_peer:.3g}s "
          f"ratio={t_peer / t_ours:.2f} agreement={100 * agreement:.3g}%")
    print(f"    {MODEL}, batch {BATCH}, top {K}, tol {TOL:g}: products ours={ours.n_products} "
          f"peer={counter['n']}; max rel. error vs Lanczos at 1e-6: ours={100 * err_ours:.2g}% "
          f"peer={100 * err_peer:.2g}%; eigenvalues {np.round(reference, 1).tolist()}")
    err_loose = float(np.max(np.abs(_sorted(loose.values) - reference) / np.abs(reference)))
    verdict = "below" if err_loose <= err_peer else "above"
    print(f"    ours at tol {10 * TOL:g}: {t_loose:.3g}s, {loose.n_products} products, max rel. error "
          f"{100 * err_loose:.2g}% ({verdict} the peer's at tol {TOL:g}); ratio to the peer {t_peer / t_loose:.2f}")
    minmax(model, xb, yb)
    return 0


def minmax(model, xb, yb) -> None:
    """``bench hessian_minmax``: both ends of the same batch's spectrum, certified in one Lanczos run
    (:func:`lib.analyses.krylov.extreme_eigenvalues`, the chapters' setting), against the usual recipe with
    power-iteration tools: λ_max by power iteration, then power iteration on the shifted operator
    H − λ_max·I, whose dominant eigenvalue is λ_min − λ_max, each to the same tolerance and at
    most 100 products (PyHessian's default). Errors are against a long two-ended Lanczos run, both
    relative to the spectral scale max(|λ_min|, λ_max), the accuracy the certified run promises.
    """
    op = hessian.HessianOperator(model, xb, yb)
    t0 = time.perf_counter()
    ours = krylov.extreme_eigenvalues(op, op.dim, tol=TOL, seed=SEED)
    t_ours = time.perf_counter() - t0
    n_ours = op.n_products

    start = op.n_products
    t0 = time.perf_counter()
    top = krylov.power_iteration(op, op.dim, k=1, tol=TOL, max_iter=100, seed=SEED).values[0]
    shifted = krylov.power_iteration(lambda v: op(v) - top * v, op.dim, k=1, tol=TOL, max_iter=100,
                                      seed=SEED).values[0]
    t_power = time.perf_counter() - t0
    n_power = op.n_products - start
    power = (top + shifted, top)

    reference = krylov.extreme_eigenvalues(op, op.dim, tol=1e-7, min_steps=60, seed=SEED + 1)
    scale = max(abs(reference.lambda_min), abs(reference.lambda_max))
    err = lambda low, high: max(abs(low - reference.lambda_min), abs(high - reference.lambda_max)) / scale  # noqa: E731
    print(f"bench hessian_minmax: ours={t_ours:.3g}s peer={t_power:.3g}s ratio={t_power / t_ours:.2f} "
          f"agreement={100 * err(ours.lambda_min, ours.lambda_max):.2g}%")
    print(f"    {MODEL}, batch {BATCH}, tol {TOL:g}: λ_max={reference.lambda_max:.1f} λ_min={reference.lambda_min:.2f} "
          f"(reference); products ours={n_ours} power iteration + shift={n_power}; error / scale: "
          f"ours={100 * err(ours.lambda_min, ours.lambda_max):.2g}% (certified bound "
          f"{100 * max(ours.bound_min, ours.bound_max) / scale:.2g}%) "
          f"power={100 * err(*power):.2g}%")


if __name__ == "__main__":
    sys.exit(main())
