"""eval_cam: score CAMs as segmentation seeds with a background threshold, and sweep it.

For one image with present classes ``keys`` (K,) and CAMs ``cam`` (K,H,W) in [0,1], the
seed label map is (as IRN / CLIMS / QA-CLIMS ``step/eval_cam.py``): a background
channel filled with the threshold ``t`` is put in front of the CAMs, the arg-max over the
K+1 channels is taken (ties go to the first channel, so to background), and channel
``k`` maps to label ``keys[k-1] + 1`` (channel 0 to background 0). Equivalently a pixel
is background iff its highest CAM is ``<= t``. Comparisons are done in float64 against
the exact threshold (the reference compares in the CAM array's dtype).

The fixed threshold ``cfg.threshold`` (QA-CLIMS ``--cam_eval_thres`` 0.15) is the
reported number and the one used downstream. A sweep over ``cfg.thresholds`` (QA-CLIMS
``--eval_cam_best``: 0.05..0.59 step 0.01) is computed in the same pass: every pixel
falls to background exactly for the thresholds at or above its highest CAM, so one
histogram of (GT, top class, number of thresholds below the top CAM) per split yields
every threshold's confusion by cumulative sums. The reference stops its sweep at the
first threshold that does not improve; this sweep covers all of them. The best
threshold is tuned on GT and its mIoU is an upper bound, flagged as such in the summary.
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

from qaclims.artifacts import camfile
from qaclims.core import io, parallel
from qaclims.core.config import setting
from qaclims.core.errors import ConfigError, DataError
from qaclims.evaluation.eval_labels import (
    base_summary,
    class_names,
    evaluated_rows,
    match_files,
    read_gt,
    write_outputs,
)
from qaclims.evaluation.metrics import (
    miou,
    per_class_frame,
    pixel_accuracy,
    predicted_fg_on_bg,
)

log = logging.getLogger(__name__)

#: QA-CLIMS ``eval_cam_best``: ``np.arange(5, 60, 1) / 100`` = 0.05, 0.06, ..., 0.59.
DEFAULT_SWEEP: tuple[float, ...] = tuple(round(0.05 + 0.01 * i, 2) for i in range(55))

#: the float64 value each uint8 CAM level stands for (``q / 200``)
LEVEL_VALUES = camfile.LEVEL_VALUES


@dataclass(frozen=True)
class EvalCamConfig:
    """eval_cam settings (defaults = QA-CLIMS ``parser.py`` / ``run_sample.py``).

    threshold: background score ``t`` in [0, 1] reported and used downstream
        (``cam_eval_thres`` 0.15 in IRN, CLIMS and QA-CLIMS).
    thresholds: background thresholds to sweep, each in [0, 1] (0.05..0.59 step 0.01).
    use_strided: score ``cam_strided`` upsampled x4 (bilinear) instead of ``cam``.
    """

    threshold: float = setting(0.15, ge=0.0, le=1.0)
    thresholds: tuple[float, ...] = setting(DEFAULT_SWEEP, ge=0.0, le=1.0, min_items=1)
    use_strided: bool = False

    def __post_init__(self) -> None:
        values = (self.threshold, *self.thresholds)
        if not self.thresholds:
            raise ConfigError("config key eval_cam.thresholds is empty")
        if any(not math.isfinite(v) or v < 0.0 or v > 1.0 for v in values):
            raise ConfigError(
                "config keys eval_cam.threshold / eval_cam.thresholds must lie in [0, 1]"
            )
        if len(set(self.thresholds)) != len(self.thresholds):
            raise ConfigError("config key eval_cam.thresholds holds duplicates")


def cam_to_label(cam: np.ndarray, keys: np.ndarray, threshold: float) -> np.ndarray:
    """Seed label map of one image (IRN's rule, see module doc).

    Args:
        cam: ``KxHxW`` float CAMs in [0, 1], or their ``uint8`` levels (K may be 0).
        keys: ``(K,)`` int foreground class indices ``0..C-1`` of the channels.
        threshold: background score in [0, 1].

    Returns:
        ``HxW int64`` labels: 0 background, ``keys[k] + 1`` where channel k wins.
    """
    if cam.dtype == np.uint8:
        cam = LEVEL_VALUES[cam]
    bg = np.full((1, *cam.shape[1:]), threshold, dtype=np.float64)
    scores = np.concatenate([bg, cam.astype(np.float64)], axis=0)
    labels = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    return labels[np.argmax(scores, axis=0)]


class ThresholdSweep:
    """Accumulates, in one pass, the split's confusion at every background threshold.

    Per image one histogram of (GT row, top class label, thresholds below the top CAM) is
    added with a single ``bincount`` (IGNORE GT pixels go to an extra row that is dropped,
    so no masked copies are made). Thresholds may repeat (the fixed threshold is appended
    to the sweep by :func:`score_cams`); each keeps its own confusion.
    """

    def __init__(self, thresholds: Sequence[float], num_classes: int):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self._order = np.argsort(self.thresholds, kind="stable")
        self._sorted = self.thresholds[self._order]
        self.num_classes = num_classes
        t = len(self.thresholds)
        # hist[g, f, j]: pixels with GT g, top class label f, j thresholds below the top CAM
        self.hist = np.zeros((num_classes, num_classes, t + 1), dtype=np.int64)
        # the same count for each uint8 CAM level (format-2 CAM files): a table lookup, in
        # the smallest dtype that holds 0..t (np.take on a uint8 table is ~5x an int64 one)
        below = np.searchsorted(self._sorted, LEVEL_VALUES, side="left")
        self._below_level = below.astype(np.min_scalar_type(t))

    def update(self, gt: np.ndarray, cam: np.ndarray, keys: np.ndarray) -> None:
        """Add one image.

        Args:
            gt: ``HxW`` integer GT in ``[0, n)`` or 255 (ignored; checked by the caller).
            cam: ``KxHxW`` CAMs in [0, 1], float or ``uint8`` levels of
                :mod:`qaclims.artifacts.camfile` (K may be 0).
            keys: ``(K,)`` fg class indices of the channels.
        """
        n, t1 = self.num_classes, self.hist.shape[2]
        top, peak = top_and_peak(cam, keys)
        # GT row: 0..n-1 as is, the ignore value (any value >= n) row n, dropped below
        idx = np.minimum(gt, n).astype(np.intp)
        idx *= n
        idx += top
        idx *= t1
        idx += self.below(peak)
        counts = np.bincount(idx.ravel(), minlength=(n + 1) * n * t1)
        self.hist += counts[: n * n * t1].reshape(n, n, t1)

    def below(self, peak: np.ndarray) -> np.ndarray:
        """How many thresholds lie strictly below each top CAM value (``uint8`` levels or
        float)."""
        if peak.dtype == np.uint8:
            return np.take(self._below_level, peak)
        return np.searchsorted(self._sorted, peak.astype(np.float64), side="left")

    def confusions(self) -> np.ndarray:
        """``T x n x n int64`` confusions, in the order of the given thresholds."""
        t = len(self.thresholds)
        # foreground at sorted threshold j iff more than j thresholds lie below the top CAM
        fg = np.cumsum(self.hist[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
        bg = np.cumsum(self.hist.sum(axis=1), axis=1)[:, :t]
        conf = np.moveaxis(fg, 2, 0).copy()
        conf[:, :, 0] += bg.T
        out = np.empty_like(conf)
        out[self._order] = conf
        return out


def top_and_peak(cam: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the top class label and its CAM value.

    Args:
        cam: ``KxHxW`` CAMs in [0, 1], float or ``uint8`` levels (same order, same ties).
        keys: ``(K,)`` fg class indices.

    Returns:
        ``top``: ``HxW intp`` ``keys[argmax] + 1`` (first channel on ties; 0 when K = 0);
        ``peak``: ``HxW`` the channel maximum, in ``cam``'s dtype (0 when K = 0).
    """
    if cam.shape[0] == 0:
        return np.zeros(cam.shape[1:], np.intp), np.zeros(cam.shape[1:], cam.dtype)
    labels = np.asarray(keys, dtype=np.intp) + 1
    # a running max over the channels: K passes over HxW, much faster than np.argmax along
    # axis 0; a later channel wins only if strictly larger (np.argmax's tie rule)
    peak = cam[0].copy()
    top = np.full(cam.shape[1:], labels[0], dtype=np.intp)
    for c in range(1, cam.shape[0]):
        np.copyto(top, labels[c], where=cam[c] > peak)
        np.maximum(peak, cam[c], out=peak)
    return top, peak


def upsample_strided(cam_strided: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``Kxhxw`` stride-4 CAMs -> ``KxHxW float32`` (bilinear x4, cropped to ``size``)."""
    import torch
    import torch.nn.functional as F

    k, h, w = cam_strided.shape
    if h * camfile.CAM_STRIDE < size[0] or w * camfile.CAM_STRIDE < size[1]:
        raise ValueError(f"strided CAM {h}x{w} is too small for an image of {size}")
    x = torch.from_numpy(cam_strided.astype(np.float32))[None]
    up = F.interpolate(x, size=(h * camfile.CAM_STRIDE, w * camfile.CAM_STRIDE), mode="bilinear")
    return up[0, :, : size[0], : size[1]].numpy()


def read_cam(
    path: Path, num_fg: int, shape: tuple[int, ...], use_strided: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one CAM file: ``(keys (K,) int64, cam KxHxW)`` at GT ``shape``; ``cam``
    holds the file's ``uint8`` levels (format 2) or floats (format 1, or ``use_strided``)."""
    name = "cam_strided" if use_strided else "cam"
    keys, cam = camfile.read_cam_arrays(path, name)  # uint8 levels (format 2) or float
    if len(keys) and (keys.min() < 0 or keys.max() >= num_fg or len(set(keys)) < len(keys)):
        raise DataError(f"CAM file {path}: keys {keys.tolist()} not distinct in 0..{num_fg - 1}")
    if use_strided:
        try:
            cam = upsample_strided(cam, (shape[0], shape[1]))
        except ValueError as e:
            raise DataError(f"CAM file {path}: {e}") from e
    if cam.shape[1:] != shape:
        raise DataError(f"CAM file {path}: {name} is {cam.shape[1:]} but the GT is {shape}")
    if cam.dtype != np.uint8 and not np.isfinite(cam).all():
        raise DataError(f"CAM file {path}: {name} holds NaN or inf")
    return keys, cam


def _sweep_hist(pairs: list[tuple[str, Path]], num_fg: int, cfg: EvalCamConfig) -> np.ndarray:
    """The sweep histogram (see :class:`ThresholdSweep`, fixed threshold last) of ``pairs``
    of (GT path, CAM file)."""
    sweep = ThresholdSweep([*cfg.thresholds, cfg.threshold], num_fg + 1)
    for gt_path, cam_path in pairs:
        gt = read_gt(gt_path, num_fg + 1)
        keys, cam = read_cam(cam_path, num_fg, gt.shape, cfg.use_strided)
        sweep.update(gt, cam, keys)
    return sweep.hist


def score_cams(
    gt_paths: Sequence[str],
    cam_paths: Sequence[Path],
    num_fg: int,
    cfg: EvalCamConfig,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Split confusions: fixed threshold ``n x n`` and sweep ``T x n x n`` (``n = num_fg + 1``).

    The fixed threshold rides along as one more threshold of the sweep: one histogram per
    image gives both (equal to :func:`cam_to_label` + confusion at each threshold). With
    ``workers > 1`` chunks of images are scored in forked processes and their integer
    histograms summed: the same confusions as one process."""
    sweep = ThresholdSweep([*cfg.thresholds, cfg.threshold], num_fg + 1)
    pairs = list(zip(gt_paths, cam_paths, strict=True))
    part = functools.partial(_sweep_hist, num_fg=num_fg, cfg=cfg)
    for hist in parallel.run_chunks(part, pairs, workers, desc="eval_cam"):
        sweep.hist += hist
    confs = sweep.confusions()
    return confs[-1], confs[:-1]


def sweep_frame(thresholds: Sequence[float], confs: np.ndarray) -> pd.DataFrame:
    """Table ``threshold, miou, pixel_accuracy, predicted_fg_on_bg`` sorted by threshold."""
    df = pd.DataFrame(
        {
            "threshold": np.asarray(thresholds, dtype=np.float64),
            "miou": [miou(c) for c in confs],
            "pixel_accuracy": [pixel_accuracy(c) for c in confs],
            "predicted_fg_on_bg": [predicted_fg_on_bg(c) for c in confs],
        }
    )
    return df.sort_values("threshold", kind="stable").reset_index(drop=True)


def best_of_sweep(sweep: pd.DataFrame) -> tuple[float | None, float | None]:
    """(threshold, mIoU) of the sweep's highest mIoU (lowest threshold on ties); None if all NaN."""
    m = sweep["miou"].to_numpy(dtype=np.float64)
    if np.isnan(m).all():
        return None, None
    i = int(np.nanargmax(m))
    return float(sweep["threshold"].iloc[i]), float(m[i])


def run(
    manifest: Path,
    cam_dirs: Sequence[Path],
    classes: Sequence[str],
    cfg: EvalCamConfig,
    out_summary: Path,
    out_per_class: Path,
    out_sweep: Path,
    split: str | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate ``<cam_dir>/<image_id>.npz`` CAMs of the manifest images that have GT.

    Args:
        manifest: split manifest (Parquet); only rows with a ``gt_path`` are scored.
        cam_dirs: shard folders of make_cam (``keys`` int16 (K,), ``cam`` float16 KxHxW).
        classes: the ``C`` foreground class names.
        cfg: thresholds (see :class:`EvalCamConfig`).
        out_summary: JSON: ``split, num_images, num_images_in_manifest, num_classes,
            num_pixels, threshold, miou, pixel_accuracy, all_background_miou,
            predicted_fg_on_bg, best_threshold, best_miou, best_is_gt_tuned_upper_bound,
            use_strided`` (metrics in [0, 1], null when undefined).
        out_per_class: Parquet ``class, iou, precision, recall, gt_pixels, pred_pixels``
            at ``cfg.threshold`` (``"background"`` first).
        out_sweep: Parquet ``threshold, miou, pixel_accuracy, predicted_fg_on_bg``.
        split: split name recorded in the summary.
        workers: processes scoring the images (the job's threads; the figures do not depend
            on it).

    Returns:
        The summary dict as written.
    """
    rows, n_manifest = evaluated_rows(Path(manifest))
    cams = match_files(list(rows["image_id"]), [Path(d) for d in cam_dirs], ".npz")
    log.info("eval_cam: %d of %d images of %s have GT", len(rows), n_manifest, manifest)
    conf, confs = score_cams(list(rows["gt_path"]), cams, len(classes), cfg, workers)
    sweep = sweep_frame(cfg.thresholds, confs)
    best_t, best_m = best_of_sweep(sweep)
    summary = base_summary(conf, len(rows), n_manifest, split)
    summary |= {
        "threshold": cfg.threshold,
        "predicted_fg_on_bg": predicted_fg_on_bg(conf),
        "best_threshold": best_t,
        "best_miou": best_m,
        "best_is_gt_tuned_upper_bound": True,
        "use_strided": cfg.use_strided,
    }
    log.info(
        "eval_cam: mIoU %.4f at threshold %.2f; best %s at %s (GT-tuned upper bound)",
        summary["miou"],
        cfg.threshold,
        "n/a" if best_m is None else f"{best_m:.4f}",
        "n/a" if best_t is None else f"{best_t:.2f}",
    )
    io.write_parquet(out_sweep, sweep)
    table = per_class_frame(conf, class_names(classes))
    return write_outputs(summary, table, Path(out_summary), Path(out_per_class))
