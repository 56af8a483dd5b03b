"""train_irn: the IRN (:mod:`qaclims.models.irn`) trained on the confident ir labels.

Training labels come from the confident ir labels (``cam_to_ir_label``) reduced to stride 4:
pairs closer than ``radius`` (10) with both ends background / both ends the same class are
positive, ends of different classes negative, pairs touching 255 ignored
(:func:`qaclims.refine.random_walk.pair_labels`). Loss (IRN):
``(pos + neg) / 2 + (disp_fg + disp_bg) / 2`` with ``pos = (bg_pos + fg_pos) / 2``.

Stage entry point: :func:`run_train`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from qaclims.artifacts.shards import files_for
from qaclims.artifacts.weights import tensors_digest
from qaclims.core.config import from_mapping, runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image, read_label_png, read_parquet
from qaclims.models.irn import (
    EPS,
    STRIDE,
    IrnModelConfig,
    IrnNet,
    build_model,
    load_backbone_from_cam,
    normalize,
)
from qaclims.refine import random_walk as rw
from qaclims.training import (
    ResumeState,
    autocast,
    files_digest,
    fingerprint,
    save_weights,
    seed_everything,
)
from qaclims.training.loop import Plan, Trainer, loader_kwargs, stop_step, to_device
from qaclims.training.sampling import StepBatches, augment_rng

log = logging.getLogger(__name__)

#: ``train_irn.backbone_from``: the backbone's own weights setting, or train_cam's network
BACKBONE_SOURCES = ("weights", "train_cam")


@dataclass(frozen=True)
class TrainIrnConfig:
    """``train_irn`` stage (defaults: IRN / QA-CLIMS on VOC).

    crop: square training crop (multiple of 4). rescale: random scale range of the image
    (and its ir label) before cropping. hflip: random horizontal flips.
    batch_size / epochs: global batch and passes over the images (drop-last batches).
    lr: SGD learning rate of the boundary branch; the displacement branch uses
    ``lr * disp_lr_mult``; poly decay with ``poly_power``. momentum: IRN's optimiser passes
    its weight decay where SGD expects the momentum, so the reference runs with 1e-4.
    radius: pairs closer than this (stride-4 units) get affinity labels.
    num_workers: data-loading processes. amp: bf16 autocast on CUDA.
    log_every / resume_every: steps between log lines / resume-state saves.
    backbone_from: where the frozen backbone's weights come from: ``weights``
    (``model.backbone.weights``; IRN: ImageNet) or ``train_cam`` (the run's baseline CAM
    network, trained or released: the demo's tiny networks have no ImageNet weights, and a
    random frozen backbone gives IRN little to find boundaries in).
    """

    model: IrnModelConfig = field(default_factory=IrnModelConfig)
    backbone_from: str = setting(
        "weights",
        choices=BACKBONE_SOURCES,
        doc="frozen backbone from model.backbone.weights (IRN: ImageNet) or from the run's "
        "baseline CAM network (train_cam; then model.backbone.weights is not read).",
    )
    crop: int = setting(
        512, ge=1, doc="square random crop in pixels (padded with the mean colour)."
    )
    rescale: tuple[float, ...] = setting(
        (0.5, 1.5),
        gt=0.0,
        min_items=2,
        doc="random scale range of image and ir label before cropping.",
    )
    hflip: bool = setting(True, doc="random horizontal flips.")
    batch_size: int = setting(
        32, ge=1, doc="images per optimiser step (global, over all processes)."
    )
    epochs: int = setting(3, ge=1, doc="passes over the training split.")
    lr: float = setting(0.1, gt=0.0, doc="SGD learning rate of the backbone (poly decay).")
    disp_lr_mult: float = setting(
        10.0, ge=0.0, doc="learning-rate factor of the displacement branch."
    )
    weight_decay: float = setting(1e-4, ge=0.0, doc="SGD weight decay.")
    momentum: float = setting(1e-4, ge=0.0, lt=1.0, doc="SGD momentum.")
    poly_power: float = setting(0.9, ge=0.0, doc="lr x (1 - step/steps)^poly_power per step.")
    radius: int = setting(10, ge=1)
    seed: int = setting(0, doc="seed of data order, augmentation and initialisation.")
    num_workers: int = runtime(4, ge=0, doc="data-loader processes.")
    amp: bool = setting(False, doc="bf16 autocast on GPU.")
    log_every: int = runtime(50, ge=1, doc="steps per log line (and per row of the loss table).")
    resume_every: int = runtime(
        100, ge=1, doc="steps between resume-state saves (one is also saved at each epoch end)."
    )


# ------------------------------------------------------------------------------ loss


def irn_losses(
    edge_logits: torch.Tensor, disp: torch.Tensor, label: torch.Tensor, geom: rw.PairGeometry
) -> dict[str, torch.Tensor]:
    """IRN's four loss terms and their total.

    Args:
        edge_logits: ``B x 1 x h x w``; disp: ``B x 2 x h x w``; label: ``B x h x w`` int
            (stride-4 ir labels: 0 bg, >0 class, 255 ignore).

    Returns:
        scalars ``pos`` (mean of bg/fg positive-pair terms), ``neg``, ``disp_fg``, ``disp_bg``,
        ``total``.
    """
    with torch.no_grad():
        bg, fg, neg = rw.pair_labels(label, geom)
    aff = rw.edge_to_affinity(torch.sigmoid(edge_logits[:, 0].float()), geom)
    pos_term, neg_term = -torch.log(aff + EPS), -torch.log(1.0 + EPS - aff)
    bg_pos = (bg * pos_term).sum() / (bg.sum() + EPS)
    fg_pos = (fg * pos_term).sum() / (fg.sum() + EPS)
    neg_loss = (neg * neg_term).sum() / (neg.sum() + EPS)
    pair_disp = rw.pair_displacement(disp.float(), geom)
    target = torch.as_tensor(geom.directions.T, dtype=pair_disp.dtype, device=disp.device)
    dp_fg = ((pair_disp - target[None, :, :, None]).abs() * fg[:, None]).sum()
    dp_bg = (pair_disp.abs() * bg[:, None]).sum()
    out = {
        "pos": bg_pos / 2 + fg_pos / 2,
        "neg": neg_loss,
        "disp_fg": dp_fg / (2 * fg.sum() + EPS),
        "disp_bg": dp_bg / (2 * bg.sum() + EPS),
    }
    out["total"] = (out["pos"] + out["neg"]) / 2 + (out["disp_fg"] + out["disp_bg"]) / 2
    return out


# ------------------------------------------------------------------------------ data


def _rescale(arr: np.ndarray, scale: float, resample: Image.Resampling) -> np.ndarray:
    h, w = arr.shape[:2]
    size = (int(np.round(w * scale)), int(np.round(h * scale)))
    if size == (w, h):
        return arr
    return np.asarray(Image.fromarray(arr).resize(size, resample))


Box = tuple[int, int, int, int]


def _crop_box(h: int, w: int, crop: int, rng: np.random.Generator | None) -> Box:
    """``(src_y, src_x, dst_y, dst_x)`` of a crop: random placement with ``rng``, else top-left."""
    if rng is None:
        return 0, 0, 0, 0
    sy, sx = (int(rng.integers(0, max(0, n - crop) + 1)) for n in (h, w))
    dy, dx = (int(rng.integers(0, max(0, crop - n) + 1)) for n in (h, w))
    return sy, sx, dy, dx


def _place(arr: np.ndarray, crop: int, fill: float, box: Box) -> np.ndarray:
    """The ``crop x crop`` window ``box`` of ``arr``, ``fill`` where it leaves the image."""
    h, w = arr.shape[:2]
    sy, sx, dy, dx = box
    out = np.full((crop, crop, *arr.shape[2:]), fill, dtype=arr.dtype)
    ch, cw = min(crop, h), min(crop, w)
    out[dy : dy + ch, dx : dx + cw] = arr[sy : sy + ch, sx : sx + cw]
    return out


def _augment(
    img: np.ndarray, lab: np.ndarray, cfg: TrainIrnConfig, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale, normalise, flip and crop one (image, label) pair (no randomness without rng)."""
    if rng is not None:
        lo, hi = cfg.rescale
        s = lo + rng.random() * (hi - lo)
        img = _rescale(img, s, Image.Resampling.BICUBIC)
        lab = _rescale(lab, s, Image.Resampling.NEAREST)
    x = normalize(img, cfg.model)
    if rng is not None and cfg.hflip and rng.random() < 0.5:
        x, lab = x[:, ::-1], lab[:, ::-1]
    box = _crop_box(lab.shape[0], lab.shape[1], cfg.crop, rng)
    return _place(x, cfg.crop, 0.0, box), _place(lab, cfg.crop, rw.IGNORE, box)


class AffinityDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image, ir label) pairs. Items are addressed by ``(epoch, index)`` keys of
    :class:`~qaclims.training.sampling.StepBatches`, augmented with the draws of
    :func:`~qaclims.training.sampling.augment_rng`; ``epoch < 0`` means no augmentation
    (top-left crop). Yields ``3 x crop x crop float32`` and
    ``crop/4 x crop/4 uint8`` (the label at stride 4: PIL-nearest, pixel ``4i+2``)."""

    def __init__(self, items: Sequence[tuple[Path, Path]], cfg: TrainIrnConfig):
        self.items = list(items)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        img_path, lab_path = self.items[i]
        img, lab = read_image(img_path), read_label_png(lab_path)
        if img.shape[:2] != lab.shape:
            raise DataError(f"ir label {lab_path} is {lab.shape}, image {img_path} {img.shape[:2]}")
        rng = augment_rng(self.cfg.seed, epoch, i) if epoch >= 0 else None
        x, lab = _augment(img, lab, self.cfg, rng)
        half = STRIDE // 2
        small = np.ascontiguousarray(lab[half::STRIDE, half::STRIDE])
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(small)


def _loader(
    ds: AffinityDataset,
    cfg: TrainIrnConfig,
    batches: Iterable[list[tuple[int, int]]],
    dev: torch.device,
) -> torch.utils.data.DataLoader[Any]:
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=batches,
        **loader_kwargs(cfg.num_workers, dev),
    )


def training_items(manifest: Path, ir_label_dirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(image path, ir label path) of every manifest row, sorted by image id.

    Labels are ``<dir>/<image_id>.png`` in any of ``ir_label_dirs``; a missing label or
    image raises :class:`DataError` naming it.
    """
    df = read_parquet(manifest, columns=["image_id", "image_path"]).sort_values("image_id")
    labels = files_for(list(df["image_id"]), ir_label_dirs, ".png", "ir label")
    for image_path in df["image_path"]:
        if not Path(image_path).is_file():
            raise DataError(f"missing image: {image_path} (manifest {manifest})")
    return [(Path(p), lab) for p, lab in zip(df["image_path"], labels, strict=True)]


def _check(cfg: TrainIrnConfig) -> None:
    if cfg.crop % STRIDE or cfg.crop // STRIDE <= 2 * (cfg.radius - 1):
        raise ConfigError(
            f"train_irn.crop: {cfg.crop} must be a multiple of 4 and exceed 8*(radius-1)"
        )
    if cfg.radius < 2:
        raise ConfigError(f"train_irn.radius: must be >= 2, got {cfg.radius}")
    if len(cfg.rescale) != 2 or not 0 < cfg.rescale[0] <= cfg.rescale[1]:
        raise ConfigError(
            f"train_irn.rescale: expected [low, high] with 0 < low <= high, got {cfg.rescale}"
        )
    for key in ("batch_size", "epochs", "log_every", "resume_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train_irn.{key}: must be >= 1, got {getattr(cfg, key)}")


def build_optimizer(model: IrnNet, cfg: TrainIrnConfig) -> torch.optim.SGD:
    """SGD over the two branches (displacement branch at ``disp_lr_mult`` times the lr)."""
    edge, disp = model.head_parameters()
    groups = [{"params": edge, "lr": cfg.lr}, {"params": disp, "lr": cfg.lr * cfg.disp_lr_mult}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train_step(
    model: IrnNet, opt: torch.optim.SGD, batch: Sequence[torch.Tensor], cfg: TrainIrnConfig
) -> dict[str, float]:
    """One SGD step (at the optimizer's current lr); returns the loss terms."""
    dev = next(model.edge.parameters()).device
    img, lab = to_device(batch, dev)
    with autocast(dev, cfg.amp):
        edge, disp = model(img)
    losses = irn_losses(edge, disp, lab.long(), rw.pair_geometry(cfg.radius))
    opt.zero_grad(set_to_none=True)
    losses["total"].backward()
    opt.step()
    vals = torch.stack([v.detach() for v in losses.values()]).tolist()
    return dict(zip(losses, vals, strict=True))


@torch.no_grad()
def mean_displacement(model: IrnNet, ds: AffinityDataset, cfg: TrainIrnConfig) -> torch.Tensor:
    """Mean (over images and positions) of the raw displacement on top-left crops: ``(2,)``."""
    dev = next(model.edge.parameters()).device
    model.eval()
    keys = [
        [(-1, i) for i in range(j, min(j + cfg.batch_size, len(ds)))]
        for j in range(0, len(ds), cfg.batch_size)
    ]
    total, count = torch.zeros(2, device=dev), 0
    for img, _ in tqdm(_loader(ds, cfg, keys, dev), desc="train_irn mean displacement"):
        img = img.to(dev)
        with autocast(dev, cfg.amp):
            d = model.disp(model.features(img)).float()
        total += d.mean(dim=(2, 3)).sum(dim=0)
        count += img.shape[0]
    model.train()
    return total / max(1, count)


def run_train(
    manifest: Path,
    ir_label_dirs: list[Path],
    cfg: TrainIrnConfig,
    out_model: Path,
    out_history: Path,
    device: str,
    resume_path: Path,
    max_steps: int | None = None,
    cam_weights: Path | None = None,
) -> None:
    """Train IRN on the confident ir labels; write ``out_model`` (safetensors, whole network
    incl. backbone and mean displacement) and ``out_history`` (Parquet: step, epoch, pos,
    neg, disp_fg, disp_bg, total, lr).

    ``cam_weights``: train_cam's network file, the backbone's weights when
    ``cfg.backbone_from`` is ``train_cam`` (required then, refused otherwise).

    Resumable: a state is saved to ``resume_path`` every ``cfg.resume_every`` steps and read
    back on a rerun with the same config and images. ``max_steps`` stops after that many
    steps in all (saving the state, writing no output), to be continued by a later call.
    """
    _check(cfg)
    items = training_items(Path(manifest), ir_label_dirs)
    if len(items) < cfg.batch_size:
        raise ConfigError(f"train_irn.batch_size: {cfg.batch_size} exceeds the {len(items)} images")
    from_cam = cfg.backbone_from == "train_cam"
    if from_cam != (cam_weights is not None):
        raise ConfigError(
            f"train_irn.backbone_from is {cfg.backbone_from!r} but train_cam's network was "
            f"{'not ' if cam_weights is None else ''}given"
        )
    dev = torch.device(torch_device(device))
    seed_everything(cfg.seed)
    model = build_model(cfg.model, for_inference=from_cam)
    backbone = ""
    if cam_weights is not None:
        load_backbone_from_cam(model, cam_weights)
        backbone = tensors_digest(cam_weights)
    model = model.to(dev).train()
    opt = build_optimizer(model, cfg)
    ids = sorted(Path(p).name for p, _ in items)
    labels = files_digest([lab for _, lab in items])
    key = fingerprint({"cfg": to_dict(cfg), "images": ids, "labels": labels, "backbone": backbone})
    per_epoch = len(items) // cfg.batch_size
    plan = Plan("train_irn", per_epoch * cfg.epochs, per_epoch, cfg.batch_size, cfg.log_every,
                cfg.resume_every, cfg.poly_power)  # fmt: skip
    # the backbone is frozen and rebuilt from its weights: the resume state holds the head
    trainer = Trainer(plan, model, opt, ResumeState(Path(resume_path), key),
                      keep_key=lambda k: not k.startswith("backbone."))  # fmt: skip
    start = trainer.restore()
    stop = stop_step(plan.total, max_steps)
    ds = AffinityDataset(items, cfg)
    batches = StepBatches(len(items), cfg.batch_size, cfg.seed, start, stop)
    trainer.fit(_loader(ds, cfg, batches, dev), lambda b: train_step(model, opt, b, cfg), start)

    def write() -> None:
        model.disp_mean.copy_(mean_displacement(model, ds, cfg))
        save_weights(out_model, model, metadata={"model_config": json.dumps(to_dict(cfg.model))})
        mean = ", ".join(f"{v:.4f}" for v in model.disp_mean.flatten().tolist())
        log.info("IRN saved to %s (mean displacement %s)", out_model, mean)

    trainer.finish(stop, write, out_history)


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process (:mod:`qaclims.workflow.launch`); ``job`` is
    :func:`qaclims.workflow.launch.job_args`: named inputs and outputs, config, resume path."""
    inp, out = job["input"], job["output"]
    labels = inp["labels"]
    run_train(
        manifest=Path(inp["manifest"]),
        ir_label_dirs=[Path(d) for d in ([labels] if isinstance(labels, str) else labels)],
        cfg=from_mapping(TrainIrnConfig, job["config"]["train_irn"], "train_irn"),
        out_model=Path(out["model"]),
        out_history=Path(out["history"]),
        device=device,
        resume_path=Path(job["resume"]),
        cam_weights=Path(inp["cam"]) if "cam" in inp else None,
    )
