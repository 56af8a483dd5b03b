"""ResNet backbones as four stages, with configurable strides, dilations and weights.

``build_backbone`` returns a :class:`Backbone` whose ``forward`` maps an ``Bx3xHxW float``
image (ImageNet-normalised) to the four stage outputs. IRN-style CAM networks use strides
``(2, 2, 2, 1)`` (output stride 16, last stage undilated); DeepLab-v2 uses strides
``(2, 2, 1, 1)`` with dilations ``(1, 1, 2, 4)`` (output stride 8).

Architectures: ``resnet18|34|50|101`` (torchvision; weights ``imagenet``, ``none`` or a
local file) and ``tiny`` (a narrow BasicBlock ResNet for CPU demos and tests, widths from
``widths``, weights ``none`` or a local file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qaclims.core.config import setting
from qaclims.core.errors import ConfigError

#: Backbone architectures :func:`build_backbone` knows.
ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "tiny")


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone to build.

    arch: ``resnet18|resnet34|resnet50|resnet101|tiny``.
    weights: ``imagenet`` (torchvision IMAGENET1K_V1), ``none`` (random init) or a path to a
        ``.safetensors``/``.pth`` state dict (loaded with ``weights_only=True``).
    strides: stride of each of the 4 stages (the stem's stride 4 is part of stage 1).
    dilations: dilation of each stage's 3x3 convolutions.
    widths: channel widths of the 4 stages of ``tiny``.
    frozen_bn: keep every BatchNorm in eval mode with frozen affine parameters (IRN, DeepLab).
    """

    arch: str = setting(
        "resnet50", choices=ARCHS, doc="resnet18, resnet34, resnet50, resnet101 or tiny."
    )
    weights: str = setting(
        "imagenet",
        doc="imagenet (torchvision IMAGENET1K_V1), none (random init) or a state-dict file.",
    )
    strides: tuple[int, ...] = setting(
        (2, 2, 2, 1),
        ge=1,
        min_items=4,
        doc="stride of each of the 4 stages (the stem's stride 4 is part of stage 1).",
    )
    dilations: tuple[int, ...] = setting(
        (1, 1, 1, 1), ge=1, min_items=4, doc="dilation of each stage's 3x3 convolutions."
    )
    widths: tuple[int, ...] = setting(
        (16, 32, 64, 128), ge=1, min_items=4, doc="channel widths of the 4 stages of tiny."
    )
    frozen_bn: bool = setting(True, doc="BatchNorm in eval mode with frozen affine parameters.")

    def __post_init__(self) -> None:
        if self.arch == "tiny" and self.weights == "imagenet":
            raise ConfigError("backbone.weights: imagenet weights do not exist for arch tiny")


class Backbone(nn.Module):
    """Four residual stages. ``forward(x: Bx3xHxW) -> [B x C_i x H/s_i x W/s_i for i in 1..4]``."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], frozen_bn: bool):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(channels)
        self.frozen_bn = frozen_bn
        if frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


def tensor_layout(arch: str, widths: Sequence[int], strides: Sequence[int]) -> tuple[object, ...]:
    """What decides a backbone's tensor names and shapes: the architecture, and for ``tiny``
    the widths and which stages have a projection shortcut (a stride or a width change).
    Two backbones with equal layouts take each other's weights whatever their strides and
    dilations otherwise are."""
    if arch != "tiny":
        return (arch,)
    down = tuple(
        i > 0 and (strides[i] != 1 or widths[i] != widths[i - 1]) for i in range(len(widths))
    )
    return (arch, tuple(widths), down)


def _tiny(cfg: BackboneConfig) -> Backbone:
    if len(cfg.widths) != 4:
        raise ConfigError(f"backbone.widths needs 4 entries, got {list(cfg.widths)}")
    w0 = cfg.widths[0]
    stem = nn.Sequential(
        nn.Conv2d(3, w0, 7, 2, 3, bias=False),
        nn.BatchNorm2d(w0),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )
    stages: list[nn.Module] = []
    cin = w0
    for i, (w, s, d) in enumerate(zip(cfg.widths, cfg.strides, cfg.dilations, strict=True)):
        block = _Basic(cin, w, 1 if i == 0 else s, d)
        stages.append(nn.Sequential(stem, block) if i == 0 else block)
        cin = w
    return Backbone(stages, cfg.widths, cfg.frozen_bn)


def _torchvision(cfg: BackboneConfig) -> Backbone:
    import torchvision

    ctor = getattr(torchvision.models, cfg.arch)
    weights = "IMAGENET1K_V1" if cfg.weights == "imagenet" else None
    net = ctor(weights=weights)
    if cfg.weights not in ("imagenet", "none"):
        _load_into(net, cfg.weights)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    for i, (layer, s, d) in enumerate(zip(layers, cfg.strides, cfg.dilations, strict=True)):
        if i == 0:
            continue
        for j, block in enumerate(layer):
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            if j == 0:
                conv.stride = (s, s)
                if block.downsample is not None:
                    block.downsample[0].stride = (s, s)
            for c in [m for m in block.modules() if isinstance(m, nn.Conv2d)]:
                if c.kernel_size == (3, 3):
                    c.dilation, c.padding = (d, d), (d, d)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    expansion = 4 if cfg.arch in ("resnet50", "resnet101", "resnet152") else 1
    channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    return Backbone([stem, net.layer2, net.layer3, net.layer4], channels, cfg.frozen_bn)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pth`` (``weights_only=True``: tensors only).

    Any error (missing, truncated or garbage file, pickled code, no state dict) raises
    :class:`DataError` naming the file.
    """
    from qaclims.artifacts.weights import read_pth_state, read_tensors

    if Path(path).suffix == ".safetensors":
        return read_tensors(path)
    return read_pth_state(path)


#: torchvision ResNet tensors a backbone init file may leave out or hold in another shape
#: (the ImageNet classifier, which the backbone drops)
OPTIONAL_PREFIXES = ("fc.",)


def _load_into(net: nn.Module, path: str) -> None:
    """Load a backbone init file into ``net`` strictly: every tensor of ``net`` but the
    classifier (``fc.``) must be given with its shape, and the file may hold nothing else;
    a :class:`DataError` names the file and lists the keys that do not fit."""
    from qaclims.artifacts.weights import check_fit

    state = load_state_file(path)
    own = net.state_dict()
    keep = {k: v for k, v in state.items() if not k.startswith(OPTIONAL_PREFIXES)}
    need = {k: v for k, v in own.items() if not k.startswith(OPTIONAL_PREFIXES)}
    check_fit(keep, need, path)
    fc = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    net.load_state_dict({**fc, **keep}, strict=False)


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the backbone ``cfg`` describes (see :class:`BackboneConfig`)."""
    if len(cfg.strides) != 4 or len(cfg.dilations) != 4:
        raise ConfigError("backbone.strides and backbone.dilations need 4 entries each")
    if cfg.arch == "tiny":
        if cfg.weights == "imagenet":
            raise ConfigError("backbone.weights: imagenet weights do not exist for arch tiny")
        bb = _tiny(cfg)
        if cfg.weights != "none":
            _load_into(bb, cfg.weights)
    elif cfg.arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
        bb = _torchvision(cfg)
    else:
        raise ConfigError(f"backbone.arch: unknown architecture {cfg.arch!r}")
    return bb
