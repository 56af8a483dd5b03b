"""Image augmentation and normalisation shared by the training and inference stages.

Random choices ("draws") are kept apart from the operations that apply them, so one draw
can be applied to an image and its label map alike, and every draw takes an explicit
``numpy.random.Generator``: a sample's augmentation is a pure function of
``sample_rng(seed, epoch, index)`` whatever the worker process or resume point.

Conventions follow IRN's data loader (``jiwoon-ahn/irn``): sizes are rounded with
``numpy.round``; images are resized with PIL bicubic, label maps with nearest; an image
smaller than the crop is placed at a random offset in a container filled with ``fill``.
Arrays are ``HxWx3 uint8 RGB`` images, ``HxW`` label maps or ``HxWxC float32``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


def sample_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by ``(seed, *keys)`` only (e.g. ``(seed, epoch, index)``).

    Keys must be >= 0. Key tuples of different lengths may collide (``(s, e)`` and
    ``(s, e, 0)`` give the same stream): give each use its own tag key.
    """
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(H*scale), round(W*scale))`` with ``numpy.round`` (half to even), at least 1."""
    h = max(1, int(np.round(height * scale)))
    w = max(1, int(np.round(width * scale)))
    return h, w


def resize(array: np.ndarray, size: tuple[int, int], order: str = "bicubic") -> np.ndarray:
    """Resize ``HxW`` or ``HxWxC`` (uint8 or float32) to ``size=(h, w)`` with PIL.

    ``order``: ``bicubic`` (images) or ``nearest`` (label maps). Returns the input itself
    when the size already matches; same dtype as the input otherwise.
    """
    if order not in _RESAMPLE:
        raise ValueError(f"order must be one of {sorted(_RESAMPLE)}, got {order!r}")
    if tuple(array.shape[:2]) == tuple(size):
        return array
    if array.ndim == 3 and array.dtype != np.uint8:
        chans = [resize(array[..., c], size, order) for c in range(array.shape[2])]
        return np.stack(chans, axis=-1)
    mode = "F" if array.dtype == np.float32 else None
    im = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    return np.asarray(im.resize((size[1], size[0]), _RESAMPLE[order])).copy()


def rescale(array: np.ndarray, scale: float, order: str = "bicubic") -> np.ndarray:
    """Resize by a factor: ``HxW[xC]`` to ``scaled_size(H, W, scale)`` (see :func:`resize`)."""
    return resize(array, scaled_size(array.shape[0], array.shape[1], scale), order)


def draw_resize_long(
    height: int, width: int, long_range: Sequence[int], rng: np.random.Generator
) -> tuple[int, int]:
    """Target size whose long side is uniform in ``[lo, hi]`` (inclusive), aspect kept."""
    target = int(rng.integers(long_range[0], long_range[1] + 1))
    scale = target / height if width < height else target / width
    return scaled_size(height, width, scale)


def draw_scale(scale_range: Sequence[float], rng: np.random.Generator) -> float:
    """A scale factor uniform in ``[lo, hi)``."""
    return float(scale_range[0] + rng.random() * (scale_range[1] - scale_range[0]))


def draw_flip(rng: np.random.Generator) -> bool:
    """A fair coin for a horizontal flip."""
    return bool(rng.integers(0, 2))


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror ``HxW[xC]`` left-right (a contiguous copy)."""
    return np.ascontiguousarray(array[:, ::-1])


@dataclass(frozen=True)
class CropBox:
    """Where a crop puts image rows/cols ``[img_top:+h, img_left:+w]`` in its container
    (``[cont_top:+h, cont_left:+w]``); the container is ``size x size``."""

    size: int
    cont_top: int
    cont_left: int
    img_top: int
    img_left: int
    h: int
    w: int


def draw_crop_box(height: int, width: int, crop: int, rng: np.random.Generator) -> CropBox:
    """A uniformly random ``crop x crop`` window; a side shorter than ``crop`` is placed at a
    random offset in the container instead (IRN's random crop)."""
    ch, cw = min(crop, height), min(crop, width)
    img_top = int(rng.integers(0, height - crop + 1)) if height > crop else 0
    cont_top = 0 if height > crop else int(rng.integers(0, crop - height + 1))
    img_left = int(rng.integers(0, width - crop + 1)) if width > crop else 0
    cont_left = 0 if width > crop else int(rng.integers(0, crop - width + 1))
    return CropBox(crop, cont_top, cont_left, img_top, img_left, ch, cw)


def apply_crop(array: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    """Cut ``box`` out of ``HxW[xC]``: a ``size x size[xC]`` array, ``fill`` outside the image."""
    out = np.full((box.size, box.size, *array.shape[2:]), fill, dtype=array.dtype)
    src = array[box.img_top : box.img_top + box.h, box.img_left : box.img_left + box.w]
    out[box.cont_top : box.cont_top + box.h, box.cont_left : box.cont_left + box.w] = src
    return out


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """``HxWx3 uint8`` RGB to ``HxWx3 float32`` ``(x / 255 - mean) / std`` per channel."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return (image.astype(np.float32) / np.float32(255.0) - m) / s


def to_chw(image: np.ndarray) -> torch.Tensor:
    """``HxWxC`` array to a contiguous ``CxHxW`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def resize_tensor(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``BxCxHxW float`` to ``size=(h, w)``, antialiased when shrinking.

    Matches PIL's bicubic filter (to ~1e-3 on a 0-255 scale), so multi-scale inference can
    rescale batches on the device as IRN rescales single images with PIL.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def classification_sample(
    image: np.ndarray,
    rng: np.random.Generator,
    resize_long: Sequence[int] | None,
    crop: int | None,
    flip: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """IRN's classification augmentation of ``HxWx3 uint8``: random long-side resize,
    normalisation, random horizontal flip, random crop padded with 0 (the mean colour).

    Returns ``3 x crop x crop`` float32 (``3xH'xW'`` without a crop).
    """
    if resize_long is not None:
        size = draw_resize_long(image.shape[0], image.shape[1], resize_long, rng)
        image = resize(image, size, "bicubic")
    out = normalize(image, mean, std)
    if flip and draw_flip(rng):
        out = hflip(out)
    if crop is not None:
        out = apply_crop(out, draw_crop_box(out.shape[0], out.shape[1], crop, rng), 0.0)
    return to_chw(out)
