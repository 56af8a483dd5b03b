"""Semantic-segmentation metrics from one dataset-level confusion matrix.

Conventions (``docs/ARCHITECTURE.md``): label maps hold ``0`` background, ``c+1``
foreground class ``c`` and ``255`` ignore. A confusion matrix ``N`` is
``num_classes x num_classes int64`` with rows = ground truth and columns = prediction,
accumulated over every evaluated pixel of a split (not averaged per image). GT pixels
equal to ``ignore_index`` are dropped; predictions must lie in ``[0, num_classes)``
(a stray 255 in a prediction is an error here, never silently binned; callers decide
what such pixels mean before calling :func:`confusion`).

IoU_c = N_cc / (sum_j N_cj + sum_i N_ic - N_cc), NaN when the union is 0; mIoU is the
NaN-mean over classes, background included (21 classes on VOC, 81 on COCO).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

IGNORE_INDEX = 255


def _check_values(arr: np.ndarray, num_classes: int, what: str, ignore: int | None) -> None:
    """Raise ``ValueError`` if ``arr`` holds values outside ``[0, num_classes)`` (+ ignore)."""
    if arr.size == 0:
        return
    if ignore is not None:
        arr = arr[arr != ignore]
        if arr.size == 0:
            return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        allowed = f"[0, {num_classes})" + (f" or {ignore}" if ignore is not None else "")
        raise ValueError(f"{what} holds value {bad}; expected {allowed}")


def confusion(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Confusion matrix of one label map.

    Args:
        gt: ``HxW`` integer ground truth in ``[0, num_classes)`` or ``ignore_index``.
        pred: ``HxW`` integer prediction in ``[0, num_classes)`` (no ignore value allowed).
        num_classes: number of classes including background (``C + 1``).
        ignore_index: GT value whose pixels are not counted.

    Returns:
        ``num_classes x num_classes int64``, rows = GT, columns = prediction.

    Raises:
        ValueError: on a shape mismatch, non-integer input, or out-of-range values.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} differs from prediction shape {pred.shape}")
    for a, name in ((gt, "GT"), (pred, "prediction")):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    _check_values(pred, num_classes, "prediction", None)
    _check_values(gt, num_classes, "GT", ignore_index)
    keep = gt != ignore_index
    idx = gt[keep].astype(np.int64) * num_classes + pred[keep].astype(np.int64)
    counts = np.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` as float64, NaN where ``den == 0``."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU, ``(num_classes,) float64`` in [0, 1], NaN where the union is 0."""
    conf = np.asarray(conf)
    tp = np.diag(conf)
    union = conf.sum(axis=1) + conf.sum(axis=0) - tp
    return _ratio(tp, union)


def precision_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class precision ``N_cc / sum_i N_ic``, ``(num_classes,) float64``; NaN if unpredicted."""
    conf = np.asarray(conf)
    return _ratio(np.diag(conf), conf.sum(axis=0))


def recall_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class recall ``N_cc / sum_j N_cj``, ``(num_classes,) float64``; NaN if absent from GT."""
    conf = np.asarray(conf)
    return _ratio(np.diag(conf), conf.sum(axis=1))


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")


def miou(conf: np.ndarray) -> float:
    """Mean IoU in [0, 1] over classes with a non-zero union (background included); NaN if none."""
    return _nanmean(iou_from_confusion(conf))


def pixel_accuracy(conf: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly, in [0, 1]; NaN if no pixel was counted."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf) / total) if total > 0 else float("nan")


def all_background_confusion(conf: np.ndarray) -> np.ndarray:
    """Confusion of the trivial prediction "background everywhere" on the pixels of ``conf``."""
    conf = np.asarray(conf)
    out = np.zeros_like(conf)
    out[:, 0] = conf.sum(axis=1)
    return out


def predicted_fg_on_bg(conf: np.ndarray) -> float:
    """Fraction of pixels predicted foreground whose GT is background, in [0, 1] (NaN if none)."""
    conf = np.asarray(conf)
    pred_fg = conf[:, 1:].sum()
    return float(conf[0, 1:].sum() / pred_fg) if pred_fg > 0 else float("nan")


def per_class_frame(conf: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class table: ``class, iou, precision, recall, gt_pixels, pred_pixels``.

    ``class_names`` has one name per row of ``conf`` (``"background"`` first); IoU,
    precision and recall are float64 in [0, 1] or NaN, pixel counts int64.
    """
    conf = np.asarray(conf)
    if len(class_names) != conf.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {conf.shape[0]}-class confusion")
    return pd.DataFrame(
        {
            "class": list(class_names),
            "iou": iou_from_confusion(conf),
            "precision": precision_from_confusion(conf),
            "recall": recall_from_confusion(conf),
            "gt_pixels": conf.sum(axis=1).astype(np.int64),
            "pred_pixels": conf.sum(axis=0).astype(np.int64),
        }
    )


class ConfusionAccumulator:
    """Streams label maps of a split into one ``num_classes x num_classes int64`` confusion."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.num_images = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Add one ``HxW`` GT / prediction pair (see :func:`confusion`); return its confusion."""
        c = confusion(gt, pred, self.num_classes, self.ignore_index)
        self.matrix += c
        self.num_images += 1
        return c

    def add(self, conf: np.ndarray, num_images: int = 1) -> None:
        """Add an already computed confusion matrix (e.g. from another shard)."""
        conf = np.asarray(conf)
        if conf.shape != self.matrix.shape:
            raise ValueError(f"confusion shape {conf.shape} differs from {self.matrix.shape}")
        self.matrix += conf.astype(np.int64)
        self.num_images += num_images

    def iou(self) -> np.ndarray:
        """Per-class IoU so far, ``(num_classes,) float64`` (NaN where the union is 0)."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """mIoU so far, in [0, 1] (NaN before any counted pixel)."""
        return miou(self.matrix)

    def pixel_accuracy(self) -> float:
        """Pixel accuracy so far, in [0, 1]."""
        return pixel_accuracy(self.matrix)
