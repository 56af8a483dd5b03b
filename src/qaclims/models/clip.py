"""CLIP for RITC: loading (open_clip names, checkpoints, OV-Seg), masked image encoding,
text encoding, and the tiny CLIP of the synthetic demo.

* :func:`load_clip` builds an open_clip model from a model name and a pretrained tag or
  checkpoint path (default OpenAI ViT-L/14), optionally overlays the image encoder of the
  OV-Seg mask-adapted checkpoint (``ovseg_swinbase_vitL14_ft_mpt.pth``) including its learned
  *mask prompt*, or builds the tiny CLIP of :class:`TinyClipArch`. The model comes back
  frozen and in eval mode.
* :func:`encode_image_masked` is OV-Seg's mask-prompted ViT forward: patch tokens of a
  patch without any kept pixel are replaced by the learned mask prompt (zeros for a plain
  CLIP) before the transformer and, for the first ``depth - 1`` blocks, after each block.
* :func:`train_tiny_clip` trains the tiny CLIP on the synthetic images and their region
  captions (whole image, object-only, background-only) so the demo's RITC has a CLIP that
  knows the synthetic world's objects and backgrounds.

Nothing here downloads unless a pretrained *tag* is asked for; tests and the demo build
tiny models from config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qaclims.core.config import runtime, setting
from qaclims.core.errors import ConfigError, DataError
from qaclims.data import augment

if TYPE_CHECKING:  # open_clip ships no type information: this documents, mypy sees Any
    from open_clip import CLIP as ClipModel
else:
    ClipModel = nn.Module

log = logging.getLogger(__name__)

Tokenizer = Callable[..., torch.Tensor]

# Key prefix of the CLIP inside an OV-Seg (detectron2) checkpoint's "model" state dict.
OVSEG_PREFIX = "clip_adapter.clip_model."
MASK_PROMPT = "mask_embedding"
TINY_VOCAB = 49408  # the CLIP BPE vocabulary shipped with open_clip


@dataclass(frozen=True)
class TinyClipArch:
    """Architecture of the tiny CLIP (``clip.name: tiny``), built with ``open_clip.CLIP``.

    embed_dim: joint embedding width E.
    image_size: square input side in pixels.
    patch_size: ViT patch side in pixels (image_size must be a multiple).
    vision_width: ViT token width.
    vision_layers: ViT blocks.
    vision_heads: ViT attention heads (vision_width must be a multiple).
    text_width: text transformer width.
    text_layers: text transformer blocks.
    text_heads: text attention heads.
    context_length: text tokens (CLIP BPE, vocabulary 49408).
    mask_prompt_depth: learned mask-prompt layers (OV-Seg style); 0 = none (masked patch
        tokens become zeros).
    """

    embed_dim: int = setting(64, ge=1)
    image_size: int = setting(64, ge=1)
    patch_size: int = setting(8, ge=1)
    vision_width: int = setting(64, ge=1)
    vision_layers: int = setting(3, ge=1)
    vision_heads: int = setting(2, ge=1)
    text_width: int = setting(64, ge=1)
    text_layers: int = setting(2, ge=1)
    text_heads: int = setting(2, ge=1)
    context_length: int = setting(24, ge=1)
    mask_prompt_depth: int = setting(3, ge=0)


@dataclass(frozen=True)
class ClipConfig:
    """Config slice ``clip`` (shared by text_features, train_ritc, train_tiny_clip).

    name: open_clip model name (``ViT-L-14``, the paper's) or ``tiny`` (built from ``tiny``).
    pretrained: open_clip pretrained tag (``openai``), a checkpoint file, or ``none``
        (random init; tests). Ignored for ``tiny`` (its weights come from train_tiny_clip).
    quick_gelu: QuickGELU activations; null = as the pretrained tag was trained (OpenAI: yes;
        with a checkpoint file: only if ovseg_checkpoint is set, so set it for other files).
    ovseg_checkpoint: path of the OV-Seg mask-adapted CLIP (``ovseg_swinbase_vitL14_ft_mpt.pth``)
        whose image encoder and mask prompt are loaded over the model; empty = none.
    tiny: architecture of the tiny CLIP.
    """

    name: str = "ViT-L-14"
    pretrained: str = "openai"
    quick_gelu: bool | None = None
    ovseg_checkpoint: str = ""
    tiny: TinyClipArch = field(default_factory=TinyClipArch)


@dataclass(frozen=True)
class ClipInput:
    """What a CLIP expects of its images: ``image_size`` square, normalised with mean/std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# ----------------------------------------------------------------------------- building


def build_tiny_clip(arch: TinyClipArch) -> ClipModel:
    """A randomly initialised tiny ``open_clip.CLIP`` (plus a zero mask prompt if
    ``arch.mask_prompt_depth > 0``)."""
    import open_clip

    _check_tiny(arch)
    vision = {
        "image_size": arch.image_size,
        "patch_size": arch.patch_size,
        "width": arch.vision_width,
        "layers": arch.vision_layers,
        "head_width": arch.vision_width // arch.vision_heads,
    }
    text = {
        "context_length": arch.context_length,
        "vocab_size": TINY_VOCAB,
        "width": arch.text_width,
        "heads": arch.text_heads,
        "layers": arch.text_layers,
    }
    model = open_clip.CLIP(arch.embed_dim, vision_cfg=vision, text_cfg=text)
    if arch.mask_prompt_depth > 0:
        tokens = (arch.image_size // arch.patch_size) ** 2
        attach_mask_prompt(model, torch.zeros(arch.mask_prompt_depth, tokens, arch.vision_width))
    return model


def tiny_io(arch: TinyClipArch) -> tuple[Tokenizer, ClipInput]:
    """The tiny CLIP's tokenizer (CLIP BPE, ``arch.context_length`` tokens) and input: it
    sees images normalised like the CAM network's (ImageNet statistics)."""
    import open_clip

    _check_tiny(arch)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=arch.context_length)
    return tokenizer, ClipInput(arch.image_size, augment.IMAGENET_MEAN, augment.IMAGENET_STD)


def _check_tiny(arch: TinyClipArch) -> None:
    for key in (
        "embed_dim",
        "image_size",
        "patch_size",
        "vision_width",
        "vision_layers",
        "vision_heads",
        "text_width",
        "text_layers",
        "text_heads",
        "context_length",
    ):
        if getattr(arch, key) < 1:
            raise ConfigError(f"clip.tiny.{key} must be >= 1, got {getattr(arch, key)}")
    if arch.image_size % arch.patch_size:
        raise ConfigError("clip.tiny.image_size must be a multiple of clip.tiny.patch_size")
    if arch.vision_width % arch.vision_heads or arch.text_width % arch.text_heads:
        raise ConfigError("clip.tiny.vision_width/text_width must be multiples of their heads")
    if arch.mask_prompt_depth < 0 or arch.mask_prompt_depth > arch.vision_layers:
        raise ConfigError(
            f"clip.tiny.mask_prompt_depth must be in [0, vision_layers], got "
            f"{arch.mask_prompt_depth}"
        )


def attach_mask_prompt(model: ClipModel, prompt: torch.Tensor) -> None:
    """Give ``model.visual`` a mask prompt parameter ``depth x (N or 1) x width`` (its state
    dict key is ``visual.mask_embedding``, as in OV-Seg)."""
    visual = _vit(model)
    width = visual.conv1.out_channels
    tokens = visual.grid_size[0] * visual.grid_size[1]
    if prompt.ndim != 3 or prompt.shape[1] not in (1, tokens) or prompt.shape[2] != width:
        raise ValueError(
            f"mask prompt must be depth x ({tokens} or 1) x {width}, got {tuple(prompt.shape)}"
        )
    if prompt.shape[0] > len(visual.transformer.resblocks):
        raise ValueError(f"mask prompt depth {prompt.shape[0]} exceeds the ViT's blocks")
    if hasattr(visual, MASK_PROMPT):
        delattr(visual, MASK_PROMPT)
    visual.register_parameter(MASK_PROMPT, nn.Parameter(prompt.detach().clone().float()))


def mask_prompt(model: ClipModel) -> torch.Tensor | None:
    """The learned mask prompt ``depth x (N or 1) x width`` of ``model``, or None."""
    p = getattr(_vit(model), MASK_PROMPT, None)
    return p if isinstance(p, torch.Tensor) else None


def _vit(model: ClipModel) -> Any:
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"masked encoding needs an open_clip ViT image tower, got {type(visual).__name__}"
        )
    return visual


def _quick_gelu(cfg: ClipConfig) -> bool:
    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    import open_clip

    tag = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained) if cfg.pretrained else {}
    if tag:
        return bool(tag.get("quick_gelu", False))
    # A checkpoint file or no weights: set quick_gelu explicitly; OV-Seg is an OpenAI CLIP.
    return bool(cfg.ovseg_checkpoint)


def _open_clip_model(cfg: ClipConfig) -> ClipModel:
    import open_clip

    if cfg.name not in open_clip.list_models():
        raise ConfigError(f"clip.name: unknown open_clip model {cfg.name!r} (or use 'tiny')")
    pretrained: str | None = None if cfg.pretrained in ("", "none") else cfg.pretrained
    if pretrained is not None and not open_clip.get_pretrained_cfg(cfg.name, pretrained):
        if not Path(pretrained).is_file():
            raise ConfigError(
                f"clip.pretrained: {pretrained!r} is neither a pretrained tag of {cfg.name} "
                f"({open_clip.list_pretrained_tags_by_model(cfg.name)}) nor an existing file"
            )
    return open_clip.create_model(
        cfg.name, pretrained=pretrained, force_quick_gelu=_quick_gelu(cfg)
    )


def load_ovseg_weights(model: ClipModel, path: str | Path) -> None:
    """Load the image encoder and the mask prompt of an OV-Seg checkpoint into ``model``.

    The checkpoint is a detectron2 file ``{"model": state_dict}`` whose CLIP keys start with
    ``clip_adapter.clip_model.`` (OpenAI names, which are open_clip's) and whose mask prompt is
    ``...visual.mask_embedding`` (``depth x 256 x 1024`` for ViT-L/14). Only ``visual.*`` is
    taken: the text tower stays the base model's, as the reference encodes its phrases with
    plain OpenAI CLIP. Read with ``weights_only=True``; anything that does not fit raises
    :class:`DataError` naming the file.
    """
    p = Path(path)
    state = _ovseg_state(p)
    prefix = OVSEG_PREFIX + "visual."
    visual = {k[len(prefix) :]: torch.as_tensor(v) for k, v in state.items()
              if k.startswith(prefix)}  # fmt: skip
    prompt = visual.pop(MASK_PROMPT, None)
    if not visual or prompt is None:
        raise DataError(f"{p} has no {prefix}* weights with a {prefix}{MASK_PROMPT}")
    _load_visual(model, visual, p)
    try:
        attach_mask_prompt(model, prompt)
    except ValueError as e:
        raise DataError(f"OV-Seg checkpoint {p}: {e}") from e
    log.info("loaded OV-Seg image encoder and a %s mask prompt from %s", tuple(prompt.shape), p)


def _ovseg_state(p: Path) -> dict[str, Any]:
    """The state dict of an OV-Seg checkpoint (``weights_only=True``); errors name it."""
    if not p.is_file():
        raise DataError(f"missing OV-Seg checkpoint: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"cannot read OV-Seg checkpoint {p} safely: {e}") from e
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"OV-Seg checkpoint {p} holds no state dict")
    return state


def load_ovseg_text(model: ClipModel, path: str | Path) -> None:
    """Load the text tower of an OV-Seg checkpoint into ``model`` (every CLIP tensor under
    ``clip_adapter.clip_model.`` that is not ``visual.*``: token and positional embeddings,
    the text transformer, ``ln_final``, ``text_projection``, ``logit_scale``).

    The reference encodes its class names with the mask-adapted model it trains with, so
    with its text tower (its answer features come from plain OpenAI CLIP). Read with
    ``weights_only=True``; a missing or misshapen tensor raises :class:`DataError` naming
    the file.
    """
    state = _ovseg_state(Path(path))
    visual = OVSEG_PREFIX + "visual."
    text = {
        k[len(OVSEG_PREFIX) :]: torch.as_tensor(v)
        for k, v in state.items()
        if k.startswith(OVSEG_PREFIX) and not k.startswith(visual)
    }
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}
    missing = sorted(set(own) - set(text))
    bad = [k for k in own if k in text and own[k].shape != text[k].shape]
    if missing or bad:
        raise DataError(f"{path}: the text tower's weights do not fit the model "
                        f"(missing {missing[:5]}, misshapen {bad[:5]})")  # fmt: skip
    model.load_state_dict({k: text[k] for k in own}, strict=False)
    log.info("loaded the OV-Seg text tower (%d tensors) from %s", len(own), path)


def _load_visual(model: ClipModel, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Load every tensor of ``model.visual`` from ``sd``; a missing or misshapen one raises."""
    own = {k: v for k, v in model.visual.state_dict().items() if k != MASK_PROMPT}
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(sd))
    if bad or missing:
        raise DataError(f"{path}: the image encoder's weights do not fit the model "
                        f"(missing {missing[:5]}, misshapen {bad[:5]})")  # fmt: skip
    model.visual.load_state_dict({k: sd[k] for k in own}, strict=False)


def load_clip(
    cfg: ClipConfig, device: str, weights: str | Path | None = None
) -> tuple[ClipModel, ClipInput, Tokenizer]:
    """Build the CLIP ``cfg`` describes, frozen, in eval mode, on ``device``.

    ``weights``: a ``.safetensors`` state dict of the whole model (the tiny CLIP written by
    :func:`train_tiny_clip`), loaded last and strictly; required for ``tiny`` unless tests
    want a random model. Returns ``(model, input info, tokenizer)``; the tokenizer maps a
    list of ``n`` strings to ``n x context_length`` int64 tokens.
    """
    import open_clip

    for path in (cfg.ovseg_checkpoint, weights):
        if path and not Path(path).is_file():
            raise DataError(f"missing CLIP weights file: {path}")
    if cfg.name == "tiny":
        model = build_tiny_clip(cfg.tiny)
        tokenizer, info = tiny_io(cfg.tiny)
        mean, std = info.mean, info.std
    else:
        model = _open_clip_model(cfg)
        if cfg.ovseg_checkpoint:
            load_ovseg_weights(model, cfg.ovseg_checkpoint)
        tokenizer = open_clip.get_tokenizer(cfg.name)
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean = tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD))
    if weights is not None:
        load_clip_weights(model, weights)
    model.requires_grad_(False)
    model.eval().to(device)
    size = int(_image_size(model))
    return model, ClipInput(size, mean, std), tokenizer


def load_clip_weights(model: ClipModel, path: str | Path) -> None:
    """Load a whole-model ``.safetensors`` state dict (mask prompt included) into ``model``."""
    from qaclims.artifacts.weights import read_tensors

    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing CLIP weights: {p}")
    sd = read_tensors(p)
    prompt = sd.pop(f"visual.{MASK_PROMPT}", None)
    if prompt is not None:
        attach_mask_prompt(model, prompt)
        sd[f"visual.{MASK_PROMPT}"] = prompt
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise DataError(f"CLIP weights {p} do not fit the configured model: {e}") from e


def _image_size(model: ClipModel) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


# ----------------------------------------------------------------------------- encoding


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
    visual = _vit(model)
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


def clip_metadata(cfg: ClipConfig) -> dict[str, str]:
    """Safetensors metadata naming the CLIP that produced a file."""
    return {
        "clip": json.dumps(
            {"name": cfg.name, "pretrained": cfg.pretrained, "ovseg": cfg.ovseg_checkpoint}
        )
    }


def seeded_tiny(arch: TinyClipArch, seed: int) -> ClipModel:
    """A tiny CLIP initialised from ``seed`` (torch's global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_tiny_clip(arch)


# ----------------------------------------------------------------------- tiny CLIP training


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
    seed: seed of the initialisation, order and augmentation.
    log_every: steps per log line.
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
    seed: int = 0
    log_every: int = runtime(50, ge=1)


REGION_IMAGE, REGION_FG, REGION_BG = 0, 1, 2
ARTICLES = ("a ", "an ", "the ")


@dataclass
class RegionSet:
    """Training data of the tiny CLIP, in memory.

    images: ``N x 3 x S x S float32`` (ImageNet-normalised); labels: ``N x S x S int64`` label
    maps; samples: ``(image, region kind, class index or -1)`` per sample; positives:
    ``samples x T bool``, the texts that describe each sample; texts: the ``T`` prompts.
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
    return RegionSet(images, labels, samples, positives, texts)


def region_masks(data: RegionSet, idx: Sequence[int]) -> torch.Tensor:
    """``B x 1 x S x S float`` masks of samples ``idx``: ones (whole image), the object's
    pixels (foreground) or the pixels of no object (background)."""
    out = []
    for i in idx:
        image, kind, cls = data.samples[i]
        lab = data.labels[image]
        m = (
            torch.ones_like(lab, dtype=torch.bool)
            if kind == REGION_IMAGE
            else (lab == cls + 1 if kind == REGION_FG else lab == 0)
        )
        out.append(m)
    return torch.stack(out)[:, None].float()


def perturb_regions(
    masks: torch.Tensor, whole: torch.Tensor, cfg: TinyClipConfig, gen: torch.Generator
) -> torch.Tensor:
    """CAM-like soft weights ``B x 1 x S x S`` in [0, 1] from binary region masks: each mask
    dilated or eroded by up to ``jitter`` pixels, ``inside``/``outside`` weight levels drawn
    per sample, edges smoothed by a 3x3 mean. Whole-image samples keep weight 1."""
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


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Multi-positive InfoNCE of ``BxE`` image features over all ``TxE`` texts: mean of
    ``-log(sum_pos softmax)``; ``positives: BxT bool`` (>= 1 per row)."""
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    pos = logits.masked_fill(~positives, torch.finfo(logits.dtype).min)
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(pos, dim=1)).mean()


def _batch(
    data: RegionSet, idx: Sequence[int], cfg: TinyClipConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``weight * image`` and token masks (``weight >= alpha * max``) of samples."""
    images = data.images[[data.samples[i][0] for i in idx]]
    masks = region_masks(data, idx)
    whole = torch.tensor([data.samples[i][1] == REGION_IMAGE for i in idx])
    if cfg.hflip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1, 1), masks.flip(-1), masks)
    w = perturb_regions(masks, whole, cfg, gen)
    top = w.flatten(1).amax(1).view(-1, 1, 1, 1)
    return w * images, (w >= cfg.alpha * top).float()


def _check_tiny_train(cfg: TinyClipConfig) -> None:
    for key in ("epochs", "batch_size", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train_tiny_clip.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0 or "{}" not in cfg.prompt or cfg.jitter < 0:
        raise ConfigError(
            "train_tiny_clip: lr must be > 0, prompt must contain '{}', jitter must be >= 0"
        )
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
) -> dict[str, float]:
    """Train the tiny CLIP ``clip_cfg.tiny`` on the synthetic tree at ``root`` (JPEGImages,
    SegmentationClass, ImageSets/Segmentation, classes.json) and its ``captions.parquet``;
    write its whole state dict (mask prompt included) to ``out`` (safetensors).

    Returns (and logs) the final training loss and the top-1 retrieval accuracy per region
    kind on the training samples (the text of highest similarity is one of the sample's).
    """
    from qaclims.core.devices import torch_device
    from qaclims.core.io import read_json
    from qaclims.training import save_weights

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
    loss = _fit(model, tokenizer(data.texts).to(dev), data, cfg, dev)
    stats = {"loss": loss, **retrieval_accuracy(model, tokenizer, data, cfg)}
    log.info("train_tiny_clip: %s", json.dumps({k: round(v, 4) for k, v in stats.items()}))
    save_weights(
        out,
        model.cpu(),
        metadata={"arch": json.dumps(vars(clip_cfg.tiny)), "stats": json.dumps(stats)},
    )
    return stats


def _fit(model: ClipModel, tokens: torch.Tensor, data: RegionSet, cfg: TinyClipConfig,
         dev: torch.device) -> float:  # fmt: skip
    """AdamW with a cosine schedule over ``epochs``; returns the last logged mean loss."""
    from tqdm import tqdm

    model.requires_grad_(True).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch = max(1, len(data.samples) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total, pct_start=0.05)
    window: list[float] = []
    last = float("nan")
    bar = tqdm(total=total, desc="train_tiny_clip", unit="step", dynamic_ncols=True)
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(len(data.samples), generator=gen)
        idx = order[(step % per_epoch) * cfg.batch_size :][: cfg.batch_size].tolist()
        x, m = _batch(data, idx, cfg, gen)
        img = encode_image_masked(model, x.to(dev), m.to(dev))
        scale = model.logit_scale.exp().clamp(max=100.0)
        loss = contrastive_loss(img, model.encode_text(tokens), data.positives[idx].to(dev), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            last = float(np.mean(window))
            log.info("step %d/%d loss %.4f", step + 1, total, last)
            window = []
    bar.close()
    model.requires_grad_(False).eval()
    return last


@torch.no_grad()
def retrieval_accuracy(
    model: ClipModel, tokenizer: Tokenizer, data: RegionSet, cfg: TinyClipConfig
) -> dict[str, float]:
    """Top-1 text retrieval accuracy per region kind (``acc_image``, ``acc_fg``, ``acc_bg``)
    with clean region masks (no jitter, weight 1 inside and 0 outside)."""
    dev = next(model.parameters()).device
    txt = encode_texts(model, tokenizer, data.texts).to(dev)
    hits: dict[int, list[bool]] = {REGION_IMAGE: [], REGION_FG: [], REGION_BG: []}
    for s in range(0, len(data.samples), 256):
        idx = list(range(s, min(s + 256, len(data.samples))))
        images = data.images[[data.samples[i][0] for i in idx]]
        masks = region_masks(data, idx)
        img = F.normalize(encode_image_masked(model, (images * masks).to(dev), masks.to(dev)),
                          dim=-1)  # fmt: skip
        best = (img @ txt.t()).argmax(dim=1).cpu()
        for i, b in zip(idx, best.tolist(), strict=True):
            hits[data.samples[i][1]].append(bool(data.positives[i, b]))
    names = {REGION_IMAGE: "acc_image", REGION_FG: "acc_fg", REGION_BG: "acc_bg"}
    return {names[k]: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
