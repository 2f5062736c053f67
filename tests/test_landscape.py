"""Loss landscapes: directions are normalised as stated, surfaces match an independent computation,
the weights come back bit for bit, batched equals sequential, and sharpness is exact on a parabola."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from lib.core import data, metrics, models  # noqa: E402
from lib.analyses import directions, landscape  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_net(seed: int = 0) -> nn.Module:
    """Conv (4-D weight), BatchNorm (1-D affine, running statistics) and a linear head on 6x6 images."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def tiny_data(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bit_exact(model: nn.Module, before: list[torch.Tensor], ptrs: list[int] | None = None) -> None:
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    if ptrs is not None:  # the parameters' own storage is back, not a copy
        assert [p.data_ptr() for p in model.parameters()] == ptrs


# --------------------------------------------------------------------------------------------------
# Directions


@pytest.mark.parametrize("normalization", directions.NORMALIZATIONS)
def test_direction_norms_match_the_weights(normalization):
    model = tiny_net()
    (d,) = directions.random_directions(model, n=1, normalization=normalization, seed=3)
    for (name, p), t in zip(model.named_parameters(), d):
        assert t.shape == p.shape and t.dtype == p.dtype
        if p.dim() < 2:
            assert torch.count_nonzero(t) == 0, name
        elif normalization == "filter":  # one norm per output filter (slice along dim 0)
            torch.testing.assert_close(t.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        else:  # one norm per position of the other axes, taken across dim 0
            torch.testing.assert_close(torch.linalg.vector_norm(t, dim=0), torch.linalg.vector_norm(p.detach(), dim=0),
                                       rtol=1e-5, atol=0)
    # the two normalisations really differ: the filter one does not match the axis-0 norms
    if normalization == "filter":
        w = model[4].weight.detach()
        assert not torch.allclose(torch.linalg.vector_norm(d[-2], dim=0), torch.linalg.vector_norm(w, dim=0), rtol=1e-3)


def test_normalize_direction_by_hand():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    # filter: row norms of w are 5 and 1
    torch.testing.assert_close(directions.normalize_direction(d, w, "filter"),
                               torch.tensor([[5.0, 0.0], [1 / math.sqrt(2), 1 / math.sqrt(2)]]))
    # axis0: column norms of w are 3 and sqrt(17); of d, sqrt(5) and 2
    torch.testing.assert_close(directions.normalize_direction(d, w, "axis0"),
                               torch.tensor([[3 / math.sqrt(5), 0.0], [6 / math.sqrt(5), math.sqrt(17)]]))
    with pytest.raises(ValueError, match="1-D tensors"):
        directions.normalize_direction(torch.ones(3), torch.ones(3))


def test_positional_embedding_and_1d_tensors_get_zero_directions():
    vit = models.build("vit", img_size=8)
    d1, d2 = directions.random_directions(vit, n=2)
    names = [name for name, p in vit.named_parameters() if p.requires_grad]
    assert "net.pos_embed" in names
    for name, t1, t2, p in zip(names, d1, d2, (p for p in vit.parameters() if p.requires_grad)):
        zero = "pos_embed" in name or p.dim() < 2
        assert (torch.count_nonzero(t1) == 0) == zero, name
        assert (torch.count_nonzero(t2) == 0) == zero, name
    # ignore=() moves the positional embedding too, without changing any other tensor's direction
    (e1,) = directions.random_directions(vit, n=1, ignore=())
    for name, a, b in zip(names, d1, e1):
        if name == "net.pos_embed":
            assert torch.count_nonzero(b) > 0
        else:
            assert torch.equal(a, b), name
    # a plain string is one name, not a set of letters
    (f1,) = directions.random_directions(vit, n=1, ignore="pos_embed")
    assert all(torch.equal(a, b) for a, b in zip(d1, f1))


def test_directions_are_seeded():
    model = tiny_net()
    a = directions.random_directions(model, n=2, seed=5)
    b = directions.random_directions(model, n=2, seed=5)
    c = directions.random_directions(model, n=2, seed=6)
    first = directions.random_directions(model, n=1, seed=5)[0]
    for k in range(2):
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])  # the two directions differ
    assert all(torch.equal(x, y) for x, y in zip(a[0], first))  # direction 1 does not depend on n
    assert abs(directions.direction_cosine(a[0], a[0]) - 1) < 1e-12
    assert abs(directions.direction_cosine(a[0], [-t for t in a[0]]) + 1) < 1e-12


def test_direction_errors():
    model = tiny_net()
    with pytest.raises(ValueError, match=r"'bogus'.*filter, axis0"):
        directions.random_directions(model, normalization="bogus")
    with pytest.raises(ValueError, match="n must be"):
        directions.random_directions(model, n=0)
    with pytest.raises(ValueError, match="no trainable"):
        directions.random_directions(nn.ReLU())


# --------------------------------------------------------------------------------------------------
# Data


def test_landscape_data_is_balanced_seeded_and_augmented_once():
    raw_x, raw_y = data.load("synthetic")
    x, y = landscape.landscape_data("synthetic", n=105, seed=0, augment=False)
    assert torch.bincount(y, minlength=10).tolist() == [11] * 5 + [10] * 5
    # without augmentation the images are rows of the training set, in ascending index order
    rows = [int(torch.nonzero((raw_x == img).flatten(1).all(1))[0]) for img in x]
    assert rows == sorted(rows) and torch.equal(raw_y[rows], y)
    xa, ya = landscape.landscape_data("synthetic", n=105, seed=0)
    xb, _ = landscape.landscape_data("synthetic", n=105, seed=0)
    xc, yc = landscape.landscape_data("synthetic", n=105, seed=1)
    assert torch.equal(ya, y) and torch.equal(xa, xb) and not torch.equal(xa, x)
    assert not torch.equal(yc, y) or not torch.equal(xc, xa)
    with pytest.raises(ValueError, match="n must be"):
        landscape.landscape_data("synthetic", n=0)
    with pytest.raises(ValueError, match="2000"):
        landscape.landscape_data("synthetic", n=2000)


# --------------------------------------------------------------------------------------------------
# Surfaces


def test_plane_of_a_linear_classifier_matches_an_independent_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 5)).eval()
    x, _ = tiny_data(40)
    y = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(2))
    d1, d2 = directions.random_directions(model, n=2, seed=1)
    assert torch.count_nonzero(d1[1]) == 0  # the bias stays put
    xs, ys = np.linspace(-1, 1, 5), np.array([-0.5, 0.0, 0.75])
    s = landscape.surface_2d(model, x, y, (d1, d2), xs, ys, batch_size=16, progress=False)
    assert s.nll.shape == (3, 5) and s.ndim == 2 and s.n_images == 40

    W, b = (p.detach().double() for p in model[1].parameters())
    D1, D2 = d1[0].double(), d2[0].double()
    X = x.flatten(1).double()
    for i, yy in enumerate(ys):
        for j, xx in enumerate(xs):
            Wp = W + xx * D1 + yy * D2
            logits = X @ Wp.T + b
            assert s.nll[i, j] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
            assert s.acc[i, j] == pytest.approx(100 * (logits.argmax(1) == y).double().mean().item())
            # the weight term in closed form: 0.05 (‖W + x D1 + y D2‖ + ‖b‖) from the Gram entries
            sq = ((W * W).sum() + xx ** 2 * (D1 * D1).sum() + yy ** 2 * (D2 * D2).sum() + 2 * xx * (W * D1).sum()
                  + 2 * yy * (W * D2).sum() + 2 * xx * yy * (D1 * D2).sum())
            assert s.l2[i, j] == pytest.approx(0.05 * (math.sqrt(sq) + b.norm().item()), rel=1e-6)
    np.testing.assert_array_equal(s.loss(with_l2=True), s.nll + s.l2)
    np.testing.assert_array_equal(s.loss(with_l2=False), s.nll)


def test_line_towards_zero_weights_is_exact():
    """Along d = w₀ (no bias) the logits scale by 1 + x: at x = -1 they vanish, NLL = ln C exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4, bias=False)).eval()
    x, y = tiny_data(12)
    w0 = model[1].weight.detach().clone()
    s = landscape.surface_1d(model, x, y, [w0], [-1.0, 0.0, 1.0], l2_coef=0.1, progress=False)
    assert s.ys is None and s.ndim == 1
    assert s.nll[0] == pytest.approx(math.log(4), rel=1e-7)
    assert s.acc[0] == pytest.approx(100 * (y == 0).double().mean().item())  # argmax of ties is class 0
    np.testing.assert_allclose(s.l2, 0.1 * np.array([0.0, 1.0, 2.0]) * w0.norm().item(), rtol=1e-6, atol=1e-7)
    logits = x.flatten(1) @ w0.T
    assert s.nll[1] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert s.nll[2] == pytest.approx(F.cross_entropy(2 * logits, y).item(), rel=1e-6)


@pytest.mark.parametrize("points_per_pass", [1, 3])
def test_a_temperature_divides_the_logits_at_every_point(points_per_pass):
    """Along d = w₀ the logits are (1 + x)·z; with temperature T the NLL is that of (1 + x)·z / T."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4, bias=False)).eval()
    x, y = tiny_data(12)
    w0 = model[1].weight.detach().clone()
    coords = [-0.5, 0.0, 1.0]
    s = landscape.surface_1d(model, x, y, [w0], coords, temperature=2.5, progress=False,
                             points_per_pass=points_per_pass)
    plain = landscape.surface_1d(model, x, y, [w0], coords, progress=False)
    logits = x.flatten(1) @ w0.T
    for i, c in enumerate(coords):
        assert s.nll[i] == pytest.approx(F.cross_entropy((1 + c) * logits / 2.5, y).item(), rel=1e-5)
    np.testing.assert_array_equal(s.acc, plain.acc)  # the temperature changes no prediction
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        landscape.surface_1d(model, x, y, [w0], coords, temperature=0.0, progress=False)


def test_centre_equals_a_plain_evaluation_in_eval_mode():
    model = tiny_net().train()  # eval mode is the surface's business: running statistics are used
    x, y = tiny_data(10)
    d = directions.random_directions(model, n=1)[0]
    s = landscape.surface_1d(model, x, y, d, [0.0, 0.5], batch_size=3, progress=False)
    ref = metrics.evaluate(model, x, y)
    assert model.training  # mode restored
    assert s.nll[0] == pytest.approx(ref["nll"], rel=1e-6) and s.acc[0] == pytest.approx(ref["acc"])
    assert s.nll[1] != pytest.approx(s.nll[0])


def test_weights_are_restored_bit_exactly():
    model = tiny_net()
    x, y = tiny_data(10)
    before, ptrs = snapshot(model), [p.data_ptr() for p in model.parameters()]
    d = directions.random_directions(model, n=2)
    landscape.surface_2d(model, x, y, d, [-1, 0.3, 1], [-0.7, 1], batch_size=4, progress=False)
    assert_bit_exact(model, before, ptrs)
    landscape.surface_2d(model, x, y, d, [-1, 0.3, 1], [-0.7, 1], batch_size=4, progress=False, points_per_pass=4)
    assert_bit_exact(model, before, ptrs)


class Exploding(nn.Module):
    """Wraps a model and raises on its ``fail_at``-th forward call."""

    def __init__(self, net: nn.Module, fail_at: int = 3):
        super().__init__()
        self.net, self.calls, self.fail_at = net, 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.net(x)


@pytest.mark.parametrize("points_per_pass", [1, 2])
def test_weights_are_restored_when_an_error_interrupts(points_per_pass):
    model = Exploding(tiny_net()).train()
    x, y = tiny_data(10)
    before, ptrs = snapshot(model), [p.data_ptr() for p in model.parameters()]
    d = directions.random_directions(model, n=2)
    with pytest.raises(RuntimeError, match="boom"):  # 2 chunks per point: fails inside point 2
        landscape.surface_2d(model, x, y, d, [0.5, 1.0], [1.0, 2.0], batch_size=5, progress=False,
                             points_per_pass=points_per_pass)
    assert model.calls == 3 and model.training
    assert_bit_exact(model, before, ptrs)


@pytest.mark.parametrize("name", models.MODELS)
def test_batched_points_equal_sequential(name):
    torch.manual_seed(0)
    model = models.build(name, img_size=8).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 3, 7, 9])
    d = directions.random_directions(model, n=2)
    kw = dict(batch_size=2, progress=False)
    one = landscape.surface_2d(model, x, y, d, [-0.6, 0.0, 0.4], [0.0, 0.5], **kw)
    many = landscape.surface_2d(model, x, y, d, [-0.6, 0.0, 0.4], [0.0, 0.5], points_per_pass=4, **kw)
    np.testing.assert_allclose(many.nll, one.nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many.l2, one.l2, rtol=1e-5)
    np.testing.assert_array_equal(many.acc, one.acc)
    assert np.ptp(one.nll) > 0.01  # the grid points really differ


def test_surface_argument_errors():
    model = tiny_net()
    x, y = tiny_data(4)
    d = directions.random_directions(model, n=2)
    with pytest.raises(ValueError, match="list of directions"):
        landscape.surface_1d(model, x, y, d, [0.0], progress=False)
    with pytest.raises(ValueError, match="tensors but the model has"):
        landscape.surface_1d(model, x, y, d[0][:-1], [0.0], progress=False)
    with pytest.raises(ValueError, match="shape"):
        landscape.surface_1d(model, x, y, [t.T if t.dim() == 2 else t for t in d[0]], [0.0], progress=False)
    with pytest.raises(ValueError, match="two directions"):
        landscape.surface_2d(model, x, y, d[:1], [0.0], [0.0], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        landscape.surface_1d(model, x, y, d[0], [0.0], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="points_per_pass"):
        landscape.surface_1d(model, x, y, d[0], [0.0], points_per_pass=0, progress=False)
    with pytest.raises(ValueError, match="coords"):
        landscape.surface_1d(model, x, y, d[0], [], progress=False)
    with pytest.raises(ValueError, match="equal length"):
        landscape.surface_1d(model, x, y[:3], d[0], [0.0], progress=False)


# --------------------------------------------------------------------------------------------------
# Sharpness


def parabola_surface(two_d: bool = False) -> landscape.Surface:
    xs = np.linspace(-1, 1, 21)
    nll = 3 * xs ** 2 + 0.5 * xs + 1
    l2 = 0.1 + 0.2 * xs ** 2
    acc = np.full_like(xs, 90.0)
    if not two_d:
        return landscape.Surface(xs, None, nll, acc, l2, 0.05, 8)
    ys = np.array([-0.5, 0.0, 0.5])
    junk = np.array([[7.0] * 21, [0.0] * 21, [9.0] * 21])
    return landscape.Surface(xs, ys, junk + np.array([0, 1, 0])[:, None] * nll, np.tile(acc, (3, 1)),
                             junk * 0 + l2, 0.05, 8)


@pytest.mark.parametrize("two_d", [False, True])
def test_sharpness_of_a_parabola_is_exact(two_d):
    s = landscape.sharpness(parabola_surface(two_d))
    assert s["x_left"] == -1 and s["x_right"] == 1
    assert s["nll_centre"] == pytest.approx(1.0) and s["loss_centre"] == pytest.approx(1.1)
    assert s["rise_nll_left"] == pytest.approx(2.5) and s["rise_nll_right"] == pytest.approx(3.5)
    assert s["rise_nll"] == pytest.approx(3.0)
    assert s["rise_loss_left"] == pytest.approx(2.7) and s["rise_loss_right"] == pytest.approx(3.7)
    assert s["rise_loss"] == pytest.approx(3.2)
    assert s["curvature"] == pytest.approx(6.0, rel=1e-9) and s["fit_a"] == pytest.approx(3.0, rel=1e-9)
    assert s["fit_b"] == pytest.approx(0.5, rel=1e-9) and s["fit_c"] == pytest.approx(1.0, rel=1e-9)
    assert s["fit_halfwidth"] == pytest.approx(0.25) and s["fit_points"] == 5  # x = -0.2 ... 0.2


def test_sharpness_fit_uses_only_the_centre_window():
    surface = parabola_surface()
    nll = surface.nll + np.where(np.abs(surface.xs) > 0.25, 10 * np.abs(surface.xs) ** 3, 0.0)
    s = landscape.sharpness(landscape.Surface(surface.xs, None, nll, surface.acc, surface.l2, 0.05, 8))
    assert s["curvature"] == pytest.approx(6.0, rel=1e-9)  # the far points do not enter the fit
    assert s["rise_nll_right"] == pytest.approx(13.5)


def test_sharpness_errors():
    s = parabola_surface()
    with pytest.raises(ValueError, match="must contain 0"):
        landscape.sharpness(landscape.Surface(s.xs + 0.05, None, s.nll, s.acc, s.l2, 0.05, 8))
    coarse = np.array([-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="at least 3"):
        landscape.sharpness(landscape.Surface(coarse, None, coarse ** 2, coarse, coarse, 0.05, 8))
    two = parabola_surface(two_d=True)
    with pytest.raises(ValueError, match="ys must contain 0"):
        landscape.sharpness(landscape.Surface(two.xs, two.ys + 0.1, two.nll, two.acc, two.l2, 0.05, 8))


def test_line_through_centre_cuts_the_row_and_the_column_at_zero():
    """A 3 x 5 surface (rows y = -1, 0, 1; columns x = -2 .. 2): along d₁ the row y = 0, along d₂
    the column x = 0; a line has no line through its centre, and the axis must be 0 or 1."""
    xs, ys = np.linspace(-2, 2, 5), np.linspace(-1, 1, 3)
    grid = np.arange(15.0).reshape(3, 5)
    s = landscape.Surface(xs, ys, nll=grid, acc=100 - grid, l2=grid / 10, l2_coef=1e-4, n_images=8)
    along_d1 = s.line_through_centre(0)
    np.testing.assert_array_equal(along_d1.xs, xs)
    np.testing.assert_array_equal(along_d1.nll, [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(along_d1.acc, 100 - np.array([5, 6, 7, 8, 9]))
    along_d2 = s.line_through_centre(1)
    np.testing.assert_array_equal(along_d2.xs, ys)
    np.testing.assert_array_equal(along_d2.nll, [2, 7, 12])
    np.testing.assert_array_equal(along_d2.l2, [0.2, 0.7, 1.2])
    assert along_d1.ndim == along_d2.ndim == 1 and along_d2.n_images == 8
    with pytest.raises(ValueError, match="2-D"):
        along_d1.line_through_centre(0)
    with pytest.raises(ValueError, match="axis must be 0"):
        s.line_through_centre(2)


def test_direction_sharpness_equals_its_slices_and_the_exact_curvature():
    """Each direction's rise is that of a 3-point slice, its curvature dᵀHd: checked against
    surface_1d and a central difference of the NLL in float64 (a smooth net, so no ReLU kink lies
    between the points), at T = 1 and at T = 2, with the weights restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    x, y = tiny_data(10)
    dirs = directions.random_directions(model, n=2, seed=3)
    before = snapshot(model)
    twin = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double().eval()

    def nll_at(d, alpha, temperature):
        with torch.no_grad():
            for p, w, t in zip(twin.parameters(), model.parameters(), d):
                p.copy_(w.double() + alpha * t.double())
            return F.cross_entropy(twin(x.double()) / temperature, y).item()

    for temperature in (1.0, 2.0):
        got = landscape.direction_sharpness(model, x, y, dirs, temperature=temperature, batch_size=4)
        assert got.temperature == temperature and got.curvature.shape == (2,)
        for k, d in enumerate(dirs):
            line = landscape.surface_1d(model, x, y, d, [-1.0, 0.0, 1.0], temperature=temperature, batch_size=4)
            assert got.rise_nll[k] == pytest.approx((line.nll[0] + line.nll[2]) / 2 - line.nll[1], rel=1e-9)
            assert got.rise_loss[k] == pytest.approx((line.loss(True)[0] + line.loss(True)[2]) / 2
                                                     - line.loss(True)[1], rel=1e-9)
            h = 1e-3
            central = (nll_at(d, -h, temperature) - 2 * nll_at(d, 0.0, temperature) + nll_at(d, h, temperature)) / h ** 2
            assert got.curvature[k] == pytest.approx(central, rel=1e-3)
        assert got.means()["curvature"] == pytest.approx(got.curvature.mean())
    assert got.curvature[0] != pytest.approx(got.curvature[1])  # two directions, two answers
    assert_bit_exact(model, before)
    with pytest.raises(ValueError, match="at least one direction"):
        landscape.direction_sharpness(model, x, y, [])
