"""The overlay grid's rows and the samples of its columns (rule ``overlay_sample``).

A sample is the few maps one overlay column shows, copied out of that column's shard folders
(make_cam, make_sem_seg, infer_deeplab) as soon as they exist, so the report never reads the
folders: ``temp()`` CAM folders go once the refinement has read them. A sample holds the rows
of *every* class, so neither ``report.num_overlays`` nor the report's plotting code is one of
its inputs: changing them redoes the report alone, never a sample, whose CAMs may be gone
(remaking them would redo make_cam and all that follows).

This module imports no plotting code, so editing the figures does not rerun the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qaclims.artifacts import camfile
from qaclims.core.io import read_label_png, read_npz, read_parquet, write_npz

#: what a column shows: ``cam`` a class's CAM, ``labels`` a label map
KINDS = ("cam", "labels")


def overlay_frame(manifest: Path) -> pd.DataFrame:
    """The manifest rows the overlays may show: those with ground truth, sorted by id."""
    df = read_parquet(manifest)
    return df[df["gt_path"].astype(str) != ""].sort_values("image_id").reset_index(drop=True)


def overlay_rows(df: pd.DataFrame, num: int | None = None) -> list[tuple[int, int]]:
    """Which (row of ``df``, class index) pairs the overlay grid shows: one row per class,
    in class order, each with the first image (by id) holding it that no earlier row took
    (any image if all are taken), so ``num`` rows cover the first ``num`` classes that have
    an image (``None``: every such class). The rows for ``num`` are the first ``num`` rows
    for any larger ``num``. ``df``: manifest rows sorted by id (``labels`` column)."""
    labels = [set(int(c) for c in lab) for lab in df["labels"]]
    classes = sorted(set().union(*labels)) if labels else []
    used: set[int] = set()
    rows = []
    for c in classes if num is None else classes[:num]:
        having = [i for i, lab in enumerate(labels) if c in lab]
        pick = next((i for i in having if i not in used), having[0])
        used.add(pick)
        rows.append((pick, c))
    return rows


def _find(dirs: Sequence[Path], name: str) -> Path | None:
    for d in dirs:
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


def write_overlay_sample(manifest: Path, dirs: Sequence[Path], kind: str, out: Path) -> None:
    """Copy one column's maps for every row of :func:`overlay_rows` (all classes) of
    :func:`overlay_frame` out of its shard folders ``dirs`` into ``out``.

    ``out`` is an ``.npz`` holding ``image_ids`` (str, one per row), ``classes`` (int64, one
    per row) and, per row ``j`` whose file exists, ``map_j``: for ``kind="cam"`` that
    class's CAM (``HxW float16`` in [0, 1], from ``<dir>/<id>.npz``), for ``"labels"`` the
    label map (``HxW uint8``, from ``<dir>/<id>.png``).
    """
    if kind not in KINDS:
        raise ValueError(f"overlay kind must be one of {KINDS}, got {kind!r}")
    df = overlay_frame(manifest)
    rows = overlay_rows(df)
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
                    arrays[f"map_{j}"] = cams[where.index(c)].astype(np.float16)
        else:
            path = _find(dirs, f"{image_id}.png")
            if path is not None:
                arrays[f"map_{j}"] = read_label_png(path)
    write_npz(out, arrays, compress=True)


def read_overlay_sample(path: Path, rows: Sequence[tuple[str, int]]) -> list[np.ndarray | None]:
    """A sample's maps for ``rows`` (``(image_id, class)`` in grid order, the first rows of
    the sample): CAMs as ``HxW float32`` in [0, 1], label maps ``HxW uint8``; ``None`` where
    the column had no map. Raises ``ValueError`` naming the file when its rows do not start
    with ``rows`` (a sample of other data)."""
    z = read_npz(path)
    ids, classes = [str(i) for i in z["image_ids"]], [int(c) for c in z["classes"]]
    have = list(zip(ids, classes, strict=True))[: len(rows)]
    if have != list(rows):
        raise ValueError(f"{path}: overlay sample holds rows {have}, the report wants {rows}")
    maps = [z.get(f"map_{j}") for j in range(len(rows))]
    return [m.astype(np.float32) if m is not None and m.dtype == np.float16 else m for m in maps]
