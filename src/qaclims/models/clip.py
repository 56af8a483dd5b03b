"""CLIP for RITC: loading (open_clip names, checkpoints, OV-Seg), masked image encoding,
text encoding (:mod:`qaclims.models.clip_encode`), and the tiny CLIP of the synthetic demo.

* :func:`load_clip` builds an open_clip model from a model name and a pretrained tag or
  checkpoint path (default OpenAI ViT-L/14), optionally overlays the image encoder of the
  OV-Seg mask-adapted checkpoint (``ovseg_swinbase_vitL14_ft_mpt.pth``) including its learned
  *mask prompt*, or builds the tiny CLIP of :class:`TinyClipArch`. The model comes back
  frozen and in eval mode.
* :func:`encode_image_masked` is OV-Seg's mask-prompted ViT forward: patch tokens of a
  patch without any kept pixel are replaced by the learned mask prompt (zeros for a plain
  CLIP) before the transformer and, for the first ``depth - 1`` blocks, after each block.
* The tiny CLIP's training (the demo's ``train_tiny_clip`` rule) lives in
  :mod:`qaclims.ritc.train_tiny_clip`.

Nothing here downloads unless a pretrained *tag* is asked for; tests and the demo build
tiny models from config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from qaclims.core.config import setting
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
    visual = vit_trunk(model)
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
    p = getattr(vit_trunk(model), MASK_PROMPT, None)
    return p if isinstance(p, torch.Tensor) else None


def vit_trunk(model: ClipModel) -> Any:
    """The ViT inside ``model.visual`` (open_clip's ``VisionTransformer``); TypeError otherwise."""
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
