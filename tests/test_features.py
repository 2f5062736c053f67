"""lib.features: unit outputs, feature-map variance and lesions against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import blocks, features, metrics, models


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return models.build("vit").eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return models.build("resnet").eval()


@pytest.fixture(scope="module")
def zoo():
    """``zoo(name)``: that zoo model, built once per module, in eval mode."""
    built = {}

    def get(name: str):
        if name not in built:
            torch.manual_seed(0)
            built[name] = models.build(name).eval()
        return built[name]
    return get


def images(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_variance_of_constant_maps_is_zero_and_matches_the_definition():
    const = torch.full((3, 4, 5, 5), 2.5)
    assert features.feature_map_variance(const) == 0.0
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 4, 4, generator=g)
    expected = np.mean([np.var(maps[b, c].numpy().ravel(), ddof=1) for b in range(2) for c in range(3)])
    assert features.feature_map_variance(maps) == pytest.approx(expected, rel=1e-6)
    # a map that is 2 on one half and 0 on the other: variance 16·(1·1)/15 per map = 16/15
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 2.0
    assert features.feature_map_variance(half) == pytest.approx(16 / 15)
    with pytest.raises(ValueError, match="at least 2 positions"):
        features.feature_map_variance(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        features.feature_map_variance(torch.ones(4, 4))


def test_unit_outputs_are_the_grids_of_every_non_head_unit(vit):
    x, _ = images(3)
    outs = features.unit_outputs(vit, x)
    units = blocks.blocks(vit)
    assert [info.name for info, _ in outs] == [u.name for u in units if u.kind != "head"]
    _, raw = blocks.run_blocks(units, x, keep=True)
    for (info, grid), out in zip(outs, raw):
        assert grid.shape == (3, 128, 7, 7)
        torch.testing.assert_close(grid, blocks.as_grid(out))  # CLS dropped, tokens on the grid
    depths = [info.depth for info in features.unit_infos(vit)]
    assert depths[0] == 0.0 and depths[-1] == 1.0 and depths == sorted(depths)


@pytest.mark.parametrize("name", models.MODELS)
def test_variance_profile_is_independent_of_the_batch_size(name, zoo):
    model = zoo(name)
    x, _ = images(6)
    whole = features.variance_profile(model, x, batch_size=6)
    split = features.variance_profile(model, x, batch_size=4)
    np.testing.assert_allclose(whole.variance, split.variance, rtol=1e-6)
    outs = features.unit_outputs(model, x)
    for i in (0, len(outs) - 1):  # the first and the last spatial unit, from their maps
        assert whole.variance[i] == pytest.approx(features.feature_map_variance(outs[i][1]), rel=1e-6)
    assert len(whole.units) == len(whole.variance) == len(blocks.blocks(model)) - 1


@pytest.mark.parametrize("name", models.MODELS)
def test_lesions_equal_running_the_model_without_the_unit(name, zoo):
    model = zoo(name)
    x, y = images(8, seed=2)
    result = features.lesion_study(model, x, y, batch_size=5, progress=False)
    units = blocks.blocks(model)
    assert result.baseline == pytest.approx(metrics.evaluate(model, x, y)["acc"])
    for i, u in enumerate(units):
        if not u.residual:
            assert np.isnan(result.accuracy[i]) and np.isnan(result.drop[i])
            continue
        kept = units[:i] + units[i + 1:]
        with torch.no_grad():
            acc = 100.0 * (blocks.run_blocks(kept, x).argmax(1) == y).float().mean().item()
        assert result.accuracy[i] == pytest.approx(acc), u.name
        assert result.drop[i] == pytest.approx(result.baseline - acc)
    assert np.sum(~np.isnan(result.accuracy)) == sum(u.residual for u in units) > 0


def test_lesioning_a_unit_whose_branch_is_zero_costs_nothing():
    torch.manual_seed(0)
    model = models.build("vit").eval()
    x, y = images(8, seed=3)
    target = next(i for i, u in enumerate(blocks.blocks(model)) if u.kind == "mlp")
    mlp = blocks.blocks(model)[target].module
    with torch.no_grad():
        mlp.fn.fc2.weight.zero_()
        mlp.fn.fc2.bias.zero_()
    result = features.lesion_study(model, x, y, progress=False)
    assert result.drop[target] == 0.0


def test_unit_roles_and_variance_change(resnet):
    x, _ = images(4)
    prof = features.variance_profile(resnet, x)
    roles = features.unit_roles(prof.units)
    # stem, two blocks of stage 1, then each later stage opens with a strided (subsampling) block
    assert roles == ["embed", "conv", "conv", "subsampling", "conv", "subsampling", "conv"]
    assert prof.change.shape == (len(prof.units) - 1,) and np.all(np.isfinite(prof.change))
    # the change in decades, on variances chosen by hand: ×10, ÷100, unchanged, ×√10
    hand = features.VarianceProfile(units=prof.units[:5], variance=np.array([2.0, 20.0, 0.2, 0.2, 0.2 * 10 ** 0.5]))
    np.testing.assert_allclose(hand.change, [1.0, -2.0, 0.0, 0.5], rtol=0, atol=1e-12)
    pit_roles = features.unit_roles(features.unit_infos(models.build("pit")))
    assert pit_roles.count("subsampling") == 2 and pit_roles[0] == "embed"
