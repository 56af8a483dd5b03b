"""Multi-scale CAM inference (IRN's make_cam): CAMs of an image pyramid with flips, resized to
the stride-4 and full sizes, summed over scales and max-normalised per class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from qaclims.artifacts.camfile import CAM_STRIDE, LEVELS, cam_arrays
from qaclims.data import augment
from qaclims.models.cam_resnet import CamNet
from qaclims.training import autocast

if TYPE_CHECKING:
    from qaclims.cam.make_cam import MakeCamConfig


def empty_arrays(
    size: tuple[int, int], st_size: tuple[int, int], store: str
) -> dict[str, np.ndarray]:
    """The CAM file arrays of an image without a class (0 x H x W and 0 x h x w)."""
    dtype = np.uint8 if store == "levels" else np.float16
    cam, strided = np.zeros((0, *size), dtype), np.zeros((0, *st_size), np.float16)
    return cam_arrays([], cam, strided)


def flip_cam(model: CamNet, x: torch.Tensor, flip: bool, amp: bool = False) -> torch.Tensor:
    """Relu CAMs ``BxCxhxw float32`` of ``x: Bx3xHxW``, plus those of ``x`` mirrored
    (mirrored back) when ``flip``; both halves go through one forward of ``2B`` images."""
    inp = torch.cat([x, x.flip(-1)]) if flip else x
    with autocast(x.device, amp):
        cams = model.cam(inp)
    cams = cams.float()
    if flip:
        b = x.shape[0]
        cams = cams[:b] + cams[b:].flip(-1)
    return cams


def cam_sizes(height: int, width: int, output_stride: int) -> tuple[tuple[int, int], ...]:
    """``(strided size ceil(HW/4), stride-aligned size ceil(HW/os)*os)`` of an image."""
    st = (math.ceil(height / CAM_STRIDE), math.ceil(width / CAM_STRIDE))
    up = (
        math.ceil(height / output_stride) * output_stride,
        math.ceil(width / output_stride) * output_stride,
    )
    return st, up


@torch.no_grad()
def multiscale_cam(
    model: CamNet,
    image: torch.Tensor,
    scales: Sequence[float],
    flip: bool = True,
    classes: Sequence[int] | None = None,
    amp: bool = False,
    pyramid: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over ``scales`` (and mirror images) of relu CAMs, not normalised.

    Args:
        model: a :class:`CamNet` in eval mode, on the device of ``image``.
        image: ``3xHxW`` or ``Bx3xHxW`` float, ImageNet-normalised, at scale 1.
        classes: channels to keep (default all ``C``); ``K = len(classes)``.
        pyramid: the network's input at each scale (same batch shape as ``image``, e.g.
            :func:`image_pyramid`); default: ``image`` resized on the device
            (:func:`qaclims.data.augment.resize_tensor`). ``image`` then only gives the size.
    Returns:
        ``(strided, highres)``: ``[B]xKx ceil(H/4) x ceil(W/4)`` and ``[B]xKxHxW``, float32
        >= 0 (no batch dimension when ``image`` had none).
    """
    x = image if image.dim() == 4 else image[None]
    h, w = x.shape[-2:]
    st_size, up_size = cam_sizes(h, w, model.output_stride)
    keep = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
    strided = highres = None
    if pyramid is not None and len(pyramid) != len(scales):
        raise ValueError(f"pyramid has {len(pyramid)} inputs for {len(scales)} scales")
    for i, s in enumerate(scales):
        if pyramid is None:
            xs = augment.resize_tensor(x, augment.scaled_size(h, w, s))
        else:
            xs = pyramid[i] if pyramid[i].dim() == 4 else pyramid[i][None]
        cams = flip_cam(model, xs, flip, amp)
        if keep is not None:
            cams = cams[:, keep.to(cams.device)]
        st = F.interpolate(cams, st_size, mode="bilinear", align_corners=False)
        hr = F.interpolate(cams, up_size, mode="bilinear", align_corners=False)[..., :h, :w]
        strided = st if strided is None else strided + st
        highres = hr if highres is None else highres + hr
    assert strided is not None and highres is not None
    if image.dim() == 3:
        return strided[0], highres[0]
    return strided, highres


def image_pyramid(
    image: np.ndarray,
    scales: Sequence[float],
    mean: Sequence[float] = augment.IMAGENET_MEAN,
    std: Sequence[float] = augment.IMAGENET_STD,
) -> list[torch.Tensor]:
    """The reference's multi-scale inputs of one ``HxWx3 uint8`` image: per scale, the
    image resized with PIL (bicubic, size ``round(H*s) x round(W*s)``, half to even) in
    uint8, then normalised; ``3xhxw float32`` tensors in ``scales`` order."""
    out = []
    for s in scales:
        h, w = image.shape[:2]
        resized = augment.resize(image, augment.scaled_size(h, w, s), "bicubic")
        out.append(augment.to_chw(augment.normalize(resized, mean, std)))
    return out


def max_normalise(cam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``...xHxW`` maps divided by their per-map maximum plus ``eps`` (values in [0, 1))."""
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + eps)


def batch_cams(
    model: CamNet,
    images: torch.Tensor,
    labels: Sequence[Sequence[int]],
    cfg: MakeCamConfig,
    pyramid: Sequence[torch.Tensor] | None = None,
) -> list[dict[str, np.ndarray]]:
    """CAM file arrays of a batch of same-size images (``Bx3xHxW`` normalised, on device;
    ``pyramid``: the inputs per scale, see :func:`multiscale_cam`).

    Only the union of the batch's classes is upsampled. Per image, the arrays of
    :mod:`qaclims.artifacts.camfile`: ``keys`` int16 (K,), ``cam`` uint8 KxHxW levels
    ``ceil(200 v)`` of the max-normalised CAM (quantised on the device), ``cam_strided``
    float16 Kx ceil(H/4) x ceil(W/4) in [0, 1], ``format``.
    """
    union = sorted({int(c) for labs in labels for c in labs})
    h, w = images.shape[-2:]
    if not union:
        st_size, _ = cam_sizes(h, w, model.output_stride)
        return [empty_arrays((h, w), st_size, cfg.store) for _ in labels]
    strided, highres = multiscale_cam(
        model, images, cfg.scales, cfg.flip, union, cfg.amp, pyramid=pyramid
    )
    out = []
    for b, labs in enumerate(labels):
        pos = torch.as_tensor([union.index(int(c)) for c in labs], dtype=torch.long)
        pos = pos.to(strided.device)
        cam = max_normalise(highres[b, pos], cfg.norm_eps).float()
        if cfg.store == "levels":
            stored = torch.ceil(cam * LEVELS).clamp_(0, LEVELS).to(torch.uint8).cpu().numpy()
        else:
            stored = cam.half().cpu().numpy()
        cst = max_normalise(strided[b, pos], cfg.norm_eps).half().cpu().numpy()
        out.append(cam_arrays(list(labs), stored, cst))
    return out
