"""Assemble the run's report items from what the evaluation and training stages wrote.

Called by the ``report`` rule; every item it writes is also registered in the Snakemake
report (``snakemake --report``). Items: the per-stage mIoU table (HTML), per-class IoU bars,
threshold-sweep curves, training-loss curves, CAM / mask overlays for a few images, and the
QAPE corpus statistics (HTML).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qaclims.core.io import (
    atomic_path,
    read_image,
    read_json,
    read_label_png,
    read_npz,
    read_parquet,
)
from qaclims.report import figures as report

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


def write_overlays(src: OverlaySources, out_png: Path, num: int) -> None:
    """Image | GT | each CAM | each label map, for the first ``num`` images having GT."""
    df = read_parquet(src.manifest)
    df = df[df["gt_path"].astype(str) != ""].sort_values("image_id").head(num)
    if df.empty or num == 0:
        _placeholder(out_png, "no image with ground truth")
        return
    images, cols, ids = [], {"ground truth": []}, []  # type: ignore[var-annotated]
    cols.update({k: [] for k in [*src.cam_dirs, *src.label_dirs]})
    for row in df.itertuples():
        img = read_image(row.image_path)
        images.append(img)
        ids.append(row.image_id)
        cols["ground truth"].append(read_label_png(row.gt_path).astype(np.int64))
        for name, dirs in src.cam_dirs.items():
            p = _find(dirs, f"{row.image_id}.npz")
            cam = read_npz(p)["cam"].astype(np.float32) if p else np.zeros(img.shape[:2])
            cols[name].append(cam if cam.size else np.zeros(img.shape[:2], np.float32))
        for name, dirs in src.label_dirs.items():
            p = _find(dirs, f"{row.image_id}.png")
            lab = read_label_png(p) if p else np.zeros(img.shape[:2], np.uint8)
            cols[name].append(lab.astype(np.int64))
    report.overlay_grid(images, cols, out_png, row_titles=ids)


def write_corpus_table(stats: Path | None, out_html: Path, top: int = 40) -> None:
    """The corpus statistics table (first ``top`` rows) as HTML."""
    if stats is None:
        body = "<p>QAPE corpus not built in this run.</p>"
    else:
        body = read_parquet(stats).head(top).to_html(index=False, float_format="%.3f")
    with atomic_path(out_html) as tmp:
        tmp.write_text(
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Corpus</title></head>'
            f"<body><h2>{html.escape('QAPE corpus statistics')}</h2>{body}</body></html>\n"
        )


def run(
    evals: Sequence[EvalItem],
    histories: Mapping[str, Path],
    corpus_stats: Path | None,
    overlays: OverlaySources,
    out_dir: Path,
    num_overlays: int = 6,
    fixed_threshold: float = 0.15,
) -> None:
    """Write ``index.html``, ``per_class_iou.png``, ``sweep.png``, ``losses.png``,
    ``overlays.png`` and ``corpus.html`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.stage_table_html(stage_rows(evals), out_dir / "index.html", "QA-CLIMS: mIoU per stage")
    tables = {it.label: read_parquet(it.per_class) for it in evals}
    report.plot_per_class_iou(tables, out_dir / "per_class_iou.png", "IoU per class")
    sweeps = {it.label: read_parquet(it.sweep) for it in evals if it.sweep is not None}
    if sweeps:
        report.plot_sweep(sweeps, out_dir / "sweep.png", fixed_threshold, "CAM threshold sweep")
    else:
        _placeholder(out_dir / "sweep.png", "no threshold sweep")
    write_losses(histories, out_dir / "losses.png")
    write_overlays(overlays, out_dir / "overlays.png", num_overlays)
    write_corpus_table(corpus_stats, out_dir / "corpus.html")


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
