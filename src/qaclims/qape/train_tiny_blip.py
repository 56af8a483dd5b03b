"""train_tiny_blip (synthetic demo only): a tiny BLIP VQA model trained on the synthetic
world's question/answer facts, so the demo's ``vqa`` stage runs the ``blip`` backend (batched,
cached, sharded) on a real model, as the paper's pipeline runs BLIP.

The model is :func:`qaclims.qape.blip.write_tiny_blip`'s architecture over a word vocabulary
of the questions and answers, trained with teacher forcing (the answer after the decoder's
``[DEC]`` start token, ending in ``[SEP]``, label smoothing 0.1 as BLIP's decoder) on every
(image, question, answer) row of ``answers.parquet`` for the images of ``splits``. The facts
hold several answers per question (synonyms, sampled places), so the model learns their
modes: its greedy answers are as noisy as a real BLIP's, and the corpus cleans them.
Runs on :class:`qaclims.training.loop.Trainer` (resumable) and writes a Hugging Face folder
(``config.json``, ``model.safetensors``, processor files) atomically; ``config.json`` holds
the training's fingerprint, so the vqa answer cache never serves answers of another model.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qaclims.artifacts.partial import PartialDir
from qaclims.core.config import from_mapping, runtime, setting, to_dict
from qaclims.core.devices import torch_device
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import current_umask, files_digest, read_image, read_parquet
from qaclims.qape.blip import write_tiny_blip
from qaclims.training import ResumeState, fingerprint, seed_everything
from qaclims.training.loop import Plan, Trainer, stop_step
from qaclims.training.sampling import StepBatches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyBlipConfig:
    """Config slice ``train_tiny_blip`` (the demo's VQA model)."""

    splits: tuple[str, ...] = setting(("train",), min_items=1, doc="images it learns from.")
    image_size: int = setting(64, ge=8, doc="input size in pixels (a multiple of 8).")
    hidden: int = setting(64, ge=8, doc="width of the vision and text transformers.")
    epochs: int = setting(6, ge=1, doc="passes over the (image, question, answer) rows.")
    batch_size: int = setting(64, ge=1, doc="rows per step.")
    lr: float = setting(2e-3, gt=0.0, doc="AdamW learning rate (one-cycle cosine).")
    weight_decay: float = setting(0.01, ge=0.0, doc="AdamW weight decay.")
    seed: int = setting(0, doc="seed of initialisation and data order.")
    log_every: int = runtime(50, ge=1, doc="steps per log line.")
    resume_every: int = runtime(200, ge=1, doc="steps between resume-state saves.")


def _check(cfg: TinyBlipConfig) -> None:
    if cfg.image_size % 8:
        raise ConfigError(
            f"train_tiny_blip.image_size must be a multiple of 8, got {cfg.image_size}"
        )
    for key in ("epochs", "batch_size", "log_every", "resume_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train_tiny_blip.{key} must be >= 1, got {getattr(cfg, key)}")


def training_rows(root: Path, answers: Path, splits: Sequence[str]) -> pd.DataFrame:
    """The answer rows (``image_id, question, answer``) of the images of ``splits`` of the
    synthetic tree at ``root``, with ``image_path``; DataError naming what is missing."""
    ids: list[str] = []
    for s in splits:
        f = root / "ImageSets" / "Segmentation" / f"{s}.txt"
        if not f.is_file():
            raise DataError(f"train_tiny_blip: split list {f} is missing")
        ids += f.read_text().split()
    df = read_parquet(answers, columns=["image_id", "question", "answer"])
    df = df[df["image_id"].isin(set(ids))].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{answers}: no answers for the images of splits {list(splits)}")
    df["image_path"] = [str(root / "JPEGImages" / f"{i}.jpg") for i in df["image_id"]]
    return df


def _words(texts: Sequence[str]) -> list[str]:
    """The word-level vocabulary of ``texts`` as BERT's basic tokenizer splits them (lower
    case; words; each punctuation mark on its own)."""
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})


@dataclass
class _Data:
    """Everything a step reads, in memory: ``pixels N x 3 x S x S`` (one per image),
    ``image`` (row -> image index), question ids/mask ``R x Lq``, decoder ids/mask
    ``R x La`` (``[DEC] answer [SEP]``) and labels (decoder ids, padding -100)."""

    pixels: torch.Tensor
    image: torch.Tensor
    q_ids: torch.Tensor
    q_mask: torch.Tensor
    a_ids: torch.Tensor
    a_mask: torch.Tensor
    labels: torch.Tensor


def _tensors(df: pd.DataFrame, processor: Any, image_size: int) -> _Data:
    tok = processor.tokenizer
    names = list(dict.fromkeys(df["image_path"]))
    where = {p: i for i, p in enumerate(names)}
    pix = processor.image_processor(
        [read_image(p) for p in names],
        size={"height": image_size, "width": image_size},
        return_tensors="pt",
    )["pixel_values"]
    q = tok(list(df["question"]), padding="longest", return_tensors="pt")
    a = tok(list(df["answer"]), padding="longest", return_tensors="pt")
    a_ids = a["input_ids"].clone()
    a_ids[:, 0] = tok.bos_token_id  # [CLS] -> the decoder's start token, as BLIP trains
    labels = a_ids.masked_fill(a["attention_mask"] == 0, -100)
    image = torch.tensor([where[p] for p in df["image_path"]])
    return _Data(
        pix, image, q["input_ids"], q["attention_mask"], a_ids, a["attention_mask"], labels
    )


def train_tiny_blip(
    root: Path,
    answers: Path,
    cfg: TinyBlipConfig,
    out_dir: Path,
    device: str,
    resume_path: Path | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train the demo's tiny BLIP on ``answers`` (the synthetic world's ``answers.parquet``)
    for the images of ``cfg.splits`` under ``root``; write the model folder ``out_dir``
    (loadable as ``vqa.model``). Returns the last log window's loss and the share of rows
    whose greedy answer equals the row's answer (``{}`` when stopped at ``max_steps``)."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    _check(cfg)
    df = training_rows(Path(root), Path(answers), cfg.splits)
    words = _words([*df["question"], *df["answer"]])
    keep = to_dict(dataclasses.replace(cfg, log_every=1, resume_every=1))
    ids = sorted(set(df["image_id"]))
    key = fingerprint({"cfg": keep, "answers": files_digest([answers]), "ids": ids})
    seed_everything(cfg.seed)
    init = Path(str(out_dir) + ".init")
    shutil.rmtree(init, ignore_errors=True)
    write_tiny_blip(init, words, cfg.seed, cfg.image_size, cfg.hidden, init_std=0.02)
    processor = BlipProcessor.from_pretrained(init)
    dev = torch.device(torch_device(device))
    model: Any = BlipForQuestionAnswering.from_pretrained(init)
    model.to(dev).train()
    data = _tensors(df, processor, cfg.image_size)
    log.info("train_tiny_blip: %d images, %d question/answer rows, %d words",
             data.pixels.shape[0], len(df), len(words))  # fmt: skip
    batch = min(cfg.batch_size, len(df))
    per_epoch = len(df) // batch
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total, pct_start=0.1)
    plan = Plan("train_tiny_blip", total, per_epoch, batch, cfg.log_every, cfg.resume_every,
                poly_power=None)  # fmt: skip
    resume = ResumeState(Path(resume_path), key) if resume_path is not None else None
    trainer = Trainer(plan, model, opt, resume, scheduler=sched)
    start = trainer.restore()
    stop = stop_step(total, max_steps)

    def step(keys: list[tuple[int, int]]) -> dict[str, float]:
        idx = torch.tensor([i for _, i in keys])
        out = model(
            input_ids=data.q_ids[idx].to(dev),
            attention_mask=data.q_mask[idx].to(dev),
            pixel_values=data.pixels[data.image[idx]].to(dev),
            decoder_input_ids=data.a_ids[idx].to(dev),
            decoder_attention_mask=data.a_mask[idx].to(dev),
            labels=data.labels[idx].to(dev),
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return {"loss": float(out.loss.detach())}

    trainer.fit(StepBatches(len(df), batch, cfg.seed, start, stop), step, start)
    model.eval()
    stats: dict[str, float] = {}

    def write() -> None:
        stats["loss"] = trainer.window_mean(total % cfg.log_every or cfg.log_every)["loss"]
        stats["exact"] = exact_share(model, processor, df, cfg.image_size)
        log.info("train_tiny_blip: loss %.4f, greedy answer = a fact's answer for %.1f%% of rows",
                 stats["loss"], 100 * stats["exact"])  # fmt: skip
        model.config.qaclims_fingerprint = key  # the vqa cache's model key changes with it
        part = PartialDir(Path(out_dir), {"fingerprint": key})  # renamed onto out_dir whole
        model.cpu().save_pretrained(part.path)
        processor.save_pretrained(part.path)
        mode = 0o666 & ~current_umask()  # transformers writes the weights 0600
        for f in part.path.iterdir():
            f.chmod(mode)
        part.finish()

    trainer.finish(stop, write)
    shutil.rmtree(init, ignore_errors=True)
    return stats


@torch.no_grad()
def exact_share(model: Any, processor: Any, df: pd.DataFrame, image_size: int) -> float:
    """Share of ``df``'s rows whose greedy answer (the vqa stage's decoding) is one of the
    answers the facts give to that (image, question)."""
    from qaclims.qape.blip import BlipAnswerer

    dev = str(next(model.parameters()).device)
    ans = BlipAnswerer(model, processor, dev, torch.float32, image_size, 1, 8)
    pairs = df.groupby(["image_path", "question"])["answer"].agg(set).reset_index()
    paths = list(dict.fromkeys(pairs["image_path"]))
    images = [read_image(p) for p in paths]
    where = {p: i for i, p in enumerate(paths)}
    got: list[str] = []
    for s in range(0, len(pairs), 256):
        part = pairs.iloc[s : s + 256]
        got += ans.answer(images, [where[p] for p in part["image_path"]], list(part["question"]))
    return float(np.mean([g in a for g, a in zip(got, pairs["answer"], strict=True)]))


def worker(job: dict[str, Any], device: str) -> None:
    """Entry point of the rule's worker process (:mod:`qaclims.workflow.launch`)."""
    root = Path(job["input"]["root"])
    train_tiny_blip(
        root=root,
        answers=root / "answers.parquet",
        cfg=from_mapping(TinyBlipConfig, job["config"]["train_tiny_blip"], "train_tiny_blip"),
        out_dir=Path(job["output"]["model"]),
        device=device,
        resume_path=Path(job["resume"]),
    )
