"""The baseline CAM classifier (IRN's ``resnet50_cam``), also the trunk of RITC.

A ResNet backbone with strides ``(2, 2, 2, 1)`` (output stride 16), global average
pooling and a bias-free ``1x1`` convolution classifier with ``C`` outputs. The class
activation map of class ``c`` is ``relu(<w_c, f(x)>)`` at every feature position.

IRN trains it with the stem (``conv1``/``bn1``) frozen, the gradient stopped after stage 2
(so stages 1-2 keep their ImageNet weights) and BatchNorm statistics fixed (their scale and
shift still trained); each is a config switch so a tiny from-scratch demo can train
everything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qaclims.models.backbone import Backbone, BackboneConfig, build_backbone
from qaclims.training import load_weights


@dataclass(frozen=True)
class CamModelConfig:
    """How to build :class:`CamNet`.

    backbone: the ResNet (default: ImageNet ResNet-50, strides (2,2,2,1), frozen BN).
    freeze_stem: no gradient for the first convolution and its BatchNorm (IRN).
    detach_stage2: stop the gradient after stage 2, so stages 1-2 are not trained (IRN).
    train_bn_affine: keep training BatchNorm scale/shift even when ``backbone.frozen_bn``
        fixes the statistics (IRN's FixedBatchNorm: statistics fixed, affine trained).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    freeze_stem: bool = True
    detach_stage2: bool = True
    train_bn_affine: bool = True


def _stem(backbone: Backbone) -> list[nn.Module]:
    """The first Conv2d and the first BatchNorm2d of stage 1 (the stem's conv1/bn1)."""
    mods = list(backbone.stages[0].modules())
    conv = next(m for m in mods if isinstance(m, nn.Conv2d))
    bn = next(m for m in mods if isinstance(m, nn.BatchNorm2d))
    return [conv, bn]


class CamNet(nn.Module):
    """CAM classifier. ``forward(x: Bx3xHxW float, ImageNet-normalised) -> BxC logits``.

    Public parts (reused by RITC): ``backbone``, ``classifier`` (``C x D x 1 x 1`` conv,
    no bias), :meth:`features`, :meth:`cam`, :meth:`param_groups`.
    """

    def __init__(self, cfg: CamModelConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = build_backbone(cfg.backbone)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, 1, bias=False)
        if cfg.train_bn_affine:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(True)
        if cfg.freeze_stem:
            for module in _stem(self.backbone):
                module.requires_grad_(False)

    @property
    def output_stride(self) -> int:
        """Input pixels per feature cell: 4 (stem) times the strides of stages 2-4."""
        s = 4
        for stride in self.cfg.backbone.strides[1:]:
            s *= stride
        return s

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features, ``Bx3xHxW -> BxDx ceil(H/16) x ceil(W/16)`` float."""
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if i == 1 and self.cfg.detach_stage2:
                x = x.detach()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``BxC``: classifier applied to globally average-pooled features."""
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``BxCxhxw`` float >= 0: ``relu(conv1x1(features, W))``."""
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, new parameters) -- the new ones get 10x lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for p in self.classifier.parameters() if p.requires_grad]
        return backbone, new

    @classmethod
    def from_weights(cls, path: Path, cfg: CamModelConfig, num_classes: int) -> CamNet:
        """A network built without pretrained weights (nothing is downloaded), then loaded
        from a ``.safetensors`` file written by ``train_cam``; a mismatch names the file."""
        bare = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights="none"))
        net = cls(bare, num_classes)
        load_weights(path, net)  # a DataError names the file and the keys that do not fit
        return net
