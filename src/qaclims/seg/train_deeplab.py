"""train_deeplab: DeepLab trained on the pseudo masks (rule ``train_deeplab``).

The recipe is deeplab-pytorch's as CLIMS / QA-CLIMS use it: random rescale (one of
``scales``), bottom/right padding with the mean colour and label 255, random ``crop x crop``
window, random horizontal flip; multi-scale-input training (the 1x image, the image at
``msc_scales`` and their pixelwise max, each scored against the nearest-resized labels);
the loss of :mod:`qaclims.seg.loss` (``ce`` or CLIMS's ``balanced``) per loss batch; SGD
with momentum, a poly learning rate per step, the classifier's weights at
``classifier_lr_mult`` x lr and its biases at ``classifier_bias_lr_mult`` x lr without weight
decay; frozen batch norm in the backbone. The order of the data and every augmentation draw
are functions of ``(seed, global sample index)``, so a killed run continued from its resume
state ends with the same weights as an uninterrupted one, whatever the number of GPUs.
Under ``torchrun`` each rank takes its slice of the global batch; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from qaclims.core.config import from_mapping, runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError
from qaclims.evaluation.metrics import IGNORE_INDEX
from qaclims.models.deeplab import (
    DeepLab,
    DeeplabModelConfig,
    MultiScaleNet,
    build_model,
    check_model_config,
    param_groups,
)
from qaclims.seg.loss import LOSSES, Units, group_counts, resize_labels, unit_loss
from qaclims.seg.training_data import SegTrainSet, read_train_rows
from qaclims.training import (
    DistInfo,
    ResumeState,
    autocast,
    files_digest,
    fingerprint,
    init_distributed,
    per_rank_batch,
    save_weights,
    seed_everything,
)
from qaclims.training.loop import Plan, Trainer, loader_kwargs, stop_step, to_device
from qaclims.training.sampling import StepBatches

log = logging.getLogger(__name__)

NAMES_IN_ERROR = 5


@dataclass(frozen=True)
class TrainDeeplabConfig:
    """Config slice ``train_deeplab`` (defaults: deeplab-pytorch / CLIMS on VOC 2012).

    model: the network (:class:`DeeplabModelConfig`).
    batch_size: GLOBAL images per optimiser step, split over the ranks (the references'
        ``BATCH_SIZE.TRAIN x ITER_SIZE``: 5 x 2 = 10 for deeplab-pytorch's COCO-init VOC
        recipe, 10 x 2 = 20 for CLIMS's ImageNet-init one).
    loss: ``ce`` (cross entropy over the non-ignored pixels, deeplab-pytorch) or
        ``balanced`` (CLIMS's ``criterion_balance``: mean of the background and the
        foreground pixels' mean CE); see :mod:`qaclims.seg.loss`.
    loss_batch: images per loss normalisation (the references' ``BATCH_SIZE.TRAIN``; 0: the
        whole step); must divide ``batch_size``. Independent of GPUs and ``iter_size``.
    iter_size: gradient-accumulation chunks each rank splits its share into (memory only;
        the step's gradient is the same up to float rounding).
    crop: square training crop (321). scales: random rescale factors, one drawn per image.
    flip: random horizontal flips. msc_scales: extra input scales of multi-scale training
        ((0.5, 0.75); empty = single scale).
    iterations (20k), lr (2.5e-4), momentum (0.9), weight_decay (5e-4), poly_power (0.9):
        SGD with ``lr * (1 - step / iterations) ** poly_power``.
    classifier_lr_mult (10) / classifier_bias_lr_mult (20): head weight / bias lr factors.
    seed: data order, augmentation and init. amp: bf16 autocast on GPU.
    num_workers: loader processes. log_every: steps per log line. resume_every: steps
        between resume-state saves.
    """

    model: DeeplabModelConfig = field(default_factory=DeeplabModelConfig)
    batch_size: int = setting(
        10, ge=1, doc="images per optimiser step (global, over all processes)."
    )
    loss: str = setting(
        "ce",
        choices=LOSSES,
        doc="ce (deeplab-pytorch) or balanced (CLIMS: mean of the bg and fg pixels' mean CE).",
    )
    loss_batch: int = setting(
        0,
        ge=0,
        doc="images per loss normalisation (the references' BATCH_SIZE.TRAIN); 0: the whole "
        "step. Must divide batch_size.",
    )
    iter_size: int = runtime(
        1, ge=1, doc="memory chunks each process splits its images into (no effect on results)."
    )
    crop: int = setting(
        321, ge=1, doc="square random crop in pixels (padded with the mean colour)."
    )
    scales: tuple[float, ...] = setting(
        (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
        gt=0.0,
        min_items=1,
        doc="random rescale factors, one drawn per image.",
    )
    flip: bool = setting(True, doc="random horizontal flips.")
    msc_scales: tuple[float, ...] = setting(
        (0.5, 0.75), gt=0.0, doc="extra input scales of multi-scale training (empty: single scale)."
    )
    iterations: int = setting(20000, ge=1, doc="optimiser steps.")
    lr: float = setting(2.5e-4, gt=0.0, doc="SGD learning rate of the backbone (poly decay).")
    momentum: float = setting(0.9, ge=0.0, lt=1.0, doc="SGD momentum.")
    weight_decay: float = setting(5e-4, ge=0.0, doc="SGD weight decay.")
    poly_power: float = setting(0.9, ge=0.0, doc="lr x (1 - step/steps)^poly_power per step.")
    classifier_lr_mult: float = setting(10.0, ge=0.0, doc="learning-rate factor of the classifier.")
    classifier_bias_lr_mult: float = setting(
        20.0, ge=0.0, doc="learning-rate factor of the head's biases."
    )
    seed: int = setting(0, doc="seed of data order, augmentation and initialisation.")
    amp: bool = setting(False, doc="bf16 autocast on GPU.")
    num_workers: int = runtime(4, ge=0, doc="data-loader processes.")
    log_every: int = runtime(100, ge=1, doc="steps per log line (and per row of the loss table).")
    resume_every: int = runtime(
        500, ge=1, doc="steps between resume-state saves (one is also saved at each epoch end)."
    )


# ---------------------------------------------------------------- config checks


def require_positive(cfg: Any, names: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where.<name>`` for a value of ``names`` below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(cfg, name)}")


def check_train_config(cfg: TrainDeeplabConfig, where: str = "train_deeplab") -> None:
    """Raise :class:`ConfigError` naming the key of an impossible value."""
    check_model_config(cfg.model, f"{where}.model")
    names = ("batch_size", "iter_size", "crop", "iterations", "log_every", "resume_every")
    require_positive(cfg, names, where)
    if not cfg.scales or min(cfg.scales) <= 0:
        raise ConfigError(f"{where}.scales: need positive factors, got {list(cfg.scales)}")
    if any(s <= 0 for s in cfg.msc_scales):
        raise ConfigError(f"{where}.msc_scales: need positive factors, got {cfg.msc_scales}")
    if cfg.lr <= 0 or cfg.weight_decay < 0 or not 0 <= cfg.momentum < 1:
        raise ConfigError(f"{where}.lr/weight_decay/momentum out of range")
    if cfg.seed < 0 or cfg.num_workers < 0:
        raise ConfigError(f"{where}.seed and {where}.num_workers must be >= 0")
    if cfg.loss not in LOSSES:
        raise ConfigError(f"{where}.loss: {cfg.loss!r} is not one of {LOSSES}")
    if cfg.loss_batch < 0 or (cfg.loss_batch and cfg.batch_size % cfg.loss_batch):
        raise ConfigError(
            f"{where}.loss_batch ({cfg.loss_batch}) must divide {where}.batch_size "
            f"({cfg.batch_size}), or be 0 for the whole step"
        )


# ---------------------------------------------------------------- loss and optimiser


def build_optimizer(model: DeepLab, cfg: TrainDeeplabConfig) -> torch.optim.SGD:
    """SGD: backbone at ``lr`` (weight decay), head weights at ``lr * classifier_lr_mult``
    (weight decay), head biases at ``lr * classifier_bias_lr_mult`` (no weight decay)."""
    g = param_groups(model)
    groups: list[dict[str, Any]] = [
        {"params": g["backbone"], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {
            "params": g["head_weight"],
            "lr": cfg.lr * cfg.classifier_lr_mult,
            "weight_decay": cfg.weight_decay,
        },
        {"params": g["head_bias"], "lr": cfg.lr * cfg.classifier_bias_lr_mult, "weight_decay": 0.0},
    ]
    return torch.optim.SGD([x for x in groups if x["params"]], lr=cfg.lr, momentum=cfg.momentum)


# ---------------------------------------------------------------- training loop


def _fingerprint(cfg: TrainDeeplabConfig, num_classes: int, df: pd.DataFrame) -> str:
    """Identity of a training run: what changes its result (not workers/logging/resume)."""
    keep = to_dict(dataclasses.replace(cfg, num_workers=0, log_every=1, resume_every=1))
    data = hashlib.sha256("\n".join(df["image_id"]).encode()).hexdigest()
    labels = files_digest(list(df["label_path"]))
    return fingerprint({"cfg": keep, "num_classes": num_classes, "data": data, "labels": labels})


def _wrap(model: DeepLab, cfg: TrainDeeplabConfig, dist: DistInfo) -> nn.Module:
    """The multi-scale training net, inside DDP when there are several ranks."""
    net: nn.Module = MultiScaleNet(model, cfg.msc_scales)
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def _chunks(n: int, iter_size: int) -> list[torch.Tensor]:
    """Index tensors of the non-empty chunks of ``n`` images cut into ``iter_size`` parts."""
    return [c for c in torch.arange(n).tensor_split(iter_size) if len(c)]


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    units: Units,
    loss_kind: str,
    iter_size: int,
    amp: bool,
    world: int = 1,
) -> torch.Tensor:
    """One SGD step on this process's ``x: Bx3xHxW`` and ``y: BxHxW int64`` (255 ignored).

    The images are passed in ``iter_size`` chunks (memory only: the gradient is the same
    up to float rounding); the loss is :mod:`qaclims.seg.loss`'s, normalised per loss unit
    over the whole step (``units``; pixel counts summed over the ``world`` processes).
    Under DDP, which averages gradients, the share is scaled by ``world`` so the update is
    the gradient of the step loss. Returns this process's (detached) share of the loss.
    """
    opt.zero_grad(set_to_none=True)
    chunks = _chunks(len(x), iter_size)
    full: list[torch.Tensor] = []
    counts: torch.Tensor | None = None
    total = torch.zeros((), device=x.device)
    for k, idx in enumerate(chunks):
        sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(net, nn.parallel.DistributedDataParallel) and k < len(chunks) - 1:
            sync = net.no_sync()
        with sync:
            with autocast(x.device, amp):
                outputs = net(x[idx.to(x.device)])
            if counts is None:  # every crop has one size, so every chunk's outputs too
                full = [resize_labels(y, o.shape[-2:]) for o in outputs]
                counts = group_counts(full, units, loss_kind)
                if world > 1:
                    torch.distributed.all_reduce(counts)
            sub = Units(units.index[idx], units.count)
            dev_idx = idx.to(y.device)
            loss = unit_loss(outputs, [f[dev_idx] for f in full], sub, counts, loss_kind)
            (loss * world).backward()
        total += loss.detach()
    opt.step()
    return total


def rank_units(cfg: TrainDeeplabConfig, rank: int, per_rank: int) -> Units:
    """Loss units of the images rank ``rank`` takes in every step (see :class:`Units`)."""
    unit = cfg.loss_batch or cfg.batch_size
    return Units.of_positions(rank * per_rank, per_rank, unit, cfg.batch_size)


def _rank_batch(cfg: TrainDeeplabConfig, world: int) -> int:
    try:
        return per_rank_batch(cfg.batch_size, world)
    except ValueError as e:
        raise ConfigError(f"train_deeplab.batch_size: {e}") from e


def train_run(
    manifest: Path,
    pseudo_dirs: list[Path],
    num_classes: int,
    cfg: TrainDeeplabConfig,
    out_model: Path,
    out_history: Path,
    device: str,
    resume_path: Path,
    max_steps: int | None = None,
) -> None:
    """Train DeepLab on the pseudo masks of ``manifest``'s images.

    Args:
        manifest: train-split manifest Parquet (``image_id``, ``image_path`` used).
        pseudo_dirs: folders holding ``<image_id>.png`` label PNGs (0 background, ``c+1``
            class ``c``, 255 ignore); every image needs one.
        num_classes: classes INCLUDING background (21 on VOC).
        cfg: :class:`TrainDeeplabConfig`.
        out_model: safetensors state dict of :class:`DeepLab` (written by rank 0).
        out_history: Parquet table ``step, epoch, loss, lr`` per step.
        device: ``auto|cpu|cuda``; under torchrun each rank uses ``cuda:LOCAL_RANK``.
        resume_path: resume state, saved every ``cfg.resume_every`` steps, continued from
            on a re-run, removed once the outputs exist.
        max_steps: (tests) stop after that many global steps without writing outputs, as if
            killed; the schedule still runs to ``cfg.iterations``.
    """
    check_train_config(cfg)
    if not 2 <= num_classes <= IGNORE_INDEX:
        raise ConfigError(f"num_classes must be in [2, {IGNORE_INDEX}], got {num_classes}")
    dist = init_distributed(torch_device(device))
    per_rank = _rank_batch(cfg, dist.world)
    df = read_train_rows(Path(manifest), [Path(p) for p in pseudo_dirs])
    seed_everything(cfg.seed)
    model = build_model(cfg.model, num_classes).to(dist.device)
    opt = build_optimizer(model, cfg)
    net = _wrap(model, cfg, dist)
    units = rank_units(cfg, dist.rank, per_rank)
    plan = Plan("train_deeplab", cfg.iterations, max(1, len(df) // cfg.batch_size),
                cfg.batch_size, cfg.log_every, cfg.resume_every, cfg.poly_power,
                sum_terms=("loss",))  # fmt: skip
    key = _fingerprint(cfg, num_classes, df)
    trainer = Trainer(plan, model, opt, ResumeState(Path(resume_path), key), dist)
    start = trainer.restore()
    stop = stop_step(cfg.iterations, max_steps)
    log.info("train_deeplab: %d images, steps %d..%d of %d, %d rank(s) x %d images, %s",
             len(df), start, stop, cfg.iterations, dist.world, per_rank, dist.device)  # fmt: skip
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = SegTrainSet(df, cfg, num_classes)
    batches = StepBatches(len(df), cfg.batch_size, cfg.seed, start, stop, dist.rank, dist.world,
                          wrap=True)  # fmt: skip
    loader = DataLoader(data, batch_sampler=batches, **loader_kwargs(cfg.num_workers, dist.device))

    def step(batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = to_device(batch, dist.device)
        share = train_step(net, opt, x, y, units, cfg.loss, cfg.iter_size, cfg.amp, dist.world)
        return {"loss": share}  # this process's share; the plan sums the shares

    net.train()
    trainer.fit(loader, step, start)

    def write() -> None:
        meta = {"num_classes": str(num_classes), "model": json.dumps(to_dict(cfg.model))}
        save_weights(out_model, model, metadata=meta)
        log.info("train_deeplab: wrote %s and %s", out_model, out_history)

    trainer.finish(stop, write, out_history)


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process, one per GPU under torchrun
    (:mod:`qaclims.workflow.launch`); ``job`` is :func:`qaclims.workflow.launch.job_args`:
    named inputs and outputs, config, resume path."""
    from qaclims.data.manifest import read_classes

    inp, out = job["input"], job["output"]
    pseudo = inp["pseudo"]
    train_run(
        manifest=Path(inp["manifest"]),
        pseudo_dirs=[Path(p) for p in ([pseudo] if isinstance(pseudo, str) else pseudo)],
        num_classes=len(read_classes(inp["classes"])) + 1,
        cfg=from_mapping(TrainDeeplabConfig, job["config"]["train_deeplab"], "train_deeplab"),
        out_model=Path(out["model"]),
        out_history=Path(out["history"]),
        device=device,
        resume_path=Path(job["resume"]),
    )
