"""One visual style for the whole book: colours per model and per unit kind, and shared plots.

Analyses return numbers; this module only draws them. Conventions follow Park & Kim: MSA units
are shaded grey, subsampling (stage changes) blue.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

MODEL_COLORS: dict[str, str] = {
    "resnet": "#1f77b4", "vit": "#d62728", "vit_local3": "#ff9896", "vit_local5": "#e377c2",
    "alternet": "#2ca02c", "pit": "#9467bd",
}
MODEL_LABELS: dict[str, str] = {
    "resnet": "ResNet", "vit": "ViT", "vit_local3": "ViT (3×3 local)", "vit_local5": "ViT (5×5 local)",
    "alternet": "AlterNet", "pit": "PiT",
}
KIND_COLORS: dict[str, str] = {
    "embed": "#bdbdbd", "conv": "#4c72b0", "msa": "#dd8452", "mlp": "#55a868", "pool": "#8172b3",
    "head": "#4d4d4d",
}
MSA_SHADE = "#d9d9d9"
SUBSAMPLE_SHADE = "#c6dbef"


def setup_style() -> None:
    """The book's plotting defaults: seaborn whitegrid, readable font sizes, crisp PNGs."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titleweight": "bold",
                         "figure.autolayout": False})


def label(model: str) -> str:
    """Display name of a zoo model."""
    return MODEL_LABELS.get(model, model)


def unit_strip(ax: Axes, units: Sequence[Any], title: str = "") -> Axes:
    """A compact diagram of a model: one coloured cell per residual unit, stage changes marked.

    ``units`` are :class:`lib.core.residual.Block`, :class:`lib.core.residual.UnitInfo` or :class:`lib.analyses.summary.UnitRow` (they need
    ``kind``, ``stage`` and ``name``).
    """
    short = {"embed": "emb", "conv": "conv", "msa": "MSA", "mlp": "MLP", "pool": "pool", "head": "head"}
    for i, u in enumerate(units):
        ax.add_patch(plt.Rectangle((i, 0), 0.92, 1, color=KIND_COLORS[u.kind]))
        ax.text(i + 0.46, 0.5, short[u.kind], ha="center", va="center", fontsize=8.5,
                color="black" if u.kind == "embed" else "white")
        if i and u.stage != units[i - 1].stage:
            ax.axvline(i - 0.04, color="#08519c", lw=2)
    ax.set_xlim(-0.1, len(units))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.grid(False)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, loc="left", fontsize=11)
    return ax


def kind_legend(fig: Figure, kinds: Iterable[str] = ("embed", "conv", "msa", "mlp", "pool", "head"),
                shading: bool = False, **kwargs: Any) -> None:
    """A figure legend of unit kinds, and of the stage-change line or (``shading=True``) of the
    bands drawn by :func:`shade_units`."""
    handles = [Patch(color=KIND_COLORS[k], label=k.upper() if k in ("msa", "mlp") else k) for k in kinds]
    if shading:
        handles += [Patch(color=MSA_SHADE, label="MSA unit (band)"),
                    Patch(color=SUBSAMPLE_SHADE, label="subsampling unit (band)")]
    else:
        handles.append(plt.Line2D([], [], color="#08519c", lw=2, label="new stage (subsampling)"))
    fig.legend(handles=handles, ncol=len(handles), frameon=False, **kwargs)


def history_curves(records: Sequence[dict[str, Any]], axes: Sequence[Axes] | None = None,
                   linestyle: str = "-") -> Figure:
    """Test accuracy and test NLL per epoch for checkpoint records, one colour per model.

    Only the epochs whose test set was measured are drawn (runs on a subset measure every few).
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    fig = axes[0].figure
    for rec in records:
        measured = [h for h in rec["history"] if "test_acc" in h]
        epochs = [h["epoch"] for h in measured]
        color = MODEL_COLORS.get(rec["model"])
        name = label(rec["model"]) + (f" ({rec['subset']:.0%} data)" if rec.get("subset") else "")
        axes[0].plot(epochs, [h["test_acc"] for h in measured], linestyle, marker="o", ms=3,
                     color=color, label=name)
        axes[1].plot(epochs, [h["test_loss"] for h in measured], linestyle, marker="o", ms=3,
                     color=color, label=name)
    axes[0].set(xlabel="epoch", ylabel="test accuracy (%)")
    axes[1].set(xlabel="epoch", ylabel="test NLL")
    return fig


def eigenvalue_strips(ax: Axes, groups: dict[str, Sequence[float]], colors: dict[str, str] | None = None,
                      linthresh: float = 10.0, seed: int = 0) -> Axes:
    """Pooled Hessian eigenvalues, one jittered row of dots per group, on a symmetric-log axis.

    With a few dozen values per model a dot per value is more honest than a smoothed density;
    the vertical tick marks each group's median, the grey band the linear region |λ| < ``linthresh``
    of the axis, and the dashed line zero (values left of it are negative curvature).
    """
    rng = np.random.default_rng(seed)
    names = list(groups)
    for row, name in enumerate(names):
        values = np.asarray(groups[name], dtype=float)
        color = (colors or {}).get(name, "#444444")
        jitter = rng.uniform(-0.18, 0.18, size=len(values))
        ax.scatter(values, row + jitter, s=16, color=color, alpha=0.75, edgecolor="none")
        ax.plot([np.median(values)] * 2, [row - 0.32, row + 0.32], color=color, lw=2.5)
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.axvspan(-linthresh, linthresh, color="#f0f0f0", zorder=0)
    ax.axvline(0, color="#555555", lw=1, ls="--")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("Hessian eigenvalue (symmetric log scale)")
    return ax


def interval_bars(ax: Axes, x: Sequence[float] | np.ndarray, estimates: Sequence[Any], scale: float = 1.0,
                  **style: Any) -> Any:
    """Estimates as points with their intervals as error bars: at each ``x`` the ``value`` of an
    estimate (anything with ``value``, ``low`` and ``high``, e.g. :class:`lib.report.stats.Estimate`),
    the bar from ``low`` to ``high``, all times ``scale``. ``style`` goes to ``Axes.errorbar``."""
    values = np.array([e.value for e in estimates], dtype=float) * scale
    low = np.array([e.low for e in estimates], dtype=float) * scale
    high = np.array([e.high for e in estimates], dtype=float) * scale
    return ax.errorbar(x, values, yerr=[values - low, high - values], **style)


def hessian_ends(ax_strips: Axes, ax_ends: Axes, spectra: dict[str, Any], colors: dict[str, str]) -> None:
    """The two views of a Hessian spectrum per mini-batch, for each labelled model of ``spectra``
    (anything with ``top`` ``(batches, k)``, ``lambda_max`` and ``lambda_min`` per batch, e.g. the
    spectra of :mod:`lib.analyses.hessian`): left, Park & Kim's top-k eigenvalues by magnitude
    (:func:`eigenvalue_strips`); right, both ends of each batch's spectrum, one dot per batch,
    ``λ_max`` against ``−λ_min``. The caller titles the left panel (what its top-k are)."""
    eigenvalue_strips(ax_strips, {label: s.top.reshape(-1) for label, s in spectra.items()}, dict(colors))
    for label, s in spectra.items():
        ax_ends.scatter(s.lambda_max, -s.lambda_min, s=22, color=colors[label], label=label)
    ax_ends.set_xscale("log")
    ax_ends.xaxis.set_minor_formatter(plt.NullFormatter())  # label the decades only
    ax_ends.set_yscale("symlog", linthresh=1.0)
    ax_ends.set_ylim(bottom=0)  # −λ_min ≥ 0 whenever the batch has negative curvature
    ax_ends.set(xlabel="λ_max of the batch (log scale)", ylabel="−λ_min (symlog scale)")
    ax_ends.set_title("Both ends, certified: one dot per mini-batch", fontsize=10)
    ax_ends.legend(fontsize=8.5)


def run_points(ax: Axes, names: Sequence[str], seeds: Sequence[int], values: Mapping[tuple[str, int], float],
               matched: Mapping[tuple[str, int], float] | None = None, log: bool = False) -> Axes:
    """One point per training run: for each model of ``names`` (along x, labelled), the
    ``values[name, seed]`` of its runs as filled points in the model's colour and, when given, the
    ``matched[name, seed]`` values (e.g. at matched fit) as open points beside them. ``log`` puts
    the y axis on a log scale."""
    for k, name in enumerate(names):
        color = MODEL_COLORS[name]
        series = [(0.0, values, color)] if matched is None else [(-0.15, values, color), (0.15, matched, "none")]
        for shift, results, face in series:
            points = [results[name, seed] for seed in seeds]
            ax.scatter(np.full(len(points), k + shift), points, s=30, facecolors=face, edgecolors=color)
    ax.set_xticks(range(len(names)), [label(n) for n in names])
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1, 2, 5, 10, 20, ...
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 5 rather than 5×10⁰
        ax.yaxis.set_minor_formatter(NullFormatter())
    return ax


def shade_units(ax: Axes, units: Sequence[Any]) -> None:
    """Park & Kim's shading on a plot against normalised depth: MSA units grey, subsampling blue.

    ``units`` have ``kind``, ``stage`` and ``depth`` (e.g. :class:`lib.core.residual.UnitInfo`). As in
    Park & Kim's figures, a unit's band spans the segment of the curve that the unit produces:
    from the previous unit's point to its own (the first unit has no segment). A unit whose stage
    differs from its predecessor's (a pooling unit, or a strided first block) counts as subsampling.
    """
    for i in range(1, len(units)):
        u, before = units[i], units[i - 1]
        if u.kind == "msa":
            ax.axvspan(before.depth, u.depth, color=MSA_SHADE, zorder=0, lw=0)
        if u.stage != before.stage:
            ax.axvspan(before.depth, u.depth, color=SUBSAMPLE_SHADE, zorder=0, lw=0)


def depth_profile(ax: Axes, units: Sequence[Any], values: Sequence[float], log: bool = False) -> Axes:
    """One quantity per unit against normalised depth, as Park & Kim draw it: the units' bands
    (:func:`shade_units`), a grey line through the values and a dot per unit coloured by its kind."""
    if len(units) != len(values):
        raise ValueError(f"{len(units)} units for {len(values)} values")
    depth = [u.depth for u in units]
    shade_units(ax, units)
    ax.plot(depth, values, color="#555555", lw=1, zorder=1)
    ax.scatter(depth, values, c=[KIND_COLORS[u.kind] for u in units], s=34, zorder=2, edgecolor="white", lw=0.5)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("normalised depth")
    return ax


def _unit_ticks(units: Sequence[Any], every: int = 1) -> tuple[list[int], list[str]]:
    short = {"embed": "emb", "conv": "conv", "msa": "MSA", "mlp": "MLP", "pool": "pool", "head": "head"}
    idx = list(range(0, len(units), every))
    return idx, [short.get(units[i].kind, units[i].kind) for i in idx]


def similarity_heatmap(ax: Axes, matrix: np.ndarray, rows: Sequence[Any], cols: Sequence[Any],
                       title: str = "", vmin: float = 0.0, vmax: float = 1.0, colorbar: bool = True) -> Axes:
    """A units × units similarity matrix (e.g. CKA) with the first unit at the bottom left, as
    Raghu et al. draw it. ``rows`` and ``cols`` are the units (:class:`lib.core.residual.UnitInfo`): tick
    labels name each unit's kind in the kind's colour, and lines mark where a stage starts."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix of shape {matrix.shape} for {len(rows)} rows and {len(cols)} columns")
    if not np.isfinite(matrix).all():
        raise ValueError("the matrix holds NaN or infinite values; mask or remove them before plotting")
    image = ax.imshow(matrix, origin="lower", cmap="magma", vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    for axis_units, set_ticks, get_labels in ((cols, ax.set_xticks, ax.get_xticklabels),
                                             (rows, ax.set_yticks, ax.get_yticklabels)):
        idx, names = _unit_ticks(axis_units)
        set_ticks(idx, names, fontsize=7)
        for lab, i in zip(get_labels(), idx):
            lab.set_color(KIND_COLORS.get(axis_units[i].kind, "black"))
    ax.tick_params(axis="x", labelrotation=90)
    for i in range(1, len(cols)):
        if cols[i].stage != cols[i - 1].stage:
            ax.axvline(i - 0.5, color="white", lw=1)
    for i in range(1, len(rows)):
        if rows[i].stage != rows[i - 1].stage:
            ax.axhline(i - 0.5, color="white", lw=1)
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=11)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    return ax


def position_map(ax: Axes, values: np.ma.MaskedArray, position: tuple[int, int], title: str = "",
                 vmin: float = 0.0, vmax: float = 1.0):
    """A ``side × side`` map (e.g. the CKA of one token position with every input patch), masked
    cells hatched grey, the token's own position outlined. Returns the image for a shared colorbar."""
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    r, c = position
    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="white", lw=2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return image
