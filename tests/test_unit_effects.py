"""lib.analyses.unit_effects: unit outputs, feature-map variance, lesions and skip ratios against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.core import metrics, models, residual
from lib.analyses import unit_effects


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
    assert unit_effects.feature_map_variance(const) == 0.0
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 4, 4, generator=g)
    expected = np.mean([np.var(maps[b, c].numpy().ravel(), ddof=1) for b in range(2) for c in range(3)])
    assert unit_effects.feature_map_variance(maps) == pytest.approx(expected, rel=1e-6)
    # a map that is 2 on one half and 0 on the other: variance 16·(1·1)/15 per map = 16/15
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 2.0
    assert unit_effects.feature_map_variance(half) == pytest.approx(16 / 15)
    with pytest.raises(ValueError, match="at least 2 positions"):
        unit_effects.feature_map_variance(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        unit_effects.feature_map_variance(torch.ones(4, 4))


def test_unit_outputs_are_the_grids_of_every_non_head_unit(vit):
    x, _ = images(3)
    outs = unit_effects.unit_outputs(vit, x)
    units = residual.units(vit)
    assert [info.name for info, _ in outs] == [u.name for u in units if u.kind != "head"]
    _, raw = residual.run_units(units, x, keep=True)
    for (info, grid), out in zip(outs, raw):
        assert grid.shape == (3, 128, 7, 7)
        torch.testing.assert_close(grid, residual.as_grid(out))  # CLS dropped, tokens on the grid
    depths = [info.depth for info in residual.unit_infos(vit)]
    assert depths[0] == 0.0 and depths[-1] == 1.0 and depths == sorted(depths)


@pytest.mark.parametrize("name", models.MODELS)
def test_variance_profile_is_independent_of_the_batch_size(name, zoo):
    model = zoo(name)
    x, _ = images(6)
    whole = unit_effects.variance_profile(model, x, batch_size=6)
    split = unit_effects.variance_profile(model, x, batch_size=4)
    np.testing.assert_allclose(whole.variance, split.variance, rtol=1e-6)
    outs = unit_effects.unit_outputs(model, x)
    for i in (0, len(outs) - 1):  # the first and the last spatial unit, from their maps
        assert whole.variance[i] == pytest.approx(unit_effects.feature_map_variance(outs[i][1]), rel=1e-6)
    assert len(whole.units) == len(whole.variance) == len(residual.units(model)) - 1


@pytest.mark.parametrize("name", models.MODELS)
def test_lesions_equal_running_the_model_without_the_unit(name, zoo):
    model = zoo(name)
    x, y = images(8, seed=2)
    result = unit_effects.lesion_study(model, x, y, batch_size=5, progress=False)
    units = residual.units(model)
    assert result.baseline == pytest.approx(metrics.evaluate(model, x, y)["acc"])
    for i, u in enumerate(units):
        if not u.residual:
            assert np.isnan(result.accuracy[i]) and np.isnan(result.drop[i])
            continue
        kept = units[:i] + units[i + 1:]
        with torch.no_grad():
            acc = 100.0 * (residual.run_units(kept, x).argmax(1) == y).float().mean().item()
        assert result.accuracy[i] == pytest.approx(acc), u.name
        assert result.drop[i] == pytest.approx(result.baseline - acc)
    assert np.sum(~np.isnan(result.accuracy)) == sum(u.residual for u in units) > 0


def test_lesioning_a_unit_whose_branch_is_zero_costs_nothing():
    torch.manual_seed(0)
    model = models.build("vit").eval()
    x, y = images(8, seed=3)
    target = next(i for i, u in enumerate(residual.units(model)) if u.kind == "mlp")
    mlp = residual.units(model)[target].module
    with torch.no_grad():
        mlp.fn.fc2.weight.zero_()
        mlp.fn.fc2.bias.zero_()
    result = unit_effects.lesion_study(model, x, y, progress=False)
    assert result.drop[target] == 0.0
    # image by image: the same answers and the very same losses as the intact model
    np.testing.assert_array_equal(result.correct[target], result.clean_correct)
    np.testing.assert_array_equal(result.loss[target], result.clean_loss)


def test_unit_roles_and_variance_change(resnet):
    x, _ = images(4)
    prof = unit_effects.variance_profile(resnet, x)
    roles = unit_effects.unit_roles(prof.units)
    # stem, two blocks of stage 1, then each later stage opens with a strided (subsampling) block
    assert roles == ["embed", "conv", "conv", "subsampling", "conv", "subsampling", "conv"]
    assert prof.change.shape == (len(prof.units) - 1,) and np.all(np.isfinite(prof.change))
    # the change in decades, on variances chosen by hand: ×10, ÷100, unchanged, ×√10
    hand = unit_effects.VarianceProfile(units=prof.units[:5], variance=np.array([2.0, 20.0, 0.2, 0.2, 0.2 * 10 ** 0.5]))
    np.testing.assert_allclose(hand.change, [1.0, -2.0, 0.0, 0.5], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no relative variance"):
        hand.relative_change
    with pytest.raises(ValueError, match="positive values"):
        unit_effects.log10_change(np.array([1.0, 0.0]))
    pit_roles = unit_effects.unit_roles(residual.unit_infos(models.build("pit")))
    assert pit_roles.count("subsampling") == 2 and pit_roles[0] == "embed"


def test_relative_variance_on_maps_computed_by_hand():
    # channel 0: [1, 1, 1, 3]: mean 1.5, mean square 3, variance 3 - 2.25 = 0.75, share 0.25
    # channel 1: [2, 0, 2, 0]: mean 1, mean square 2, variance 1, share 0.5
    maps = torch.tensor([[[[1.0, 1.0], [1.0, 3.0]], [[2.0, 0.0], [2.0, 0.0]]]])
    np.testing.assert_allclose(unit_effects.relative_variance_per_map(maps).numpy(), [[0.25, 0.5]], atol=1e-15)
    assert unit_effects.relative_variance(maps) == pytest.approx(0.375, abs=1e-15)
    assert unit_effects.mean_square(maps) == pytest.approx((3.0 + 2.0) / 2, abs=1e-15)
    # a constant map has no spatial variation, a map of mean 0 is all variation, a zero map counts 0
    special = torch.stack([torch.full((2, 2), -4.0), torch.tensor([[1.0, -1.0], [-2.0, 2.0]]),
                           torch.zeros(2, 2)])[None]
    np.testing.assert_allclose(unit_effects.relative_variance_per_map(special).numpy(), [[0.0, 1.0, 0.0]],
                               atol=1e-15)
    with pytest.raises(ValueError, match="at least 2 positions"):
        unit_effects.relative_variance(torch.ones(2, 3, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        unit_effects.mean_square(torch.ones(3, 3))


def test_relative_variance_is_one_minus_mean_squared_over_mean_square_and_scale_free():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64) + 0.7  # exact rescaling
    flat = maps.double().flatten(2)
    identity = 1 - flat.mean(2) ** 2 / flat.square().mean(2)
    ratio = unit_effects.relative_variance_per_map(maps)
    torch.testing.assert_close(ratio, identity, rtol=1e-12, atol=1e-12)
    # the raw variance divided by the mean square, with the population (1/HW) variance
    torch.testing.assert_close(ratio, flat.var(2, unbiased=False) / flat.square().mean(2))
    assert torch.all((ratio >= 0) & (ratio <= 1))
    # rescaling: the whole batch, or each (image, channel) map by its own factor, sign included
    per_map = (torch.rand(3, 5, 1, 1, generator=g, dtype=torch.float64) * 50 + 0.01) * torch.where(
        torch.rand(3, 5, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    for scaled in (maps * 1000.0, maps * -0.003, maps * per_map):
        torch.testing.assert_close(unit_effects.relative_variance_per_map(scaled), ratio, rtol=1e-9, atol=1e-12)
    # ... while the raw variance and the mean square scale with the square of the factor
    assert unit_effects.feature_map_variance(maps * 10) == pytest.approx(100 * unit_effects.feature_map_variance(maps))
    assert unit_effects.mean_square(maps * 10) == pytest.approx(100 * unit_effects.mean_square(maps))


@pytest.mark.parametrize("name", ["vit", "alternet"])
def test_variance_profile_holds_the_scale_free_variance_and_mean_square(name, zoo):
    model = zoo(name)
    x, _ = images(6)
    whole = unit_effects.variance_profile(model, x, batch_size=6)
    split = unit_effects.variance_profile(model, x, batch_size=4)
    np.testing.assert_allclose(whole.relative, split.relative, rtol=1e-9)
    np.testing.assert_allclose(whole.mean_square, split.mean_square, rtol=1e-9)
    outs = unit_effects.unit_outputs(model, x)
    for i, (_, m) in enumerate(outs):
        assert whole.relative[i] == pytest.approx(unit_effects.relative_variance(m), rel=1e-9)
        assert whole.mean_square[i] == pytest.approx(unit_effects.mean_square(m), rel=1e-9)
    np.testing.assert_allclose(whole.relative_change, np.diff(np.log10(whole.relative)))
    np.testing.assert_allclose(whole.mean_square_change, np.diff(np.log10(whole.mean_square)))


@pytest.mark.parametrize("name", ["resnet", "pit"])
def test_per_image_lesion_outcomes_add_up_and_match_a_direct_run(name, zoo):
    model = zoo(name)
    x, y = images(9, seed=5)
    result = unit_effects.lesion_study(model, x, y, batch_size=4, progress=False)
    units = residual.units(model)
    assert result.clean_correct.shape == result.clean_loss.shape == (9,)
    assert result.correct.shape == result.loss.shape == (len(units), 9)
    assert result.removable == [i for i, u in enumerate(units) if u.residual]
    # the per-image means are the aggregate numbers
    assert 100 * result.clean_correct.mean() == pytest.approx(result.baseline)
    for i in result.removable:
        assert 100 * result.correct[i].mean() == pytest.approx(result.accuracy[i])
        assert 100 * (result.clean_correct - result.correct[i]).mean() == pytest.approx(result.drop[i])
    with torch.no_grad():
        clean = model(x)
        i = result.removable[-1]
        lesioned = residual.run_units(units[:i] + units[i + 1:], x)
    np.testing.assert_allclose(result.clean_loss, F.cross_entropy(clean, y, reduction="none").numpy(), rtol=1e-5)
    np.testing.assert_array_equal(result.clean_correct, (clean.argmax(1) == y).double().numpy())
    np.testing.assert_allclose(result.loss[i], F.cross_entropy(lesioned, y, reduction="none").numpy(), rtol=1e-5)
    not_removable = [j for j in range(len(units)) if j not in result.removable]
    assert np.isnan(result.correct[not_removable]).all() and np.isnan(result.loss[not_removable]).all()
    with pytest.raises(ValueError, match="differ in length"):
        unit_effects.lesion_study(model, x, y[:3], progress=False)


def test_stage_blocks_group_removable_units_by_block_and_stage():
    resnet = residual.unit_infos(models.build("resnet"))
    assert unit_effects.stage_blocks(resnet) == [[[1], [2]], [[4]], [[6]]]
    pit = residual.unit_infos(models.build("pit"))
    grouped = unit_effects.stage_blocks(pit)
    assert [len(stage) for stage in grouped] == [2, 4, 2]
    assert [[pit[i].name for i in block] for block in grouped[2]] == [
        ["stage3.0.msa", "stage3.0.mlp"], ["stage3.1.msa", "stage3.1.mlp"]]
    assert unit_effects.block_name(pit[1]) == "stage1.0"


def _hand_lesion(units, clean, correct):
    correct = np.array(correct, dtype=float)
    acc = np.full(len(units), np.nan)
    rows = [i for i, u in enumerate(units) if u.residual]
    acc[rows] = 100 * correct[rows].mean(axis=1)
    base = 100 * np.mean(clean)
    return unit_effects.Lesion(units=units, baseline=base, accuracy=acc, drop=base - acc,
                           clean_correct=np.array(clean, dtype=float), correct=correct,
                           clean_loss=np.zeros(len(clean)), loss=np.zeros_like(correct))


def test_stage_contrast_on_hand_made_outcomes():
    info = residual.UnitInfo
    nan = [np.nan] * 4
    units = [info(0, "embed", "embed", 0, 0.0, False),
             info(1, "s1.0.msa", "msa", 0, 0.1, True), info(2, "s1.0.mlp", "mlp", 0, 0.2, True),
             info(3, "s1.1.msa", "msa", 0, 0.3, True), info(4, "s1.1.mlp", "mlp", 0, 0.4, True),
             info(5, "s2.pool", "pool", 1, 0.5, False),
             info(6, "s2.0.msa", "msa", 1, 0.6, True), info(7, "s2.0.mlp", "mlp", 1, 0.7, True),
             info(8, "s2.1.msa", "msa", 1, 0.8, True), info(9, "s2.1.mlp", "mlp", 1, 0.9, True),
             info(10, "head", "head", 1, 1.0, False)]
    clean = [1, 1, 1, 0]
    correct = [nan,
               [0, 1, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1],   # stage 1
               nan,
               [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0],   # stage 2
               nan]
    lesion = _hand_lesion(units, clean, correct)
    both = unit_effects.stage_contrast(lesion)
    assert both.testable and both.reason == "" and both.stages == [0, 1]
    assert both.first_block == ["s1.0", "s2.0"] and both.last_block == ["s1.1", "s2.1"]
    # per image, points: drop = 100 (clean - lesioned), a block's drop the mean of its two units
    np.testing.assert_allclose(both.first[:, 0], [100, 50, 0, 0])
    np.testing.assert_allclose(both.last[:, 0], [0, 0, 0, -50])
    np.testing.assert_allclose(both.first[:, 1], [50, 0, 0, 0])
    np.testing.assert_allclose(both.last[:, 1], [0, 50, 0, 0])
    np.testing.assert_allclose(both.per_image, both.first - both.last)
    mlp = unit_effects.stage_contrast(lesion, kind="mlp")
    np.testing.assert_allclose(mlp.first[:, 0], [100, 100, 0, 0])
    np.testing.assert_allclose(mlp.last[:, 1], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="removable kinds"):
        unit_effects.stage_contrast(lesion, kind="conv")


@pytest.mark.parametrize("name, counts", [("resnet", "2, 1, 1"), ("alternet", "2, 1, 1")])
def test_stage_contrast_reports_models_with_too_few_removable_blocks(name, counts, zoo):
    x, y = images(4, seed=6)
    lesion = unit_effects.lesion_study(zoo(name), x, y, progress=False)
    contrast = unit_effects.stage_contrast(lesion)
    assert not contrast.testable and contrast.stages == [0]
    assert f"removable blocks per stage: {counts}" in contrast.reason
    assert contrast.first.shape == (4, 1)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_skip_ratios_match_the_units_own_outputs(zoo, name):
    """‖z‖ / ‖f(z)‖ from the branch equals ‖z‖ / ‖unit(z) − z‖ from consecutive unit outputs."""
    model, (x, _) = zoo(name), images(10)
    ratios = unit_effects.skip_ratios(model, x, batch_size=5, progress=False)
    units = residual.units(model)
    with torch.no_grad():
        _, outs = residual.run_units(units, x, keep=True)
    inputs = [x] + outs[:-1]
    skippable = [i for i, u in enumerate(units) if u.residual]
    assert [u.index for u in ratios.units] == skippable
    for col, i in enumerate(skippable):
        z, out = inputs[i], outs[i]
        dim = -1 if z.ndim == 3 else 1
        r = z.norm(dim=dim) / (out - z).norm(dim=dim)
        spatial = r[:, 1:].mean(dim=1) if z.ndim == 3 else r.flatten(1).mean(dim=1)
        np.testing.assert_allclose(ratios.spatial[:, col], spatial.numpy(), rtol=1e-3)
        if z.ndim == 3:
            np.testing.assert_allclose(ratios.cls[:, col], r[:, 0].numpy(), rtol=1e-3)
    assert (ratios.cls is None) == (name == "resnet")


def test_skip_ratios_refuse_a_bad_batch_size_before_any_work(zoo):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        unit_effects.skip_ratios(zoo("vit"), images(4)[0], batch_size=0)


def test_logits_without_units_equal_the_model_with_those_blocks_replaced_by_identities(zoo):
    """Skipping stage1.1.conv and stage2.1.conv equals the ResNet with those basic blocks swapped
    for nn.Identity (an independent forward pass through the model's own code); nothing removed
    is the model itself."""
    import copy
    model = zoo("resnet")
    x, _ = images(6)
    with torch.no_grad():
        torch.testing.assert_close(unit_effects.logits_without(model, x, []), model(x), rtol=0, atol=0)
        edited = copy.deepcopy(model)
        edited.net.stages[0][1] = torch.nn.Identity()
        edited.net.stages[1][1] = torch.nn.Identity()
        expected = edited(x)
    got = unit_effects.logits_without(model, x, ["stage1.1.conv", "stage2.1.conv"], batch_size=4)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, model(x).detach())
    with pytest.raises(ValueError, match="no removable residual unit named 'stage2.0.conv'"):
        unit_effects.logits_without(model, x, ["stage2.0.conv"])  # downsamples: no identity shortcut


def test_smallest_stage_contrast_by_hand():
    rows = np.array([[1.0, 3.0, -1.0],
                     [3.0, 1.0, 2.0]])  # stage means 2, 2, 0.5
    assert unit_effects.smallest_stage_contrast(rows) == 0.5
    with pytest.raises(ValueError, match=r"\(images, stages\)"):
        unit_effects.smallest_stage_contrast(np.zeros((3, 0)))
