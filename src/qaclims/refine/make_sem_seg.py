"""Stage ``make_sem_seg``: pseudo masks by random-walk propagation of the CAMs along the
boundaries predicted by IRN (IRN's ``make_sem_seg_labels``).

Per image: boundary map at stride 4 from the trained IRN (image and its flip); the stride-4
CAMs (``cam_strided`` of the CAM file) times ``1 - boundary`` are propagated
``2**exp_times`` steps over pairs closer than ``radius`` with affinity power ``beta``
(:func:`qaclims.refine.random_walk.propagate`); the result is upsampled x4 (bilinear), divided by
its maximum over all classes and pixels, and each pixel takes the class of the largest
score, or background where every score is below ``sem_seg_bg_thres``.

Output: ``<out_dir>/<image_id>.png`` label PNGs (0 bg, c+1 class c) of the shard's images,
written into ``.<out_dir name>.partial`` (reused by a rerun) and renamed at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from qaclims.artifacts.camfile import find_cam_files, read_cam
from qaclims.artifacts.partial import PartialDir
from qaclims.artifacts.weights import tensors_digest
from qaclims.core.config import runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import files_digest, read_image, read_parquet, write_label_png
from qaclims.models import irn as irn_model
from qaclims.refine.cam_to_ir_label import check_images, select_shard
from qaclims.refine.random_walk import propagate
from qaclims.training import load_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SemSegConfig:
    """``make_sem_seg`` stage (defaults: QA-CLIMS's ``step/make_sem_seg_labels.py``).

    beta: power of the affinities in the transition matrix.
    exp_times: the walk takes ``2**exp_times`` steps.
    radius: pairs closer than this (stride-4 pixels) are connected.
    sem_seg_bg_thres: background score after max-normalisation (QA-CLIMS and CLIMS 0.2;
        IRN 0.25).
    pad_to: images are padded bottom/right to at least this size for IRN; 0 (QA-CLIMS,
        whose padding line is commented out) feeds the image as it is; IRN pads to 512.
    method: ``sparse`` (2^t sparse products) or ``dense`` (t squarings of the dense matrix,
        the reference's way); same result.
    num_workers: data-loading processes.
    """

    beta: float = setting(10.0, gt=0.0)
    exp_times: int = setting(8, ge=0)
    radius: int = setting(5, ge=1)
    sem_seg_bg_thres: float = setting(0.2, ge=0.0, le=1.0)
    pad_to: int = setting(0, ge=0)
    method: str = setting("sparse", choices=("sparse", "dense"))
    num_workers: int = runtime(2, ge=0)


def masks_from_walk(
    walked: torch.Tensor, keys: np.ndarray, size: tuple[int, int], bg_thres: float
) -> np.ndarray:
    """Label map from propagated stride-4 scores.

    Args:
        walked: ``K x h x w`` float >= 0 (``h = ceil(H/4)``); keys: ``(K,)`` fg class indices.
        size: ``(H, W)`` of the image.

    Returns:
        ``HxW uint8``: ``keys[k] + 1`` of the best class, 0 where all scores (divided by their
        maximum) are below ``bg_thres``.
    """
    h, w = size
    if walked.shape[0] == 0:
        return np.zeros(size, dtype=np.uint8)
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)
    up = up[0, :, :h, :w]
    top = up.max()
    if not bool(top > 0):
        return np.zeros(size, dtype=np.uint8)
    scores = torch.cat([torch.full_like(up[:1], bg_thres), up / top])
    lut = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return lut[scores.argmax(dim=0).cpu().numpy()]


class _Images(torch.utils.data.Dataset[dict[str, Any]]):
    """Image and stride-4 CAMs of each shard row (read in loader workers)."""

    def __init__(self, rows: list[tuple[str, str, Path]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id, image_path, cam_path = self.rows[i]
        image = read_image(image_path)
        keys, cams = read_cam(cam_path, "cam_strided")
        h, w = image.shape[:2]
        if cams.shape[1:] != ((h - 1) // 4 + 1, (w - 1) // 4 + 1):
            raise DataError(f"CAM file {cam_path}: cam_strided {cams.shape[1:]} for image {h}x{w}")
        return {"id": image_id, "image": image, "keys": keys, "cams": cams}


def segment(
    model: irn_model.IrnNet,
    item: dict[str, Any],
    irn_cfg: irn_model.IrnModelConfig,
    cfg: SemSegConfig,
    device: torch.device,
) -> np.ndarray:
    """Pseudo mask (``HxW uint8``) of one item of :class:`_Images`."""
    image, keys = item["image"], item["keys"]
    if keys.shape[0] == 0:
        return np.zeros(image.shape[:2], dtype=np.uint8)
    edge = irn_model.infer_edge(model, image, irn_cfg, cfg.pad_to, device)
    cams = torch.from_numpy(item["cams"]).to(device)
    walked = propagate(cams, edge, cfg.radius, cfg.beta, cfg.exp_times, cfg.method)
    return masks_from_walk(walked, keys, image.shape[:2], cfg.sem_seg_bg_thres)


def _as_is(item: Any) -> Any:
    """Collate function that keeps NumPy arrays as they are."""
    return item


def load_irn(
    path: Path, irn_cfg: irn_model.IrnModelConfig, device: torch.device
) -> irn_model.IrnNet:
    """The trained IRN of ``path`` (safetensors) built with ``irn_cfg``, in eval mode."""
    model = irn_model.build_model(irn_cfg, for_inference=True)
    load_weights(path, model)  # a DataError names the file and the keys that do not fit
    return model.to(device).eval()


def _check(cfg: SemSegConfig) -> None:
    if cfg.method not in ("sparse", "dense"):
        raise ConfigError(f"make_sem_seg.method: expected sparse or dense, got {cfg.method!r}")
    if cfg.radius < 2 or cfg.exp_times < 0 or cfg.beta <= 0:
        raise ConfigError("make_sem_seg: radius must be >= 2, exp_times >= 0 and beta > 0")


def run(
    manifest: Path,
    cam_dirs: list[Path],
    irn_weights: Path,
    irn_cfg: irn_model.IrnModelConfig,
    cfg: SemSegConfig,
    out_dir: Path,
    shard: int,
    num_shards: int,
    device: str,
) -> None:
    """Write ``<out_dir>/<image_id>.png`` pseudo masks for shard ``shard`` of ``num_shards``
    of ``manifest``; CAMs from ``<any cam_dir>/<image_id>.npz``, IRN from ``irn_weights``
    (built with ``irn_cfg``)."""
    _check(cfg)
    df = select_shard(read_parquet(manifest, columns=["image_id", "image_path"]), shard, num_shards)
    cams = find_cam_files(list(df["image_id"]), cam_dirs)
    check_images(df, manifest)
    dev = torch.device(torch_device(device))
    model = load_irn(irn_weights, irn_cfg, dev)
    inputs = {
        "cfg": to_dict(cfg),
        "irn": tensors_digest(Path(irn_weights)),
        "irn_model": to_dict(irn_cfg),
        "images": list(df["image_path"]),
        "cams": files_digest([cams[i] for i in df["image_id"]]),
    }
    part = PartialDir(Path(out_dir), inputs)
    rows = [
        (i, p, cams[i])
        for i, p in zip(df["image_id"], df["image_path"], strict=True)
        if not part.done(f"{i}.png")
    ]
    log.info(
        "make_sem_seg shard %d/%d: %d images, %d to do on %s",
        shard,
        num_shards,
        len(df),
        len(rows),
        dev,
    )
    loader = torch.utils.data.DataLoader(
        _Images(rows),
        batch_size=None,
        num_workers=cfg.num_workers if rows else 0,
        collate_fn=_as_is,
    )
    with torch.no_grad():
        for item in tqdm(loader, total=len(rows), desc="make_sem_seg", unit="img"):
            mask = segment(model, item, irn_cfg, cfg, dev)
            write_label_png(part.path / f"{item['id']}.png", mask)
    part.finish()
