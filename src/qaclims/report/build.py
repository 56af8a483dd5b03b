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
import pandas as pd
from matplotlib.figure import Figure

from qaclims.artifacts import camfile
from qaclims.artifacts.tables import dead_cam_shares
from qaclims.core.io import (
    atomic_path,
    read_image,
    read_json,
    read_label_png,
    read_npz,
    read_parquet,
    write_npz,
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
class OverlayColumn:
    """One overlay column after image and ground truth: its title, what it shows (``"cam"``:
    a class's CAM; ``"labels"``: a label map) and the sample file holding its maps for the
    overlay rows (written by :func:`write_overlay_sample`)."""

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


OVERLAY_KINDS = ("cam", "labels")


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


def overlay_frame(manifest: Path) -> pd.DataFrame:
    """The manifest rows the overlays may show: those with ground truth, sorted by id."""
    df = read_parquet(manifest)
    return df[df["gt_path"].astype(str) != ""].sort_values("image_id").reset_index(drop=True)


def write_overlay_sample(
    manifest: Path, dirs: Sequence[Path], kind: str, num: int, out: Path
) -> None:
    """Copy the maps the overlay grid shows out of one column's shard folders into ``out``.

    The rows are :func:`overlay_rows` of :func:`overlay_frame` (``num`` of them). ``out`` is
    an ``.npz`` holding ``image_ids`` (str, one per row), ``classes`` (int64, one per row)
    and, per row ``j`` whose file exists, ``map_j``: for ``kind="cam"`` that class's CAM
    (``HxW float32`` in [0, 1], from ``<dir>/<id>.npz``), for ``"labels"`` the label map
    (``HxW uint8``, from ``<dir>/<id>.png``). The report then needs this small file, not
    the folders, so CAM folders made ``temp()`` go once the refinement has read them.
    """
    if kind not in OVERLAY_KINDS:
        raise ValueError(f"overlay kind must be one of {OVERLAY_KINDS}, got {kind!r}")
    df = overlay_frame(manifest)
    rows = overlay_rows(df, num)
    ids = [str(df.iloc[i]["image_id"]) for i, _ in rows]
    arrays: dict[str, np.ndarray] = {
        "image_ids": np.array(ids, dtype=str),
        "classes": np.array([c for _, c in rows], dtype=np.int64),
    }
    for j, ((_, c), image_id) in enumerate(zip(rows, ids, strict=True)):
        if kind == "cam":
            path = _find(dirs, f"{image_id}.npz")
            if path is not None:
                keys, cams = camfile.read_cam(path)
                where = [int(k) for k in keys]
                if c in where:
                    arrays[f"map_{j}"] = cams[where.index(c)].astype(np.float32)
        else:
            path = _find(dirs, f"{image_id}.png")
            if path is not None:
                arrays[f"map_{j}"] = read_label_png(path)
    write_npz(out, arrays, compress=True)


def read_overlay_sample(path: Path, rows: Sequence[tuple[str, int]]) -> list[np.ndarray | None]:
    """The maps of a sample file for ``rows`` (``(image_id, class)`` in grid order); ``None``
    where the column had no map. Raises ``ValueError`` naming the file when it was made for
    other rows (a stale or foreign sample)."""
    z = read_npz(path)
    ids, classes = [str(i) for i in z["image_ids"]], [int(c) for c in z["classes"]]
    have = list(zip(ids, classes, strict=True))
    if have != list(rows):
        raise ValueError(f"{path}: overlay sample holds rows {have}, the report wants {rows}")
    return [z.get(f"map_{j}") for j in range(len(rows))]


def write_overlays(src: OverlaySources, out_png: Path, num: int) -> None:
    """One row per class (see :func:`overlay_rows`): image | GT | each column (a CAM of that
    class, or a label map; zeros where the column had none), with the class colours and
    the CAM scale as legends."""
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
