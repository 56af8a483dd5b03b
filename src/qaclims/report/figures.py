"""Report items rendered from the evaluation tables: PNG figures and an HTML stage table.

Figures use matplotlib's object API (``matplotlib.figure.Figure``, rendered by the Agg
backend; no pyplot global state) and are written atomically. Inputs are the tables the
evaluation stages write (:mod:`qaclims.cam.eval_cam`, :mod:`qaclims.evaluation.eval_labels`) and the
training ``history.parquet`` of :class:`qaclims.training.History`. Metric values in
those tables are fractions in [0, 1]; figures and the table show percentages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from qaclims.core.io import PathLike, atomic_path, voc_palette

log = logging.getLogger(__name__)

DPI = 100
#: history columns that are not loss terms: the step axis, the schedule, throughput and
#: counts (train_ritc logs its pairs per step and images per second beside its losses)
NON_LOSS_COLUMNS = ("step", "epoch", "lr", "iter", "time", "pairs", "skipped", "img_per_s")


def loss_columns(history: pd.DataFrame) -> list[str]:
    """The numeric columns of a training history that are loss terms (not the schedule, not
    counts, not ``group:key`` columns such as train_ritc's per-class ``pairs:c``)."""
    return [
        c
        for c in history.columns
        if c not in NON_LOSS_COLUMNS
        and ":" not in str(c)
        and pd.api.types.is_numeric_dtype(history[c])
    ]


def _save(fig: Figure, out_png: PathLike) -> None:
    """Render ``fig`` to ``out_png`` atomically."""
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    log.info("wrote %s", out_png)


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(df.columns)}")


# ---------------------------------------------------------------- per-class IoU


#: classes per row of the per-class bar chart (VOC's 21 in one row; COCO's 81 in four)
CLASSES_PER_PANEL = 21


def plot_per_class_iou(
    per_class_tables: Mapping[str, pd.DataFrame], out_png: PathLike, title: str = ""
) -> None:
    """Grouped bar plot: one group per class, one bar per method (IoU in %), in rows of at
    most :data:`CLASSES_PER_PANEL` classes so that 21 and 81 classes stay readable at one
    width.

    Args:
        per_class_tables: method name -> per-class table (``class, iou``; iou in [0, 1]
            or NaN, drawn as a missing bar), all with the same classes in the same order.
        out_png: PNG path.
        title: figure title.
    """
    if not per_class_tables:
        raise ValueError("no per-class table to plot")
    names = list(per_class_tables)
    classes = list(per_class_tables[names[0]]["class"])
    for name, df in per_class_tables.items():
        _need(df, ["class", "iou"], f"per-class table {name!r}")
        if list(df["class"]) != classes:
            raise ValueError(f"per-class table {name!r} lists other classes than {names[0]!r}")
    width = 0.8 / len(names)
    panels = -(-len(classes) // CLASSES_PER_PANEL)
    per_panel = -(-len(classes) // panels)  # balanced: 81 classes -> 4 panels of 21/20
    fig = Figure(figsize=(11.0, 0.6 + 3.2 * panels))
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    for p, ax in enumerate(axes):
        part = slice(p * per_panel, (p + 1) * per_panel)
        x = np.arange(len(classes[part]))
        for i, name in enumerate(names):
            iou = 100 * per_class_tables[name]["iou"].to_numpy(dtype=np.float64)
            ax.bar(x - 0.4 + (i + 0.5) * width, iou[part], width,
                   label=_label(name, iou), color=f"C{i}")  # fmt: skip
        ax.set_xticks(x, classes[part], rotation=45, ha="right", fontsize="small")
        ax.set_xlim(-0.6, per_panel - 0.4)
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=2)
    axes[0].set_title(title, loc="right")
    fig.tight_layout()
    _save(fig, out_png)


def _label(name: str, iou_percent: np.ndarray) -> str:
    valid = iou_percent[~np.isnan(iou_percent)]
    return f"{name} (mIoU {valid.mean():.1f})" if valid.size else name


# ---------------------------------------------------------------- threshold sweep


def plot_sweep(
    sweeps: Mapping[str, pd.DataFrame],
    out_png: PathLike,
    fixed_threshold: float | None = 0.15,
    title: str = "",
) -> None:
    """mIoU (%) against the background threshold, one curve per method.

    Args:
        sweeps: method name -> sweep table (``threshold, miou``; miou in [0, 1]).
        out_png: PNG path.
        fixed_threshold: the threshold used downstream, marked by a dashed line.
        title: figure title.

    Each curve's best point is marked; it is tuned on GT, an upper bound.
    """
    if not sweeps:
        raise ValueError("no sweep table to plot")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, df in sweeps.items():
        _need(df, ["threshold", "miou"], f"sweep table {name!r}")
        d = df.sort_values("threshold")
        m = 100 * d["miou"].to_numpy(dtype=np.float64)
        (line,) = ax.plot(d["threshold"], m, marker=".", label=name)
        if not np.isnan(m).all():
            i = int(np.nanargmax(m))
            ax.plot(d["threshold"].iloc[i], m[i], "*", ms=12, color=line.get_color())
    if fixed_threshold is not None:
        ax.axvline(fixed_threshold, ls="--", color="k", label=f"fixed {fixed_threshold:g}")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize="small", title="★ best (GT-tuned)")
    ax.set_title(title)
    _save(fig, out_png)


# ---------------------------------------------------------------- training history


def plot_history(history: pd.DataFrame, out_png: PathLike, title: str = "") -> None:
    """Loss curves against ``step`` (or the row number), plus the lr if logged.

    Args:
        history: table of :class:`qaclims.training.History`: numeric loss columns and
            optionally ``step``, ``epoch``, ``lr``.
        out_png: PNG path.
        title: figure title.
    """
    losses = loss_columns(history)
    if not losses:
        raise ValueError(f"history has no loss column; it has {list(history.columns)}")
    x = history["step"] if "step" in history.columns else pd.Series(np.arange(len(history)))
    has_lr = "lr" in history.columns
    fig = Figure(figsize=(7, 5 if has_lr else 3.5))
    axes = fig.subplots(2 if has_lr else 1, 1, sharex=True, squeeze=False)[:, 0]
    for c in losses:
        axes[0].plot(x, history[c], label=c)
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize="small")
    axes[0].set_title(title)
    if has_lr:
        axes[1].plot(x, history["lr"], color="k")
        axes[1].set_ylabel("lr")
    axes[-1].set_xlabel("step" if "step" in history.columns else "logged row")
    _save(fig, out_png)


def plot_histories(histories: dict[str, pd.DataFrame], out_png: PathLike) -> Figure:
    """One panel per training stage, stacked: that stage's loss terms only (each stage on
    its own y scale) against ``step`` (optimiser steps done), its learning rate dashed on
    a right-hand axis when logged. Stages without a loss column are skipped.

    Args:
        histories: stage name -> table of :class:`qaclims.training.History`, in order.
        out_png: PNG path.

    Returns:
        The figure (also written to ``out_png``).
    """
    panels = [(k, df) for k, df in histories.items() if loss_columns(df) and len(df)]
    if not panels:
        raise ValueError("no training history with a loss column")
    fig = Figure(figsize=(7, 2.4 * len(panels) + 0.4))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (name, df) in zip(axes, panels, strict=True):
        x = df["step"] if "step" in df.columns else pd.Series(np.arange(len(df)))
        for c in loss_columns(df):
            ax.plot(x, df[c], label=c)
        ax.set_title(name, fontsize="medium", loc="left")
        ax.set_ylabel("loss")
        ax.set_xlabel("step" if "step" in df.columns else "logged row")
        ax.legend(fontsize="small", loc="upper right")
        if "lr" in df.columns:
            twin = ax.twinx()
            twin.plot(x, df["lr"], color="0.4", linestyle="--", linewidth=1)
            twin.set_ylabel("lr (dashed)", fontsize="small")
    fig.tight_layout()
    _save(fig, out_png)
    return fig


# ---------------------------------------------------------------- overlays


def colorize_labels(label: np.ndarray) -> np.ndarray:
    """``HxW`` int label map (0..C, 255) -> ``HxWx3 uint8`` VOC-palette colours."""
    pal = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return pal[np.asarray(label).astype(np.uint8)]


def heatmap(cam: np.ndarray) -> np.ndarray:
    """``HxW`` float in [0, 1] (``KxHxW``: max over K) -> ``HxWx3 float64`` jet RGB in [0, 1]."""
    c = np.asarray(cam, dtype=np.float64)
    if c.ndim == 3:
        c = c.max(axis=0) if c.shape[0] else np.zeros(c.shape[1:])
    rgba = colormaps["jet"](np.clip(c, 0.0, 1.0))
    return np.asarray(rgba, dtype=np.float64)[..., :3]


def blend_overlay(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a label map or CAM over an image.

    Args:
        image: ``HxWx3 uint8`` RGB.
        overlay: ``HxW`` integer label map (0 background left as is, ``c`` in VOC colours,
            255 in the VOC void colour) or ``HxW`` / ``KxHxW`` float CAM in [0, 1] (jet).
        alpha: overlay weight in [0, 1].

    Returns:
        ``HxWx3 uint8``: ``(1 - alpha) * image + alpha * colour`` where drawn.
    """
    img = np.asarray(image, dtype=np.float64)
    ov = np.asarray(overlay)
    if ov.shape[-2:] != img.shape[:2]:
        raise ValueError(f"overlay {ov.shape} does not match image {img.shape}")
    if np.issubdtype(ov.dtype, np.integer):
        colour = colorize_labels(ov).astype(np.float64)
        drawn = (ov != 0)[..., None]
    else:
        colour = 255.0 * heatmap(ov)
        drawn = np.ones((*img.shape[:2], 1), dtype=bool)
    out = np.where(drawn, (1 - alpha) * img + alpha * colour, img)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_grid(
    images: Sequence[np.ndarray],
    overlays: Mapping[str, Sequence[np.ndarray]] | Sequence[np.ndarray],
    out_png: PathLike,
    row_titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    panel_inches: float = 2.5,
    label_names: Mapping[int, str] | None = None,
) -> None:
    """Grid of overlays: one row per image, the image then one column per overlay kind.

    Args:
        images: ``HxWx3 uint8`` RGB images.
        overlays: column name -> one overlay per image (see :func:`blend_overlay`), or a
            single sequence (one column named "overlay").
        out_png: PNG path.
        row_titles: e.g. image ids, one per image.
        alpha: overlay weight in [0, 1].
        panel_inches: size of one panel.
        label_names: label value -> name: a legend of their colours under the grid; a CAM
            column adds a colour bar of the CAM scale (0 to 1, jet).
    """
    cols = dict(overlays) if isinstance(overlays, Mapping) else {"overlay": overlays}
    for name, seq in cols.items():
        if len(seq) != len(images):
            raise ValueError(f"column {name!r} has {len(seq)} overlays for {len(images)} images")
    if not images:
        raise ValueError("no image to draw")
    n_rows, n_cols = len(images), 1 + len(cols)
    fig = Figure(figsize=(panel_inches * n_cols, panel_inches * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, img in enumerate(images):
        panels = [np.asarray(img)] + [blend_overlay(img, s[r], alpha) for s in cols.values()]
        for c, (panel, name) in enumerate(zip(panels, ["image", *cols], strict=True)):
            ax = axes[r, c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize="small")
        if row_titles is not None:
            axes[r, 0].text(
                -0.05,
                0.5,
                str(row_titles[r]),
                transform=axes[r, 0].transAxes,
                rotation=90,
                va="center",
                ha="right",
                fontsize="small",
            )
    cams = any(not np.issubdtype(np.asarray(s[0]).dtype, np.integer) for s in cols.values())
    if cams:  # the CAM scale in a margin of its own, right of the grid
        fig.subplots_adjust(right=0.9)
        where = fig.add_axes((0.925, 0.35, 0.015, 0.3))
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), "jet"), cax=where)
        bar.set_label("CAM", fontsize="small")
    if label_names:
        pal = np.asarray(voc_palette(), dtype=np.float64).reshape(256, 3) / 255.0
        handles = [Patch(color=pal[v], label=n) for v, n in sorted(label_names.items())]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8),
                   fontsize="small", frameon=False)  # fmt: skip
        fig.subplots_adjust(bottom=0.04 + 0.25 / n_rows)
    _save(fig, out_png)
