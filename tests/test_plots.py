"""Plot helpers: the shading spans what Park & Kim's figures shade, and a profile draws one dot per unit."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lib.core import models, residual  # noqa: E402
from lib.report import plots  # noqa: E402


def spans(ax) -> list[tuple[float, float, tuple]]:
    """(left, right, colour) of every vertical band on ``ax``."""
    out = []
    for patch in ax.patches:
        box = patch.get_path().get_extents(patch.get_patch_transform())  # x in data coordinates
        out.append((round(float(box.x0), 6), round(float(box.x1), 6), patch.get_facecolor()[:3]))
    return sorted(out)


def test_bands_span_the_segment_each_unit_produces():
    units = residual.unit_infos(models.build("alternet"))  # stem, stage1: C C, stage2: C M, stage3: C M, head
    fig, ax = plt.subplots()
    plots.shade_units(ax, units)
    grey, blue = matplotlib.colors.to_rgb(plots.MSA_SHADE), matplotlib.colors.to_rgb(plots.SUBSAMPLE_SHADE)
    step = 1 / (len(units) - 1)
    kinds = [u.kind for u in units]
    assert kinds == ["embed", "conv", "conv", "conv", "msa", "conv", "msa", "head"]
    expected = sorted([(round(3 * step, 6), round(4 * step, 6), grey), (round(5 * step, 6), round(6 * step, 6), grey),
                       (round(2 * step, 6), round(3 * step, 6), blue), (round(4 * step, 6), round(5 * step, 6), blue)])
    got = [(a, b, tuple(round(c, 6) for c in col)) for a, b, col in spans(ax)]
    assert got == [(a, b, tuple(round(c, 6) for c in col)) for a, b, col in expected]
    plt.close(fig)


def test_depth_profile_draws_every_unit_in_its_colour():
    units = residual.unit_infos(models.build("vit"))[:-1]
    values = np.arange(1, len(units) + 1, dtype=float)
    fig, ax = plt.subplots()
    plots.depth_profile(ax, units, values, log=True)
    dots = ax.collections[0]
    np.testing.assert_allclose(dots.get_offsets(), np.c_[[u.depth for u in units], values])
    colours = [matplotlib.colors.to_hex(c) for c in dots.get_facecolors()]
    assert colours == [matplotlib.colors.to_hex(plots.KIND_COLORS[u.kind]) for u in units]
    assert ax.get_yscale() == "log" and len(ax.lines) == 1
    with pytest.raises(ValueError, match="13 units for 3 values"):
        plots.depth_profile(ax, units, values[:3])
    plt.close(fig)


def test_history_curves_draw_only_the_measured_epochs():
    """Runs on a subset measure the test set every few epochs: the curve joins the measured ones."""
    history = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 7)]
    for e, h in enumerate(history, 1):
        if e % 3 == 0 or e > 4:
            h.update(test_acc=50.0 + e, test_loss=1.0 / e)
    fig = plots.history_curves([{"model": "vit", "subset": 0.1, "history": history}])
    acc, nll = (ax.lines[0] for ax in fig.axes)
    assert list(acc.get_xdata()) == [3, 5, 6] and list(acc.get_ydata()) == [53.0, 55.0, 56.0]
    assert list(nll.get_ydata()) == [1 / 3, 1 / 5, 1 / 6]
    plt.close(fig)


def test_hessian_ends_draw_every_batch_of_every_model_in_its_colour():
    """Left: one dot per top eigenvalue and a median tick per model; right: one dot per batch at
    (λ_max, −λ_min) in the model's colour, on a log-x / symlog-y axis."""
    from types import SimpleNamespace
    rng = np.random.default_rng(0)
    spectra = {name: SimpleNamespace(top=rng.normal(size=(4, 3)) * 50, lambda_max=rng.uniform(10, 900, 4),
                                     lambda_min=-rng.uniform(0, 20, 4)) for name in ("A", "B")}
    colors = {"A": "#ff0000", "B": "#0000ff"}
    fig, (left, right) = plt.subplots(1, 2)
    plots.hessian_ends(left, right, spectra, colors)
    assert [len(c.get_offsets()) for c in left.collections] == [12, 12]
    assert [t.get_text() for t in left.get_yticklabels()] == ["A", "B"]
    dots = right.collections
    assert [len(c.get_offsets()) for c in dots] == [4, 4]
    for c, name in zip(dots, ("A", "B")):
        np.testing.assert_allclose(c.get_offsets(), np.column_stack([spectra[name].lambda_max, -spectra[name].lambda_min]))
        np.testing.assert_allclose(c.get_facecolor()[0][:3], matplotlib.colors.to_rgb(colors[name]))
    assert right.get_xscale() == "log" and right.get_yscale() == "symlog"
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["A", "B"]
    plt.close(fig)


def test_interval_bars_span_each_estimates_interval():
    """A bar per estimate from low to high (× scale), its point at the value."""
    from types import SimpleNamespace as Est
    estimates = [Est(value=1.0, low=0.5, high=2.0), Est(value=-1.0, low=-3.0, high=0.0)]
    fig, ax = plt.subplots()
    bars = plots.interval_bars(ax, [0, 1], estimates, scale=10.0, fmt="o")
    line, _, (segments,) = bars
    np.testing.assert_allclose(line.get_ydata(), [10.0, -10.0])
    np.testing.assert_allclose([s[:, 1] for s in segments.get_segments()], [[5.0, 20.0], [-30.0, 0.0]])
    plt.close(fig)


def test_run_points_put_each_run_at_its_model_filled_or_open():
    values = {("resnet", 0): 1.0, ("resnet", 1): 2.0, ("vit", 0): 3.0, ("vit", 1): 4.0}
    matched = {key: v / 2 for key, v in values.items()}
    fig, ax = plt.subplots()
    plots.run_points(ax, ["resnet", "vit"], [0, 1], values, matched, log=True)
    offsets = [c.get_offsets() for c in ax.collections]
    np.testing.assert_allclose(offsets[0], [[-0.15, 1.0], [-0.15, 2.0]])  # ResNet, T = 1
    np.testing.assert_allclose(offsets[1], [[0.15, 0.5], [0.15, 1.0]])    # ResNet, matched
    np.testing.assert_allclose(offsets[3], [[1.15, 1.5], [1.15, 2.0]])    # ViT, matched
    assert ax.collections[1].get_facecolor().size == 0 or ax.collections[1].get_facecolor()[0][3] == 0  # open
    assert [t.get_text() for t in ax.get_xticklabels()] == [plots.label("resnet"), plots.label("vit")]
    assert ax.get_yscale() == "log"
    fig2, ax2 = plt.subplots()
    plots.run_points(ax2, ["vit"], [0, 1], values)
    np.testing.assert_allclose(ax2.collections[0].get_offsets(), [[0.0, 3.0], [0.0, 4.0]])
    plt.close(fig)
    plt.close(fig2)
