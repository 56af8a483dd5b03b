"""CLIP encoders for RITC: OV-Seg's mask-prompted image forward (:func:`encode_image_masked`),
region features of CAM-masked images (:func:`region_features`) and batched text features
(:func:`encode_texts`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from qaclims.core.errors import ConfigError
from qaclims.models.clip import ClipModel, Tokenizer, mask_prompt, vit_trunk


def encode_image_masked(
    model: ClipModel, images: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """OV-Seg's mask-prompted image encoding: ``Bx3xSxS`` images (CLIP-normalised, S the
    model's input size) and ``Bx1xSxS`` masks in {0, 1} -> ``BxE`` features (not normalised).

    A patch is kept when any of its pixels is kept (OV-Seg's ``ceil(avgpool(mask))``). A
    dropped patch's token is replaced by mask prompt 0 before the class token and positional
    embedding are added, and, after block ``d`` (``d = 1..depth-1``), by mask prompt ``d``.
    Without a learned prompt, dropped tokens are replaced by zeros before the transformer.
    A mask of ones gives ``model.encode_image(images)``; pixels of dropped patches never
    influence the output.
    """
    visual = vit_trunk(model)
    if images.ndim != 4 or masks.shape != (images.shape[0], 1, *images.shape[2:]):
        raise ValueError(
            f"need Bx3xHxW images and Bx1xHxW masks, got {images.shape}, {masks.shape}"
        )
    tokens = visual.conv1(images)  # B x W x g x g
    tokens = tokens.flatten(2).transpose(1, 2)  # B x N x W
    ph, pw = visual.patch_size
    keep = F.avg_pool2d(masks.to(tokens.dtype), (ph, pw), (ph, pw)).flatten(1) > 0
    keep_f = keep.unsqueeze(-1).to(tokens.dtype)  # B x N x 1
    prompt = mask_prompt(model)
    prompts = (
        prompt.to(tokens.dtype) if prompt is not None else tokens.new_zeros(1, 1, tokens.shape[2])
    )
    x = tokens * keep_f + prompts[0].unsqueeze(0) * (1 - keep_f)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    x = _masked_blocks(visual, x, keep_f, prompts)
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj if visual.proj is not None else pooled


def _masked_blocks(
    visual: Any, x: torch.Tensor, keep: torch.Tensor, prompts: torch.Tensor
) -> torch.Tensor:
    """Run the ViT blocks on ``B x (1+N) x W`` tokens, re-masking after the first
    ``depth - 1`` blocks."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    for i, block in enumerate(visual.transformer.resblocks):
        x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        d = i + 1
        if d < prompts.shape[0]:
            patches = x[:, 1:] * keep + prompts[d].unsqueeze(0) * (1 - keep)
            x = torch.cat([x[:, :1], patches], dim=1)
    return x


@torch.no_grad()
def encode_texts(
    model: ClipModel,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """CLIP text features of ``texts``: ``N x E float32`` on the CPU, L2-normalised."""
    from tqdm import tqdm

    dev = next(model.parameters()).device
    out = []
    starts = range(0, len(texts), max(1, batch_size))
    for s in tqdm(starts, desc="encode text", unit="batch", disable=not progress):
        tokens = tokenizer(list(texts[s : s + batch_size])).to(dev)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    if not out:
        width = model.text_projection.shape[-1]
        return torch.zeros(0, width)
    return torch.cat(out)


def region_features(
    model: ClipModel, images: torch.Tensor, masks: torch.Tensor, mode: str
) -> torch.Tensor:
    """``BxE`` features of masked image regions, by ``mode``:

    ``prompt``: :func:`encode_image_masked` (OV-Seg mask prompt); ``pixels``: the plain
    encoding of ``images * masks`` (the reference's path for a CLIP without mask prompt);
    ``auto``: ``prompt`` if the model has a learned mask prompt, else ``pixels``.
    """
    if mode == "auto":
        mode = "prompt" if mask_prompt(model) is not None else "pixels"
    if mode == "prompt":
        return encode_image_masked(model, images, masks)
    if mode == "pixels":
        return model.encode_image(images * masks)
    raise ConfigError(f"region encoding must be auto, prompt or pixels, got {mode!r}")
