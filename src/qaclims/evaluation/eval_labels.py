"""Scoring label-PNG predictions against a split's ground truth (eval_sem_seg, seeds, eval_deeplab).

Predictions are ``<pred_dir>/<image_id>.png`` single-channel label maps (``0``
background, ``c+1`` class ``c``, ``255`` = no prediction, e.g. an uncertain seed pixel),
spread over one or more shard folders. Only manifest images with a ``gt_path`` are
scored; one confusion matrix is accumulated over the whole split (see
:mod:`qaclims.evaluation.metrics`).

Prediction pixels equal to 255 are handled by ``ignore_pred_255``:

- ``"error"``: any such pixel is an error naming the file (right for dense predictions);
- ``"exclude"``: those pixels are left out of the confusion;
- ``"as_background"``: they count as background predictions.

Whatever the mode, the summary also reports ``coverage`` (fraction of GT-labelled
pixels whose prediction is not 255) and ``miou_covered`` (mIoU on those pixels only).

This module also holds the helpers the CAM evaluation shares: reading the evaluated
manifest rows, finding per-image files across shard folders, reading GT, and writing
the summary / per-class outputs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qaclims.artifacts.shards import files_for
from qaclims.core import io, parallel
from qaclims.core.errors import ConfigError, DataError
from qaclims.evaluation.metrics import (
    IGNORE_INDEX,
    all_background_confusion,
    confusion,
    miou,
    per_class_frame,
    pixel_accuracy,
)

log = logging.getLogger(__name__)

IGNORE_PRED_MODES = ("error", "exclude", "as_background")
MANIFEST_COLUMNS = ["image_id", "gt_path"]
MAX_LISTED = 5


@dataclass(frozen=True)
class EvalLabelsConfig:
    """How label-PNG predictions are scored.

    ``ignore_pred_255``: ``"error" | "exclude" | "as_background"`` (see module doc).
    """

    ignore_pred_255: str = "error"

    def __post_init__(self) -> None:
        if self.ignore_pred_255 not in IGNORE_PRED_MODES:
            raise ConfigError(
                f"config key ignore_pred_255 is {self.ignore_pred_255!r}; "
                f"expected one of {', '.join(IGNORE_PRED_MODES)}"
            )


# ---------------------------------------------------------------- shared helpers


def class_names(classes: Sequence[str]) -> list[str]:
    """``["background", *classes]``: one name per label value ``0..C``."""
    return ["background", *classes]


def evaluated_rows(manifest: Path) -> tuple[pd.DataFrame, int]:
    """Manifest rows that have ground truth (``gt_path != ""``) and the manifest's row count.

    Raises :class:`DataError` naming the manifest when no row has ground truth or a
    GT file is missing (checked before any scoring).
    """
    df = io.read_parquet(manifest, columns=MANIFEST_COLUMNS)
    rows = df[df["gt_path"].astype(str) != ""].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"no image in manifest {manifest} has a gt_path; nothing to evaluate")
    missing = [p for p in rows["gt_path"] if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} GT files listed in {manifest} are missing, e.g. "
            f"{', '.join(map(str, missing[:MAX_LISTED]))}"
        )
    return rows, len(df)


def match_files(ids: Sequence[str], dirs: Sequence[Path], suffix: str) -> list[Path]:
    """The file of each image id, in order; a :class:`DataError` lists missing ones."""
    return files_for(ids, dirs, suffix, "prediction", "evaluated images")


def read_gt(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a GT label PNG as ``HxW uint8`` in ``[0, num_classes)`` or 255; errors name it."""
    gt = io.read_label_png(path)
    bad = (gt >= num_classes) & (gt != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"GT {path} holds label {int(gt[bad].max())}; expected 0..{num_classes - 1} or 255"
        )
    return gt


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None and NumPy scalars made plain."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def base_summary(
    conf: np.ndarray, num_images: int, num_in_manifest: int, split: str | None
) -> dict[str, Any]:
    """Summary fields every evaluation shares (mIoU etc. in [0, 1])."""
    return {
        "split": split,
        "num_images": num_images,
        "num_images_in_manifest": num_in_manifest,
        "num_classes": int(conf.shape[0]),
        "num_pixels": int(conf.sum()),
        "miou": miou(conf),
        "pixel_accuracy": pixel_accuracy(conf),
        "all_background_miou": miou(all_background_confusion(conf)),
    }


def write_outputs(
    summary: dict[str, Any],
    per_class: pd.DataFrame,
    out_summary: Path,
    out_per_class: Path,
) -> dict[str, Any]:
    """Write the summary JSON (NaN as null) and per-class Parquet atomically; return the summary."""
    safe = json_safe(summary)
    io.write_parquet(out_per_class, per_class)
    io.write_json(out_summary, safe)
    return dict(safe)


# ---------------------------------------------------------------- label-PNG scoring


def _read_pred(path: Path, shape: tuple[int, ...], gt_path: str) -> np.ndarray:
    pred = io.read_label_png(path)
    if pred.shape != shape:
        raise DataError(f"prediction {path} has shape {pred.shape} but GT {gt_path} has {shape}")
    return pred


@dataclass
class LabelScores:
    """Confusions (``num_classes x num_classes int64``) of a split's label predictions.

    ``main`` follows the ``ignore_pred_255`` mode, ``covered`` counts only pixels whose
    prediction is not 255, ``labelled`` is the number of GT pixels that are not 255.
    """

    main: np.ndarray
    covered: np.ndarray
    labelled: int = 0

    @property
    def coverage(self) -> float:
        """Fraction in [0, 1] of GT-labelled pixels with a prediction other than 255."""
        return float(self.covered.sum() / self.labelled) if self.labelled else float("nan")


def _score_one(gt: np.ndarray, pred: np.ndarray, mode: str, scores: LabelScores) -> None:
    """Add one ``HxW`` GT / prediction pair to ``scores`` (ValueError on bad values)."""
    n = scores.main.shape[0]
    holes = pred == IGNORE_INDEX
    filled = np.where(holes, 0, pred).astype(np.uint8)
    covered = confusion(np.where(holes, IGNORE_INDEX, gt).astype(np.uint8), filled, n)
    scores.covered += covered
    scores.labelled += int(np.count_nonzero(gt != IGNORE_INDEX))
    if mode == "error":
        scores.main += confusion(gt, pred, n)
    elif mode == "exclude":
        scores.main += covered
    else:
        scores.main += confusion(gt, filled, n)


def _score_chunk(pairs: list[tuple[str, Path]], num_classes: int, mode: str) -> LabelScores:
    """:class:`LabelScores` of ``pairs`` of (GT path, prediction PNG)."""
    z = np.zeros((num_classes, num_classes), dtype=np.int64)
    scores = LabelScores(z, z.copy())
    for gt_path, pred_path in pairs:
        gt = read_gt(gt_path, num_classes)
        pred = _read_pred(pred_path, gt.shape, gt_path)
        try:
            _score_one(gt, pred, mode, scores)
        except ValueError as e:
            raise DataError(f"prediction {pred_path}: {e} (ignore_pred_255={mode})") from e
    return scores


def score_labels(
    gt_paths: Sequence[str],
    pred_paths: Sequence[Path],
    num_classes: int,
    mode: str,
    workers: int = 1,
) -> LabelScores:
    """Score each prediction PNG against its GT PNG; errors name the offending file. With
    ``workers > 1`` chunks are scored in forked processes and their counts summed."""
    z = np.zeros((num_classes, num_classes), dtype=np.int64)
    total = LabelScores(z, z.copy())
    pairs = list(zip(gt_paths, pred_paths, strict=True))
    part = functools.partial(_score_chunk, num_classes=num_classes, mode=mode)
    for s in parallel.run_chunks(part, pairs, workers, desc="evaluate"):
        total.main += s.main
        total.covered += s.covered
        total.labelled += s.labelled
    return total


def run_labels(
    manifest: Path,
    pred_dirs: Sequence[Path],
    classes: Sequence[str],
    out_summary: Path,
    out_per_class: Path,
    ignore_pred_255: str = "error",
    split: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Score ``<pred_dir>/<image_id>.png`` predictions of a split; write summary + per-class.

    Args:
        manifest: split manifest (Parquet); only rows with a ``gt_path`` are scored.
        pred_dirs: shard folders holding the prediction PNGs (values ``0..C`` or 255).
        classes: the ``C`` foreground class names (``classes.json``).
        out_summary: JSON with ``split, num_images, num_images_in_manifest, num_classes,
            num_pixels, miou, pixel_accuracy, all_background_miou, ignore_pred_255,
            coverage, miou_covered`` (metrics in [0, 1], null when undefined).
        out_per_class: Parquet ``class, iou, precision, recall, gt_pixels, pred_pixels``
            (``"background"`` first) of the main confusion.
        ignore_pred_255: ``"error" | "exclude" | "as_background"``.
        split: split name recorded in the summary.
        workers: processes scoring the images (the job's threads; the figures do not depend
            on it).

    Returns:
        The summary dict as written.
    """
    cfg = EvalLabelsConfig(ignore_pred_255=ignore_pred_255)
    rows, n_manifest = evaluated_rows(Path(manifest))
    preds = match_files(list(rows["image_id"]), [Path(d) for d in pred_dirs], ".png")
    log.info("scoring %d of %d images of %s (those with GT)", len(rows), n_manifest, manifest)
    scores = score_labels(
        list(rows["gt_path"]), preds, len(classes) + 1, cfg.ignore_pred_255, workers
    )
    summary = base_summary(scores.main, len(rows), n_manifest, split)
    summary |= {
        "ignore_pred_255": cfg.ignore_pred_255,
        "coverage": scores.coverage,
        "miou_covered": miou(scores.covered),
    }
    log.info("mIoU %.4f, coverage %.4f", summary["miou"], summary["coverage"])
    table = per_class_frame(scores.main, class_names(classes))
    return write_outputs(summary, table, Path(out_summary), Path(out_per_class))


def run(
    manifest: Path,
    pred_dirs: Sequence[Path],
    classes: Sequence[str],
    cfg: EvalLabelsConfig,
    out_summary: Path,
    out_per_class: Path,
    split: str | None = None,
) -> dict[str, Any]:
    """Stage entry point: :func:`run_labels` with a config built by ``config.from_mapping``."""
    return run_labels(
        manifest, pred_dirs, classes, out_summary, out_per_class, cfg.ignore_pred_255, split
    )
