"""lib.analyses.similarity: minibatch linear CKA against exact and independent answers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from lib.core import models, residual
from lib.analyses import similarity
from lib.core.residual import UnitInfo
from lib.report import stats

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n: int, p: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(p: int, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(gaussian(p, p, seed))
    return q


# --- the unbiased HSIC ---------------------------------------------------------------------------

def hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC₁ from its definition as a U-statistic (Song et al. 2012, Theorem 2): the mean over all
    ordered 4-tuples of distinct indices of k_ij l_ij + k_ij l_qr − 2 k_ij l_iq, symmetrised over
    the 24 orderings. Independent of the closed form the library uses."""
    n = k.shape[0]
    total, count = 0.0, 0
    for tup in itertools.permutations(range(n), 4):
        h = 0.0
        for i, j, q, r in itertools.permutations(tup):
            h += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        total += h / 24
        count += 1
    return total / count


@pytest.mark.parametrize("n", [4, 5, 6])
def test_unbiased_hsic_matches_its_u_statistic_definition(n):
    x, y = gaussian(n, 3, 0), gaussian(n, 2, 1)
    ours = similarity.hsic_pairs(similarity.grams([x]), similarity.grams([y]))[0, 0].item()
    kx, ky = (x @ x.T).numpy(), (y @ y.T).numpy()
    assert ours == pytest.approx(hsic_u_statistic(kx, ky), rel=1e-10, abs=1e-12)


def test_hand_computed_hsic_of_four_points():
    # x = (1, 2, 3, 4), y = x: off-diagonal Gram entries x_i x_j = 2, 3, 4, 6, 8, 12 (each twice);
    # by hand tr(K̃²) = 2·(4 + 9 + 16 + 36 + 64 + 144) = 546, 1ᵀK̃1 = 2·35 = 70,
    # K̃1 = (9, 16, 21, 24) → 1ᵀK̃K̃1 = 81 + 256 + 441 + 576 = 1354, and with n = 4
    # HSIC₁ = (546 + 70²/6 − 2/2 · 1354) / 4 = 26/12 = 13/6.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    k = similarity.grams([x])
    assert similarity.hsic_pairs(k, k)[0, 0].item() == pytest.approx(13 / 6, rel=1e-12)


def test_self_cka_is_exactly_one():
    x = gaussian(64, 20)
    assert similarity.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x, z = gaussian(128, 12, 0), gaussian(128, 7, 5)
    y = 3.7 * x @ orthogonal(12)
    assert similarity.linear_cka(x, y) == pytest.approx(1.0, abs=1e-10)
    assert similarity.linear_cka(y, z) == pytest.approx(similarity.linear_cka(x, z), abs=1e-10)


def test_not_invariant_to_arbitrary_invertible_transforms():
    x = gaussian(256, 12, 0)
    a = torch.diag(torch.logspace(0, 2, 12, dtype=torch.float64)) @ orthogonal(12, 3)  # invertible, ill-conditioned
    assert torch.linalg.matrix_rank(a) == 12
    assert similarity.linear_cka(x, x @ a) < 0.9


def population_cka(w: torch.Tensor, sigma: float) -> float:
    """Linear CKA of x ~ N(0, I_p) and y = x W + σ e (e ~ N(0, I_q)), exactly:
    ‖Σ_yx‖²_F / (‖Σ_xx‖_F ‖Σ_yy‖_F) = ‖W‖²_F / (√p ‖WᵀW + σ² I‖_F)."""
    p, q = w.shape
    syy = w.T @ w + sigma ** 2 * torch.eye(q, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(w) ** 2 / (p ** 0.5 * torch.linalg.matrix_norm(syy)))


def test_minibatch_and_biased_estimates_approach_the_population_value():
    p, q, sigma = 6, 4, 1.5
    w = gaussian(p, q, 7)
    truth = population_cka(w, sigma)

    def sample(n: int, seed: int):
        x = gaussian(n, p, seed)
        return x, x @ w + sigma * gaussian(n, q, seed + 100)

    errors = []
    for n in (256, 16384):
        x, y = sample(n, 11)
        acc = similarity.HSICAccumulator()
        for xb, yb in zip(x.split(64), y.split(64)):
            acc.add([xb], [yb])
        minibatch = acc.result(["x"], ["y"]).cka()[0, 0]
        errors.append(abs(minibatch - truth))
        if n == 16384:
            assert minibatch == pytest.approx(similarity.biased_linear_cka(x, y), abs=0.01)
            assert minibatch == pytest.approx(truth, abs=0.01)
    assert errors[1] < errors[0]


def test_biased_estimator_drifts_with_batch_size_where_unbiased_does_not():
    # independent features: population CKA 0; the biased estimate is pulled up on small batches
    x, y = gaussian(4096, 50, 0), gaussian(4096, 50, 1)
    biased_small = np.mean([similarity.biased_linear_cka(a, b) for a, b in zip(x.split(32), y.split(32))])
    acc = similarity.HSICAccumulator()
    for a, b in zip(x.split(32), y.split(32)):
        acc.add([a], [b])
    assert biased_small > 0.3
    assert abs(acc.result(["x"], ["y"]).cka()[0, 0]) < 0.05


def test_minibatch_cka_is_mean_hsic_ratio():
    xs, ys = gaussian(40, 5, 0), gaussian(40, 3, 1) + gaussian(40, 5, 0)[:, :3]
    acc = similarity.HSICAccumulator()
    parts = list(zip(xs.split(20), ys.split(20)))
    for a, b in parts:
        acc.add([a], [b])
    result = acc.result(["x"], ["y"])
    per = [(similarity.hsic_pairs(similarity.grams([a]), similarity.grams([b]))[0, 0].item(),
            similarity.hsic_pairs(similarity.grams([a]), similarity.grams([a]))[0, 0].item(),
            similarity.hsic_pairs(similarity.grams([b]), similarity.grams([b]))[0, 0].item()) for a, b in parts]
    xy, xx, yy = np.mean(per, axis=0)
    assert result.cka()[0, 0] == pytest.approx(xy / np.sqrt(xx * yy), rel=1e-12)
    assert result.from_rows(result.rows())[0, 0] == pytest.approx(result.cka()[0, 0], rel=1e-12)


def test_batches_under_four_images_are_refused():
    x = gaussian(3, 5)
    with pytest.raises(ValueError, match="at least 4"):
        similarity.grams([x])
    with pytest.raises(ValueError, match="at least 4"):
        similarity.linear_cka(x, x)


def test_constant_features_raise_naming_the_representation():
    x = gaussian(16, 4)
    const = torch.ones(16, 4, dtype=torch.float64) * 2.5
    acc = similarity.HSICAccumulator()
    acc.add([x, const])
    with pytest.raises(ValueError, match="'flat'"):
        acc.result(["varied", "flat"])
    assert acc.constant("a").tolist() == [False, True]
    with pytest.raises(ValueError, match="constant"):
        similarity.biased_linear_cka(x, const)


# --- on zoo models -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {name: models.build(name).eval() for name in ("vit", "resnet")}


def images(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_model_cka_within_and_across_models(nets):
    x = images(24)
    within = similarity.model_cka(nets["vit"], x, batch_size=8, progress=False)
    m = within.matrix
    n_units = len(residual.units(nets["vit"])) - 1  # head left out
    assert m.shape == (n_units, n_units)
    assert np.allclose(np.diag(m), 1.0, atol=1e-10)
    assert np.allclose(m, m.T, atol=1e-12)
    assert within.hsic.n_batches == 3 and within.hsic.n_images == 24
    across = similarity.model_cka(nets["vit"], x, nets["resnet"], batch_size=8, progress=False)
    assert across.matrix.shape == (n_units, len(residual.units(nets["resnet"])) - 1)
    assert np.isfinite(across.matrix).all()
    # the ViT rows of the cross matrix are the ViT's units compared with the ResNet's: its first
    # unit against the ResNet stem equals the same pair computed directly
    feats_v = residual.run_units(residual.units(nets["vit"])[:1], x)
    feats_r = residual.run_units(residual.units(nets["resnet"])[:1], x)
    acc = similarity.HSICAccumulator()
    for a, b in zip(feats_v.split(8), feats_r.split(8)):
        acc.add([a.detach()], [b.detach()])
    assert across.matrix[0, 0] == pytest.approx(acc.result(["v"], ["r"]).cka()[0, 0], rel=1e-6)


def test_models_cka_in_one_pass_equals_pair_by_pair(nets):
    x = images(16)
    both = similarity.models_cka(nets, x, [("vit", "vit"), ("vit", "resnet"), ("resnet", "resnet")],
                                 batch_size=8, progress=False)
    np.testing.assert_allclose(both[("vit", "resnet")].matrix,
                               similarity.model_cka(nets["vit"], x, nets["resnet"], batch_size=8, progress=False).matrix,
                               rtol=1e-12)
    np.testing.assert_allclose(both[("resnet", "resnet")].matrix,
                               similarity.model_cka(nets["resnet"], x, batch_size=8, progress=False).matrix, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown model 'pit'"):
        similarity.models_cka(nets, x, [("vit", "pit")], progress=False)


def test_model_cka_folds_a_tiny_last_batch_and_rejects_small_batch_sizes(nets):
    result = similarity.model_cka(nets["resnet"], images(18), batch_size=8, progress=False)
    assert result.hsic.batch_sizes == (8, 10)
    with pytest.raises(ValueError, match="batch_size"):
        similarity.model_cka(nets["resnet"], images(18), batch_size=3, progress=False)


def test_bootstrap_over_shared_batches_is_seeded_and_paired(nets):
    x = images(48)
    a = similarity.model_cka(nets["vit"], x, batch_size=8, progress=False).hsic
    b = similarity.model_cka(nets["resnet"], x, batch_size=8, progress=False).hsic
    contrast = lambda ma, mb: ma[0, -1] - mb[0, -1]  # noqa: E731
    shared = similarity.shared_batches([a, b])
    assert shared.rows.shape[0] == 6 and "same batches" in shared.label
    est = stats.bootstrap(shared.rows, shared.statistic(contrast), n_resamples=200, seed=3, rows=shared.label)
    again = stats.bootstrap(shared.rows, shared.statistic(contrast), n_resamples=200, seed=3, rows=shared.label)
    assert est == again
    assert est.value == pytest.approx(a.cka()[0, -1] - b.cka()[0, -1])
    assert est.low <= est.value <= est.high and est.n == 6
    # resampling batch 0 six times gives that batch's own CKA
    only_first = shared.statistic(contrast)(shared.rows[[0] * 6])
    assert only_first == pytest.approx(a.cka(np.array([0]))[0, -1] - b.cka(np.array([0]))[0, -1])
    # a contrast of a result with itself has no spread at all: the batches are resampled together
    same = similarity.shared_batches([a, a])
    zero = stats.bootstrap(same.rows, same.statistic(contrast), n_resamples=200)
    assert zero.low == zero.high == 0.0
    c = similarity.model_cka(nets["vit"], images(40), batch_size=8, progress=False).hsic
    with pytest.raises(ValueError, match="same batches"):
        similarity.shared_batches([a, c])


def test_depth_groups_and_block_mean():
    infos = [object()] * 9
    lower, upper = similarity.depth_groups(infos, (0, 0.5, 1))
    assert lower.tolist() == [0, 1, 2, 3] and upper.tolist() == [4, 5, 6, 7, 8]
    quarters = similarity.depth_groups(infos, (0, 0.25, 0.5, 0.75, 1))
    assert [q.tolist() for q in quarters] == [[0, 1], [2, 3], [4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="edges"):
        similarity.depth_groups(infos, (0, 0.6, 0.5, 1))
    m = np.arange(16.0).reshape(4, 4)
    assert similarity.block_mean(m, [0, 1], [2, 3]) == pytest.approx(np.mean([2, 3, 6, 7]))
    assert similarity.block_mean(m, [0, 1], [0, 1], skip_diagonal=True) == pytest.approx(np.mean([1, 4]))


def test_uniformity_is_the_mean_of_the_lower_by_upper_block():
    """Five units: depths 0, .25 | .5, .75, 1; the lower-by-upper block of a hand-made matrix."""
    units = [UnitInfo(i, f"u{i}", "mlp", 0, i / 4, True) for i in range(5)]
    matrix = np.arange(25, dtype=float).reshape(5, 5)
    assert similarity.uniformity(matrix, units) == np.mean([[2, 3, 4], [7, 8, 9]])
    assert similarity.uniformity(np.ones((5, 5)), units) == 1.0
