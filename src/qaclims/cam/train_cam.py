"""train_cam: train the baseline CAM classifier (IRN's recipe) on image-level labels.

Multi-label soft-margin loss, SGD with a per-step poly learning rate (the classifier at 10x),
IRN's augmentation (random long-side resize, flip, random crop). The order of the data and
every augmentation draw are functions of ``(seed, epoch, index)``, so a run killed and
re-run from its resume state ends with the same weights as an uninterrupted run.

Entry point: :func:`run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from qaclims.core.config import from_mapping, runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image
from qaclims.data import augment
from qaclims.data.manifest import multi_hot, read_labelled_manifest
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.training import (
    ResumeState,
    autocast,
    fingerprint,
    save_weights,
    seed_everything,
)
from qaclims.training.loop import Plan, Trainer, loader_kwargs, stop_step, to_device
from qaclims.training.sampling import StepBatches, augment_rng

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainCamConfig:
    """Config slice ``train_cam`` (defaults: IRN / QA-CLIMS on VOC 2012 train_aug).

    batch_size, epochs, lr (backbone; classifier gets ``lr * classifier_lr_mult``),
    weight_decay, momentum (IRN's PolyOptimizer is plain SGD; its positional arguments
    pass the weight decay, 1e-4, as momentum, and so does the default here), poly_power
    (lr x (1 - t/T)^power per step), resize_long (random long side, inclusive range),
    crop (square, padded with the mean colour), hflip, mean/std (ImageNet normalisation),
    num_workers (loader processes), seed, amp (bf16 autocast on GPU), log_every (steps per
    log line), resume_every (steps between resume-state saves; one is also saved at each
    epoch end).
    """

    model: CamModelConfig = field(default_factory=CamModelConfig)
    batch_size: int = setting(
        16, ge=1, doc="images per optimiser step (global, over all processes)."
    )
    epochs: int = setting(5, ge=1, doc="passes over the training split.")
    lr: float = setting(0.1, gt=0.0, doc="SGD learning rate of the backbone (poly decay).")
    weight_decay: float = setting(1e-4, ge=0.0, doc="SGD weight decay.")
    momentum: float = setting(1e-4, ge=0.0, lt=1.0, doc="SGD momentum.")
    poly_power: float = setting(0.9, ge=0.0, doc="lr x (1 - step/steps)^poly_power per step.")
    classifier_lr_mult: float = setting(10.0, ge=0.0, doc="learning-rate factor of the classifier.")
    resize_long: tuple[int, ...] = setting(
        (320, 640),
        ge=1,
        min_items=2,
        doc="random long side of the training images, inclusive range [low, high].",
    )
    crop: int = setting(
        512, ge=1, doc="square random crop in pixels (padded with the mean colour)."
    )
    hflip: bool = setting(True, doc="random horizontal flips.")
    mean: tuple[float, ...] = setting(
        augment.IMAGENET_MEAN, doc="normalisation mean (RGB in [0, 1]; ImageNet)."
    )
    std: tuple[float, ...] = setting(
        augment.IMAGENET_STD, gt=0.0, doc="normalisation std (RGB in [0, 1]; ImageNet)."
    )
    num_workers: int = runtime(4, ge=0, doc="data-loader processes.")
    seed: int = setting(0, doc="seed of data order, augmentation and initialisation.")
    amp: bool = setting(
        False, doc="bf16 autocast on GPU (the reference trains and infers in float32)."
    )
    log_every: int = runtime(100, ge=1, doc="steps per log line (and per row of the loss table).")
    resume_every: int = runtime(
        500, ge=1, doc="steps between resume-state saves (one is also saved at each epoch end)."
    )


def check_config(cfg: TrainCamConfig, where: str = "train_cam") -> None:
    """Raise :class:`ConfigError` naming the key of an out-of-range value."""
    positive = ("batch_size", "epochs", "crop", "log_every", "resume_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"{where}.lr must be > 0, got {cfg.lr}")
    lo_hi = cfg.resize_long
    if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
        raise ConfigError(f"{where}.resize_long must be [lo, hi] with 1 <= lo <= hi, got {lo_hi}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ConfigError(f"{where}.mean/std need 3 entries each (std > 0)")
    if cfg.num_workers < 0:
        raise ConfigError(f"{where}.num_workers must be >= 0, got {cfg.num_workers}")


class TrainSet(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Items keyed by ``(epoch, index)``: ``(3 x crop x crop float32, C float32 multi-hot)``,
    augmented with the draws of :func:`~qaclims.training.sampling.augment_rng`."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, cfg: TrainCamConfig):
        self.paths = list(paths)
        self.targets = targets
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        c = self.cfg
        rng = augment_rng(c.seed, epoch, index)
        image = read_image(self.paths[index])
        x = augment.classification_sample(image, rng, c.resize_long, c.crop, c.hflip, c.mean, c.std)
        return x, torch.from_numpy(self.targets[index])


def build_optimizer(model: CamNet, cfg: TrainCamConfig) -> torch.optim.SGD:
    """SGD with two groups: backbone at ``lr``, classifier at ``lr * classifier_lr_mult``."""
    backbone, new = model.param_groups()
    groups: list[dict[str, Any]] = [
        {"params": backbone, "lr": cfg.lr},
        {"params": new, "lr": cfg.lr * cfg.classifier_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _fingerprint(cfg: TrainCamConfig, num_classes: int, df: pd.DataFrame) -> str:
    """Identity of a training run: everything that changes its result (not workers/logging)."""
    keep = to_dict(dataclasses.replace(cfg, num_workers=0, log_every=1, resume_every=1))
    data = hashlib.sha256()
    for image_id, labels in zip(df["image_id"], df["labels"], strict=True):
        data.update(f"{image_id}:{[int(v) for v in labels]};".encode())
    return fingerprint({"cfg": keep, "num_classes": num_classes, "data": data.hexdigest()})


def train_step(
    model: CamNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, amp: bool
) -> float:
    """One SGD step on ``x: Bx3xHxW``, ``y: BxC`` multi-hot; returns the loss."""
    with autocast(x.device, amp):
        logits = model(x)
    loss = F.multilabel_soft_margin_loss(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def run(
    manifest: Path,
    num_classes: int,
    out_model: Path,
    out_history: Path,
    cfg: TrainCamConfig,
    device: str,
    resume_path: Path,
    max_steps: int | None = None,
) -> None:
    """Train :class:`CamNet` on ``manifest``; write ``out_model`` (safetensors) and
    ``out_history`` (Parquet: step, epoch, loss, lr per step).

    ``device``: ``auto|cpu|cuda``. ``resume_path``: resume state saved every
    ``cfg.resume_every`` steps and at each epoch end, continued from on a re-run, removed
    once the outputs exist. ``max_steps`` (tests): stop after that many global steps without
    writing outputs, as if killed.
    """
    check_config(cfg)
    df = read_labelled_manifest(Path(manifest), num_classes)
    if len(df) < cfg.batch_size:
        raise DataError(f"manifest {manifest}: {len(df)} images < batch_size {cfg.batch_size}")
    dev = torch.device(torch_device(device))
    seed_everything(cfg.seed)
    model = CamNet(cfg.model, num_classes).to(dev)
    optimizer = build_optimizer(model, cfg)
    resume = ResumeState(Path(resume_path), _fingerprint(cfg, num_classes, df))
    per_epoch = len(df) // cfg.batch_size
    plan = Plan("train_cam", per_epoch * cfg.epochs, per_epoch, cfg.batch_size, cfg.log_every,
                cfg.resume_every, cfg.poly_power)  # fmt: skip
    trainer = Trainer(plan, model, optimizer, resume)
    start = trainer.restore()
    stop = stop_step(plan.total, max_steps)
    log.info("train_cam: %d images, %d steps/epoch, %d steps, device %s",
             len(df), per_epoch, plan.total, dev)  # fmt: skip
    data = TrainSet(list(df["image_path"]), multi_hot(list(df["labels"]), num_classes), cfg)
    batches = StepBatches(len(df), cfg.batch_size, cfg.seed, start, stop)
    loader = DataLoader(data, batch_sampler=batches, **loader_kwargs(cfg.num_workers, dev))

    def step(batch: list[torch.Tensor]) -> dict[str, float]:
        x, y = to_device(batch, dev)
        return {"loss": train_step(model, optimizer, x, y, cfg.amp)}

    trainer.fit(loader, step, start)

    def write() -> None:
        save_weights(out_model, model, metadata={"num_classes": str(num_classes)})
        log.info("train_cam: wrote %s and %s", out_model, out_history)

    trainer.finish(stop, write, out_history)


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process (:mod:`qaclims.workflow.launch`); ``job`` is
    :func:`qaclims.workflow.launch.job_args`: named inputs and outputs, config, resume path."""
    from qaclims.data.manifest import read_classes

    inp, out = job["input"], job["output"]
    run(
        manifest=Path(inp["manifest"]),
        num_classes=len(read_classes(inp["classes"])),
        out_model=Path(out["model"]),
        out_history=Path(out["history"]),
        cfg=from_mapping(TrainCamConfig, job["config"]["train_cam"], "train_cam"),
        device=device,
        resume_path=Path(job["resume"]),
    )
