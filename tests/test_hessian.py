"""lib.analyses.hessian against exact answers: the dense Hessian of tiny models and known matrices."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lib.core import data, models
from lib.analyses import directions, hessian, krylov


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def tiny_batch(seed: int = 1, n: int = 16, d: int = 4, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """The dense Hessian of the same loss, by torch.autograd.functional.hessian on a flat vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    model = copy.deepcopy(model).double().eval()

    def loss(flat):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        out = torch.nn.functional.cross_entropy(functional_call(model, params, (x.double(),)) / temperature, y)
        return out + 0.5 * l2 * (flat * flat).sum()

    return torch.autograd.functional.hessian(loss, flat0)


def by_magnitude(values: np.ndarray, k: int) -> np.ndarray:
    return values[np.argsort(-np.abs(values), kind="stable")][:k]


class SymmetricOp:
    """H·v for an explicit symmetric matrix, counting products (a stand-in for a model)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix.float()
        self.n_products = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n_products += 1
        return self.matrix @ v


def spectrum_matrix(eigenvalues, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------

def test_hvp_matches_dense_hessian():
    model, (x, y) = tiny_mlp(), tiny_batch()
    h = exact_hessian(model, x, y)
    op = hessian.HessianOperator(model, x, y)
    assert op.dim == 51
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op(v).double(), h @ v.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hessian.dense_hessian(op, op.dim).double(), h, rtol=1e-4, atol=1e-5)
    assert op.n_products == 1 + op.dim


def test_l2_term_shifts_the_hessian_by_l2_times_identity():
    model, (x, y) = tiny_mlp(), tiny_batch()
    plain = hessian.dense_hessian(hessian.HessianOperator(model, x, y), 51).double()
    with_l2 = hessian.dense_hessian(hessian.HessianOperator(model, x, y, l2=0.3), 51).double()
    torch.testing.assert_close(with_l2 - plain, 0.3 * torch.eye(51, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(with_l2, exact_hessian(model, x, y, l2=0.3), rtol=1e-4, atol=1e-5)


def test_hvp_rejects_wrong_shapes_and_negative_l2():
    model, (x, y) = tiny_mlp(), tiny_batch()
    op = hessian.HessianOperator(model, x, y)
    with pytest.raises(ValueError, match="length 51"):
        op(torch.zeros(50))
    with pytest.raises(ValueError, match="l2"):
        hessian.HessianOperator(model, x, y, l2=-1.0)


def test_batchnorm_model_is_differentiated_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    model.train()
    x, y = tiny_batch()
    model(x)  # give BatchNorm non-trivial running statistics
    model.train()
    op = hessian.HessianOperator(model, x, y)
    assert model.training, "the caller's train mode is restored"
    h = exact_hessian(model, x, y)  # of the eval-mode function: the operator's is that one too
    torch.testing.assert_close(hessian.dense_hessian(op, op.dim).double(), h, rtol=1e-4, atol=1e-5)


def test_hvp_runs_through_the_zoo_vit_attention():
    """Double backward through timm attention (explicit path, the zoo default) matches finite differences."""
    torch.manual_seed(0)
    model = models.build("vit")
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 7])
    op = hessian.HessianOperator(model, x, y)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    hv = op(v)
    # central difference of the gradient along v, in float64 for accuracy
    model = model.double()
    eps = 1e-4
    def grad_at(shift):
        params = [p for p in model.parameters()]
        offset = 0
        with torch.no_grad():
            for p in params:
                p.add_(shift * v[offset:offset + p.numel()].double().view_as(p))
                offset += p.numel()
        g = hessian.HessianOperator(model, x.double(), y).gradient()
        with torch.no_grad():
            offset = 0
            for p in params:
                p.sub_(shift * v[offset:offset + p.numel()].double().view_as(p))
                offset += p.numel()
        return g
    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    torch.testing.assert_close(hv.double(), fd, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Eigenvalues
# ---------------------------------------------------------------------------------------------

def test_lanczos_finds_the_top_eigenvalues_of_a_model_hessian():
    model, (x, y) = tiny_mlp(), tiny_batch()
    exact = by_magnitude(torch.linalg.eigvalsh(exact_hessian(model, x, y)).numpy(), 5)
    eigs = hessian.top_eigenvalues(model, x, y, k=5, method="lanczos", tol=1e-6, return_vectors=True)
    assert eigs.converged
    np.testing.assert_allclose(eigs.values, exact, rtol=1e-4)
    # the vectors are unit eigenvectors: H u = λ u
    op = hessian.HessianOperator(model, x, y)
    for value, u in zip(eigs.values, eigs.vectors):
        assert abs(u.norm().item() - 1) < 1e-5
        torch.testing.assert_close(op(u), value * u, rtol=0, atol=2e-4 * abs(value) + 1e-6)


def test_lanczos_and_power_iteration_agree_on_a_known_spectrum_with_negatives():
    values = [50.0, -30.0, 20.0, 10.0, -5.0] + list(np.linspace(-1, 1, 45))
    op = SymmetricOp(spectrum_matrix(values))
    lan = krylov.lanczos_eigs(op, 50, k=4, tol=1e-6)
    lan_products = op.n_products
    pow_ = krylov.power_iteration(op, 50, k=4, tol=1e-8, max_iter=2000)
    np.testing.assert_allclose(lan.values, [50.0, -30.0, 20.0, 10.0], rtol=1e-5)
    np.testing.assert_allclose(pow_.values, [50.0, -30.0, 20.0, 10.0], rtol=1e-4)
    assert lan.converged and pow_.converged
    assert lan.n_products == lan_products < pow_.n_products


def test_lanczos_stops_on_an_invariant_subspace_with_exact_values():
    op = SymmetricOp(torch.diag(torch.tensor([3.0, -2.0, 1.0])))
    eigs = krylov.lanczos_eigs(op, 3, k=3, tol=1e-9)
    np.testing.assert_allclose(eigs.values, [3.0, -2.0, 1.0], rtol=1e-6)
    assert eigs.n_products == 3


def test_eigensolvers_are_seeded_and_validate_arguments():
    op = SymmetricOp(spectrum_matrix(list(range(1, 21))))
    a = krylov.lanczos_eigs(op, 20, k=2, seed=4)
    b = krylov.lanczos_eigs(op, 20, k=2, seed=4)
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(ValueError, match="k must be"):
        krylov.lanczos_eigs(op, 20, k=0)
    with pytest.raises(ValueError, match="k must be"):
        krylov.power_iteration(op, 20, k=21)
    model, (x, y) = tiny_mlp(), tiny_batch()
    with pytest.raises(ValueError, match="unknown method 'arnoldi'; choose one of lanczos, power"):
        hessian.top_eigenvalues(model, x, y, method="arnoldi")


# ---------------------------------------------------------------------------------------------
# Per-batch spectra
# ---------------------------------------------------------------------------------------------

def test_batch_spectra_match_the_dense_hessian_of_each_batch():
    model = tiny_mlp()
    x = torch.rand(40, 1, 2, 2)  # image-shaped so the batches can be augmented
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(0))
    flat_model = nn.Sequential(nn.Flatten(), model)
    batches = hessian.spectrum_batches(x, y, n_batches=3, batch_size=8, seed=5)
    again = hessian.spectrum_batches(x, y, n_batches=3, batch_size=8, seed=5)
    for (xa, ya), (xb, yb) in zip(batches, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    spectra = hessian.batch_spectra(flat_model, batches, k=3, tol=1e-6, progress=False)
    assert spectra.values.shape == (3, 3) and spectra.pooled.shape == (9,)
    for b, (xb, yb) in enumerate(batches):
        exact = by_magnitude(torch.linalg.eigvalsh(exact_hessian(model, xb.flatten(1), yb)).numpy(), 3)
        np.testing.assert_allclose(spectra.values[b], exact, rtol=1e-4)
    with pytest.raises(ValueError, match="only 40 given"):
        hessian.spectrum_batches(x, y, n_batches=6, batch_size=8)


def test_probe_batches_come_from_the_small_data_subset_and_shorter_series_are_prefixes(monkeypatch):
    calls = []
    real_load = data.load

    def load(name, **kwargs):  # the probes read the 10% subset (seed 0) of whatever set is named
        calls.append((name, kwargs.get("subset"), kwargs.get("seed")))
        return real_load("synthetic", **{k: v for k, v in kwargs.items() if k != "root"})

    monkeypatch.setattr(hessian.data, "load", load)
    long = hessian.probe_batches(5, 8, seed=2)
    short = hessian.probe_batches(3, 8, seed=2)
    assert calls == [("fashion-mnist", 0.1, 0)] * 2
    for (xa, ya), (xb, yb) in zip(short, long):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # exactly spectrum_batches of that subset, with the same seed
    xs, ys = real_load("synthetic", train=True, subset=0.1)
    for (xa, ya), (xb, yb) in zip(long, hessian.spectrum_batches(xs, ys, n_batches=5, batch_size=8, seed=2)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batch_spectra_summary_by_hand():
    values = np.array([[3.0, -1.0, 0.5],   # each row by decreasing magnitude, as the solvers return it
                       [-4.0, 2.0, 1.0]])
    spectra = hessian.BatchSpectra(values=values, losses=np.zeros(2), n_products=np.zeros(2, int),
                                   converged=np.ones(2, bool), batch_size=8, k=3)
    assert spectra.pooled.tolist() == [3.0, -1.0, 0.5, -4.0, 2.0, 1.0]
    # negatives: -1 and -4 of 6; positives 0.5, 1, 2, 3: median 1.5; batch tops 3 and -4: median -0.5
    assert spectra.summary() == pytest.approx({"fraction_negative": 1 / 3, "median_positive": 1.5, "max": 3.0,
                                               "min": -4.0, "median_top": -0.5})
    no_positive = hessian.BatchSpectra(values=-np.abs(values), losses=np.zeros(2), n_products=np.zeros(2, int),
                                       converged=np.ones(2, bool), batch_size=8, k=3)
    assert np.isnan(no_positive.summary()["median_positive"]) and no_positive.summary()["fraction_negative"] == 1.0


# ---------------------------------------------------------------------------------------------
# Inputs refused up front
# ---------------------------------------------------------------------------------------------

def test_an_empty_batch_is_refused_by_every_entry_point():
    model, full = tiny_mlp(), tiny_batch()
    x, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    for call in (lambda: hessian.HessianOperator(model, x, y),
                 lambda: hessian.top_eigenvalues(model, x, y, k=1),  # used to return [0.]
                 lambda: hessian.top_eigenvalues(model, x, y, k=1, method="power")):
        with pytest.raises(ValueError, match=r"the batch is empty \(x has shape \(0, 4\)"):
            call()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="batch 1 is empty"):
        hessian.batch_spectra(model, [full, (x, y)], k=1, progress=False)
    assert calls == []  # refused before batch 0 was worked on
    with pytest.raises(ValueError, match="batches is empty"):
        hessian.batch_spectra(model, [], progress=False)
    with pytest.raises(ValueError, match="one label per image, got 16 images and 8 labels"):
        hessian.HessianOperator(model, full[0], full[1][:8])
    # the operator-based estimators cannot see the batch, but refuse an empty parameter vector
    op = SymmetricOp(torch.eye(3))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        krylov.hutchinson_trace(op, 0)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        krylov.slq_density(op, 0)
    assert op.n_products == 0


def test_fused_attention_is_refused_up_front_and_left_as_it_was():
    """The fused kernel has no double backward: without the check the first product failed deep
    inside autograd. The model's switches are not flipped behind the caller's back."""
    model = models.use_fused_attention(models.build("vit"), True)
    x, y = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 7])
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    for call in (lambda: hessian.HessianOperator(model, x, y),
                 lambda: hessian.top_eigenvalues(model, x, y, k=1),
                 lambda: hessian.batch_spectra(model, [(x, y)], k=1, progress=False)):
        with pytest.raises(ValueError, match=r"6 attention module\(s\).*fused kernel.*"
                                             r"call lib\.core\.models\.use_fused_attention\(model, False\) first"):
            call()
    assert calls == [] and model.training  # nothing ran, not even model.eval()
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    models.use_fused_attention(model, False)
    model.net.blocks[3].attn.fused_attn = True  # one fused module is enough to refuse
    with pytest.raises(ValueError, match=r"1 attention module\(s\).*'net\.blocks\.3\.attn'"):
        hessian.HessianOperator(model, x, y)
    models.use_fused_attention(model, False)  # what the message says to do
    op = hessian.HessianOperator(model, x, y)
    assert torch.isfinite(op(torch.ones(op.dim))).all() and calls == [1]


# ---------------------------------------------------------------------------------------------
# Trace and density
# ---------------------------------------------------------------------------------------------

def test_hutchinson_is_the_mean_of_quadratic_forms_and_unbiased():
    h = spectrum_matrix(list(np.linspace(-3, 10, 30)), seed=2)
    op = SymmetricOp(h)
    est = krylov.hutchinson_trace(op, 30, n_samples=5, seed=7)
    g = torch.Generator().manual_seed(7)
    forms = []
    for _ in range(5):
        v = (torch.randint(0, 2, (30,), generator=g) * 2 - 1).double()
        forms.append((v @ h @ v).item())
    np.testing.assert_allclose(est.samples, forms, rtol=1e-5)
    big = krylov.hutchinson_trace(op, 30, n_samples=3000, seed=1)
    assert abs(big.mean - torch.trace(h).item()) < 4 * big.std_error


def test_slq_with_a_full_basis_recovers_the_spectrum_and_exact_moments():
    eigenvalues = np.linspace(-2, 5, 12)
    h = spectrum_matrix(list(eigenvalues), seed=3)
    op = SymmetricOp(h)
    dens = krylov.slq_density(op, 12, n_vectors=2, steps=12, seed=0)
    for probe in range(2):
        np.testing.assert_allclose(np.sort(dens.nodes[probe]), eigenvalues, atol=1e-4)
        assert dens.weights[probe].sum() == pytest.approx(1.0, abs=1e-6)
    # each probe's quadrature reproduces qᵀ H^p q for its own unit start vector q
    g = torch.Generator().manual_seed(0)
    qs = [torch.randn(12, generator=g, dtype=torch.float64) for _ in range(2)]
    qs = [q / q.norm() for q in qs]
    for p in (1, 2):
        exact = np.mean([(q @ torch.linalg.matrix_power(h, p) @ q).item() for q in qs])
        assert dens.moment(p) == pytest.approx(exact, rel=1e-4)
    grid = np.linspace(-6, 9, 3001)
    area = np.trapezoid(dens.density(grid, sigma=0.2), grid)
    assert area == pytest.approx(1.0, abs=1e-3)


def test_slq_on_a_model_hessian_has_the_right_trace():
    model, (x, y) = tiny_mlp(), tiny_batch()
    h = exact_hessian(model, x, y)
    op = hessian.HessianOperator(model, x, y)
    dens = krylov.slq_density(op, op.dim, n_vectors=1, steps=op.dim, seed=0)
    # a full Krylov basis: the nodes are the exact eigenvalues
    exact = torch.linalg.eigvalsh(h).numpy()
    nodes = np.sort(dens.nodes[0][dens.weights[0] > 1e-12])
    assert np.max(np.abs(nodes[:, None] - exact[None]).min(axis=1)) < 1e-3


def test_both_criteria_meet_their_tolerance_here_and_the_estimate_needs_fewer_products():
    values = [40.0, -25.0, 24.0, 9.0, 8.5] + list(np.linspace(-2, 2, 75))
    truth = np.array([40.0, -25.0, 24.0])
    for tol in (1e-2, 1e-3, 1e-5):
        by_value = krylov.lanczos_eigs(SymmetricOp(spectrum_matrix(values, seed=1)), 80, k=3, tol=tol, seed=2,
                                        criterion="eigenvalue")
        by_residual = krylov.lanczos_eigs(SymmetricOp(spectrum_matrix(values, seed=1)), 80, k=3, tol=tol, seed=2)
        assert by_value.converged and by_residual.converged
        assert np.all(np.abs(by_value.values - truth) <= tol * np.abs(truth) + 1e-5)
        assert np.all(np.abs(by_residual.values - truth) <= tol * np.abs(truth) + 1e-5)
        assert by_value.n_products <= by_residual.n_products
    with pytest.raises(ValueError, match="unknown criterion 'change'; choose one of eigenvalue, residual"):
        krylov.lanczos_eigs(SymmetricOp(spectrum_matrix(values)), 80, criterion="change")


def test_a_temperature_divides_the_logits_before_the_loss():
    model, (x, y) = tiny_mlp(), tiny_batch()
    op = hessian.HessianOperator(model, x, y, l2=0.1, temperature=2.5)
    torch.testing.assert_close(hessian.dense_hessian(op, op.dim).double(), exact_hessian(model, x, y, 0.1, 2.5),
                               rtol=1e-4, atol=1e-5)
    softer = hessian.HessianOperator(model, x, y, temperature=2.5).loss
    assert softer != pytest.approx(hessian.HessianOperator(model, x, y).loss)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            hessian.HessianOperator(model, x, y, temperature=bad)


def test_directional_curvature_of_a_linear_classifier_in_closed_form():
    """For z = X Wᵀ and W moving along D: d²NLL = mean_i dz_iᵀ (diag(p_i) − p_i p_iᵀ) dz_i / T²."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5)).eval()
    x = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(2))
    d = directions.random_directions(model, n=1, seed=3)[0]
    X = x.flatten(1).double()
    W, b = (p.detach().double() for p in model[1].parameters())
    for temperature in (1.0, 2.0):
        p = torch.softmax((X @ W.T + b) / temperature, dim=1)
        dz = X @ d[0].double().T / temperature
        expected = ((dz * p * dz).sum(1) - (dz * p).sum(1) ** 2).mean().item()
        got = hessian.directional_curvature(model, x, y, d, batch_size=16, temperature=temperature)
        assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", models.MODELS)
def test_directional_curvature_equals_differences_of_the_slope_in_float64(name):
    torch.manual_seed(0)
    model = models.build(name, img_size=8).eval().double()
    x, y = torch.rand(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 3, 7, 9, 1, 2])
    d = directions.random_directions(model, n=1, seed=1)[0]
    params = [p for p in model.parameters() if p.requires_grad]

    def slope_at(alpha: float) -> float:
        """∇NLL(w₀ + α·d)·d by one first-order backward (no double backward involved)."""
        with torch.no_grad():
            for p, t in zip(params, d):
                p.add_(alpha * t)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, t in zip(params, d):
                p.sub_(alpha * t)
        return sum((g * t).sum() for g, t in zip(grads, d)).item()

    h = 1e-6  # small enough that no ReLU of the ResNet switches on or off between the two points
    expected = (slope_at(h) - slope_at(-h)) / (2 * h)
    got = hessian.directional_curvature(model, x, y, d, batch_size=4)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-5)
