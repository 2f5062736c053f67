"""lib.analyses.featurevis: total variation against hand loops, activation maximisation on objectives with
known maxima (a linear filter, a smooth random network), augmentations against rolls and exact
identities, neuron activations against forward hooks on the models' own modules, top images and
spreads against independent sorts and deviations, the position probe against images whose tokens
carry position only, and the isolated CLS token against a hand-masked forward pass on both
attention paths."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from lib.core import models, residual
from lib.analyses import attention, featurevis
from lib.analyses.featurevis import Augment, Neuron

pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers -------------------------------------------------------------------------------------

def hand_tv_directions(img: np.ndarray) -> list[float]:
    """Mean absolute difference per direction (horizontal, vertical, diagonal, anti-diagonal) of a
    (C, H, W) image, by explicit loops over every neighbour pair."""
    c, h, w = img.shape
    out = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        diffs = [abs(img[k, i + dy, j + dx] - img[k, i, j])
                 for k, i, j in itertools.product(range(c), range(h), range(w))
                 if 0 <= i + dy < h and 0 <= j + dx < w]
        out.append(sum(diffs) / len(diffs))
    return out


def small_net(n: int, seed: int = 0) -> nn.Module:
    """A fixed random conv -> tanh network with ``n`` output channels."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, n, 3, padding=1), nn.Tanh())
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def smooth_objective(n: int, seed: int = 0):
    net = small_net(n, seed)
    return lambda x: net(x).mean(dim=(2, 3))  # (B, n)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def sign_pattern(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def hooked(module: nn.Module, run) -> torch.Tensor:
    """The output of ``module`` during ``run()``, via a forward hook."""
    seen = {}
    h = module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out.detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        h.remove()
    return seen["out"]


def manual_isolated_logits(vit: models.Classifier, x: torch.Tensor, block: int | None) -> torch.Tensor:
    """The ViT forward pass written out, block ``block`` called with a hand-built CLS-isolation mask."""
    net = vit.net
    n = 1 + (x.shape[-1] // 4) ** 2
    mask = torch.ones(n, n, dtype=torch.bool)
    for k in range(1, n):
        mask[0, k] = False
    with torch.no_grad():
        t = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(vit.normalize(x)))))
        for i, blk in enumerate(net.blocks):
            t = blk(t, attn_mask=mask) if i == block else blk(t)
        return net.forward_head(net.norm(t))


# --- 1. total variation --------------------------------------------------------------------------

def test_total_variation_of_constant_images_is_exactly_zero():
    """Constant images (any batch, channels and value) have total variation exactly 0."""
    x = torch.full((3, 2, 5, 4), 0.37)
    x[1] = 0.9
    tv = featurevis.total_variation(x)
    assert tv.shape == (3,)
    assert torch.equal(tv, torch.zeros(3))


def test_total_variation_weighs_the_four_directions_as_hand_loops():
    """Up to one common scale, total_variation is the sum of the four per-direction mean absolute differences."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 2, 3, 5, generator=g, dtype=torch.float64)
    tv = featurevis.total_variation(x).numpy()
    hand = np.array([sum(hand_tv_directions(img.numpy())) for img in x])
    # ratios between images are scale-free: they test which pairs enter and how directions are weighted
    np.testing.assert_allclose(tv / tv[0], hand / hand[0], rtol=1e-12)
    # images are independent: each alone gives its own value
    for i in range(4):
        np.testing.assert_allclose(featurevis.total_variation(x[i:i + 1]).numpy(), tv[i:i + 1], rtol=1e-12)


def test_total_variation_is_the_documented_mean_on_a_hand_case():
    """A 3x3 image with one 1 at (0, 1): the mean absolute neighbour difference is 1/4 (pooled or per direction)."""
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 0, 1] = 1.0
    dirs = hand_tv_directions(x[0].numpy())
    assert dirs == pytest.approx([2 / 6, 1 / 6, 1 / 4, 1 / 4])
    pooled = (2 + 1 + 1 + 1) / (6 + 6 + 4 + 4)  # all 20 neighbour pairs at once
    mean_of_directions = sum(dirs) / 4
    assert pooled == pytest.approx(0.25) and mean_of_directions == pytest.approx(0.25)
    got = float(featurevis.total_variation(x)[0])
    assert got == pytest.approx(0.25, rel=1e-12), (
        f"BUG in lib.analyses.featurevis: total_variation's docstring promises 'the mean absolute difference between "
        f"horizontal, vertical and both diagonal neighbours' (here 0.25, pooled or averaged over the four "
        f"directions), but it returns {got}: the SUM of the four per-direction means, 4x the documented mean")


@pytest.mark.parametrize("shape", [(3, 3), (1, 3, 3), (1, 1, 1, 3, 3)])
def test_total_variation_rejects_non_4d_input(shape):
    """Anything but (B, C, H, W) raises ValueError naming the shape."""
    with pytest.raises(ValueError, match=r"expected images \(B, C, H, W\), got " + str(shape).replace("(", r"\(")
                       .replace(")", r"\)")):
        featurevis.total_variation(torch.zeros(shape))


# --- 2. monotone ascent --------------------------------------------------------------------------

@pytest.mark.parametrize("tv_weight", [0.0, 0.05])
def test_visualise_climbs_a_smooth_objective_monotonically(tv_weight):
    """No augmentation, one copy, small lr: history never falls (to 1e-6) and ends above its start."""
    obj = smooth_objective(2)
    vis = featurevis.visualise(obj, 2, (1, 8, 8), steps=40, copies=1, lr=0.01, tv_weight=tv_weight,
                               augment=featurevis.NO_AUGMENT, seed=3)
    h = vis.history
    assert h.shape == (41, 2)
    assert np.all(np.diff(h, axis=0) >= -1e-6), np.diff(h, axis=0).min()
    assert np.all(h[-1] > h[0] + 1e-3)
    # the last row is the objective of the returned images, computed independently
    with torch.no_grad():
        final = obj(vis.images).diagonal() - tv_weight * featurevis.total_variation(vis.images)
    np.testing.assert_allclose(h[-1], final.numpy(), rtol=1e-6, atol=1e-7)


def test_visualise_raises_a_real_vit_neuron(seeded_model):
    """visualise(neuron_objective(...)) on an untrained ViT ends with a higher activation than it starts with."""
    vit = seeded_model("vit")
    neurons = [Neuron("block0.mlp", 3), Neuron("block0.mlp", 10)]
    vis = featurevis.visualise(featurevis.neuron_objective(vit, neurons), 2, (1, 28, 28), steps=6, copies=2,
                               lr=0.05, tv_weight=0.0, seed=0)
    assert vis.images.shape == (2, 1, 28, 28)
    assert np.all(vis.history[-1] > vis.history[0])
    with torch.no_grad():
        acts = featurevis.neuron_activations(vit, neurons, vis.images)
    np.testing.assert_allclose(vis.history[-1], acts.diagonal().numpy(), rtol=1e-5, atol=1e-6)


# --- 3. a known linear filter --------------------------------------------------------------------

@pytest.mark.parametrize("augment", [featurevis.NO_AUGMENT, Augment(jitter=0)], ids=["none", "no-jitter"])
def test_visualise_recovers_a_linear_filter(augment):
    """objective = <x, W>: the image ends at 1 where W > 0 and 0 where W < 0 (Pearson with W > 0.9)."""
    w = sign_pattern((1, 12, 12), seed=1) * (0.5 + torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(2)))
    vis = featurevis.visualise(lambda x: (x * w).sum(dim=(1, 2, 3))[:, None], 1, (1, 12, 12), steps=30, copies=2,
                               lr=0.1, tv_weight=0.0, augment=augment, seed=0)
    img = vis.images[0]
    assert pearson(img, w) > 0.9
    assert ((img == 1.0) == (w > 0)).float().mean() >= 0.95
    assert ((img == 0.0) == (w < 0)).float().mean() >= 0.95
    assert vis.history[-1, 0] == pytest.approx(float(w.clamp_min(0).sum()), rel=0.02)  # the maximum over [0, 1]


def test_visualise_two_neurons_each_image_follows_its_own_filter():
    """Two filters at once, objective (B, 2): image k matches filter k and not the other."""
    w = torch.stack([sign_pattern((1, 12, 12), seed=10), sign_pattern((1, 12, 12), seed=11)])  # (2, 1, 12, 12)
    assert abs(pearson(w[0], w[1])) < 0.3

    def objective(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x * w[0]).sum(dim=(1, 2, 3)), (x * w[1]).sum(dim=(1, 2, 3))], dim=1)

    vis = featurevis.visualise(objective, 2, (1, 12, 12), steps=30, copies=2, lr=0.1, tv_weight=0.0,
                               augment=Augment(jitter=0), seed=0)
    for k in range(2):
        assert pearson(vis.images[k], w[k]) > 0.9, k
        assert abs(pearson(vis.images[k], w[1 - k])) < 0.4, k
        assert torch.equal(vis.images[k], (w[k] > 0).float()), k


# --- 4. determinism, range, history shape --------------------------------------------------------

def test_visualise_is_seeded_and_stays_in_range():
    """Same seed: identical results; another seed: other images; pixels in [0, 1]; history (steps + 1, n)."""
    obj = smooth_objective(3, seed=1)
    kw = dict(steps=5, copies=3, lr=0.5, augment=Augment(jitter=2, brightness=0.2, noise=0.2))
    a = featurevis.visualise(obj, 3, (1, 8, 8), seed=0, **kw)
    b = featurevis.visualise(obj, 3, (1, 8, 8), seed=0, **kw)
    c = featurevis.visualise(obj, 3, (1, 8, 8), seed=1, **kw)
    assert torch.equal(a.images, b.images)
    np.testing.assert_array_equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)
    for v in (a, c):
        assert v.images.shape == (3, 1, 8, 8)
        assert v.history.shape == (6, 3)
        assert float(v.images.min()) >= 0.0 and float(v.images.max()) <= 1.0
    assert float(a.images.min()) == 0.0 or float(a.images.max()) == 1.0  # lr 0.5: the clamp was needed


# --- 5. bad arguments ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), r"n must be a positive integer, got 0"),
    (dict(n=True), r"n must be a positive integer, got True"),
    (dict(steps=0), r"steps must be a positive integer, got 0"),
    (dict(steps=2.0), r"steps must be a positive integer, got 2.0"),
    (dict(copies=0), r"copies must be a positive integer, got 0"),
    (dict(lr=0.0), r"lr=0.0"),
    (dict(lr=-0.1), r"lr=-0.1"),
    (dict(tv_weight=-1.0), r"tv_weight=-1.0"),
])
def test_visualise_rejects_bad_arguments(kwargs, match):
    """n, steps, copies < 1 (or not whole numbers), lr <= 0 and tv_weight < 0 raise ValueError naming the value."""
    args = dict(n=1, steps=2, copies=1, lr=0.1, tv_weight=0.0)
    args.update(kwargs)
    n = args.pop("n")
    with pytest.raises(ValueError, match=match):
        featurevis.visualise(lambda x: x.mean(dim=(1, 2, 3))[:, None].expand(-1, 1), n, (1, 4, 4), **args)


@pytest.mark.parametrize("out", [lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.flatten(1)[:, :3]],
                         ids=["1-d", "too-many-columns"])
def test_visualise_rejects_an_objective_of_the_wrong_shape(out):
    """An objective that does not return (B, n) raises ValueError with the shape it returned."""
    with pytest.raises(ValueError, match=r"objective must return \(B, 2\) activations, got"):
        featurevis.visualise(out, 2, (1, 4, 4), steps=2, copies=1)


@pytest.mark.parametrize("kwargs", [dict(jitter=-1), dict(brightness=-0.1), dict(noise=-0.5)])
def test_augment_rejects_negative_values(kwargs):
    """Negative jitter, brightness or noise raises ValueError naming the values."""
    key, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=rf"{key}={value}"):
        Augment(**kwargs)


# --- 6. augmentations ----------------------------------------------------------------------------

def test_augment_without_anything_is_the_identity(random_images):
    """jitter=0, brightness=0, noise=0 returns the input exactly, at any progress."""
    x = random_images(3, seed=1, size=9)
    for progress in (0.0, 0.4, 1.0):
        assert torch.equal(featurevis.NO_AUGMENT(x, progress, torch.Generator().manual_seed(0)), x)


def test_augment_jitter_is_a_circular_roll_within_range():
    """Each output image is torch.roll of its input by some (dy, dx) in ±jitter, and shifts vary."""
    x = torch.randperm(16 * 9 * 9, generator=torch.Generator().manual_seed(0)).float().view(16, 1, 9, 9)
    y = Augment(jitter=2, brightness=0.0, noise=0.0)(x, 0.0, torch.Generator().manual_seed(3))
    shifts = set()
    for xi, yi in zip(x, y):
        found = [(dy, dx) for dy, dx in itertools.product(range(-4, 5), repeat=2)
                 if torch.equal(torch.roll(xi, shifts=(dy, dx), dims=(-2, -1)), yi)]
        assert len(found) == 1, found  # distinct pixel values: exactly one roll (in a wide range) matches
        dy, dx = found[0]
        assert abs(dy) <= 2 and abs(dx) <= 2
        shifts.add(found[0])
    assert len(shifts) > 3


def test_augment_brightness_is_one_offset_per_image_within_range(random_images):
    """Brightness alone adds one constant in ±brightness to every pixel of an image, different across images."""
    x = random_images(8, seed=2, size=6)
    y = Augment(jitter=0, brightness=0.3, noise=0.0)(x, 0.0, torch.Generator().manual_seed(0))
    d = (y - x).flatten(1)
    torch.testing.assert_close(d, d[:, :1].expand_as(d), rtol=0, atol=1e-6)
    assert float(d.abs().max()) <= 0.3
    assert len(set(d[:, 0].tolist())) == 8


def test_augment_noise_is_annealed_to_zero(random_images):
    """Noise of std s at progress 0, s/2 at progress 0.5 and none at progress 1 (input returned exactly)."""
    x = random_images(2, seed=3, size=64)
    aug = Augment(jitter=0, brightness=0.0, noise=0.4)
    assert torch.equal(aug(x, 1.0, torch.Generator().manual_seed(0)), x)
    assert float((aug(x, 0.0, torch.Generator().manual_seed(0)) - x).std()) == pytest.approx(0.4, rel=0.05)
    assert float((aug(x, 0.5, torch.Generator().manual_seed(0)) - x).std()) == pytest.approx(0.2, rel=0.05)


# --- 7. neuron activations against forward hooks -------------------------------------------------

def test_neuron_units_are_the_block_names(seeded_model):
    """Visualisable units: blocks()'s MLP units (ViTs, PiT) or conv units (ResNet, AlterNet), with widths."""
    expected = {
        "vit": {f"block{i}.mlp": 512 for i in range(6)},
        "vit_local5": {f"block{i}.mlp": 512 for i in range(6)},
        "pit": {"stage1.0.mlp": 160, "stage1.1.mlp": 160, **{f"stage2.{i}.mlp": 320 for i in range(4)},
                "stage3.0.mlp": 640, "stage3.1.mlp": 640},
        "resnet": {f"stage{s}.{b}.conv": w for s, w in ((1, 40), (2, 80), (3, 160)) for b in range(2)},
        "alternet": {"stage1.0.conv": 40, "stage1.1.conv": 40, "stage2.0.conv": 80, "stage3.0.conv": 160},
    }
    for name, units in expected.items():
        model = seeded_model(name)
        names = [u.name for u in residual.units(model)]
        got = featurevis.neuron_units(model)
        assert {k: v[1] for k, v in got.items()} == units, name
        assert list(got) == [n for n in names if n in units], name  # in block order, names taken from blocks()


@pytest.mark.parametrize("block", [0, 3, 5])
def test_vit_neuron_equals_the_hooked_gelu_mean_over_patch_tokens(block, seeded_model, random_images):
    """ViT (block{i}.mlp, j) = mean over the 49 patch tokens (CLS left out) of blocks[i].mlp.act's channel j."""
    vit = seeded_model("vit", seed=1)
    x = random_images(3, seed=4)
    idx = [0, 77, 511]
    act = hooked(vit.net.blocks[block].mlp.act, lambda: vit(x))  # (B, 50, 512)
    assert act.shape == (3, 50, 512)
    neurons = [Neuron(f"block{block}.mlp", j) for j in idx]
    got = featurevis.neuron_activations(vit, neurons, x).detach()
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, act[:, 1:, idx].mean(dim=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, act[:, :, idx].mean(dim=1), rtol=1e-4, atol=1e-5)  # CLS really left out
    maps = featurevis.neuron_activations(vit, neurons, x, spatial=True).detach()
    assert maps.shape == (3, 3, 7, 7)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), got, rtol=1e-5, atol=1e-6)
    for r, c in [(0, 0), (0, 6), (3, 2), (6, 0)]:  # row-major: token 1 + 7 r + c
        torch.testing.assert_close(maps[:, :, r, c], act[:, 1 + 7 * r + c, idx], rtol=1e-5, atol=1e-6)
    per_neuron = featurevis.activation_maps(vit, neurons, x)
    assert isinstance(per_neuron, list) and len(per_neuron) == 3
    for k, m in enumerate(per_neuron):
        assert m.shape == (3, 7, 7)
        np.testing.assert_allclose(m, maps[:, k].numpy(), rtol=1e-6, atol=1e-7)


def test_neurons_of_several_units_in_one_pass_and_gradients_flow(seeded_model, random_images):
    """Neurons of two ViT units at once match the hooks; the activations are differentiable in the images."""
    vit = seeded_model("vit_local3", seed=2)
    x = random_images(2, seed=5)
    a1 = hooked(vit.net.blocks[1].mlp.act, lambda: vit(x))
    a4 = hooked(vit.net.blocks[4].mlp.act, lambda: vit(x))
    neurons = [Neuron("block4.mlp", 9), Neuron("block1.mlp", 400), Neuron("block4.mlp", 2)]
    xg = x.clone().requires_grad_(True)
    got = featurevis.neuron_activations(vit, neurons, xg)
    expected = torch.stack([a4[:, 1:, 9].mean(1), a1[:, 1:, 400].mean(1), a4[:, 1:, 2].mean(1)], dim=1)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)
    got[:, 0].sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0


@pytest.mark.parametrize("name, unit, channels", [
    ("resnet", "stage1.0.conv", [0, 39]),
    ("resnet", "stage2.1.conv", [5, 79]),
    ("resnet", "stage3.0.conv", [159, 17]),
    ("alternet", "stage2.0.conv", [1, 60]),
    ("alternet", "stage3.0.conv", [100]),
])
def test_resnet_neuron_equals_the_channel_mean_of_its_block(name, unit, channels, seeded_model, random_images):
    """ResNet/AlterNet (stage{s}.{b}.conv, c) = mean over positions of channel c of net.stages[s-1][b]'s output."""
    model = seeded_model(name, seed=3)
    x = random_images(3, seed=6)
    s, b = int(unit[5]), int(unit[7])
    out = hooked(model.net.stages[s - 1][b], lambda: model(x))
    neurons = [Neuron(unit, c) for c in channels]
    got = featurevis.neuron_activations(model, neurons, x).detach()
    torch.testing.assert_close(got, out[:, channels].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    maps = featurevis.activation_maps(model, neurons, x)
    side = {1: 28, 2: 14, 3: 7}[s]
    assert len(maps) == len(channels)
    for m, c in zip(maps, channels):
        assert m.shape == (3, side, side)
        np.testing.assert_allclose(m, out[:, c].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage, block, side", [(1, 1, 14), (2, 3, 7), (3, 0, 4)])
def test_pit_neuron_equals_the_hooked_gelu_mean_over_its_stage_grid(stage, block, side, seeded_model, random_images):
    """PiT (stage{s}.{i}.mlp, j) = patch-token mean of transformers[s-1].blocks[i].mlp.act; maps side x side."""
    pit = seeded_model("pit", seed=4)
    x = random_images(2, seed=7)
    act = hooked(pit.net.transformers[stage - 1].blocks[block].mlp.act, lambda: pit(x))
    assert act.shape[1] == 1 + side * side
    width = act.shape[2]
    idx = [0, width - 1, width // 3]
    neurons = [Neuron(f"stage{stage}.{block}.mlp", j) for j in idx]
    got = featurevis.neuron_activations(pit, neurons, x).detach()
    torch.testing.assert_close(got, act[:, 1:, idx].mean(dim=1), rtol=1e-5, atol=1e-6)
    maps = featurevis.neuron_activations(pit, neurons, x, spatial=True).detach()
    assert maps.shape == (2, 3, side, side)
    torch.testing.assert_close(maps.flatten(2), act[:, 1:, idx].transpose(1, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, units, sides", [
    ("pit", ["stage1.0.mlp", "stage2.1.mlp", "stage3.1.mlp"], [14, 7, 4]),
    ("resnet", ["stage1.1.conv", "stage3.0.conv"], [28, 7]),
])
def test_maps_of_different_stages(name, units, sides, seeded_model, random_images):
    """Neurons of different stages: spatial=True raises ValueError; activation_maps gives one array each."""
    model = seeded_model(name)
    x = random_images(2, seed=20)
    neurons = [Neuron(u, 1) for u in units]
    with pytest.raises(ValueError, match="maps differ in size"):
        featurevis.neuron_activations(model, neurons, x, spatial=True)
    maps = featurevis.activation_maps(model, neurons, x)
    assert [m.shape for m in maps] == [(2, s, s) for s in sides]
    with torch.no_grad():
        means = featurevis.neuron_activations(model, neurons, x).numpy()  # the spatial means still mix fine
    np.testing.assert_allclose(np.stack([m.mean(axis=(1, 2)) for m in maps], axis=1), means, rtol=1e-5, atol=1e-6)


# --- 8. unit and neuron errors -------------------------------------------------------------------

def test_unknown_units_raise_and_list_the_valid_ones(seeded_model, random_images):
    """An MSA unit, the embedding or a made-up name raises ValueError listing the valid units."""
    vit = seeded_model("vit")
    listed = ", ".join(f"block{i}.mlp" for i in range(6))
    for unit in ("block0.msa", "embed", "block6.mlp", "nope"):
        with pytest.raises(ValueError, match=rf"unit '{unit}' has no neurons to visualise; choose one of {listed}"):
            featurevis.neuron_activations(vit, [Neuron(unit, 0)], random_images(1))
    alternet = seeded_model("alternet")
    with pytest.raises(ValueError, match=r"choose one of stage1\.0\.conv, stage1\.1\.conv, stage2\.0\.conv, "
                                         r"stage3\.0\.conv"):
        featurevis.neuron_objective(alternet, [Neuron("stage2.1.msa", 0)])


@pytest.mark.parametrize("name, unit, index, match", [
    ("vit", "block2.mlp", 512, r"block2\.mlp has neurons 0\.\.511, got 512"),
    ("vit", "block2.mlp", -1, r"block2\.mlp has neurons 0\.\.511, got -1"),
    ("resnet", "stage2.0.conv", 80, r"stage2\.0\.conv has neurons 0\.\.79, got 80"),
    ("pit", "stage3.1.mlp", 640, r"stage3\.1\.mlp has neurons 0\.\.639, got 640"),
])
def test_neuron_index_out_of_range_raises(name, unit, index, match, seeded_model, random_images):
    """An index outside the unit's width raises ValueError naming the range and the index."""
    model = seeded_model(name)
    with pytest.raises(ValueError, match=match):
        featurevis.neuron_activations(model, [Neuron(unit, 0), Neuron(unit, index)], random_images(1))


def test_non_zoo_models_and_empty_neuron_lists_are_refused(seeded_model, random_images):
    """A plain nn.Module raises TypeError (every entry point); an empty neuron list raises ValueError."""
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x = random_images(2)
    for call in (lambda: featurevis.neuron_units(plain),
                 lambda: featurevis.neuron_activations(plain, [Neuron("block0.mlp", 0)], x),
                 lambda: featurevis.neuron_objective(plain, [Neuron("block0.mlp", 0)]),
                 lambda: featurevis.top_images(plain, [Neuron("block0.mlp", 0)], x, k=1),
                 lambda: featurevis.neuron_spread(plain, "block0.mlp", x),
                 lambda: featurevis.position_probe(plain, x, x),
                 lambda: featurevis.cls_isolated(plain, 0).__enter__()):
        with pytest.raises(TypeError, match="zoo model built by lib.core.models.build"):
            call()
    vit = seeded_model("vit")
    for call in (lambda: featurevis.neuron_activations(vit, [], x), lambda: featurevis.neuron_objective(vit, [])):
        with pytest.raises(ValueError, match="at least one neuron"):
            call()


# --- 9. top images -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, neurons", [
    ("vit", [Neuron("block1.mlp", 5), Neuron("block3.mlp", 300)]),
    ("resnet", [Neuron("stage1.1.conv", 7), Neuron("stage3.1.conv", 150), Neuron("stage2.0.conv", 0)]),
])
def test_top_images_are_the_k_largest_activations_across_batches(name, neurons, seeded_model, random_images):
    """Indices and values of the k largest activations equal an argsort over all images; batches of 3 concatenate."""
    model = seeded_model(name, seed=5)
    x = random_images(10, seed=8)
    with torch.no_grad():
        acts = featurevis.neuron_activations(model, neurons, x).numpy()  # one batch, eval mode
    idx, values = featurevis.top_images(model, neurons, x, k=4, batch_size=3)
    assert idx.shape == values.shape == (len(neurons), 4)
    for k in range(len(neurons)):
        order = np.argsort(-acts[:, k], kind="stable")[:4]
        np.testing.assert_array_equal(idx[k], order)
        np.testing.assert_allclose(values[k], acts[order, k], rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(values[k]) <= 0)
    all_idx, _ = featurevis.top_images(model, neurons[:1], x, k=10, batch_size=4)
    assert sorted(all_idx[0].tolist()) == list(range(10))


@pytest.mark.parametrize("k", [0, 11, -1])
def test_top_images_rejects_k_out_of_range(k, seeded_model, random_images):
    """k outside [1, number of images] raises ValueError naming the range."""
    with pytest.raises(ValueError, match=rf"k must lie in \[1, 10\] \(the number of images\), got {k}"):
        featurevis.top_images(seeded_model("vit"), [Neuron("block0.mlp", 0)], random_images(10), k=k)


# --- 10. neuron spread ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, unit, module", [
    ("vit", "block2.mlp", lambda m: m.net.blocks[2].mlp.act),
    ("resnet", "stage2.1.conv", lambda m: m.net.stages[1][1]),
    ("pit", "stage2.0.mlp", lambda m: m.net.transformers[1].blocks[0].mlp.act),
])
def test_neuron_spread_is_the_std_over_images_of_every_neuron(name, unit, module, seeded_model, random_images):
    """neuron_spread(unit) = std over images (ddof 1) of each neuron's spatial mean, from hooks; batches of 3."""
    model = seeded_model(name, seed=6)
    x = random_images(7, seed=9)
    out = hooked(module(model), lambda: model(x))
    means = (out[:, 1:].mean(dim=1) if out.ndim == 3 else out.mean(dim=(2, 3))).double().numpy()
    got = featurevis.neuron_spread(model, unit, x, batch_size=3)
    assert got.shape == (means.shape[1],)
    np.testing.assert_allclose(got, means.std(axis=0, ddof=1), rtol=1e-4, atol=1e-6)


def test_neuron_spread_rejects_units_without_neurons(seeded_model, random_images):
    """A unit that is not visualisable raises ValueError listing the valid units."""
    with pytest.raises(ValueError, match="choose one of block0.mlp"):
        featurevis.neuron_spread(seeded_model("vit"), "block0.msa", random_images(3))


# --- 11. position probe --------------------------------------------------------------------------

def test_position_probe_on_a_vit_names_shapes_and_above_chance(seeded_model, random_images):
    """Token units but the head are probed; correct is (units, 4, 49) of 0/1; embed is read far above chance."""
    vit = seeded_model("vit")
    probe = featurevis.position_probe(vit, random_images(6, seed=10), random_images(4, seed=11), steps=30)
    expected = ["embed"] + [f"block{i}.{k}" for i in range(6) for k in ("msa", "mlp")]
    assert probe.names == expected
    assert probe.correct.shape == (13, 4, 49)
    assert set(np.unique(probe.correct)) <= {0.0, 1.0}
    assert probe.chance == pytest.approx(1 / 49)
    np.testing.assert_allclose(probe.accuracy, probe.correct.mean(axis=(1, 2)) * 100.0)
    # random images: the position embedding is small beside the content, still > 5x chance at the embedding
    assert probe.accuracy[0] > 5 * 100 / 49


def test_position_probe_reads_the_position_embedding_and_nothing_else(seeded_model):
    """Constant images: tokens differ by the position embedding only: embed read perfectly; without it, chance."""
    g = torch.Generator().manual_seed(12)
    x_train = torch.rand(6, 1, 1, 1, generator=g).expand(6, 1, 28, 28).contiguous()
    x_test = torch.rand(4, 1, 1, 1, generator=g).expand(4, 1, 28, 28).contiguous()
    vit = seeded_model("vit")
    probe = featurevis.position_probe(vit, x_train, x_test, steps=30)
    assert probe.accuracy[0] == 100.0
    with torch.no_grad():
        vit.net.pos_embed.zero_()
    blind = featurevis.position_probe(vit, x_train, x_test, steps=30)
    # all 49 tokens of an image are the same vector: one prediction per image, right for exactly one position
    np.testing.assert_array_equal(blind.correct[0].sum(axis=1), 1.0)
    assert blind.accuracy[0] == pytest.approx(100 / 49)


def test_position_probe_on_pit_probes_the_last_stage_only(seeded_model, random_images):
    """PiT: the last stage's units on the 4x4 grid (chance 1/16); the ResNet is refused."""
    probe = featurevis.position_probe(seeded_model("pit"), random_images(3, seed=13), random_images(2, seed=14), steps=5)
    assert probe.names == ["stage3.pool", "stage3.0.msa", "stage3.0.mlp", "stage3.1.msa", "stage3.1.mlp"]
    assert probe.correct.shape == (5, 2, 16)
    assert probe.chance == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="applies to vit, vit_local3, vit_local5 and pit"):
        featurevis.position_probe(seeded_model("resnet"), random_images(2), random_images(2))


# --- 12. CLS isolation ---------------------------------------------------------------------------

def test_cls_isolation_mask():
    """Row 0 is [True, False, ...]; every other row is all True."""
    np.testing.assert_array_equal(featurevis.cls_isolation_mask(3).numpy(),
                                  [[True, False, False], [True, True, True], [True, True, True]])
    m = featurevis.cls_isolation_mask(50)
    assert m.shape == (50, 50) and m.dtype == torch.bool
    assert bool(m[0, 0]) and not bool(m[0, 1:].any())
    assert bool(m[1:].all())


@pytest.mark.parametrize("block", [0, 2, 5])
def test_cls_isolated_attention_and_logits(block, seeded_model, random_images):
    """Inside: block b's CLS query puts exactly 1 on itself, earlier blocks unchanged; logits = hand-masked pass."""
    vit = seeded_model("vit", seed=7)
    x = random_images(3, seed=15)
    clean_maps, clean_logits = attention.attention_maps(vit, x)
    with featurevis.cls_isolated(vit, block) as m:
        assert m is vit
        maps, logits = attention.attention_maps(vit, x)
        with torch.no_grad():
            direct = vit(x)
            walked = residual.run_units(residual.units(vit), x)
    p = maps[block].probs  # (B, 1, heads, 50, 50)
    assert torch.equal(p[..., 0, 0], torch.ones_like(p[..., 0, 0]))
    assert torch.equal(p[..., 0, 1:], torch.zeros_like(p[..., 0, 1:]))
    torch.testing.assert_close(p[..., 1:, :], clean_maps[block].probs[..., 1:, :], rtol=0, atol=0)  # patch rows
    for i in range(block):
        assert torch.equal(maps[i].probs, clean_maps[i].probs), i
    for i in range(block + 1, 6):
        assert float(maps[i].probs[..., 0, 0].max()) < 0.5, i  # not isolated there
    expected = manual_isolated_logits(vit, x, block)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(walked, expected, rtol=1e-5, atol=1e-6)  # the blocks() path sees the mask too
    assert not torch.allclose(expected, clean_logits, atol=1e-4)
    torch.testing.assert_close(manual_isolated_logits(vit, x, None), clean_logits, rtol=1e-5, atol=1e-6)


def test_cls_isolated_fused_and_explicit_paths_agree(seeded_model, random_images):
    """Fused attention: isolated logits equal the explicit path's (atol 1e-5) and differ from the clean ones."""
    vit = seeded_model("vit", seed=8)
    x = random_images(3, seed=16)
    with torch.no_grad():
        with featurevis.cls_isolated(vit, 3):
            explicit = vit(x)
        models.use_fused_attention(vit, True)
        clean_fused = vit(x)
        with featurevis.cls_isolated(vit, 3):
            fused = vit(x)
    assert all(m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn"))
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, manual_isolated_logits(vit, x, 3), rtol=0, atol=1e-5)
    assert not torch.allclose(fused, clean_fused, atol=1e-4)


def test_cls_isolated_removes_its_hook_also_after_an_error(seeded_model, random_images):
    """Leaving the context (normally or by an exception) restores the clean logits and leaves no hook behind."""
    vit = seeded_model("vit", seed=9)
    x = random_images(2, seed=17)
    attn = vit.net.blocks[1].attn
    with torch.no_grad():
        clean = vit(x)
        with featurevis.cls_isolated(vit, 1):
            assert len(attn._forward_pre_hooks) == 1
            assert not torch.allclose(vit(x), clean, atol=1e-4)
        assert len(attn._forward_pre_hooks) == 0
        assert torch.equal(vit(x), clean)
        with pytest.raises(RuntimeError, match="boom"):
            with featurevis.cls_isolated(vit, 1):
                raise RuntimeError("boom")
        assert len(attn._forward_pre_hooks) == 0
        assert torch.equal(vit(x), clean)


def test_cls_isolated_in_the_last_block_changes_only_the_cls_row(seeded_model, random_images):
    """Isolating block 5: its attention output changes in row 0 (CLS) only; the patch rows are unchanged."""
    vit = seeded_model("vit", seed=10)
    x = random_images(2, seed=18)
    clean = hooked(vit.net.blocks[5].attn, lambda: vit(x))
    with featurevis.cls_isolated(vit, 5):
        iso = hooked(vit.net.blocks[5].attn, lambda: vit(x))
    torch.testing.assert_close(iso[:, 1:], clean[:, 1:], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(iso[:, 0], clean[:, 0], atol=1e-4)


@pytest.mark.parametrize("name, block, error, match", [
    ("vit", -1, ValueError, r"block must lie in \[0, 5\], got -1"),
    ("vit", 6, ValueError, r"block must lie in \[0, 5\], got 6"),
    ("vit_local5", 0, ValueError, r"global 'vit' only, got 'vit_local5'"),
    ("pit", 0, ValueError, r"global 'vit' only, got 'pit'"),
    ("resnet", 0, ValueError, r"global 'vit' only, got 'resnet'"),
])
def test_cls_isolated_rejects_bad_blocks_and_models(name, block, error, match, seeded_model):
    """A block outside [0, 5] or a model other than the global ViT raises ValueError on entering."""
    model = seeded_model(name)
    with pytest.raises(error, match=match):
        with featurevis.cls_isolated(model, block):
            pass


# --- 13. accuracy with the CLS isolated ----------------------------------------------------------

def test_isolated_cls_matches_independent_masked_passes(seeded_model, random_images):
    """correct (6, n): row b = correctness of the hand-masked pass at block b; clean = the plain pass; batches of 3."""
    vit = seeded_model("vit", seed=11)
    x = random_images(8, seed=19)
    with torch.no_grad():
        pred = vit(x).argmax(dim=1)
    y = torch.where(torch.arange(8) % 2 == 0, pred, (pred + 1) % 10)  # right on even images, wrong on odd ones
    res = featurevis.isolated_cls(vit, x, y, batch_size=3)
    assert res.correct.shape == (6, 8) and res.clean.shape == (8,)
    np.testing.assert_array_equal(res.clean, (torch.arange(8) % 2 == 0).double().numpy())
    changed = 0
    for b in range(6):
        expected = (manual_isolated_logits(vit, x, b).argmax(dim=1) == y).double().numpy()
        np.testing.assert_array_equal(res.correct[b], expected, err_msg=f"block {b}")
        changed += int(not np.array_equal(expected, res.clean))
    assert changed > 0  # the isolation changes some predictions: the rows are not just copies of clean
    np.testing.assert_allclose(res.accuracy, res.correct.mean(axis=1) * 100.0)


@pytest.mark.parametrize("labels", [torch.zeros(5, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long)],
                         ids=["count", "2-d"])
def test_isolated_cls_rejects_mismatched_labels(labels, seeded_model, random_images):
    """Labels that are not one per image raise ValueError."""
    with pytest.raises(ValueError, match="same number of images"):
        featurevis.isolated_cls(seeded_model("vit"), random_images(4), labels)


def test_isolated_cls_refuses_models_other_than_the_global_vit(seeded_model, random_images):
    """vit_local5 and the ResNet raise ValueError."""
    for name in ("vit_local5", "resnet"):
        with pytest.raises(ValueError, match="global 'vit' only"):
            featurevis.isolated_cls(seeded_model(name), random_images(2), torch.zeros(2, dtype=torch.long))
