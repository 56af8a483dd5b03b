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

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from qaclims.core.config import setting, to_dict
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import files_digest, read_image, read_npz, read_parquet, write_label_png
from qaclims.data.manifest import check_exist, shard_rows
from qaclims.models.crf import CrfConfig, crf_labels, densecrf_module

log = logging.getLogger(__name__)

IGNORE = 255
STAMP = ".config.json"


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


def find_cam_files(image_ids: Sequence[str], cam_dirs: Sequence[Path]) -> dict[str, Path]:
    """``<dir>/<image_id>.npz`` of each image in any of ``cam_dirs`` (error names a missing one)."""
    found: dict[str, Path] = {}
    for d in map(Path, cam_dirs):
        if not d.is_dir():
            raise DataError(f"missing CAM folder: {d}")
        found.update({e.name[:-4]: Path(e.path) for e in os.scandir(d) if e.name.endswith(".npz")})
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise DataError(
            f"no CAM file {missing[0]}.npz in {[str(d) for d in cam_dirs]} "
            f"({len(missing)} images lack one)"
        )
    return {i: found[i] for i in image_ids}


def read_cam(path: Path, key: str = "cam") -> tuple[np.ndarray, np.ndarray]:
    """``(keys int64 (K,), cams float32 K x h x w)`` of a CAM file (``key``: cam|cam_strided)."""
    z = read_npz(path)
    if "keys" not in z or key not in z:
        raise DataError(f"CAM file {path} lacks 'keys' or '{key}' (has {sorted(z)})")
    keys, cams = z["keys"].astype(np.int64).reshape(-1), z[key].astype(np.float32)
    if cams.ndim != 3 or cams.shape[0] != keys.shape[0]:
        raise DataError(f"CAM file {path}: {key} is {cams.shape} for {keys.shape[0]} keys")
    return keys, cams


def check_images(df: pd.DataFrame, manifest: Path) -> None:
    """Raise :class:`DataError` listing the ``image_path`` entries of ``df`` that are no file."""
    check_exist([Path(p) for p in df["image_path"]], "images", str(manifest))


class PartialDir:
    """``.<out_dir name>.partial`` beside ``out_dir``: finished files of an interrupted run,
    valid for one config (the convention of make_cam).

    A stamp file holds the config's fingerprint; a partial folder of another config is
    emptied, temporary files of interrupted writes are removed. :meth:`finish` removes the
    stamp and renames the folder onto ``out_dir``.
    """

    def __init__(self, out_dir: Path, config: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir.parent / f".{self.out_dir.name}.partial"
        stamp = self.path / STAMP
        tag = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        if self.path.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()) != tag):
            log.warning("discarding %s: written under other settings or inputs", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for p in self.path.iterdir():
            if p.name.startswith(".") and p.name != STAMP:
                p.unlink()
        stamp.write_text(json.dumps(tag))

    def done(self, name: str) -> bool:
        return (self.path / name).is_file()

    def finish(self) -> None:
        (self.path / STAMP).unlink(missing_ok=True)
        if self.out_dir.exists():
            log.warning("replacing existing output folder %s", self.out_dir)
            shutil.rmtree(self.out_dir)
        os.replace(self.path, self.out_dir)


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


def _job(args: tuple[str, str, str, IrLabelConfig]) -> str:
    label_image(*args)
    return args[2]


def _label_all(jobs: list[tuple[str, str, str, IrLabelConfig]], threads: int) -> None:
    """Run ``jobs`` inline (``threads <= 1``) or in ``threads`` forked worker processes.

    Fork, not spawn/forkserver: those re-run the ``__main__`` script in every child, and
    the workflow's scripts are not ``__main__``-guarded. All workers are forked at the
    first submit, before the progress bar starts its thread.
    """
    bar = functools.partial(tqdm, total=len(jobs), desc="cam_to_ir_label", unit="img")
    if threads <= 1 or len(jobs) <= 1:
        for _ in bar(map(_job, jobs)):
            pass
        return
    with ProcessPoolExecutor(max_workers=threads, mp_context=get_context("fork")) as ex:
        futures = [ex.submit(_job, j) for j in jobs]
        try:
            for f in bar(as_completed(futures)):
                f.result()
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise


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
    _label_all(jobs, threads)
    part.finish()
