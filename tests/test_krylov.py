"""lib.analyses.krylov.extreme_eigenvalues against numpy.linalg.eigvalsh on constructed spectra and a dense Hessian."""
import numpy as np
import pytest
import torch
from torch import nn

from lib.analyses import hessian, krylov
from test_hessian import SymmetricOp as MatrixOp, spectrum_matrix as matrix_with  # shared test helpers

pytestmark = pytest.mark.usefixtures("one_thread")


def hessian_like(n: int = 300, seed: int = 0) -> np.ndarray:
    """A dominant positive eigenvalue, a few sharp ones, a bulk near 0 and one negative outlier."""
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(-1.0, 2.0, n - 6)
    return np.concatenate([[1000.0, 420.0, 300.0, 150.0, 60.0, -8.0], bulk])


def test_both_ends_of_a_hessian_like_spectrum_within_their_bounds():
    values = hessian_like()
    matrix = matrix_with(values, seed=1)
    truth = np.linalg.eigvalsh(matrix.numpy())
    ext = krylov.extreme_eigenvalues(MatrixOp(matrix), len(values), tol=1e-4)
    assert ext.converged
    assert ext.lambda_max == pytest.approx(truth[-1], abs=max(ext.bound_max, 1e-3 * 1000))
    assert ext.lambda_min == pytest.approx(truth[0], abs=max(ext.bound_min, 1e-3 * 1000))
    assert abs(ext.lambda_min - truth[0]) <= 1e-4 * 1000 * 1.01  # the tolerance is relative to the scale
    assert ext.lambda_min >= truth[0] - 1e-6 and ext.lambda_max <= truth[-1] + 1e-6  # interlacing
    assert ext.ratio == pytest.approx(8.0 / 1000.0, rel=1e-2)
    # Top-3 by magnitude never sees the negative outlier: the reason for this function.
    top3 = krylov.lanczos_eigs(MatrixOp(matrix), len(values), k=3, tol=1e-4)
    assert (top3.values > 0).all()


def test_a_positive_definite_operator_has_ratio_zero_and_its_smallest_value():
    values = np.linspace(0.5, 50.0, 60)
    ext = krylov.extreme_eigenvalues(MatrixOp(matrix_with(values, seed=2)), 60, tol=1e-6)
    assert ext.lambda_min == pytest.approx(0.5, abs=1e-3) and ext.lambda_max == pytest.approx(50.0, rel=1e-5)
    assert ext.ratio == 0.0


def test_a_tiny_operator_ends_on_an_invariant_subspace_with_exact_values():
    ext = krylov.extreme_eigenvalues(MatrixOp(matrix_with([3.0, -2.0, 1.0], seed=3)), 3)
    assert ext.converged and ext.n_products == 3
    assert (ext.lambda_min, ext.lambda_max) == pytest.approx((-2.0, 3.0), abs=1e-5)
    assert ext.bound_min == ext.bound_max == 0.0


def test_the_minimum_number_of_steps_is_taken_and_the_run_is_seeded():
    matrix = matrix_with(hessian_like(120, seed=4), seed=4)
    a = krylov.extreme_eigenvalues(MatrixOp(matrix), 120, tol=1e-2, min_steps=40, seed=7)
    b = krylov.extreme_eigenvalues(MatrixOp(matrix), 120, tol=1e-2, min_steps=40, seed=7)
    assert a.n_products >= 40
    assert (a.lambda_min, a.lambda_max, a.bound_min, a.bound_max, a.n_products) == \
        (b.lambda_min, b.lambda_max, b.bound_min, b.bound_max, b.n_products)


def test_the_ends_of_a_small_networks_hessian_match_the_dense_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(24, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(2))
    op = hessian.HessianOperator(model, x, y)
    truth = np.linalg.eigvalsh(hessian.dense_hessian(op, op.dim).double().numpy())
    assert truth[0] < 0 < truth[-1]  # this small net sits at a saddle: both ends matter
    ext = krylov.extreme_eigenvalues(op, op.dim, tol=1e-5)
    scale = max(abs(truth[0]), abs(truth[-1]))
    assert ext.lambda_max == pytest.approx(truth[-1], abs=1e-3 * scale)
    assert ext.lambda_min == pytest.approx(truth[0], abs=1e-3 * scale)


def test_the_same_run_gives_the_top_k_by_magnitude_with_their_bounds():
    values = hessian_like()
    matrix = matrix_with(values, seed=1)
    truth = np.linalg.eigvalsh(matrix.numpy())
    want = truth[np.argsort(-np.abs(truth))][:5]
    ext = krylov.extreme_eigenvalues(MatrixOp(matrix), len(values), tol=1e-6, k=5)
    assert ext.converged and ext.top.shape == (5,) and ext.bound_top.shape == (5,)
    np.testing.assert_allclose(ext.top, want, rtol=1e-6)
    assert np.all(ext.bound_top <= 1e-6 * np.abs(ext.top))
    # the same values a dedicated top-k run finds, and a negative end it cannot see
    alone = krylov.lanczos_eigs(MatrixOp(matrix), len(values), k=5, tol=1e-6)
    np.testing.assert_allclose(ext.top, alone.values, rtol=1e-6)
    assert ext.lambda_min == pytest.approx(-8.0, abs=1e-3) and (ext.top > 0).all()
    # asking for the top k never costs fewer products than the ends alone, and without k there is none
    plain = krylov.extreme_eigenvalues(MatrixOp(matrix), len(values), tol=1e-6)
    assert ext.n_products >= plain.n_products and plain.top.shape == (0,)


def test_the_basis_stays_orthonormal_with_the_conditional_second_pass():
    # a spectrum that converges fast (large relative gaps) is where Gram–Schmidt loses orthogonality
    values = np.concatenate([[1e4, 5e3, 2e3], np.linspace(-1.0, 1.0, 197)])
    op = MatrixOp(matrix_with(values, seed=5))
    lanczos = krylov._Lanczos(op, krylov._random_unit(200, torch.Generator().manual_seed(0), "cpu"))
    for _ in range(60):
        lanczos.advance(lanczos.step())
    q = lanczos.basis.view()
    assert torch.allclose(q @ q.T, torch.eye(len(q), dtype=q.dtype), atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(tol=0.0), "tol must be > 0"),
    (dict(min_steps=0), "min_steps must be a positive integer"),
    (dict(stable_steps=1.5), "stable_steps must be a positive integer"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        krylov.extreme_eigenvalues(MatrixOp(torch.eye(4)), 4, **kwargs)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        krylov.extreme_eigenvalues(MatrixOp(torch.eye(4)), 0)
    with pytest.raises(ValueError, match=r"k must be an integer in \[0, dim=4\], got 5"):
        krylov.extreme_eigenvalues(MatrixOp(torch.eye(4)), 4, k=5)


def test_batch_extremes_match_each_batchs_dense_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    ext = hessian.batch_extremes(model, batches, tol=1e-5, l2=0.01, progress=False, k=3)
    for b, (xb, yb) in enumerate(batches):
        op = hessian.HessianOperator(model, xb, yb, l2=0.01)
        truth = np.linalg.eigvalsh(hessian.dense_hessian(op, op.dim).double().numpy())
        scale = max(abs(truth[0]), abs(truth[-1]))
        assert ext.lambda_max[b] == pytest.approx(truth[-1], abs=1e-3 * scale)
        assert ext.lambda_min[b] == pytest.approx(truth[0], abs=1e-3 * scale)
        assert ext.losses[b] == pytest.approx(op.loss)
        np.testing.assert_allclose(ext.top[b], truth[np.argsort(-np.abs(truth))][:3], rtol=1e-4)
    assert ext.converged.all() and ext.batch_size == 16 and ext.top.shape == ext.bound_top.shape == (3, 3)
    np.testing.assert_allclose(ext.ratio, np.maximum(-ext.lambda_min, 0) / ext.lambda_max)
    with pytest.raises(ValueError, match="batches is empty"):
        hessian.batch_extremes(model, [], progress=False)


def test_batch_extremes_means_over_the_first_batches_by_hand():
    ext = hessian.BatchExtremes(lambda_max=np.array([10.0, 20.0, 40.0]), lambda_min=np.array([-5.0, 1.0, -4.0]),
                                bound_max=np.zeros(3), bound_min=np.zeros(3), losses=np.array([0.3, 0.5, 1.0]),
                                n_products=np.array([20, 20, 20]), converged=np.ones(3, dtype=bool), batch_size=8)
    np.testing.assert_array_equal(ext.negative, [5.0, 0.0, 4.0])  # a positive λ_min is no negative curvature
    assert ext.means(2) == pytest.approx({"lambda_max": 15.0, "negative": 2.5, "ratio": 0.25, "loss": 0.4})
    assert ext.means() == pytest.approx({"lambda_max": 70 / 3, "negative": 3.0, "ratio": 0.2, "loss": 0.6})
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError, match="n_batches must be an integer from 1 to 3"):
            ext.means(bad)
