"""train_deeplab's data: pseudo masks found and checked, deeplab-pytorch's augmentation of
an image and its mask (data order: :class:`qaclims.training.sampling.StepBatches`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from qaclims.artifacts.shards import files_for
from qaclims.core.errors import DataError
from qaclims.core.io import read_image, read_label_png, read_parquet
from qaclims.evaluation.metrics import IGNORE_INDEX
from qaclims.models.deeplab import normalise
from qaclims.training.sampling import augment_rng

if TYPE_CHECKING:
    from qaclims.seg.train_deeplab import TrainDeeplabConfig

log = logging.getLogger(__name__)

NAMES_IN_ERROR = 5


def pseudo_label_paths(ids: Sequence[str], dirs: Sequence[Path]) -> list[Path]:
    """The pseudo-mask PNG of each image id, in order; a :class:`DataError` lists missing ones."""
    return files_for(ids, dirs, ".png", "pseudo mask")


def read_train_rows(manifest: Path, pseudo_dirs: Sequence[Path]) -> pd.DataFrame:
    """Manifest rows sorted by image_id, with a ``label_path`` column; files are checked."""
    df = read_parquet(manifest, ["image_id", "image_path"]).sort_values(
        "image_id", ignore_index=True
    )
    if df.empty:
        raise DataError(f"manifest {manifest} has no images")
    missing = [p for p in df["image_path"] if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"manifest {manifest}: {len(missing)} images are missing, e.g. "
            f"{', '.join(missing[:NAMES_IN_ERROR])}"
        )
    df["label_path"] = [str(p) for p in pseudo_label_paths(list(df["image_id"]), pseudo_dirs)]
    return df


def checked_label(path: str, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """Read a pseudo mask (``HxW uint8``) that must match the image size and hold only
    ``0..num_classes-1`` or 255; a :class:`DataError` names the file otherwise."""
    lab = read_label_png(path)
    if lab.shape != shape:
        raise DataError(f"pseudo mask {path} is {lab.shape} but its image is {shape}")
    bad = lab[(lab >= num_classes) & (lab != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"pseudo mask {path} holds label {int(bad[0])} (classes 0.."
            f"{num_classes - 1} or {IGNORE_INDEX})"
        )
    return lab


def random_scale(
    image: np.ndarray, label: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale ``HxWx3 uint8`` (bilinear) and ``HxW uint8`` labels (nearest) to
    ``(int(H*scale), int(W*scale))``, at least 1 pixel a side (deeplab-pytorch's rounding)."""
    h = max(1, int(image.shape[0] * scale))
    w = max(1, int(image.shape[1] * scale))
    if (h, w) == image.shape[:2]:
        return image, label
    im = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((w, h), Image.Resampling.NEAREST))
    return im, lab


def pad_crop(
    x: np.ndarray, y: np.ndarray, crop: int, top: int, left: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``3xHxW float32`` with 0 and ``HxW`` labels with 255 at the bottom/right up to
    ``crop``, then cut the ``crop x crop`` window at ``(top, left)``."""
    h, w = y.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        y = np.pad(y, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    return x[:, top : top + crop, left : left + crop], y[top : top + crop, left : left + crop]


def augment_pair(
    image: np.ndarray, label: np.ndarray, cfg: TrainDeeplabConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """deeplab-pytorch's training augmentation of one image and its mask.

    Returns ``3 x crop x crop float32`` (normalised, 0 = mean colour in the padding) and
    ``crop x crop int64`` labels (255 in the padding).
    """
    scale = float(cfg.scales[int(rng.integers(len(cfg.scales)))])
    image, label = random_scale(image, label, scale)
    x = normalise(image, cfg.model.style)
    h, w = max(label.shape[0], cfg.crop), max(label.shape[1], cfg.crop)
    top = int(rng.integers(0, h - cfg.crop + 1))
    left = int(rng.integers(0, w - cfg.crop + 1))
    x, y = pad_crop(x, label, cfg.crop, top, left)
    if cfg.flip and rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64)


class SegTrainSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(epoch, index)`` keys of :class:`~qaclims.training.sampling.StepBatches` ->
    ``(3 x crop x crop float32, crop x crop int64)``, augmented with the draws of
    :func:`~qaclims.training.sampling.augment_rng`."""

    def __init__(self, df: pd.DataFrame, cfg: TrainDeeplabConfig, num_classes: int):
        self.images = list(df["image_path"])
        self.labels = list(df["label_path"])
        self.cfg, self.num_classes = cfg, num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        image = read_image(self.images[i])
        label = checked_label(self.labels[i], image.shape[:2], self.num_classes)
        x, y = augment_pair(image, label, self.cfg, augment_rng(self.cfg.seed, epoch, i))
        return torch.from_numpy(x), torch.from_numpy(y)
