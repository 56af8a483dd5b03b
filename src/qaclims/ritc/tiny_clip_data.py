"""The tiny CLIP's training data (synthetic demo): region samples (whole image, object,
background) with their captions and positives, and the CAM-like soft masks a batch is
built from (see :mod:`qaclims.ritc.train_tiny_clip`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from qaclims.core.errors import DataError
from qaclims.data import augment
from qaclims.models.clip import ClipInput

if TYPE_CHECKING:
    from qaclims.ritc.train_tiny_clip import TinyClipConfig

log = logging.getLogger(__name__)

#: region kinds of a sample (a blank sample: the zero image under an all-ones mask)
REGION_IMAGE, REGION_FG, REGION_BG, REGION_BLANK = 0, 1, 2, 3
#: kinds whose region is the whole (possibly blank) image: mask of ones, weight 1
WHOLE_KINDS = (REGION_IMAGE, REGION_BLANK)
ARTICLES = ("a ", "an ", "the ")


@dataclass
class RegionSet:
    """Training data of the tiny CLIP, in memory.

    images: ``N x 3 x S x S float32`` (ImageNet-normalised); labels: ``N x S x S int64`` label
    maps; samples: ``(image, region kind, class index or -1)`` per sample; positives:
    ``samples x T bool``, the texts that describe each sample; texts: the ``T`` prompts.
    With blank samples the last image is all zeros (label 0) and the last text is theirs.
    """

    images: torch.Tensor
    labels: torch.Tensor
    samples: list[tuple[int, int, int]]
    positives: torch.Tensor
    texts: list[str]


def _prompted(caption: str, cfg: TinyClipConfig) -> str:
    text = caption.strip()
    if cfg.strip_articles:
        for art in ARTICLES:
            if text.lower().startswith(art):
                text = text[len(art) :]
                break
    return cfg.prompt.format(text)


def _split_ids(root: Path, splits: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for split in splits:
        f = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not f.is_file():
            raise DataError(f"missing split list of the synthetic tree: {f}")
        ids += [line.strip() for line in f.read_text().splitlines() if line.strip()]
    return ids


def caption_clusters(
    groups: Sequence[Sequence[str]],
) -> tuple[list[str], list[int], list[int]]:
    """Synonym clusters of captions: captions given to one region (one group) are
    synonyms, and so, transitively, are captions sharing a group with a synonym.

    Returns the distinct texts (sorted), each text's cluster id and each group's cluster id.
    """
    texts = sorted({t for g in groups for t in g})
    tid = {t: i for i, t in enumerate(texts)}
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for g in groups:
        for t in g[1:]:
            parent[find(tid[t])] = find(tid[g[0]])
    return texts, [find(i) for i in range(len(texts))], [find(tid[g[0]]) for g in groups]


def _region_key(region: str, classes: list[str], path: Path) -> tuple[int, int]:
    if region == "image":
        return REGION_IMAGE, -1
    if region == "bg":
        return REGION_BG, -1
    if region.startswith("fg:") and region[3:] in classes:
        return REGION_FG, classes.index(region[3:])
    raise DataError(f"captions {path}: unknown region {region!r}")


def _resized_image(image: np.ndarray, size: int, mean: Sequence[float],
                   std: Sequence[float]) -> torch.Tensor:  # fmt: skip
    """``HxWx3 uint8`` -> ``3 x size x size`` normalised float32 (bilinear, antialiased)."""
    x = augment.to_chw(augment.normalize(image, mean, std))[None]
    return F.interpolate(x, (size, size), mode="bilinear", antialias=True)[0]


def _resized_label(label: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(label.astype(np.int64))[None, None].float()
    return F.interpolate(x, (size, size), mode="nearest")[0, 0].long()


def load_region_set(root: Path, captions: Path, classes: list[str], info: ClipInput,
                    cfg: TinyClipConfig) -> RegionSet:  # fmt: skip
    """Read the synthetic images, label maps and captions of ``cfg.splits`` at CLIP's size."""
    from qaclims.core.io import read_image, read_label_png, read_parquet

    ids = set(_split_ids(root, cfg.splits))
    df = read_parquet(captions, columns=["image_id", "region", "caption"])
    df = df[df["image_id"].isin(ids)]
    if df.empty:
        raise DataError(f"captions {captions} have no rows for splits {list(cfg.splits)}")
    df = df.assign(text=[_prompted(str(c), cfg) for c in df["caption"]])
    grouped = df.groupby(["image_id", "region"], sort=True)["text"].apply(list)
    texts, text_cluster, group_cluster = caption_clusters(list(grouped))
    order = sorted(set(df["image_id"]))
    where = {i: n for n, i in enumerate(order)}
    size = info.image_size
    images = torch.stack([
        _resized_image(read_image(root / "JPEGImages" / f"{i}.jpg"), size, info.mean, info.std)
        for i in order])  # fmt: skip
    labels = torch.stack([
        _resized_label(read_label_png(root / "SegmentationClass" / f"{i}.png"), size)
        for i in order])  # fmt: skip
    samples = [(where[str(i)], *_region_key(str(r), classes, captions)) for i, r in grouped.index]
    positives = torch.tensor(group_cluster)[:, None] == torch.tensor(text_cluster)[None, :]
    data = RegionSet(images, labels, samples, positives, texts)
    return with_blanks(data, cfg) if cfg.blank_share > 0 else data


def with_blanks(data: RegionSet, cfg: TinyClipConfig) -> RegionSet:
    """``data`` plus ``max(1, round(blank_share x samples))`` blank samples: the zero image
    (the mean colour after normalisation) under an all-ones mask, which is what a dead CAM
    shows CLIP, each described by ``blank_caption`` alone (a text no region has)."""
    text = _prompted(cfg.blank_caption, cfg)
    if text in data.texts:
        raise DataError(
            f"train_tiny_clip.blank_caption {cfg.blank_caption!r} is also a region's caption "
            f"({text!r}); a blank must have a text of its own"
        )
    k = max(1, round(cfg.blank_share * len(data.samples)))
    n_texts = len(data.texts)
    positives = torch.zeros(len(data.samples) + k, n_texts + 1, dtype=torch.bool)
    positives[: len(data.samples), :n_texts] = data.positives
    positives[len(data.samples) :, n_texts] = True
    blank_image = len(data.images)
    return RegionSet(
        images=torch.cat([data.images, torch.zeros_like(data.images[:1])]),
        labels=torch.cat([data.labels, torch.zeros_like(data.labels[:1])]),
        samples=[*data.samples, *[(blank_image, REGION_BLANK, -1)] * k],
        positives=positives,
        texts=[*data.texts, text],
    )


def region_masks(data: RegionSet, idx: Sequence[int]) -> torch.Tensor:
    """``B x 1 x S x S float`` masks of samples ``idx``: ones (whole image, blank), the
    object's pixels (foreground) or the pixels of no object (background)."""
    out = []
    for i in idx:
        image, kind, cls = data.samples[i]
        lab = data.labels[image]
        m = (
            torch.ones_like(lab, dtype=torch.bool)
            if kind in WHOLE_KINDS
            else (lab == cls + 1 if kind == REGION_FG else lab == 0)
        )
        out.append(m)
    return torch.stack(out)[:, None].float()


def perturb_regions(
    masks: torch.Tensor, whole: torch.Tensor, cfg: TinyClipConfig, gen: torch.Generator
) -> torch.Tensor:
    """CAM-like soft weights ``B x 1 x S x S`` in [0, 1] from binary region masks: each mask
    dilated or eroded by up to ``jitter`` pixels, ``inside``/``outside`` weight levels drawn
    per sample, edges smoothed by a 3x3 mean. Samples marked ``whole`` keep weight 1."""
    b = masks.shape[0]
    out = masks.clone()
    radii = torch.randint(-cfg.jitter, cfg.jitter + 1, (b,), generator=gen)
    for i, r in enumerate(radii.tolist()):
        if r:
            k = 2 * abs(r) + 1
            m = out[i : i + 1] if r > 0 else -out[i : i + 1]
            m = F.max_pool2d(m, k, 1, abs(r))
            out[i : i + 1] = m if r > 0 else -m
    lo_in, hi_in = cfg.inside
    lo_out, hi_out = cfg.outside
    w_in = lo_in + (hi_in - lo_in) * torch.rand(b, 1, 1, 1, generator=gen)
    w_out = lo_out + (hi_out - lo_out) * torch.rand(b, 1, 1, 1, generator=gen)
    soft = F.avg_pool2d(out * w_in + (1 - out) * w_out, 3, 1, 1, count_include_pad=False)
    return torch.where(whole.view(b, 1, 1, 1), torch.ones_like(soft), soft)


def batch_inputs(
    data: RegionSet, idx: Sequence[int], cfg: TinyClipConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``weight * image`` and token masks (``weight >= alpha * max``) of samples."""
    images = data.images[[data.samples[i][0] for i in idx]]
    masks = region_masks(data, idx)
    whole = torch.tensor([data.samples[i][1] in WHOLE_KINDS for i in idx])
    if cfg.hflip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1, 1), masks.flip(-1), masks)
    w = perturb_regions(masks, whole, cfg, gen)
    top = w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return w * images, (w >= cfg.alpha * top).float()
