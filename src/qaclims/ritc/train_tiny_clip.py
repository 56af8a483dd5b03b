"""train_tiny_clip (synthetic demo only): the tiny CLIP trained on the synthetic images
and their region captions (whole image, object-only, background-only), so the demo's RITC
has a CLIP that knows the synthetic world's objects and backgrounds. Resumable: a killed
run continues from its resume state to the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from qaclims.core.config import runtime, setting
from qaclims.core.errors import ConfigError
from qaclims.models.clip import ClipConfig, ClipModel, Tokenizer, seeded_tiny, tiny_io
from qaclims.models.clip_encode import encode_image_masked, encode_texts
from qaclims.ritc.tiny_clip_data import (
    REGION_BG,
    REGION_BLANK,
    REGION_FG,
    REGION_IMAGE,
    RegionSet,
    batch_inputs,
    load_region_set,
    region_masks,
)

if TYPE_CHECKING:
    from qaclims.training import ResumeState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyClipConfig:
    """Config slice ``train_tiny_clip`` (synthetic demo only): contrastive training of the
    tiny CLIP on (whole image, image caption), (object region, object caption) and
    (background region with the objects removed, background caption) pairs.

    splits: synthetic splits whose images and captions are trained on.
    epochs: passes over all (image, region) samples.
    batch_size: region samples per step.
    lr: AdamW peak learning rate (cosine decay to 0).
    weight_decay: AdamW weight decay.
    prompt: template each caption is put in, as text_features will put corpus phrases.
    strip_articles: drop a leading a/an/the from captions before the prompt (corpus phrases
        have none).
    inside: range of the pixel weight inside a region (the CAM value RITC weights it by).
    outside: range of the weight left outside a region (a CAM's leak onto the rest).
    jitter: largest dilation/erosion of a region mask, in pixels at CLIP's input size.
    alpha: tokens are masked (mask prompt) where the weight is below alpha x its maximum, as
        train_ritc's mask adapter.
    hflip: random horizontal flips.
    blank_share: blank samples added to an epoch, as a share of the region samples: the zero
        image under an all-ones mask (what a dead CAM shows CLIP), described by
        ``blank_caption`` alone, so the tiny CLIP learns what a real one knows, that no
        object's text describes nothing. 0 adds none (the demo's: with 0.2 one world's
        cross CAM died in RITC, README).
    blank_caption: the blank samples' caption (put in ``prompt`` like the others); no
        region may have it.
    seed: seed of the initialisation, order and augmentation.
    log_every: steps per log line. resume_every: steps between resume-state saves.
    """

    splits: tuple[str, ...] = setting(("train",), min_items=1)
    epochs: int = setting(10, ge=1)
    batch_size: int = setting(64, ge=1)
    lr: float = setting(0.002, gt=0.0)
    weight_decay: float = setting(0.05, ge=0.0)
    prompt: str = "a photo of {}."
    strip_articles: bool = True
    inside: tuple[float, ...] = setting((0.5, 1.0), ge=0.0, le=1.0, min_items=2)
    outside: tuple[float, ...] = setting((0.0, 0.2), ge=0.0, le=1.0, min_items=2)
    jitter: int = setting(2, ge=0)
    alpha: float = setting(0.1, ge=0.0, le=1.0)
    hflip: bool = True
    blank_share: float = setting(0.0, ge=0.0, le=1.0)
    blank_caption: str = "an empty image"
    seed: int = 0
    log_every: int = runtime(50, ge=1)
    resume_every: int = runtime(100, ge=1, doc="steps between resume-state saves.")


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Multi-positive InfoNCE of ``BxE`` image features over all ``TxE`` texts: mean of
    ``-log(sum_pos softmax)``; ``positives: BxT bool`` (>= 1 per row)."""
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    pos = logits.masked_fill(~positives, torch.finfo(logits.dtype).min)
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(pos, dim=1)).mean()


def _check_tiny_train(cfg: TinyClipConfig) -> None:
    for key in ("epochs", "batch_size", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train_tiny_clip.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0 or "{}" not in cfg.prompt or cfg.jitter < 0:
        raise ConfigError(
            "train_tiny_clip: lr must be > 0, prompt must contain '{}', jitter must be >= 0"
        )
    if cfg.blank_share > 0 and not cfg.blank_caption.strip():
        raise ConfigError("train_tiny_clip.blank_caption must not be empty when blank_share > 0")
    for key in ("inside", "outside"):
        lo_hi = getattr(cfg, key)
        if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
            raise ConfigError(f"train_tiny_clip.{key} must be [lo, hi] in [0, 1], got {lo_hi}")


def train_tiny_clip(
    root: Path,
    captions: Path,
    clip_cfg: ClipConfig,
    cfg: TinyClipConfig,
    out: Path,
    device: str,
    resume_path: Path | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train the tiny CLIP ``clip_cfg.tiny`` on the synthetic tree at ``root`` (JPEGImages,
    SegmentationClass, ImageSets/Segmentation, classes.json) and its ``captions.parquet``;
    write its whole state dict (mask prompt included) to ``out`` (safetensors).

    ``resume_path``: a resume state saved every ``cfg.resume_every`` steps and continued
    from by a rerun on the same settings and data (by content), removed at the end.
    ``max_steps`` (tests): stop after that many steps in all, saving the state, writing
    nothing, as if killed. Returns (and logs) the final training loss and the top-1
    retrieval accuracy per region kind on the training samples ({} when stopped early).
    """
    from qaclims.core.devices import torch_device
    from qaclims.core.io import read_json
    from qaclims.training import ResumeState, save_weights

    _check_tiny_train(cfg)
    if clip_cfg.name != "tiny":
        raise ConfigError(f"clip.name must be 'tiny' to train the tiny CLIP, got {clip_cfg.name!r}")
    classes = list(read_json(Path(root) / "classes.json")["classes"])
    dev = torch.device(torch_device(device))
    tokenizer, info = tiny_io(clip_cfg.tiny)
    model = seeded_tiny(clip_cfg.tiny, cfg.seed).to(dev)
    data = load_region_set(Path(root), Path(captions), classes, info, cfg)
    log.info(
        "train_tiny_clip: %d images, %d region samples, %d distinct texts",
        data.images.shape[0],
        len(data.samples),
        len(data.texts),
    )
    resume = None
    if resume_path is not None:
        resume = ResumeState(Path(resume_path), _fingerprint(cfg, clip_cfg, data))
    stats: dict[str, float] = {}

    def write(loss: float) -> None:
        stats.update(loss=loss, **retrieval_accuracy(model, tokenizer, data, cfg))
        log.info("train_tiny_clip: %s", json.dumps({k: round(v, 4) for k, v in stats.items()}))
        shares = above_blank(model, tokenizer, data, classes, cfg.prompt)
        log.info(
            "train_tiny_clip: share of each class's regions scored above a blank: %s",
            ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()),
        )
        weak = [k for k, v in shares.items() if v < BLANK_WARN]
        if weak:
            log.warning(
                "train_tiny_clip: %s: fewer than %d%% of the regions score above a blank masked "
                "image, so RITC's foreground loss cannot tell a dead CAM from the object; "
                "train longer (train_tiny_clip.epochs)",
                ", ".join(weak),
                round(100 * BLANK_WARN),
            )
        stats["above_blank_min"] = min(shares.values()) if shares else float("nan")
        meta = {"arch": json.dumps(vars(clip_cfg.tiny)), "stats": json.dumps(stats)}
        save_weights(out, model, metadata=meta)

    _fit(model, tokenizer(data.texts).to(dev), data, cfg, dev, resume, max_steps, write)
    return stats


def _fingerprint(cfg: TinyClipConfig, clip_cfg: ClipConfig, data: RegionSet) -> str:
    """Identity of a training: its settings and its samples by content."""
    import dataclasses
    import hashlib

    from qaclims.core.config import to_dict
    from qaclims.training import fingerprint

    h = hashlib.sha256()
    for t in (data.images, data.labels, data.positives):
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps([data.samples, data.texts]).encode())
    keep = to_dict(dataclasses.replace(cfg, log_every=1, resume_every=1))
    return fingerprint({"cfg": keep, "arch": vars(clip_cfg.tiny), "data": h.hexdigest()})


def _fit(
    model: ClipModel,
    tokens: torch.Tensor,
    data: RegionSet,
    cfg: TinyClipConfig,
    dev: torch.device,
    resume: ResumeState | None,
    max_steps: int | None,
    write: Callable[[float], None],
) -> bool:
    """AdamW with a one-cycle cosine schedule over ``epochs``, on the one training loop;
    when complete, ``write(mean loss of the last log window)`` and return True; when
    stopped at ``max_steps`` before the end, save the state and return False."""
    from qaclims.training.loop import Plan, Trainer, stop_step
    from qaclims.training.sampling import StepBatches, step_rng

    model.requires_grad_(True).train()
    batch = min(cfg.batch_size, len(data.samples))
    per_epoch = len(data.samples) // batch
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total, pct_start=0.05)
    plan = Plan("train_tiny_clip", total, per_epoch, batch, cfg.log_every, cfg.resume_every,
                poly_power=None)  # fmt: skip
    trainer = Trainer(plan, model, opt, resume, scheduler=sched)
    start = trainer.restore()
    stop = stop_step(total, max_steps)
    keys = StepBatches(len(data.samples), batch, cfg.seed, start, stop)

    def step(item: tuple[int, list[tuple[int, int]]]) -> dict[str, float]:
        s, batch_keys = item
        idx = [i for _, i in batch_keys]
        gen = torch.Generator().manual_seed(int(step_rng(cfg.seed, s).integers(2**62)))
        x, m = batch_inputs(data, idx, cfg, gen)
        img = encode_image_masked(model, x.to(dev), m.to(dev))
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = contrastive_loss(img, model.encode_text(tokens), data.positives[idx].to(dev), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    trainer.fit(enumerate(keys, start), step, start)
    model.requires_grad_(False).eval()
    last = total % cfg.log_every or cfg.log_every
    return trainer.finish(stop, lambda: write(trainer.window_mean(last)["loss"]))


BLANK_WARN = 0.9  # share of a class's regions above the blank below which training warns


@torch.no_grad()
def above_blank(
    model: ClipModel, tokenizer: Tokenizer, data: RegionSet, classes: list[str], prompt: str
) -> dict[str, float]:
    """Class name -> share (in [0, 1]) of its foreground regions whose cosine to the class's
    prompt (``prompt.format(name)``) is above that of a blank: the zero image (the mean
    colour after normalisation) under an all-ones mask, which is what a dead CAM shows CLIP.
    A class whose share is low cannot be told from nothing by RITC's foreground loss."""
    dev = next(model.parameters()).device
    s = int(data.images.shape[-1])
    blank = encode_image_masked(model, torch.zeros(1, 3, s, s, device=dev),
                                torch.ones(1, 1, s, s, device=dev))  # fmt: skip
    blank = F.normalize(blank, dim=-1)
    out: dict[str, float] = {}
    for c, name in enumerate(classes):
        idx = [i for i, (_, kind, cls) in enumerate(data.samples) if kind == REGION_FG and cls == c]
        if not idx:
            continue
        masks = region_masks(data, idx).to(dev)
        images = data.images[[data.samples[i][0] for i in idx]].to(dev)
        region = F.normalize(encode_image_masked(model, images * masks, masks), dim=-1)
        text = F.normalize(encode_texts(model, tokenizer, [prompt.format(name)]).to(dev), dim=-1)
        above = (region @ text.T).squeeze(1) > (blank @ text.T).squeeze()
        out[name] = float(above.float().mean())
    return out


@torch.no_grad()
def retrieval_accuracy(
    model: ClipModel, tokenizer: Tokenizer, data: RegionSet, cfg: TinyClipConfig
) -> dict[str, float]:
    """Top-1 text retrieval accuracy per region kind (``acc_image``, ``acc_fg``, ``acc_bg``,
    and ``acc_blank`` with blank samples) with clean region masks (no jitter, weight 1
    inside and 0 outside)."""
    dev = next(model.parameters()).device
    txt = encode_texts(model, tokenizer, data.texts).to(dev)
    hits: dict[int, list[bool]] = {REGION_IMAGE: [], REGION_FG: [], REGION_BG: []}
    if any(kind == REGION_BLANK for _, kind, _ in data.samples):
        hits[REGION_BLANK] = []
    for s in range(0, len(data.samples), 256):
        idx = list(range(s, min(s + 256, len(data.samples))))
        images = data.images[[data.samples[i][0] for i in idx]]
        masks = region_masks(data, idx)
        img = F.normalize(encode_image_masked(model, (images * masks).to(dev), masks.to(dev)),
                          dim=-1)  # fmt: skip
        best = (img @ txt.t()).argmax(dim=1).cpu()
        for i, b in zip(idx, best.tolist(), strict=True):
            hits[data.samples[i][1]].append(bool(data.positives[i, b]))
    names = {REGION_IMAGE: "acc_image", REGION_FG: "acc_fg", REGION_BG: "acc_bg",
             REGION_BLANK: "acc_blank"}  # fmt: skip
    return {names[k]: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process (:mod:`qaclims.workflow.launch`); ``job`` is
    :func:`qaclims.workflow.launch.job_args`: named inputs and outputs, config, resume path."""
    from qaclims.core.config import from_mapping

    root = Path(job["input"]["root"])
    config = job["config"]
    train_tiny_clip(
        root=root,
        captions=root / "captions.parquet",
        clip_cfg=from_mapping(ClipConfig, config["clip"], "clip"),
        cfg=from_mapping(TinyClipConfig, config["train_tiny_clip"], "train_tiny_clip"),
        out=Path(job["output"]["model"]),
        device=device,
        resume_path=Path(job["resume"]),
    )
