"""infer_deeplab: segment a split with the trained DeepLab (rule ``infer_deeplab``).

deeplab-pytorch's MSC inference by default (max over the scales' logits on the scale-1
grid), or the mean / max of the passes at image size; the argmax is written as a label PNG,
and with ``crf.enabled`` also the argmax of the dense-CRF-refined softmax (deeplab-pytorch's
CRF parameters by default). :mod:`qaclims.seg.submission` packs the masks of VOC's test split
for the evaluation server. A shard's masks go to partial folders beside its outputs
(:mod:`qaclims.artifacts.partial`) and are kept by a rerun of the same network, settings and
images, so an interrupted shard (a COCO val shard with the CRF takes long) resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from qaclims.artifacts.partial import PartialDir
from qaclims.artifacts.weights import tensors_digest
from qaclims.core.config import runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image, read_parquet, write_label_png
from qaclims.evaluation.metrics import IGNORE_INDEX
from qaclims.models.deeplab import (
    DeepLab,
    DeeplabModelConfig,
    build_model,
    normalise,
)
from qaclims.seg.train_deeplab import require_positive
from qaclims.training import (
    autocast,
    load_weights,
)

log = logging.getLogger(__name__)

FUSIONS = ("msc", "max", "mean")


@dataclass(frozen=True)
class DeeplabCrfConfig:
    """Dense CRF after DeepLab (``infer_deeplab.crf``; defaults: deeplab-pytorch's configs).

    enabled: also write CRF-refined masks. iterations (10); gauss_sxy (POS_XY_STD 1),
    gauss_compat (POS_W 3); bilateral_sxy (BI_XY_STD 67), bilateral_srgb (BI_RGB_STD 3),
    bilateral_compat (BI_W 4). See :class:`qaclims.models.crf.CrfConfig`.
    """

    enabled: bool = setting(True, doc="also write CRF-refined masks.")
    iterations: int = setting(10, ge=0, doc="mean-field steps.")
    gauss_sxy: float = setting(1.0, gt=0.0, doc="spatial std (pixels) of the smoothness kernel.")
    gauss_compat: float = setting(3.0, ge=0.0, doc="weight of the smoothness kernel.")
    bilateral_sxy: float = setting(
        67.0, gt=0.0, doc="spatial std (pixels) of the appearance kernel."
    )
    bilateral_srgb: float = setting(
        3.0, gt=0.0, doc="colour std (0..255 units) of the appearance kernel."
    )
    bilateral_compat: float = setting(4.0, ge=0.0, doc="weight of the appearance kernel.")


@dataclass(frozen=True)
class InferDeeplabConfig:
    """Config slice ``infer_deeplab``.

    scales: input scales (the reference's MSC test: 1.0, 0.75, 0.5). flip: add mirrored
    passes. fusion: ``msc`` (deeplab-pytorch's MSC, the reference: max over the passes'
    logits on the scale-1 logit grid, inputs resized by scale factor, then upsampled),
    ``max`` or ``mean`` of the per-pass logits each upsampled to image size first.
    crf: :class:`DeeplabCrfConfig`. (Shard counts are the workflow's ``shards`` key.)
    batch_size: images of equal size per forward pass. amp: bf16 autocast on GPU.
    """

    scales: tuple[float, ...] = setting((1.0, 0.75, 0.5), gt=0.0, min_items=1)
    flip: bool = setting(False, doc="add mirrored passes.")
    fusion: str = setting(
        "msc",
        choices=FUSIONS,
        doc="msc (deeplab-pytorch: max on the scale-1 logit grid, then upsampled), or max / "
        "mean of the per-pass logits at image size.",
    )
    crf: DeeplabCrfConfig = field(default_factory=DeeplabCrfConfig)
    batch_size: int = runtime(1, ge=1)
    amp: bool = setting(False, doc="bf16 autocast on GPU.")


# ---------------------------------------------------------------- config checks


def check_infer_config(cfg: InferDeeplabConfig, where: str = "infer_deeplab") -> None:
    """Raise :class:`ConfigError` naming the key of an impossible value."""
    if not cfg.scales or min(cfg.scales) <= 0:
        raise ConfigError(f"{where}.scales: need positive factors, got {list(cfg.scales)}")
    if cfg.fusion not in FUSIONS:
        raise ConfigError(f"{where}.fusion: {cfg.fusion!r} is not one of {FUSIONS}")
    require_positive(cfg, ("batch_size",), where)
    require_positive(cfg.crf, ("iterations",), f"{where}.crf")


# ---------------------------------------------------------------- inference


def scaled_hw(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(int(H*s), int(W*s))``, at least 1 (the reference's ``scale_factor`` rounding)."""
    return max(1, int(height * scale)), max(1, int(width * scale))


@torch.no_grad()
def msc_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    amp: bool = False,
) -> torch.Tensor:
    """deeplab-pytorch's MSC inference: logits of the batch at scale 1 (output stride 8)
    and at every other scale (input resized bilinearly by ``scale_factor``, logits resized
    bilinearly to the scale-1 logit grid), their element-wise max, then upsampled
    bilinearly to ``HxW``. ``flip`` adds the mirrored passes to the max. Returns
    ``BxKxHxW float32``."""
    b, _, h, w = images.shape

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        if flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(images.device, amp):
            y = model(x).float()
        return [y[:b], y[b:].flip(-1)] if flip else [y]

    base = run(images)
    grid = base[0].shape[-2:]
    passes = list(base)
    for s in scales:
        if s == 1:
            continue
        x = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        passes += [
            F.interpolate(y, size=grid, mode="bilinear", align_corners=False) for y in run(x)
        ]
    fused = torch.stack(passes).amax(0)
    return F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    fusion: str = "mean",
    amp: bool = False,
) -> torch.Tensor:
    """Multi-scale (+ flip) logits of a batch.

    ``images``: ``Bx3xHxW float32`` normalised (:func:`normalise`). For each scale the batch
    is resized bilinearly, passed (with its mirror image when ``flip``), the logits resized
    bilinearly to ``HxW`` (mirrored ones flipped back) and the passes fused by ``fusion``
    (``mean`` or ``max``; ``msc``: :func:`msc_logits`). Returns ``BxKxHxW float32``.
    """
    if fusion == "msc":
        return msc_logits(model, images, scales, flip, amp)
    b, _, h, w = images.shape
    passes = []
    for s in scales:
        x = (
            images
            if s == 1
            else F.interpolate(
                images, size=scaled_hw(h, w, s), mode="bilinear", align_corners=False
            )
        )
        if flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(images.device, amp):
            y = model(x)
        y = F.interpolate(y.float(), size=(h, w), mode="bilinear", align_corners=False)
        passes.append(y[:b])
        if flip:
            passes.append(y[b:].flip(-1))
    stacked = torch.stack(passes)
    return stacked.mean(0) if fusion == "mean" else stacked.amax(0)


def _crf_config(c: DeeplabCrfConfig) -> Any:
    """The :class:`qaclims.models.crf.CrfConfig` of ``c`` (imported here: only the CRF
    branch needs it)."""
    from qaclims.models.crf import CrfConfig

    return CrfConfig(
        iterations=c.iterations,
        gauss_sxy=c.gauss_sxy,
        gauss_compat=c.gauss_compat,
        bilateral_sxy=c.bilateral_sxy,
        bilateral_srgb=c.bilateral_srgb,
        bilateral_compat=c.bilateral_compat,
    )


def _load_model(
    weights: Path, model_cfg: DeeplabModelConfig, num_classes: int, dev: torch.device
) -> DeepLab:
    model = build_model(model_cfg, num_classes, init=False)
    load_weights(weights, model)  # a DataError names the file and the keys that do not fit
    return model.to(dev).eval()


def _shard(manifest: Path, shard: int, num_shards: int) -> pd.DataFrame:
    from qaclims.data.manifest import shard_rows

    df = read_parquet(manifest, ["image_id", "image_path", "height", "width"])
    return shard_rows(df.sort_values("image_id", ignore_index=True), shard, num_shards)


def size_batches(df: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """Rows grouped by ``(height, width)`` (manifest order kept inside a group), in chunks
    of at most ``batch_size``: images of one chunk stack into one tensor."""
    out = []
    for _, group in df.groupby(["height", "width"], sort=False):
        out += [group.iloc[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return out


def _read_batch(rows: pd.DataFrame) -> list[np.ndarray]:
    images = []
    for path, h, w in zip(rows["image_path"], rows["height"], rows["width"], strict=True):
        im = read_image(path)
        if im.shape[:2] != (h, w):
            raise DataError(f"image {path} is {im.shape[:2]} but the manifest says {(h, w)}")
        images.append(im)
    return images


@dataclass(frozen=True)
class _Outputs:
    nocrf: Path
    crf: Path | None


def _write(
    image_id: str, image: np.ndarray, probs: np.ndarray, crf_cfg: Any, out: _Outputs
) -> None:
    """Write the argmax of ``probs: KxHxW float32`` (and of its CRF refinement)."""
    pred = probs.argmax(0).astype(np.uint8)
    write_label_png(out.nocrf / f"{image_id}.png", pred)
    if crf_cfg is not None and out.crf is not None:
        from qaclims.models.crf import dense_crf

        pred = dense_crf(image, probs, crf_cfg).argmax(0).astype(np.uint8)
        write_label_png(out.crf / f"{image_id}.png", pred)


def _check_outputs(cfg: InferDeeplabConfig, out_dir_crf: Path | None, num_classes: int) -> None:
    if cfg.crf.enabled and out_dir_crf is None:
        raise ConfigError("infer_deeplab.crf.enabled is true but no CRF output folder was given")
    if not cfg.crf.enabled and out_dir_crf is not None:
        raise ConfigError("infer_deeplab.crf.enabled is false but a CRF output folder was given")
    if not 2 <= num_classes <= IGNORE_INDEX:
        raise ConfigError(f"num_classes must be in [2, {IGNORE_INDEX}], got {num_classes}")


def infer_run(
    manifest: Path,
    weights: Path,
    model_cfg: DeeplabModelConfig,
    num_classes: int,
    cfg: InferDeeplabConfig,
    out_dir_nocrf: Path,
    out_dir_crf: Path | None,
    shard: int,
    num_shards: int,
    device: str,
) -> None:
    """Segment shard ``shard`` of ``num_shards`` of ``manifest``'s images.

    Writes ``out_dir_nocrf/<image_id>.png`` (argmax of the fused logits) and, when
    ``cfg.crf.enabled``, ``out_dir_crf/<image_id>.png`` (argmax after the dense CRF):
    ``HxW uint8`` label PNGs in ``[0, num_classes)`` at the image size. They are written
    into ``.<folder name>.partial`` beside each folder, renamed onto it when the shard is
    done; a rerun keeps the images finished there when the weights (by content), the
    config, the model config and the image list are the same, else starts afresh.

    ``weights``: safetensors from :func:`train_run`; ``model_cfg``: the
    ``train_deeplab.model`` slice that built them; ``num_classes`` includes background.
    """
    check_infer_config(cfg)
    _check_outputs(cfg, out_dir_crf, num_classes)
    rows = _shard(Path(manifest), shard, num_shards)
    crf_cfg = _crf_config(cfg.crf) if cfg.crf.enabled else None
    dev = torch.device(torch_device(device))
    model = _load_model(Path(weights), model_cfg, num_classes, dev)
    inputs = {
        "cfg": to_dict(cfg),
        "weights": tensors_digest(Path(weights)),
        "model": to_dict(model_cfg),
        "num_classes": num_classes,
        "images": list(rows["image_path"]),
    }
    parts = [PartialDir(Path(d), inputs) for d in (out_dir_nocrf, out_dir_crf) if d]
    out = _Outputs(parts[0].path, parts[1].path if len(parts) > 1 else None)
    done = rows["image_id"].map(lambda i: all(p.done(f"{i}.png") for p in parts))
    log.info(
        "infer_deeplab: shard %d/%d, %d images (%d done before), scales %s flip %s, crf %s, %s",
        shard,
        num_shards,
        len(rows),
        int(done.sum()),
        list(cfg.scales),
        cfg.flip,
        cfg.crf.enabled,
        dev,
    )
    rows = rows[~done]
    bar = tqdm(total=len(rows), desc=f"infer_deeplab {shard}", unit="img", dynamic_ncols=True)
    for batch in size_batches(rows, cfg.batch_size):
        images = _read_batch(batch)
        x = torch.stack([torch.from_numpy(normalise(im, model_cfg.style)) for im in images])
        logits = predict_logits(model, x.to(dev), cfg.scales, cfg.flip, cfg.fusion, cfg.amp)
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        for image_id, im, p in zip(batch["image_id"], images, probs, strict=True):
            _write(str(image_id), im, p, crf_cfg, out)
        bar.update(len(batch))
    bar.close()
    for p in parts:
        p.finish()
