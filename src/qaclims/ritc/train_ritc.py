"""train_ritc: QA-CLIMS region-text contrastive training of the CAM network.

Initialised from train_cam's weights, the network's CAMs become sigmoid maps
``A = sigmoid(W * f(x))`` (``B x C x h x w``). For every present class of every image, the
CAM and the image are resized to CLIP's input (bilinear, ``align_corners=True``, as the
reference), a binary *mask adapter* keeps pixels with ``A >= alpha * max A``, and a frozen
CLIP encodes the foreground region ``A * x`` (masked by the adapter) and the background region
``(1 - A) * x`` (masked by its complement). The loss is::

    w_fg * L_FRC + w_bg * L_BRC + w_area * mean(A)

with L_FRC / L_BRC the InfoNCE losses of :mod:`qaclims.ritc.losses` against the image's own
foreground text feature and background phrases (temperature 0.7), summed over the pairs.

Global batch and loss scale do not depend on the number of processes: each global batch is
split across the ``torchrun`` ranks, and the pair sums are scaled by
``loss_images / per-rank batch`` (the reference sums over its 4 images per GPU and DDP
averages over 2 GPUs, i.e. the default ``loss_images: 4`` with a global batch of 8 gives the
reference's gradient exactly). Data order and augmentation are functions of
``(seed, epoch, index)``, so a killed run continued from its resume state ends as an
uninterrupted one would. The saved state dict is :class:`~qaclims.models.cam_resnet.CamNet`'s,
so make_cam reads it unchanged.

Entry point: :func:`run`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from qaclims.artifacts.tables import dead_cam_shares
from qaclims.core.config import from_mapping, runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image
from qaclims.data import augment
from qaclims.data.manifest import multi_hot, read_labelled_manifest
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.models.clip import ClipConfig, load_clip
from qaclims.ritc.objective import (
    RitcNet,
    StepContext,
    camnet,
    optimizer_step,
    ritc_loss,
)
from qaclims.ritc.text_bank import TextBank, check_text_width
from qaclims.training import (
    DistInfo,
    ResumeState,
    fingerprint,
    init_distributed,
    inputs_digest,
    per_rank_batch,
    save_weights,
    seed_everything,
)
from qaclims.training.loop import Plan, Trainer, loader_kwargs, stop_step, to_device
from qaclims.training.sampling import StepBatches, augment_rng

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRitcConfig:
    """Config slice ``train_ritc`` (defaults: QA-CLIMS on VOC 2012, run_voc12_qa_clims.sh).

    batch_size: global batch (images per step over all processes; reference 2 GPUs x 4).
    epochs: passes over the training split (reference 15 on VOC).
    lr: learning rate of the backbone; the classifier gets ``lr * classifier_lr_mult``.
    classifier_lr_mult: reference 10.
    weight_decay: SGD weight decay (reference 1e-4).
    momentum: SGD momentum (IRN's PolyOptimizer passes its weight decay, 1e-4, as momentum;
        so does the default here).
    poly_power: lr x (1 - step/steps)^power per step.
    temperature: InfoNCE temperature of both losses.
    w_fg: weight of L_FRC.
    w_bg: weight of L_BRC.
    w_area: weight of the area regulariser mean(CAM).
    alpha: mask adapter threshold, a fraction of each CAM's maximum.
    loss_images: L_FRC / L_BRC are summed over pairs and scaled by loss_images / per-rank
        batch, i.e. summed over this many images' pairs (reference: its 4 images per GPU).
    region_encoding: how CLIP sees a masked region: prompt (OV-Seg mask prompt), pixels (the
        masked image, the reference's path for a plain CLIP) or auto (prompt if the CLIP has
        a mask prompt).
    clip_normalize: re-normalise images from mean/std to CLIP's own statistics before CLIP;
        the reference feeds CLIP the ImageNet-normalised image (false).
    detach_stage2: stop gradients after stage 2 (IRN's baseline does; QA-CLIMS trains all
        stages but the stem: false).
    frozen_bn: keep BatchNorm statistics and affine parameters fixed (QA-CLIMS trains them,
        SyncBatchNorm under DDP on GPU: false).
    resize_long: random long side of the training images, inclusive range.
    crop: square random crop (padded with the mean colour).
    hflip: random horizontal flip.
    mean: normalisation mean of the CAM network's input (ImageNet).
    std: normalisation std of the CAM network's input (ImageNet).
    num_workers: data loader processes.
    seed: seed of the data order, augmentation and torch.
    amp: bf16 autocast on GPU (off: the reference trains in float32).
    log_every: steps per log line.
    resume_every: steps between resume-state saves (one is also saved at each epoch end).
    dead_cam / dead_warn: the dead-class guard: each epoch the share of a class's pairs whose
        CAM peaks below ``dead_cam`` is logged, with a warning at ``dead_warn`` or more.
    """

    batch_size: int = setting(8, ge=1)
    epochs: int = setting(15, ge=1)
    lr: float = setting(0.00035, gt=0.0)
    classifier_lr_mult: float = setting(10.0, ge=0.0)
    weight_decay: float = setting(1e-4, ge=0.0)
    momentum: float = setting(1e-4, ge=0.0, lt=1.0)
    poly_power: float = setting(0.9, ge=0.0)
    temperature: float = setting(0.7, gt=0.0)
    w_fg: float = setting(10.0, ge=0.0)
    w_bg: float = setting(8.0, ge=0.0)
    w_area: float = setting(0.2, ge=0.0)
    alpha: float = setting(0.1, ge=0.0, le=1.0)
    loss_images: int = setting(4, ge=1)
    region_encoding: str = setting("auto", choices=("auto", "prompt", "pixels"))
    clip_normalize: bool = False
    detach_stage2: bool = False
    frozen_bn: bool = False
    resize_long: tuple[int, ...] = setting((320, 640), ge=1, min_items=2)
    crop: int = setting(512, ge=1)
    hflip: bool = True
    mean: tuple[float, ...] = augment.IMAGENET_MEAN
    std: tuple[float, ...] = setting(augment.IMAGENET_STD, gt=0.0)
    num_workers: int = runtime(4, ge=0)
    seed: int = 0
    amp: bool = False
    log_every: int = runtime(200, ge=1)
    resume_every: int = runtime(500, ge=1)
    dead_cam: float = runtime(
        0.1, ge=0.0, le=1.0, doc="a pair's CAM is dead when its maximum is below this."
    )
    dead_warn: float = runtime(
        0.5, ge=0.0, le=1.0, doc="warn when this share of a class's pairs in an epoch is dead."
    )


def check_config(cfg: TrainRitcConfig, where: str = "train_ritc") -> None:
    """Raise :class:`ConfigError` naming the key of an out-of-range value."""
    for name in ("batch_size", "epochs", "crop", "log_every", "resume_every", "loss_images"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("lr", "temperature"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}.{name} must be > 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ConfigError(f"{where}.alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.region_encoding not in ("auto", "prompt", "pixels"):
        raise ConfigError(
            f"{where}.region_encoding must be auto, prompt or pixels, got {cfg.region_encoding!r}"
        )
    lo_hi = cfg.resize_long
    if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
        raise ConfigError(f"{where}.resize_long must be [lo, hi] with 1 <= lo <= hi, got {lo_hi}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ConfigError(f"{where}.mean/std need 3 entries each (std > 0)")
    if cfg.num_workers < 0:
        raise ConfigError(f"{where}.num_workers must be >= 0, got {cfg.num_workers}")


# ----------------------------------------------------------------------------- pieces


class RitcSet(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Items keyed by ``(epoch, index)``: ``(3 x crop x crop float32, C float32 multi-hot,
    index)``, augmented with the draws of ``sample_rng(seed, AUGMENT_STREAM, epoch, index)``
    (train_cam's stream: the same image in the same epoch gets the same crop)."""

    def __init__(self, paths: Sequence[str], targets: np.ndarray, cfg: TrainRitcConfig):
        self.paths, self.targets, self.cfg = list(paths), targets, cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        epoch, index = key
        c = self.cfg
        rng = augment_rng(c.seed, epoch, index)
        x = augment.classification_sample(
            read_image(self.paths[index]), rng, c.resize_long, c.crop, c.hflip, c.mean, c.std
        )
        return x, torch.from_numpy(self.targets[index]), index


# ----------------------------------------------------------------------------- set-up


def build_network(
    cam_weights: Path,
    model_cfg: CamModelConfig,
    num_classes: int,
    cfg: TrainRitcConfig,
    dist: DistInfo,
) -> nn.Module:
    """The CAM network from train_cam's weights, with RITC's stage-2 / BatchNorm settings,
    wrapped as :class:`RitcNet` (and in DDP when ``dist.world > 1``)."""
    bb = dataclasses.replace(model_cfg.backbone, frozen_bn=cfg.frozen_bn)
    mcfg = dataclasses.replace(model_cfg, backbone=bb, detach_stage2=cfg.detach_stage2)
    net = CamNet.from_weights(Path(cam_weights), mcfg, num_classes)
    if cfg.detach_stage2:
        net.backbone.stages[:2].requires_grad_(False)
    model: nn.Module = RitcNet(net).to(dist.device)
    if dist.world > 1:
        if not cfg.frozen_bn and dist.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def build_optimizer(model: nn.Module, cfg: TrainRitcConfig) -> torch.optim.SGD:
    """SGD with the backbone at ``lr`` and the classifier at ``lr * classifier_lr_mult``."""
    backbone, new = camnet(model).param_groups()
    groups: list[dict[str, Any]] = [
        {"params": backbone, "lr": cfg.lr},
        {"params": new, "lr": cfg.lr * cfg.classifier_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _fingerprint(
    cfg: TrainRitcConfig,
    model_cfg: CamModelConfig,
    clip_cfg: ClipConfig,
    num_classes: int,
    df: pd.DataFrame,
    inputs: Sequence[Path],
) -> str:
    """Identity of a run: configs, data and input files (not workers or logging)."""
    keep = to_dict(dataclasses.replace(cfg, num_workers=0, log_every=1, resume_every=1))
    data = hashlib.sha256(
        json.dumps(
            [
                [i, [int(v) for v in labs]]
                for i, labs in zip(df["image_id"], df["labels"], strict=True)
            ]
        ).encode()
    ).hexdigest()
    return fingerprint(
        {
            "cfg": keep,
            "model": to_dict(model_cfg),
            "clip": to_dict(clip_cfg),
            "num_classes": num_classes,
            "data": data,
            "inputs": inputs_digest(inputs),
        }
    )


# ----------------------------------------------------------------------------- run


def run(
    manifest: Path,
    num_classes: int,
    cam_weights: Path,
    model_cfg: CamModelConfig,
    corpus_index: Path,
    text_features: Path,
    clip_cfg: ClipConfig,
    clip_weights: Path | None,
    cfg: TrainRitcConfig,
    out_model: Path,
    out_history: Path,
    device: str,
    resume_path: Path,
    max_steps: int | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Train the QA-CLIMS CAM network; write ``out_model`` (a CamNet safetensors state dict)
    and ``out_history`` (Parquet: one row per step with step, epoch, loss, frc, brc, area,
    pairs, skipped, lr).

    manifest: training split; cam_weights / model_cfg: train_cam's network; corpus_index /
    text_features: text_features' outputs; clip_cfg / clip_weights: the frozen CLIP (weights:
    the tiny CLIP's safetensors, else None). device: ``auto|cpu|cuda`` (one process, or one
    per GPU under torchrun). resume_path: resume state, saved every ``resume_every`` steps
    and at epoch ends, continued from on a re-run, removed once the outputs exist.
    max_steps (tests): stop after that many global steps, saving the resume state but not the
    outputs, as if killed. class_names: for the dead-class guard's log lines (default
    ``class <index>``).

    The history also holds, per class ``c``, ``pairs:c`` and ``dead:c`` (pairs whose CAM
    peaks below ``cfg.dead_cam``); after each epoch the share of dead pairs per class is
    logged, with a warning for a class at ``cfg.dead_warn`` or more
    (:func:`qaclims.artifacts.tables.dead_cam_shares`).
    """
    check_config(cfg)
    df = read_labelled_manifest(Path(manifest), num_classes)
    inputs = [Path(cam_weights), Path(corpus_index), Path(text_features)]
    inputs += [] if clip_weights is None else [Path(clip_weights)]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise DataError(f"train_ritc: missing input files {missing}")
    if len(df) < cfg.batch_size:
        raise DataError(f"manifest {manifest}: {len(df)} images < batch_size {cfg.batch_size}")
    dist = init_distributed(torch_device(device))
    try:
        per_rank = per_rank_batch(cfg.batch_size, dist.world)
    except ValueError as e:
        raise ConfigError(f"train_ritc.batch_size: {e}") from e
    seed_everything(cfg.seed)
    bank = TextBank.load(Path(corpus_index), Path(text_features), num_classes, dist.device)
    clip, info, _ = load_clip(clip_cfg, str(dist.device), clip_weights)
    check_text_width(bank, Path(text_features), clip, clip_cfg.name)
    model = build_network(Path(cam_weights), model_cfg, num_classes, cfg, dist)
    optimizer = build_optimizer(model, cfg)
    key = _fingerprint(cfg, model_cfg, clip_cfg, num_classes, df, inputs)
    ctx = StepContext(clip, info, bank, cfg, cfg.loss_images / per_rank)
    per_epoch = len(df) // cfg.batch_size
    plan = Plan("train_ritc", per_epoch * cfg.epochs, per_epoch, cfg.batch_size, cfg.log_every,
                cfg.resume_every, cfg.poly_power, sum_terms=("pairs", "skipped"))  # fmt: skip
    trainer = Trainer(plan, model, optimizer, ResumeState(Path(resume_path), key), dist)
    start = trainer.restore()
    stop = stop_step(plan.total, max_steps)
    log.info("train_ritc: %d images, %d steps/epoch, %d steps, %d process(es) x %d images, %s",
             len(df), per_epoch, plan.total, dist.world, per_rank, dist.device)  # fmt: skip
    data = RitcSet(list(df["image_path"]), multi_hot(list(df["labels"]), num_classes), cfg)
    batches = StepBatches(len(df), cfg.batch_size, cfg.seed, start, stop, dist.rank, dist.world)
    loader = DataLoader(data, batch_sampler=batches, **loader_kwargs(cfg.num_workers, dist.device))
    ids = list(df["image_id"].astype(str))

    def step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, float]:
        x, y, index = batch
        x, y = to_device([x, y], dist.device)
        loss, terms = ritc_loss(model, ctx, x, y, [ids[int(i)] for i in index])
        optimizer_step(optimizer, loss)
        return terms

    names = list(class_names) if class_names else [f"class {c}" for c in range(num_classes)]
    trainer.fit(loader, step, start, lambda e: _guard(trainer, e, names, cfg))

    def write() -> None:
        meta = {"num_classes": str(num_classes), "method": "qa-clims"}
        save_weights(out_model, camnet(model), metadata=meta)
        log.info("train_ritc: wrote %s and %s", out_model, out_history)

    trainer.finish(stop, write, out_history)


def _guard(trainer: Trainer, epoch: int, names: Sequence[str], cfg: TrainRitcConfig) -> None:
    """The dead-class guard at the end of ``epoch``: log each class's share of dead CAMs;
    warn for a class at ``cfg.dead_warn`` or more."""
    if not trainer.dist.main:
        return
    shares = dead_cam_shares(pd.DataFrame(trainer.epoch_rows(epoch)))
    if shares.empty:
        return
    text = ", ".join(f"{names[int(r.class_index)]} {r.share:.2f}" for r in shares.itertuples())
    log.info("train_ritc: epoch %d: share of dead CAMs (max < %g) per class: %s",
             epoch, cfg.dead_cam, text)  # fmt: skip
    for r in shares[shares["share"] >= cfg.dead_warn].itertuples():
        log.warning(
            "train_ritc: class %r is dying in epoch %d: %d of its %d pairs (%.0f%%) have a CAM "
            "whose maximum is below %g; its CAM gets almost no gradient (see the report)",
            names[int(r.class_index)], epoch, r.dead, r.pairs, 100 * r.share, cfg.dead_cam,
        )  # fmt: skip


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process, one per GPU under torchrun
    (:mod:`qaclims.workflow.launch`); ``job`` is :func:`qaclims.workflow.launch.job_args`:
    named inputs and outputs, config, resume path."""
    from qaclims.data.manifest import read_classes

    inp, out, cfg = job["input"], job["output"], job["config"]
    run(
        manifest=Path(inp["manifest"]),
        num_classes=len(read_classes(inp["classes"])),
        cam_weights=Path(inp["cam"]),
        model_cfg=from_mapping(CamModelConfig, cfg["train_cam"]["model"], "train_cam.model"),
        corpus_index=Path(inp["index"]),
        text_features=Path(inp["features"]),
        clip_cfg=from_mapping(ClipConfig, cfg["clip"], "clip"),
        clip_weights=Path(inp["clip_weights"]) if inp.get("clip_weights") else None,
        cfg=from_mapping(TrainRitcConfig, cfg["train_ritc"], "train_ritc"),
        out_model=Path(out["model"]),
        out_history=Path(out["history"]),
        device=device,
        resume_path=Path(job["resume"]),
        class_names=read_classes(inp["classes"]),
    )
