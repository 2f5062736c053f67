"""Fourier analysis of feature maps: closed forms on cosines and checkerboards, known filters come
out low-pass or high-pass by exactly log 9, and every zoo model's unit profiles match a direct
computation."""
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

from lib.core import models, residual  # noqa: E402
from lib.analyses import fourier  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def diagonal_cosine(n: int, k0: int, a: float, b: float) -> torch.Tensor:
    """``a + b·cos(2π k0 (i + j) / n)`` on an ``n × n`` grid, float64."""
    i = torch.arange(n, dtype=torch.float64)
    return a + b * torch.cos(2 * math.pi * k0 * (i[:, None] + i[None, :]) / n)


# --------------------------------------------------------------------------------------------------
# Frequencies and the relative log amplitude


def test_frequencies_in_units_of_pi():
    assert fourier.frequencies(8).tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
    assert fourier.frequencies(8, shifted=False).tolist() == [0.0, 0.25, 0.5, 0.75, -1.0, -0.75, -0.5, -0.25]
    torch.testing.assert_close(fourier.frequencies(7), torch.tensor([-6, -4, -2, 0, 2, 4, 6], dtype=torch.float64) / 7)
    r = fourier.radius(4, 3)
    assert r.shape == (4, 3)
    torch.testing.assert_close(r[2], torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))  # Nyquist row
    torch.testing.assert_close(r[1], torch.tensor([0.5, 2 / 3, 2 / 3], dtype=torch.float64))


@pytest.mark.parametrize("n,expected", [(28, [2 * k / 28 for k in range(15)]), (7, [0, 2 / 7, 4 / 7, 6 / 7]),
                                        (8, [0, 0.25, 0.5, 0.75, 1.0])])
def test_profile_frequencies_and_zero_at_dc(n, expected):
    feats = torch.randn(3, 5, n, n, generator=torch.Generator().manual_seed(0))
    prof = fourier.relative_log_amplitude(feats)
    np.testing.assert_allclose(prof.freq, expected, rtol=0, atol=1e-15)
    assert len(prof.delta) == n // 2 + 1 and prof.delta[0] == 0.0
    assert prof.n_maps == 15
    assert prof.high == prof.delta[-1]


@pytest.mark.parametrize("n,k0", [(8, 2), (7, 3), (28, 5)])
def test_cosine_closed_form(n, k0):
    """a + b·cos along the diagonal: only bins 0 and (±k0, ±k0) are non-zero (amplitudes a·n², b·n²/2)."""
    a, b = 0.3, 2.0
    img = diagonal_cosine(n, k0, a, b).expand(2, 3, n, n)
    prof = fourier.relative_log_amplitude(img)
    dc = math.log(a * n * n + fourier.FLOOR)
    expected = np.full(n // 2 + 1, math.log(fourier.FLOOR) - dc)
    expected[0] = 0.0
    expected[k0] = math.log(b * n * n / 2 + fourier.FLOOR) - dc
    np.testing.assert_allclose(prof.delta, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(prof.log_amplitude[0], dc, rtol=1e-12)


def test_checkerboard_reaches_pi_on_even_grids():
    """(-1)^(i+j) lives only in the Nyquist bin (π, π): the last point of an even profile."""
    n = 28
    i = torch.arange(n)
    board = 0.5 + 0.25 * (-1.0) ** (i[:, None] + i[None, :]).double()
    prof = fourier.relative_log_amplitude(board.expand(1, 1, n, n))
    assert prof.freq[-1] == 1.0
    expected = math.log(0.25 * n * n + fourier.FLOOR) - math.log(0.5 * n * n + fourier.FLOOR)
    assert prof.delta[-1] == pytest.approx(expected, abs=1e-6)  # -log 2
    np.testing.assert_allclose(prof.delta[1:-1], math.log(fourier.FLOOR) - math.log(0.5 * n * n), atol=1e-6)


def test_mean_of_logs_not_log_of_mean():
    """Two maps with cosine amplitudes b1, b2: the average is of the logs (geometric mean)."""
    n, k0, a = 8, 1, 1.0
    maps = torch.stack([diagonal_cosine(n, k0, a, 1.0), diagonal_cosine(n, k0, a, 4.0)]).unsqueeze(1)
    prof = fourier.relative_log_amplitude(maps)
    expected = 0.5 * (math.log(n * n / 2 + 1e-6) + math.log(4 * n * n / 2 + 1e-6)) - math.log(n * n + 1e-6)
    assert prof.delta[k0] == pytest.approx(expected, abs=1e-9)
    assert prof.delta[k0] != pytest.approx(math.log(2.5 * n * n / 2) - math.log(n * n), abs=1e-3)


def test_spectrum_is_shifted_and_matches_the_profile():
    feats = torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    spec = fourier.log_amplitude_spectrum(feats)
    prof = fourier.relative_log_amplitude(feats)
    assert spec.shape == (7, 7) and spec.dtype == torch.float64
    centre = 7 // 2
    diag = [spec[centre - k, centre - k].item() for k in range(4)]  # centre towards the top-left corner
    np.testing.assert_allclose(diag, prof.log_amplitude, rtol=1e-12)
    rel = fourier.log_amplitude_spectrum(feats, relative=True)
    assert rel[centre, centre] == 0.0
    torch.testing.assert_close(rel, spec - spec[centre, centre])
    # real maps: the spectrum is symmetric under f -> -f (point reflection about the centre)
    torch.testing.assert_close(spec, spec.flip(0, 1))  # odd size: the centre is the middle


def test_tokens_drop_cls_before_the_fft():
    maps = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(2))
    tokens = torch.cat([torch.full((2, 1, 6), 1e3), maps.flatten(2).transpose(1, 2)], dim=1)  # huge CLS
    np.testing.assert_array_equal(fourier.relative_log_amplitude(tokens).delta,
                                  fourier.relative_log_amplitude(maps).delta)


@pytest.mark.parametrize("shape,grid", [((2, 50, 128), 7),   # ViT unit: CLS + 7×7, D > N
                                        ((2, 49, 6), 7),     # no CLS, D < N
                                        ((2, 197, 40), 14),  # PiT stage 1
                                        ((2, 17, 160), 4)])  # PiT stage 3: D much larger than N
def test_token_sequences_by_the_rule_are_accepted(shape, grid):
    tokens = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    maps = tokens[:, shape[1] - grid * grid:].transpose(1, 2).reshape(shape[0], shape[2], grid, grid)
    np.testing.assert_array_equal(fourier.relative_log_amplitude(tokens).delta,
                                  fourier.relative_log_amplitude(maps).delta)
    torch.testing.assert_close(fourier.log_amplitude_spectrum(tokens), fourier.log_amplitude_spectrum(maps),
                               rtol=0, atol=0)


@pytest.mark.parametrize("shape,match", [((1, 28, 28), "ambiguous.*N == D"),  # one Fashion-MNIST image
                                         ((3, 32, 32), "ambiguous.*N == D"),  # one CIFAR image
                                         ((1, 16, 16), "ambiguous.*N == D"),  # square N, still an image
                                         ((1, 28, 30), "N = 28 is neither a square"),  # 28 = 5² + 3
                                         ((3, 32, 48), "N = 32 is neither a square")])
def test_one_image_is_not_read_as_tokens(shape, match):
    """A 3-D image used to come back as the profile of a tiny grid of wrong numbers (3 points of a
    5×5 grid for 28×28); now it is refused, and the message says how to pass one image."""
    image = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    for call in (fourier.relative_log_amplitude, fourier.log_amplitude_spectrum,
                 lambda t: fourier.high_frequency_change(t, t)):
        with pytest.raises(ValueError, match=match) as excinfo:
            call(image)
        assert r"pass x[None]" in str(excinfo.value)
    if shape[1] == shape[2]:  # as one image, as the message says: the full profile of an H×H map
        prof = fourier.relative_log_amplitude(image[None])
        assert len(prof.delta) == shape[1] // 2 + 1 and prof.n_maps == shape[0]


# --------------------------------------------------------------------------------------------------
# Known filters


def depthwise(x: torch.Tensor, kernel: list[list[float]], circular: bool) -> torch.Tensor:
    c = x.shape[1]
    weight = torch.tensor(kernel, dtype=x.dtype).expand(c, 1, 3, 3)
    if circular:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), weight, groups=c)
    return F.conv2d(x, weight, padding=1, groups=c)


BOX = [[1 / 9] * 3] * 3
SHARPEN = [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]  # identity minus the Laplacian: gain 1 at 0, 9 at (π, π)
LAPLACIAN = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]


@pytest.mark.parametrize("kernel,expected", [(BOX, -math.log(9)), (SHARPEN, math.log(9))])
def test_known_filters_exactly(kernel, expected):
    """A circular convolution multiplies every bin by the kernel's gain, so with a mean of logs the
    high-frequency change is exactly log|gain(π, π)| − log|gain(0, 0)|, whatever the input."""
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    change = fourier.high_frequency_change(x, depthwise(x, kernel, circular=True))
    assert change == pytest.approx(expected, abs=1e-5)


def test_box_blur_is_low_pass_and_laplacian_high_pass_with_zero_padding():
    x = torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    assert fourier.high_frequency_change(x, depthwise(x, BOX, circular=False)) < -1.5
    assert fourier.high_frequency_change(x, depthwise(x, LAPLACIAN, circular=False)) > 1.5
    before, after = fourier.relative_log_amplitude(x), fourier.relative_log_amplitude(depthwise(x, BOX, False))
    assert fourier.high_frequency_change(before, after) == pytest.approx(after.high - before.high)


# --------------------------------------------------------------------------------------------------
# Units of zoo models


@pytest.mark.parametrize("name", models.MODELS)
def test_unit_profiles_match_a_direct_computation(name):
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    profiles = fourier.unit_profiles(model, x, batch_size=3, progress=False)  # chunks of 3 and 1
    units = residual.units(model)
    body = [u for u in units if u.kind != "head"]
    assert [p.name for p in profiles] == [u.name for u in body]
    assert [p.kind for p in profiles] == [u.kind for u in body]
    assert [p.stage for p in profiles] == [u.stage for u in body]
    assert "head" not in {p.kind for p in profiles}
    with torch.no_grad():
        _, outs = residual.run_units(units, x, keep=True)
    previous = fourier.relative_log_amplitude(x)
    for p, out in zip(profiles, outs):
        direct = fourier.relative_log_amplitude(residual.as_grid(out))
        assert p.profile.delta[0] == 0.0
        np.testing.assert_allclose(p.profile.delta, direct.delta, rtol=1e-6, atol=1e-6)
        # the profile runs the model in chunks (3 + 1 images): float32 sums differ in the last bits,
        # which the log amplitude of near-zero frequencies can raise to ~2e-6
        np.testing.assert_allclose(p.spectrum, fourier.log_amplitude_spectrum(out).numpy(), rtol=1e-5, atol=1e-5)
        assert p.change == pytest.approx(direct.high - previous.high, abs=1e-5)  # float32 models
        previous = direct
    # points per profile, n // 2 + 1 on an n × n grid: ResNet/AlterNet 28, 14, 7 pixels; ViTs 7×7
    # patches (embedding + 6 × (MSA, MLP)); PiT 14×14, 7×7, 4×4 (embedding, pools, 2/4/2 blocks)
    convnet, vit = [15, 15, 15, 8, 8, 4, 4], [4] * 13
    expected = {"resnet": convnet, "alternet": convnet, "vit": vit, "vit_local3": vit, "vit_local5": vit,
                "pit": [8] * 5 + [4] * 9 + [3] * 5}
    assert [len(p.profile.delta) for p in profiles] == expected[name]


@pytest.mark.parametrize("name", ["resnet", "vit", "alternet"])
def test_high_frequency_changes_per_image(name):
    """Each entry is high_frequency_change on one image; column means are unit_profiles' change."""
    torch.manual_seed(1)
    model = models.build(name).eval()
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(8))
    units, changes = fourier.high_frequency_changes(model, x, batch_size=2, progress=False)  # chunks 2, 2, 1
    body = [u for u in residual.units(model) if u.kind != "head"]
    assert [u.name for u in units] == [u.name for u in body] and isinstance(units[0], residual.UnitInfo)
    assert changes.shape == (5, len(body)) and changes.dtype == np.float64
    with torch.no_grad():
        _, outs = residual.run_units(residual.units(model), x, keep=True)
    maps = [x] + [residual.as_grid(o) for o in outs[:len(body)]]
    for i in range(len(x)):  # independently, image by image, unit by unit
        direct = [fourier.high_frequency_change(maps[j][i:i + 1], maps[j + 1][i:i + 1]) for j in range(len(body))]
        np.testing.assert_allclose(changes[i], direct, rtol=0, atol=1e-5)
    profiles = fourier.unit_profiles(model, x, progress=False)
    np.testing.assert_allclose(changes.mean(axis=0), [p.change for p in profiles], rtol=0, atol=1e-5)
    assert [p.size for p in profiles] == [m.shape[-1] for m in maps[1:]]


def test_high_frequency_changes_of_a_known_filter():
    """A unit that multiplies the top diagonal bin by 1/9 relative to DC lowers it by log 9 in every image."""
    class Blur(nn.Module):  # the 3×3 box blur with circular padding: gain 1 at DC, 1/9 at (π, π)
        downsample = None  # read by lib.core.residual like a ResNet block's attribute

        def forward(self, z):
            return sum(torch.roll(z, (a, b), (-2, -1)) for a in (-1, 0, 1) for b in (-1, 0, 1)) / 9

    model = models.build("resnet").eval()
    model.net.stages[0][0] = Blur()  # a zoo model whose first block is now an exact low-pass filter
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    units, changes = fourier.high_frequency_changes(model, x, progress=False)
    j = [u.name for u in units].index("stage1.0.conv")
    np.testing.assert_allclose(changes[:, j], -math.log(9), rtol=0, atol=1e-3)


def test_unit_profiles_restore_the_mode_and_reject_other_models():
    model = models.build("vit").train()
    fourier.unit_profiles(model, torch.rand(2, 1, 28, 28), progress=False)
    assert model.training
    with pytest.raises(TypeError, match="zoo model"):
        fourier.unit_profiles(nn.Conv2d(1, 1, 3), torch.rand(2, 1, 28, 28), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fourier.unit_profiles(model, torch.rand(2, 1, 28, 28), batch_size=0, progress=False)
    with pytest.raises(TypeError, match="zoo model"):
        fourier.high_frequency_changes(nn.Conv2d(1, 1, 3), torch.rand(2, 1, 28, 28), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fourier.high_frequency_changes(model, torch.rand(2, 1, 28, 28), batch_size=0, progress=False)
    fourier.high_frequency_changes(model, torch.rand(2, 1, 28, 28), progress=False)
    assert model.training


def test_features_are_checked():
    with pytest.raises(ValueError, match="square"):
        fourier.relative_log_amplitude(torch.rand(1, 1, 4, 6))
    with pytest.raises(ValueError, match="logits"):
        fourier.relative_log_amplitude(torch.rand(4, 10))
    with pytest.raises(ValueError, match="empty"):
        fourier.relative_log_amplitude(torch.rand(0, 3, 4, 4))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        fourier.relative_log_amplitude(np.zeros((1, 1, 4, 4)))


def test_unit_groups_by_role_and_grid_in_model_order():
    """Embedding 28→14, two convs on 14, a strided conv 14→7 starting stage 2, an MSA on 7: the
    groups, their order, and the columns of a role with and without a grid."""
    from types import SimpleNamespace as Unit
    profiles = [Unit(kind="embed", stage=0, size=14), Unit(kind="conv", stage=0, size=14),
                Unit(kind="conv", stage=0, size=14), Unit(kind="conv", stage=1, size=7),
                Unit(kind="msa", stage=1, size=7), Unit(kind="conv", stage=1, size=7)]
    groups = fourier.unit_groups(profiles, 28)
    assert groups.grids == ["28→14", "14×14", "14×14", "14→7", "7×7", "7×7"]
    assert groups.roles == ["embed", "conv", "conv", "subsampling", "msa", "conv"]
    assert groups.keys() == [("conv", "14×14"), ("subsampling", "14→7"), ("msa", "7×7"), ("conv", "7×7")]
    assert groups.columns("conv") == [1, 2, 5]
    assert groups.columns("conv", "7×7") == [5]
    assert groups.columns("embed") == [] and groups.columns("mlp") == []
