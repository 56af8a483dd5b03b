"""The CAM file, make_cam's output: one ``<image_id>.npz`` per image (no pickle).

Format 2 (written since issue 15), arrays:

- ``keys``: ``int16 (K,)``, the present foreground class indices, distinct, ``0..C-1``;
- ``cam``: ``uint8 (K, H, W)``, each channel max-normalised to [0, 1] and stored as the
  level ``q = ceil(200 v)`` (0..200): ``v`` lies in ``((q - 1) / 200, q / 200]`` and the
  level stands for ``q / 200`` (:func:`dequantise`, :data:`LEVEL_VALUES`). Rounding up on a
  0.005 grid keeps every comparison ``v > t`` with a threshold on the grid (0.15, the
  sweep's 0.05..0.59) exactly as it was on the float CAM;
- ``cam_strided``: ``float16 (K, ceil(H/4), ceil(W/4))`` in [0, 1], the same at stride 4 for
  the random walk (a sixteenth of the pixels, kept at half precision);
- ``format``: ``int8`` scalar, 2.

Per image that is ``K*H*W + 2*K*H*W/16 + 2K`` bytes: 0.27x the reference's float32 ``.npy``
dictionaries (``high_res`` + ``cam``), against 0.50x for format 1, whose ``cam`` was
``float16`` and which :func:`read_cam` still reads.

Quantising raises a CAM value by less than 1/200; thresholds on the grid decide exactly as
before, and only the argmax between two classes within 0.005 of each other can change
(``benchmarks/bench_camfile.py`` measures the effect on eval_cam and the seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qaclims.artifacts.shards import files_for
from qaclims.core.errors import DataError
from qaclims.core.io import PathLike, read_npz, write_npz

FORMAT = 2
#: levels per unit: the grid step is 1 / LEVELS
LEVELS = 200

#: the strided CAM (``high_res`` aside) is at 1/4 of the image size, as IRN's
CAM_STRIDE = 4
#: the arrays a CAM file may hold
KEYS = ("keys", "cam", "cam_strided", "format")


def quantise(cam: np.ndarray) -> np.ndarray:
    """``float`` CAMs in [0, 1] -> ``uint8`` levels ``ceil(200 v)`` (float32 product,
    clipped to [0, 200]); make_cam computes the same on the device."""
    scaled = np.asarray(cam, dtype=np.float32) * np.float32(LEVELS)
    return np.clip(np.ceil(scaled), 0, LEVELS).astype(np.uint8)


#: the value each ``uint8`` level stands for, ``q / 200`` in float64 (comparisons with
#: thresholds use these; 256 entries so any stored byte can index it)
LEVEL_VALUES = np.arange(256, dtype=np.float64) / LEVELS


def dequantise(levels: np.ndarray) -> np.ndarray:
    """``uint8`` levels -> the ``float32`` values ``q / 200`` they stand for."""
    return LEVEL_VALUES.astype(np.float32)[levels]


def cam_arrays(
    keys: Sequence[int], cam: np.ndarray, cam_strided: np.ndarray
) -> dict[str, np.ndarray]:
    """The arrays of one CAM file: ``cam`` (``KxHxW`` in [0, 1]) as given if ``uint8``
    levels (format 2) or ``float16`` (format 1, ``make_cam.store: float16``), else quantised
    to levels; ``cam_strided`` (``K x h x w`` in [0, 1]) as float16."""
    if cam.dtype == np.float16:
        stored, fmt = cam, 1
    else:
        stored, fmt = (cam if cam.dtype == np.uint8 else quantise(cam)), FORMAT
    return {
        "keys": np.asarray(keys, dtype=np.int16).reshape(-1),
        "cam": stored,
        "cam_strided": np.asarray(cam_strided, dtype=np.float16),
        "format": np.asarray(fmt, dtype=np.int8),
    }


def write_cam(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write :func:`cam_arrays`'s output atomically."""
    write_npz(path, arrays)


def read_cam_arrays(path: PathLike, key: str = "cam") -> tuple[np.ndarray, np.ndarray]:
    """``(keys int64 (K,), stored array K x h x w)`` of a CAM file, unconverted (``uint8``
    levels or float); a file without ``keys``/``key`` or with mismatched shapes raises
    :class:`DataError` naming it and the formats this reader knows."""
    z = read_npz(path, only=("keys", key, "format"))
    fmt = int(z["format"]) if "format" in z else 1
    if fmt not in (1, FORMAT) or "keys" not in z or key not in z:
        raise DataError(
            f"CAM file {path} is not a CAM file of format 1 or {FORMAT} (keys/{key}: "
            f"{sorted(z)}, "
            f"format {fmt}; make_cam writes keys/cam/cam_strided/format): rerun make_cam"
        )
    keys, cams = z["keys"].astype(np.int64).reshape(-1), z[key]
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0]:
        raise DataError(f"CAM file {path}: {key} is {cams.shape} for {keys.shape[0]} keys")
    if cams.dtype != np.uint8 and not np.issubdtype(cams.dtype, np.floating):
        raise DataError(f"CAM file {path}: {key} has dtype {cams.dtype} (uint8 or float)")
    return keys, cams


def read_cam(path: PathLike, key: str = "cam") -> tuple[np.ndarray, np.ndarray]:
    """``(keys int64 (K,), cams float32 K x h x w in [0, 1])`` of a CAM file of format 1 or 2
    (``key``: ``cam`` or ``cam_strided``)."""
    keys, cams = read_cam_arrays(path, key)
    return keys, dequantise(cams) if cams.dtype == np.uint8 else cams.astype(np.float32)


def find_cam_files(image_ids: Sequence[str], cam_dirs: Sequence[Path]) -> dict[str, Path]:
    """``<dir>/<image_id>.npz`` of each image over the shard folders ``cam_dirs`` (the rule of
    :func:`qaclims.artifacts.shards.index_files`); a missing one raises naming it."""
    return dict(zip(image_ids, files_for(image_ids, cam_dirs, ".npz", "CAM"), strict=True))
