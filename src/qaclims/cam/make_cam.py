"""make_cam: multi-scale, flip-augmented class activation maps of a trained CAM network.

For an image of size ``HxW`` and each scale ``s`` the image is resized to
``round(H*s) x round(W*s)`` (bicubic), the network's relu CAMs of it and of its mirror
image (mirrored back) are added, and the result is upsampled (bilinear) both to the stride-4
grid ``ceil(H/4) x ceil(W/4)`` and, as in IRN's ``make_cam``, to the output-stride-aligned
size ``ceil(H/16)*16 x ceil(W/16)*16`` cropped to ``HxW``. Maps are summed over scales,
restricted to the image's present classes and divided per class by ``max + 1e-5``.

Images of the same size are batched; each forward handles a batch and its mirror images at
one scale. Output: one ``<image_id>.npz`` per image (``docs/ARCHITECTURE.md``), written into
``.<out_dir>.partial/`` beside ``out_dir`` and renamed to ``out_dir`` when the shard is
complete, so a re-run after a crash skips the images already written.

Entry point: :func:`run` (a shard of a manifest); the CAM computation is
:mod:`qaclims.cam.multiscale`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qaclims.artifacts.camfile import write_cam
from qaclims.artifacts.partial import PartialDir
from qaclims.artifacts.weights import tensors_digest
from qaclims.cam.multiscale import batch_cams, image_pyramid
from qaclims.core.config import runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image
from qaclims.data import augment
from qaclims.data.manifest import check_exist, check_labels, read_manifest, shard_rows
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.training import fingerprint

log = logging.getLogger(__name__)

#: Stride of ``cam_strided`` -- fixed by the CAM file contract (docs/ARCHITECTURE.md).
RESCALE_MODES: tuple[str, ...] = ("image", "tensor")
STORES = ("levels", "float16")


@dataclass(frozen=True)
class MakeCamConfig:
    """Config slice ``make_cam`` (defaults: IRN / QA-CLIMS).

    scales: image scales whose CAMs are summed. flip: add each scale's mirror-image CAM.
    batch_size: images (of one size) per forward; the forward holds twice as many with flip.
    num_workers: image-loading processes. amp: bf16 autocast on GPU. norm_eps: added to each
    class's maximum before dividing. mean/std: ImageNet normalisation. store: ``levels``
    (CAM file format 2) or ``float16`` (format 1), see :mod:`qaclims.artifacts.camfile`.
    """

    scales: tuple[float, ...] = setting((1.0, 0.5, 1.5, 2.0), gt=0.0, min_items=1)
    flip: bool = setting(True, doc="add each scale's mirror-image CAM.")
    batch_size: int = runtime(8, ge=1)
    num_workers: int = runtime(4, ge=0)
    amp: bool = setting(
        False, doc="bf16 autocast on GPU (the reference trains and infers in float32)."
    )
    norm_eps: float = setting(1e-5, gt=0.0, doc="added to each class's maximum before dividing.")
    mean: tuple[float, ...] = setting(augment.IMAGENET_MEAN, doc="normalisation mean (ImageNet).")
    std: tuple[float, ...] = setting(
        augment.IMAGENET_STD, gt=0.0, doc="normalisation std (ImageNet)."
    )
    rescale: str = setting(
        "image",
        choices=RESCALE_MODES,
        doc="how each scale's input is made. image (IRN/QA-CLIMS): the uint8 image resized "
        "with PIL (bicubic, rounded and clipped to 0-255), then normalised; tensor: the "
        "normalised scale-1 tensor resized on the device (bicubic, antialiased; batched, "
        "cheaper on GPU; 4-scale CAMs differ from the reference's by up to ~0.1).",
    )
    store: str = setting(
        "levels",
        choices=STORES,
        doc="how the full-size CAMs are stored. levels: uint8 ceil(200 v), one byte a value "
        "(the reference's float32: four), every threshold on the 0.005 grid decides as on the "
        "float CAM; float16: half precision (format 1). Bytes per image measured in "
        "docs/REPRODUCING.md.",
    )


def check_config(cfg: MakeCamConfig, where: str = "make_cam") -> None:
    """Raise :class:`ConfigError` naming the key of an out-of-range value."""
    if not cfg.scales or min(cfg.scales) <= 0:
        raise ConfigError(f"{where}.scales must be a non-empty list of numbers > 0")
    if cfg.batch_size < 1:
        raise ConfigError(f"{where}.batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.num_workers < 0:
        raise ConfigError(f"{where}.num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.store not in STORES:
        raise ConfigError(f"{where}.store: {cfg.store!r} is not one of {STORES}")
    if cfg.norm_eps <= 0:
        raise ConfigError(f"{where}.norm_eps must be > 0, got {cfg.norm_eps}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ConfigError(f"{where}.mean/std need 3 entries each (std > 0)")


class _Images(Dataset[tuple[int, list[torch.Tensor]]]):
    """``(row, inputs)``: ``[3xHxW float32 normalised image]``, followed by the per-scale
    inputs of :func:`image_pyramid` when ``rescale: image``; a size differing from the
    manifest's ``height``/``width`` raises :class:`DataError` naming the image."""

    def __init__(self, df: pd.DataFrame, cfg: MakeCamConfig):
        self.paths = list(df["image_path"])
        self.sizes = list(zip(df["height"], df["width"], strict=True))
        self.mean, self.std = cfg.mean, cfg.std
        self.scales = cfg.scales if cfg.rescale == "image" else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, list[torch.Tensor]]:
        image = read_image(self.paths[row])
        if tuple(image.shape[:2]) != tuple(self.sizes[row]):
            h, w = self.sizes[row]
            raise DataError(
                f"image {self.paths[row]} is {image.shape[0]}x{image.shape[1]}, "
                f"the manifest says {h}x{w}"
            )
        if self.scales is None:
            return row, [augment.to_chw(augment.normalize(image, self.mean, self.std))]
        pyramid = image_pyramid(image, self.scales, self.mean, self.std)
        if 1.0 in self.scales:  # the scale-1 input is the image itself: normalised once
            x = pyramid[list(self.scales).index(1.0)]
        else:
            x = augment.to_chw(augment.normalize(image, self.mean, self.std))
        return row, [x, *pyramid]


def size_batches(
    sizes: Sequence[tuple[int, int]], rows: Sequence[int], batch: int
) -> list[list[int]]:
    """``rows`` grouped into batches of at most ``batch`` rows of one image size; sizes in
    order of first appearance, rows in their given order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for r in rows:
        groups.setdefault(tuple(sizes[r]), []).append(r)  # type: ignore[arg-type]
    return [g[i : i + batch] for g in groups.values() for i in range(0, len(g), batch)]


def _collate(
    items: list[tuple[int, list[torch.Tensor]]],
) -> tuple[list[int], list[torch.Tensor]]:
    n = len(items[0][1])
    return [r for r, _ in items], [torch.stack([x[i] for _, x in items]) for i in range(n)]


def _run_fingerprint(
    df: pd.DataFrame,
    weights: Path,
    model_cfg: CamModelConfig,
    num_classes: int,
    cfg: MakeCamConfig,
) -> str:
    """Identity of a shard's results: weights, model, settings and the shard's images."""
    settings = to_dict(dataclasses.replace(cfg, num_workers=0, batch_size=1))
    rows = [
        f"{i}:{p}:{h}x{w}:{list(labs)}"
        for i, p, h, w, labs in zip(
            df["image_id"],
            df["image_path"],
            df["height"],
            df["width"],
            df["labels"],
            strict=True,
        )
    ]
    return fingerprint(
        {
            "weights": tensors_digest(weights),
            "model": to_dict(model_cfg),
            "num_classes": num_classes,
            "cfg": settings,
            "rows": hashlib.sha256("\n".join(rows).encode()).hexdigest(),
        }
    )


def read_cam_manifest(path: Path, num_classes: int, shard: int, num_shards: int) -> pd.DataFrame:
    """Rows of shard ``shard`` of ``num_shards`` of the sorted manifest, labels checked."""
    df = read_manifest(path).sort_values("image_id", ignore_index=True)
    check_labels(df, num_classes, path, allow_empty=True)
    return shard_rows(df, shard, num_shards)


def run(
    manifest: Path,
    weights: Path,
    model_cfg: CamModelConfig,
    num_classes: int,
    cfg: MakeCamConfig,
    out_dir: Path,
    shard: int,
    num_shards: int,
    device: str,
) -> None:
    """Write ``out_dir/<image_id>.npz`` for every image of shard ``shard`` of ``num_shards``
    of ``manifest``, with the network ``model_cfg`` loaded from ``weights``.

    ``device``: ``auto|cpu|cuda``. Images already in ``partial_path(out_dir)`` from an
    interrupted run with the same weights and settings are not recomputed.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    df = read_cam_manifest(Path(manifest), num_classes, shard, num_shards)
    if not Path(weights).is_file():
        raise DataError(f"missing weights file: {weights}")
    check_exist([Path(p) for p in df["image_path"]], "images", f"in manifest {manifest}")
    fp = _run_fingerprint(df, Path(weights), model_cfg, num_classes, cfg)
    part = PartialDir(out_dir, {"make_cam": fp})
    todo = [r for r, i in enumerate(df["image_id"]) if not part.done(f"{i}.npz")]
    log.info(
        "make_cam: shard %d/%d: %d images, %d already done, %d to do",
        shard,
        num_shards,
        len(df),
        len(df) - len(todo),
        len(todo),
    )
    if todo:
        dev = torch.device(torch_device(device))
        model = CamNet.from_weights(Path(weights), model_cfg, num_classes).to(dev).eval()
        _infer(model, df, todo, cfg, part.path, dev)
    part.finish()
    log.info("make_cam: wrote %d CAM files to %s", len(df), out_dir)


def _batches(
    df: pd.DataFrame, todo: Sequence[int], cfg: MakeCamConfig, device: torch.device
) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    sizes = list(zip(df["height"], df["width"], strict=True))
    loader = DataLoader(
        _Images(df, cfg),
        batch_sampler=size_batches(sizes, todo, cfg.batch_size),
        num_workers=cfg.num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    for rows, xs in loader:
        yield rows, [x.to(device, non_blocking=True) for x in xs]


def _infer(
    model: CamNet,
    df: pd.DataFrame,
    todo: Sequence[int],
    cfg: MakeCamConfig,
    part: Path,
    device: torch.device,
) -> None:
    """Compute and write the CAMs of rows ``todo``; writes overlap the next batch's compute."""
    pending: list[Future[None]] = []
    bar = tqdm(total=len(todo), desc="make_cam", unit="img", dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for rows, xs in _batches(df, todo, cfg, device):
            labels = [df["labels"][r] for r in rows]
            arrays = batch_cams(model, xs[0], labels, cfg, pyramid=xs[1:] or None)
            for f in pending:
                f.result()
            pending = [
                pool.submit(write_cam, part / f"{df['image_id'][r]}.npz", a)
                for r, a in zip(rows, arrays, strict=True)
            ]
            bar.update(len(rows))
        for f in pending:
            f.result()
    bar.close()
