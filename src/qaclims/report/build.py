"""Assemble the run's report items from what the evaluation and training stages wrote.

Called by the ``report`` rule; every item it writes is also registered in the Snakemake
report (``snakemake --report``). Items: the per-stage mIoU table (HTML), per-class IoU bars
and table (HTML, with RITC's dead-class flag), threshold-sweep curves, training-loss curves,
CAM / mask overlays for a few images, and the QAPE corpus (HTML).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qaclims.artifacts import camfile
from qaclims.artifacts.tables import dead_cam_shares
from qaclims.core.io import (
    atomic_path,
    read_image,
    read_json,
    read_label_png,
    read_parquet,
)
from qaclims.report import figures as report
from qaclims.report import tables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalItem:
    """One evaluated stage: a label (``"CAM (baseline)"``), its summary and per-class table."""

    label: str
    summary: Path
    per_class: Path
    sweep: Path | None = None


@dataclass(frozen=True)
class OverlaySources:
    """Where to find per-image overlays: label-map folders and CAM folders, by column name."""

    manifest: Path
    cam_dirs: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    label_dirs: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    classes: Path | None = None  # classes.json: the row titles and the colour legend


def _placeholder(out_png: Path, text: str) -> None:
    fig = Figure(figsize=(4, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def _find(dirs: Sequence[Path], name: str) -> Path | None:
    for d in dirs:
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


def stage_rows(items: Sequence[EvalItem]) -> list[dict[str, object]]:
    """Rows of the stage table: each summary's figures plus its stage label."""
    return [dict(read_json(it.summary), stage=it.label) for it in items]


def overlay_rows(df: pd.DataFrame, num: int) -> list[tuple[int, int]]:
    """Which (manifest row, class index) pairs the overlay grid shows: one row per class,
    in class order, each with the first image (by id) holding it that no earlier row took
    (any image if all are taken), so ``num`` rows cover the first ``num`` classes that have
    an image. ``df``: manifest rows with ground truth, sorted by id (``labels`` column)."""
    labels = [set(int(c) for c in lab) for lab in df["labels"]]
    classes = sorted(set().union(*labels)) if labels else []
    used: set[int] = set()
    rows = []
    for c in classes[:num]:
        having = [i for i, lab in enumerate(labels) if c in lab]
        pick = next((i for i in having if i not in used), having[0])
        used.add(pick)
        rows.append((pick, c))
    return rows


def write_overlays(src: OverlaySources, out_png: Path, num: int) -> None:
    """One row per class (see :func:`overlay_rows`): image | GT | each CAM (that class's
    channel) | each label map, with the class colours and the CAM scale as legends."""
    df = read_parquet(src.manifest)
    df = df[df["gt_path"].astype(str) != ""].sort_values("image_id").reset_index(drop=True)
    rows = overlay_rows(df, num)
    if not rows:
        _placeholder(out_png, "no image with ground truth")
        return
    names = list(read_json(src.classes)["classes"]) if src.classes else []
    images, titles, cols = [], [], {"ground truth": []}  # type: ignore[var-annotated]
    cols.update({k: [] for k in [*src.cam_dirs, *src.label_dirs]})
    shown: set[int] = set()
    for i, c in rows:
        row = df.iloc[i]
        img = read_image(row["image_path"])
        images.append(img)
        name = names[c] if c < len(names) else f"class {c}"
        titles.append(f"{row['image_id']}: {name}")
        gt = read_label_png(row["gt_path"]).astype(np.int64)
        cols["ground truth"].append(gt)
        shown |= set(np.unique(gt).tolist())
        for col, dirs in src.cam_dirs.items():
            cols[col].append(_class_cam(_find(dirs, f"{row['image_id']}.npz"), c, img.shape[:2]))
        for col, dirs in src.label_dirs.items():
            p = _find(dirs, f"{row['image_id']}.png")
            lab = read_label_png(p) if p else np.zeros(img.shape[:2], np.uint8)
            cols[col].append(lab.astype(np.int64))
            shown |= set(np.unique(lab).tolist())
    legend = {v: names[v - 1] for v in sorted(shown) if 0 < v <= len(names)}
    legend.update({255: "ignore"} if 255 in shown else {})
    report.overlay_grid(images, cols, out_png, row_titles=titles, label_names=legend)


def _class_cam(path: Path | None, c: int, size: tuple[int, ...]) -> np.ndarray:
    """Class ``c``'s CAM in [0, 1] (``HxW float32``) from a CAM file; zeros if absent."""
    if path is None:
        return np.zeros(size, np.float32)
    keys, cams = camfile.read_cam(path)
    where = [int(k) for k in keys]
    return cams[where.index(c)] if c in where else np.zeros(size, np.float32)


def last_epoch_dead(history: Path | None, classes: Sequence[str]) -> dict[str, float]:
    """RITC's share of dead CAMs per class name in its last epoch ({} without a history
    holding the guard's counts). ``classes``: the per-class table's names, background
    first, so class index ``c`` is ``classes[c + 1]``."""
    if history is None or not Path(history).is_file():
        return {}
    shares = dead_cam_shares(read_parquet(history))
    if shares.empty:
        return {}
    last = shares[shares["epoch"] == shares["epoch"].max()]
    pairs = zip(last["class_index"], last["share"], strict=True)
    return {classes[int(c) + 1]: float(v) for c, v in pairs}


def run(
    evals: Sequence[EvalItem],
    histories: Mapping[str, Path],
    corpus_stats: Path | None,
    overlays: OverlaySources,
    out_dir: Path,
    num_overlays: int = 6,
    fixed_threshold: float = 0.15,
    dead_warn: float = 0.5,
) -> None:
    """Write ``index.html``, ``per_class_iou.png``, ``per_class.html``, ``sweep.png``,
    ``losses.png``, ``overlays.png`` and ``corpus.html`` into ``out_dir``.

    The per-class table compares every stage with the first (the baseline CAM) and flags
    classes whose CAMs RITC's guard saw die (share of dead pairs >= ``dead_warn``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables.stage_table_html(stage_rows(evals), out_dir / "index.html", "QA-CLIMS: mIoU per stage")
    per_class = {it.label: read_parquet(it.per_class) for it in evals}
    report.plot_per_class_iou(per_class, out_dir / "per_class_iou.png", "IoU per class")
    classes = list(next(iter(per_class.values()))["class"])
    dead = last_epoch_dead(histories.get("train_ritc"), classes)
    table = tables.per_class_table(per_class, evals[0].label, dead, dead_warn)
    tables.per_class_html(table, out_dir / "per_class.html", "IoU per class (%)")
    sweeps = {it.label: read_parquet(it.sweep) for it in evals if it.sweep is not None}
    if sweeps:
        report.plot_sweep(sweeps, out_dir / "sweep.png", fixed_threshold, "CAM threshold sweep")
    else:
        _placeholder(out_dir / "sweep.png", "no threshold sweep")
    write_losses(histories, out_dir / "losses.png")
    write_overlays(overlays, out_dir / "overlays.png", num_overlays)
    stats = read_parquet(corpus_stats) if corpus_stats is not None else None
    tables.corpus_html(stats, out_dir / "corpus.html")


def write_losses(histories: Mapping[str, Path], out_png: Path) -> None:
    """One loss-curve panel per training stage, stacked."""
    frames = {k: read_parquet(p) for k, p in histories.items()}
    if not frames:
        _placeholder(out_png, "no training history")
        return
    frames = {k: df for k, df in frames.items() if report.loss_columns(df) and len(df)}
    if not frames:
        _placeholder(out_png, "no training history with a loss column")
        return
    report.plot_histories(frames, out_png)
