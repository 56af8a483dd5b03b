"""Assemble the run's report items from what the evaluation and training stages wrote.

Called by the ``report`` rule; every item it writes is also registered in the Snakemake
report (``snakemake --report``). Items: the per-stage mIoU table (HTML), per-class IoU bars
and table (HTML, with RITC's dead-class flag), threshold-sweep curves, training-loss curves,
CAM / mask overlays for a few images, and the QAPE corpus (HTML).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

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
from qaclims.report.overlay import overlay_frame, overlay_rows, read_overlay_sample
from qaclims.report.summary import submission_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalItem:
    """One evaluated stage: a label (``"CAM (baseline)"``), its summary and per-class table."""

    label: str
    summary: Path
    per_class: Path
    sweep: Path | None = None


@dataclass(frozen=True)
class OverlayColumn:
    """One overlay column after image and ground truth: its title, what it shows (``"cam"``:
    a class's CAM; ``"labels"``: a label map) and the sample file holding its maps for the
    overlay rows (written by :func:`qaclims.report.overlay.write_overlay_sample`)."""

    label: str
    kind: str
    sample: Path


@dataclass(frozen=True)
class OverlaySources:
    """What the overlay grid shows: the manifest its rows come from, its columns in order,
    and ``classes.json`` (row titles, colour legend)."""

    manifest: Path
    columns: Sequence[OverlayColumn] = ()
    classes: Path | None = None


def _placeholder(out_png: Path, text: str) -> None:
    fig = Figure(figsize=(4, 1))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def stage_rows(items: Sequence[EvalItem]) -> list[dict[str, object]]:
    """Rows of the stage table: each summary's figures plus its stage label."""
    return [dict(read_json(it.summary), stage=it.label) for it in items]


def write_overlays(src: OverlaySources, out_png: Path, num: int) -> None:
    """One row per class (:func:`~qaclims.report.overlay.overlay_rows`): image | GT | each
    column (a CAM of that class, or a label map; zeros where the column had none), with the
    class colours and the CAM scale as legends."""
    df = overlay_frame(src.manifest)
    rows = overlay_rows(df, num)
    if not rows:
        _placeholder(out_png, "no image with ground truth")
        return
    names = list(read_json(src.classes)["classes"]) if src.classes else []
    keys = [(str(df.iloc[i]["image_id"]), c) for i, c in rows]
    maps = {col.label: read_overlay_sample(col.sample, keys) for col in src.columns}
    images, titles, cols = [], [], {"ground truth": []}  # type: ignore[var-annotated]
    cols.update({col.label: [] for col in src.columns})
    shown: set[int] = set()
    for r, (i, c) in enumerate(rows):
        row = df.iloc[i]
        img = read_image(row["image_path"])
        images.append(img)
        name = names[c] if c < len(names) else f"class {c}"
        titles.append(f"{row['image_id']}: {name}")
        gt = read_label_png(row["gt_path"]).astype(np.int64)
        cols["ground truth"].append(gt)
        shown |= set(np.unique(gt).tolist())
        for col in src.columns:
            m = maps[col.label][r]
            if col.kind == "cam":
                cols[col.label].append(np.zeros(img.shape[:2], np.float32) if m is None else m)
            else:
                lab = np.zeros(img.shape[:2], np.int64) if m is None else m.astype(np.int64)
                cols[col.label].append(lab)
                shown |= set(np.unique(lab).tolist())
    legend = {v: names[v - 1] for v in sorted(shown) if 0 < v <= len(names)}
    legend.update({255: "ignore"} if 255 in shown else {})
    report.overlay_grid(images, cols, out_png, row_titles=titles, label_names=legend)


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
    submissions: Sequence[Path] = (),
) -> None:
    """Write ``index.html``, ``per_class_iou.png``, ``per_class.html``, ``sweep.png``,
    ``losses.png``, ``overlays.png`` and ``corpus.html`` into ``out_dir``.

    The per-class table compares every stage with the first (the baseline CAM) and flags
    classes whose CAMs RITC's guard saw die (share of dead pairs >= ``dead_warn``).
    ``submissions``: summaries of rule voc_submission, quoted below the stage table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables.stage_table_html(
        stage_rows(evals),
        out_dir / "index.html",
        "QA-CLIMS: mIoU per stage",
        notes=[submission_line(p) for p in submissions],
    )
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
