"""Stage ``cam_to_ir_label``: confident foreground/background labels from CAMs, refined by
a dense CRF (IRN's "mining inter-pixel relations").

Per image, with the CAMs ``K x H x W`` of its present classes:

1. confident foreground: argmax of the CAMs padded with a background score
   ``conf_fg_thres`` (0.30), refined by :func:`qaclims.models.crf.crf_labels`;
2. confident background: the same with the lower ``conf_bg_thres`` (QA-CLIMS on VOC: 0.10;
   IRN: 0.05), so background wins only where every CAM is weak;
3. label = the foreground class where (1) says foreground, 0 where both say background,
   255 (uncertain) elsewhere.

Output: ``<out_dir>/<image_id>.png`` label PNGs (0 bg, c+1 class c, 255 uncertain) for the
shard's images. Images run in parallel in ``threads`` worker processes; finished PNGs are
kept in ``.<out_dir name>.partial`` beside ``out_dir`` and reused by a rerun of the same
config; the folder is renamed to ``out_dir`` at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qaclims.artifacts.camfile import find_cam_files, read_cam
from qaclims.artifacts.partial import PartialDir
from qaclims.core import parallel
from qaclims.core.config import setting, to_dict
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import files_digest, read_image, read_parquet, write_label_png
from qaclims.data.manifest import check_exist, shard_rows
from qaclims.models.crf import CrfConfig, crf_labels, densecrf_module

log = logging.getLogger(__name__)

IGNORE = 255


@dataclass(frozen=True)
class IrLabelConfig:
    """``cam_to_ir_label`` stage.

    conf_fg_thres: background score against which CAMs must win to be confident foreground.
    conf_bg_thres: background score that must beat every CAM for confident background.
    crf: dense-CRF settings (IRN's ``crf_inference_label``).
    """

    conf_fg_thres: float = setting(0.30, ge=0.0, le=1.0)
    conf_bg_thres: float = setting(0.10, ge=0.0, le=1.0)
    crf: CrfConfig = field(default_factory=CrfConfig)


# ------------------------------------------------------------------ shared stage helpers


def select_shard(df: pd.DataFrame, shard: int, num_shards: int) -> pd.DataFrame:
    """Rows ``shard, shard + n, ...`` of the manifest sorted by ``image_id``."""
    return shard_rows(df.sort_values("image_id", ignore_index=True), shard, num_shards)


def check_images(df: pd.DataFrame, manifest: Path) -> None:
    """Raise :class:`DataError` listing the ``image_path`` entries of ``df`` that are no file."""
    check_exist([Path(p) for p in df["image_path"]], "images", str(manifest))


# ------------------------------------------------------------------------------ stage


def _pad(cams: np.ndarray, score: float) -> np.ndarray:
    """``(K+1) x H x W``: a constant background score in front of the CAMs."""
    bg = np.full((1, *cams.shape[1:]), score, dtype=np.float32)
    return np.concatenate([bg, cams.astype(np.float32)], axis=0)


def confident_labels(
    image: np.ndarray, cams: np.ndarray, keys: np.ndarray, cfg: IrLabelConfig
) -> np.ndarray:
    """Confident ir labels of one image.

    Args:
        image: ``HxWx3 uint8`` RGB.
        cams: ``K x H x W float`` in [0,1], one per present class.
        keys: ``(K,) int`` fg class indices of the CAMs.

    Returns:
        ``HxW uint8``: ``c+1`` confident class ``c``, 0 confident background, 255 uncertain.
    """
    lut = np.concatenate([[0], keys + 1]).astype(np.uint8)
    fg = lut[crf_labels(image, _pad(cams, cfg.conf_fg_thres), cfg.crf)]
    bg = lut[crf_labels(image, _pad(cams, cfg.conf_bg_thres), cfg.crf)]
    out = fg.copy()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out


def label_image(image_path: str, cam_path: str, out_path: str, cfg: IrLabelConfig) -> None:
    """Read one image and its CAM file, write its confident-label PNG to ``out_path``."""
    image = read_image(image_path)
    keys, cams = read_cam(Path(cam_path))
    if cams.shape[1:] != image.shape[:2]:
        raise DataError(
            f"CAM file {cam_path} is {cams.shape[1:]}, image {image_path} {image.shape[:2]}"
        )
    write_label_png(out_path, confident_labels(image, cams, keys, cfg))


def _label_chunk(jobs: list[tuple[str, str, str, IrLabelConfig]]) -> None:
    for job in jobs:
        label_image(*job)


def shard_partial(
    manifest: Path,
    cam_dirs: list[Path],
    cfg: IrLabelConfig,
    out_dir: Path,
    shard: int,
    num_shards: int,
) -> tuple[pd.DataFrame, dict[str, Path], PartialDir]:
    """The shard's manifest rows, their CAM files, and its partial folder, valid for these
    settings, images and CAM files (by content): one made from other inputs is discarded."""
    df = select_shard(read_parquet(manifest, columns=["image_id", "image_path"]), shard, num_shards)
    cams = find_cam_files(list(df["image_id"]), cam_dirs)
    check_images(df, manifest)
    inputs = {
        "cfg": to_dict(cfg),
        "images": list(df["image_path"]),
        "cams": files_digest([cams[i] for i in df["image_id"]]),
    }
    return df, cams, PartialDir(out_dir, inputs)


def run(
    manifest: Path,
    cam_dirs: list[Path],
    cfg: IrLabelConfig,
    out_dir: Path,
    shard: int,
    num_shards: int,
    threads: int,
) -> None:
    """Write ``<out_dir>/<image_id>.png`` confident ir labels for shard ``shard`` of
    ``num_shards`` of ``manifest``, CAMs read from ``<any cam_dir>/<image_id>.npz``."""
    densecrf_module()
    if not 0.0 <= cfg.conf_bg_thres <= cfg.conf_fg_thres:
        raise ConfigError("cam_to_ir_label.conf_bg_thres must lie in [0, conf_fg_thres]")
    df, cams, part = shard_partial(manifest, cam_dirs, cfg, Path(out_dir), shard, num_shards)
    jobs = [
        (str(p), str(cams[i]), str(part.path / f"{i}.png"), cfg)
        for i, p in zip(df["image_id"], df["image_path"], strict=True)
        if not part.done(f"{i}.png")
    ]
    log.info(
        "cam_to_ir_label shard %d/%d: %d images, %d to do, %d processes",
        shard,
        num_shards,
        len(df),
        len(jobs),
        threads,
    )
    # one image per task: CRF cost varies with the image, so workers take the next as they finish
    parallel.run_chunks(_label_chunk, jobs, threads, desc="cam_to_ir_label", chunk_size=1)
    part.finish()
