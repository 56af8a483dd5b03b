"""DeepLab segmentation networks on the project's ResNet backbones.

``v2`` is DeepLab-v2 (Chen et al., TPAMI 2017) as deeplab-pytorch builds it: a dilated
ResNet (output stride 8) followed by an ASPP classifier that sums one 3x3 convolution per
atrous rate (6, 12, 18, 24), each mapping the last stage's features straight to class
scores. ``v3`` puts torchvision's DeepLab-v3 head (ASPP with image pooling, batch norm and a
256-channel projection) on the same backbone.

Both map an ``Bx3xHxW float32`` normalised image (:func:`normalise`) to
``BxKx ceil(H/8) x ceil(W/8)`` class logits. :class:`MultiScaleNet` is the reference's
multi-scale-input training wrapper (``MSC``: the image at 1x and at smaller scales, plus
the pixelwise max of all).

Initialisation (``backbone.weights``): ``imagenet`` (torchvision), ``none``, or a local
state file, either torchvision-named (``layer1.0.conv1.weight``...) or in
deeplab-pytorch's naming (``layer2.block1.reduce.conv.weight``..., e.g. the converted
COCO-pretrained ``deeplabv1_resnet101-coco.pth``), which is renamed on load. Caffe-converted
weights want ``style: caffe``: BGR input in 0..255 minus the Caffe mean, the stride of
``layer2`` on its first 1x1 convolution (ResNet v1 as in Caffe) and a ceil-mode max pool.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qaclims.core.config import setting, with_default
from qaclims.core.errors import ConfigError, DataError
from qaclims.data.augment import IMAGENET_MEAN, IMAGENET_STD
from qaclims.models.backbone import (
    Backbone,
    BackboneConfig,
    build_backbone,
    load_state_file,
)

log = logging.getLogger(__name__)

VERSIONS = ("v2", "v3")
STYLES = ("torchvision", "caffe")
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


@dataclass(frozen=True)
class DeeplabBackboneConfig(BackboneConfig):
    """The backbone of a DeepLab net; same fields as :class:`BackboneConfig`, DeepLab defaults.

    Defaults: ResNet-101, ImageNet weights, strides (2, 2, 1, 1) and dilations (1, 1, 2, 4)
    (output stride 8), frozen batch norm.
    """

    arch: str = with_default(BackboneConfig, "arch", "resnet101")
    strides: tuple[int, ...] = with_default(BackboneConfig, "strides", (2, 2, 1, 1))
    dilations: tuple[int, ...] = with_default(BackboneConfig, "dilations", (1, 1, 2, 4))

    def to_backbone_config(self, weights: str | None = None) -> BackboneConfig:
        """The equivalent :class:`BackboneConfig` (``weights`` overrides the init)."""
        kw = dataclasses.asdict(self)
        if weights is not None:
            kw["weights"] = weights
        return BackboneConfig(**kw)


@dataclass(frozen=True)
class DeeplabModelConfig:
    """Which DeepLab to build (config slice ``train_deeplab.model``).

    version: ``v2`` (ASPP = sum of dilated 3x3 classifiers) or ``v3`` (torchvision head).
    backbone: see :class:`DeeplabBackboneConfig`.
    aspp_rates: atrous rates of the ASPP branches; the paper's v2 uses (6, 12, 18, 24),
        torchvision's v3 (12, 24, 36) at output stride 8.
    style: ``torchvision`` (RGB in [0,1] with ImageNet mean/std: torchvision weights) or
        ``caffe`` (deeplab-pytorch's Caffe-converted weights: BGR 0..255 minus the Caffe
        mean, stride-2 1x1 ``reduce`` convolution in layer2, ceil-mode max pool; the logits
        are then ``floor(H/8) + 1`` high for some even sizes instead of ``ceil(H/8)``).
    """

    version: str = setting("v2", choices=VERSIONS)
    backbone: DeeplabBackboneConfig = field(default_factory=DeeplabBackboneConfig)
    aspp_rates: tuple[int, ...] = setting((6, 12, 18, 24), ge=1, min_items=1)
    style: str = setting("torchvision", choices=STYLES)


def check_model_config(cfg: DeeplabModelConfig, where: str = "train_deeplab.model") -> None:
    """Raise :class:`ConfigError` naming the key if ``cfg`` cannot describe a network."""
    if cfg.version not in VERSIONS:
        raise ConfigError(f"{where}.version: {cfg.version!r} is not one of {VERSIONS}")
    if cfg.style not in STYLES:
        raise ConfigError(f"{where}.style: {cfg.style!r} is not one of {STYLES}")
    if not cfg.aspp_rates or min(cfg.aspp_rates) < 1:
        raise ConfigError(f"{where}.aspp_rates: need positive rates, got {list(cfg.aspp_rates)}")


class ASPPv2(nn.Module):
    """DeepLab-v2 classifier: ``sum_r conv3x3_dilated_r(x)``; ``BxCxhxw -> BxKxhxw``.

    Weights start from N(0, 0.01) and biases at 0, as in the reference.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...]):
        super().__init__()
        convs = [
            nn.Conv2d(in_channels, num_classes, 3, 1, padding=r, dilation=r, bias=True)
            for r in rates
        ]
        for c in convs:
            nn.init.normal_(c.weight, mean=0.0, std=0.01)
            if c.bias is not None:
                nn.init.zeros_(c.bias)
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for c in self.convs[1:]:
            out = out + c(x)
        return out


class DeepLab(nn.Module):
    """Backbone + classifier head: ``Bx3xHxW -> BxKx ceil(H/8) x ceil(W/8)`` logits.

    ``backbone`` parameters train at the base learning rate, ``head`` ones at the
    classifier multiplier (see :func:`param_groups`).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1])


class MultiScaleNet(nn.Module):
    """Multi-scale-input training wrapper (the reference's ``MSC``).

    ``forward(x: Bx3xHxW)`` returns ``[logits(x), logits(x at s) for s in scales, max]``:
    the 1x logits, the logits of the bilinearly rescaled inputs (each at its own size), and
    the pixelwise max of all of them once resized to the 1x logit size. With no scales it
    returns ``[logits(x)]``. Everything is computed in one call so DDP sees one forward.
    """

    def __init__(self, base: DeepLab, scales: tuple[float, ...]):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        full = self.base(x)
        if not self.scales:
            return [full]
        size = full.shape[-2:]
        pyramid = []
        for s in self.scales:
            h = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            pyramid.append(self.base(h))
        resized = [
            F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid
        ]
        fused = torch.stack([full, *resized]).amax(dim=0)
        return [full, *pyramid, fused]


def _v3_head(in_channels: int, num_classes: int, rates: tuple[int, ...]) -> nn.Module:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return DeepLabHead(in_channels, num_classes, atrous_rates=rates)


def build_model(cfg: DeeplabModelConfig, num_classes: int, init: bool = True) -> DeepLab:
    """Build the network ``cfg`` describes for ``num_classes`` classes (background included).

    ``init=False`` skips the backbone initialisation (weights ``none``): use it when a
    trained model is loaded next, so nothing is downloaded or read for nothing.
    """
    check_model_config(cfg)
    if num_classes < 2:
        raise ConfigError(f"num_classes must count background and >= 1 class, got {num_classes}")
    weights = cfg.backbone.weights if init else "none"
    ref_file = weights not in ("imagenet", "none") and _is_deeplab_pytorch_file(weights)
    backbone = build_backbone(cfg.backbone.to_backbone_config("none" if ref_file else weights))
    if ref_file:
        load_deeplab_pytorch_backbone(backbone, weights)
    if cfg.style == "caffe":
        caffe_layout(backbone)
    ch = backbone.channels[-1]
    if cfg.version == "v2":
        head: nn.Module = ASPPv2(ch, num_classes, cfg.aspp_rates)
    else:
        head = _v3_head(ch, num_classes, cfg.aspp_rates)
    return DeepLab(backbone, head, num_classes)


def caffe_layout(backbone: Backbone) -> None:
    """Make a torchvision-built bottleneck ResNet compute as the Caffe ResNet does: the max
    pool rounds up, and layer2's first block strides in its 1x1 ``conv1``, not the 3x3.
    (BasicBlock backbones such as ``tiny`` only get the ceil-mode pool.)"""
    for m in backbone.stages[0].modules():
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    first: Any = next(iter(backbone.stages[1].children()))
    if hasattr(first, "conv3") and first.conv2.stride == (2, 2):
        first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)


def param_groups(model: DeepLab) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters split as the reference's optimiser wants them.

    ``backbone``: every trainable backbone parameter (1x lr, weight decay);
    ``head_weight``: head parameters with more than one dimension (classifier lr mult);
    ``head_bias``: 1-D head parameters (biases; the bias lr mult, no weight decay).
    """
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "head_weight": [], "head_bias": []}
    groups["backbone"] = [p for p in model.backbone.parameters() if p.requires_grad]
    for p in model.head.parameters():
        if p.requires_grad:
            groups["head_weight" if p.ndim > 1 else "head_bias"].append(p)
    return groups


# ---------------------------------------------------------------- input normalisation


def normalise(image: np.ndarray, style: str) -> np.ndarray:
    """``HxWx3 uint8 RGB`` -> ``3xHxW float32`` network input.

    ``torchvision``: ``(x / 255 - mean) / std`` per RGB channel. ``caffe``: channels reordered
    to BGR and the Caffe mean (104.008, 116.669, 122.675) subtracted from 0..255 values.
    In both, a pixel equal to the mean maps to 0, so zero padding means "mean colour".
    """
    rgb = np.asarray(image, dtype=np.float32)
    if style == "torchvision":
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
        x = (rgb / np.float32(255.0) - mean) / std
    elif style == "caffe":
        x = rgb[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)
    else:
        raise ConfigError(f"style: {style!r} is not one of {STYLES}")
    return np.ascontiguousarray(x.transpose(2, 0, 1))


# ---------------------------------------------------------------- deeplab-pytorch weights

_STEM = {"layer1.conv1.conv.": "conv1.", "layer1.conv1.bn.": "bn1."}
_PARTS = {
    "reduce.conv": "conv1",
    "reduce.bn": "bn1",
    "conv3x3.conv": "conv2",
    "conv3x3.bn": "bn2",
    "increase.conv": "conv3",
    "increase.bn": "bn3",
    "shortcut.conv": "downsample.0",
    "shortcut.bn": "downsample.1",
}
_BLOCK = re.compile(r"^layer([2-5])\.block(\d+)\.(\w+\.(?:conv|bn))\.(.+)$")


def _is_deeplab_pytorch_file(path: str) -> bool:
    state = load_state_file(path)
    return any(".reduce.conv." in k for k in state)


def rename_deeplab_pytorch_key(key: str) -> str | None:
    """deeplab-pytorch ResNet key -> torchvision ResNet key (None for ASPP / other keys).

    ``layer1.conv1.conv.weight -> conv1.weight``;
    ``layer{k}.block{i}.reduce.bn.running_mean -> layer{k-1}.{i-1}.bn1.running_mean``.
    A leading ``base.`` (the MSC wrapper's prefix) is dropped.
    """
    key = key.removeprefix("base.")
    for old, new in _STEM.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = _BLOCK.match(key)
    if m is None or m.group(3) not in _PARTS:
        return None
    layer, block, part, rest = m.groups()
    return f"layer{int(layer) - 1}.{int(block) - 1}.{_PARTS[part]}.{rest}"


def _torchvision_to_backbone_key(key: str) -> str | None:
    """torchvision ResNet key -> :class:`Backbone` key (stage 0 = stem + layer1)."""
    stem = {"conv1.": "stages.0.0.", "bn1.": "stages.0.1."}
    for old, new in stem.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.match(r"^layer([1-4])\.(.+)$", key)
    if m is None:
        return None
    k, rest = int(m.group(1)), m.group(2)
    return f"stages.0.4.{rest}" if k == 1 else f"stages.{k - 1}.{rest}"


_ASPP = re.compile(r"^aspp\.c(\d+)\.(weight|bias)$")


def deeplab_pytorch_model_key(key: str) -> str | None:
    """deeplab-pytorch ``DeepLabV2`` / ``MSC`` key -> :class:`DeepLab` key (None: unknown).

    ``base.layer2.block1.reduce.conv.weight -> backbone.stages.0.4.0.conv1.weight``;
    ``base.aspp.c3.bias -> head.convs.3.bias`` (the v2 ASPP's 4th rate).
    """
    key = key.removeprefix("base.")
    m = _ASPP.match(key)
    if m is not None:
        return f"head.convs.{m.group(1)}.{m.group(2)}"
    tv = rename_deeplab_pytorch_key(key)
    bk = _torchvision_to_backbone_key(tv) if tv else None
    return f"backbone.{bk}" if bk else None


def load_deeplab_pytorch_backbone(backbone: Backbone, path: str) -> None:
    """Load a deeplab-pytorch ResNet state file into a torchvision-built ``backbone``.

    Tensors whose renamed key exists with the same shape are loaded; ASPP tensors are
    skipped. Raises :class:`DataError` naming the file when nothing matches.
    """
    own = backbone.state_dict()
    hits: dict[str, torch.Tensor] = {}
    for key, value in load_state_file(path).items():
        tv = rename_deeplab_pytorch_key(key)
        bk = _torchvision_to_backbone_key(tv) if tv else None
        if bk in own and own[bk].shape == value.shape:
            hits[bk] = value
    if not hits:
        raise DataError(f"weights file {path} matches no parameter of the backbone")
    missing = sorted(k for k in own if k not in hits and not k.endswith("num_batches_tracked"))
    if missing:
        log.warning(
            "%s left %d backbone tensors at their init, e.g. %s", path, len(missing), missing[:3]
        )
    backbone.load_state_dict(hits, strict=False)
