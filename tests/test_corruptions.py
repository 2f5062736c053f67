"""Common corruptions: ranges, determinism, the size of each effect, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core import metrics
from lib.analyses import corruptions, robustness


@pytest.fixture(scope="module")
def garments():
    """Images with Fashion-MNIST's structure: a black background and a bright, textured shape."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(6, 1, 28, 28)
    x[:, :, 6:22, 8:20] = 0.5 + 0.4 * torch.rand(6, 1, 16, 12, generator=g)
    return x


@pytest.mark.parametrize("kind", list(corruptions.CORRUPTIONS))
def test_every_corruption_keeps_shape_and_range_and_grows_with_severity(kind, garments):
    change = []
    for severity in corruptions.SEVERITIES:
        out = corruptions.corrupt(garments, kind, severity)
        assert out.shape == garments.shape and out.dtype == garments.dtype
        assert out.min() >= 0 and out.max() <= 1
        change.append(float((out - garments).abs().mean()))
    assert change[0] > 0
    assert change[-1] > change[0]  # the strongest severity changes the images more than the mildest
    assert garments.max() < 0.91  # the input was not changed in place


@pytest.mark.parametrize("kind", list(corruptions.CORRUPTIONS))
def test_the_same_seed_gives_the_same_images(kind, garments):
    a, b = (corruptions.corrupt(garments, kind, 3, seed=1) for _ in range(2))
    assert torch.equal(a, b)
    if kind in ("gaussian_noise", "elastic"):
        assert not torch.equal(a, corruptions.corrupt(garments, kind, 3, seed=2))


def test_gaussian_noise_has_the_stated_deviation():
    grey = torch.full((40, 1, 28, 28), 0.5)  # far from the clamp, so the noise is not cut
    out = corruptions.corrupt(grey, "gaussian_noise", 5)
    assert float((out - grey).std()) == pytest.approx(corruptions.CORRUPTIONS["gaussian_noise"][4], rel=0.02)


def test_contrast_keeps_each_image_mean_and_scales_its_deviations(garments):
    c = corruptions.CORRUPTIONS["contrast"][1]
    out = corruptions.corrupt(garments, "contrast", 2)
    mean = garments.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, mean + c * (garments - mean), atol=1e-6)


def test_blur_leaves_a_flat_image_flat_and_pixelate_makes_blocks():
    flat = torch.full((2, 1, 28, 28), 0.3)
    assert torch.allclose(corruptions.corrupt(flat, "gaussian_blur", 5), flat, atol=1e-6)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 28, 28, generator=g)
    side = round(28 * corruptions.CORRUPTIONS["pixelate"][4])
    out = corruptions.corrupt(x, "pixelate", 5)
    assert all(len(torch.unique(img)) <= side * side for img in out)


def test_jpeg_output_is_whole_grey_levels(garments):
    out = corruptions.corrupt(garments, "jpeg", 5)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


def test_the_elastic_field_is_smooth_and_reaches_its_amplitude():
    field = corruptions.elastic_field((3, 1, 28, 28), 2.0, torch.Generator().manual_seed(0))
    assert field.shape == (3, 28, 28, 2)
    assert torch.allclose(field.abs().amax(dim=(1, 2, 3)), torch.full((3,), 2.0))
    neighbour_step = (field[:, 1:] - field[:, :-1]).abs().max()
    assert neighbour_step < 0.5  # neighbouring pixels move together


@pytest.mark.parametrize("call, message", [
    (lambda x: corruptions.corrupt(x, "fog", 1), "unknown corruption 'fog'; choose one of gaussian_noise"),
    (lambda x: corruptions.corrupt(x, "jpeg", 6), r"severity must be one of \(1, 2, 3, 4, 5\), got 6"),
    (lambda x: corruptions.corrupt(x, "jpeg", True), "severity must be one of"),
    (lambda x: corruptions.corrupt(x * 255, "jpeg", 1), r"pixels in \[0, 1\]"),
    (lambda x: corruptions.corrupt((x * 255).to(torch.uint8), "jpeg", 1), "float images"),
    (lambda x: corruptions.corrupt(x[0], "jpeg", 1), r"shape \(N, C, H, W\)"),
])
def test_bad_input_is_refused_with_the_valid_choices(call, message, garments):
    with pytest.raises(ValueError, match=message):
        call(garments)


def test_corruption_robustness_pairs_the_models_on_the_same_images(seeded_model, random_images, random_labels):
    model = seeded_model("resnet")
    x, y = random_images(12), random_labels(12)
    result = robustness.corruption_robustness({"a": model, "b": model}, x, y, kinds=["contrast", "jpeg"],
                                              severities=(1, 5))
    assert result.kinds == ("contrast", "jpeg") and result.severities == (1, 5)
    assert result.correct["a"].shape == (2, 2, 12)
    np.testing.assert_array_equal(result.correct["a"], result.correct["b"])
    np.testing.assert_array_equal(result.clean["a"], metrics.evaluate_per_image(model, x, y)["correct"])
    jpeg5 = corruptions.corrupt(x, "jpeg", 5)
    assert result.accuracy("a")[1, 1] == pytest.approx(metrics.evaluate(model, jpeg5, y)["acc"])
    assert result.per_image("a").shape == (12,)
    assert result.per_image("a").mean() == pytest.approx(result.accuracy("a").mean())
    with pytest.raises(ValueError, match="unknown corruption 'snow'"):
        robustness.corruption_robustness({"a": model}, x, y, kinds=["snow"])
    with pytest.raises(ValueError, match="at least one model"):
        robustness.corruption_robustness({}, x, y)
