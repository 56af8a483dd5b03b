"""The inter-pixel relation network (IRN, Ahn et al. 2019): network and boundary inference.

The network reads five feature maps of a frozen backbone (the stem output and the four
stages; IRN: ImageNet ResNet-50 with strides ``(2, 2, 2, 1)``, BatchNorm fixed, features
detached) and predicts, at stride 4,

* a class-boundary map (``B x 1 x h x w`` logits; probability = sigmoid), from which the
  affinity of a pixel pair is ``1 - max(boundary over the path between them)``;
* a displacement field (``B x 2 x h x w``, pixels at stride 4) pointing to the instance
  centroid; after training its mean over the training images is stored and subtracted.

Trained by :mod:`qaclims.refine.train_irn`; used by make_sem_seg through :func:`infer_edge`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qaclims.core.config import setting
from qaclims.core.errors import ConfigError
from qaclims.data.augment import IMAGENET_MEAN, IMAGENET_STD
from qaclims.models.backbone import BackboneConfig, build_backbone

log = logging.getLogger(__name__)

EPS = 1e-5  # IRN's guard inside logs and ratios
STRIDE = 4  # output stride of the boundary / displacement maps


@dataclass(frozen=True)
class IrnModelConfig:
    """IRN network.

    backbone: feature extractor (IRN: ImageNet ResNet-50, strides (2, 2, 2, 1), fixed BN).
    edge_width: channels of each of the five boundary-branch inputs (IRN: 32).
    disp_width: channels of the displacement branch (IRN: 256; its first two inputs use
        a quarter and a half of it).
    mean / std: ImageNet RGB normalisation of inputs in [0,1].
    """

    backbone: BackboneConfig = BackboneConfig(
        arch="resnet50", weights="imagenet", strides=(2, 2, 2, 1), frozen_bn=True
    )
    edge_width: int = setting(32, ge=1)
    disp_width: int = setting(256, ge=1)
    mean: tuple[float, ...] = setting(IMAGENET_MEAN, doc="normalisation mean (ImageNet).")
    std: tuple[float, ...] = setting(IMAGENET_STD, gt=0.0, doc="normalisation std (ImageNet).")


# ----------------------------------------------------------------------------- model


def _groups(channels: int) -> int:
    """GroupNorm groups as in IRN: 4 for 32 channels, 8 for 64, 16 for 128 and more."""
    return max(1, min(16, channels // 8))


def _unit(cin: int, cout: int, up: int) -> nn.Sequential:
    """1x1 conv -> GroupNorm -> (bilinear x``up``) -> ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.GroupNorm(_groups(cout), cout),
    ]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x[..., : like.shape[-2], : like.shape[-1]]


class EdgeHead(nn.Module):
    """Boundary branch: five features -> ``B x 1 x h x w`` logits at the second feature's size."""

    def __init__(self, chans: Sequence[int], ups: Sequence[int], width: int):
        super().__init__()
        self.units = nn.ModuleList(_unit(c, width, u) for c, u in zip(chans, ups, strict=True))
        self.out = nn.Conv2d(len(chans) * width, 1, 1, bias=True)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        ref = feats[1]
        ys = [_crop(u(f), ref) for u, f in zip(self.units, feats, strict=True)]
        return self.out(torch.cat(ys, dim=1))


class DispHead(nn.Module):
    """Displacement branch: five features -> ``B x 2 x h x w`` (top-down, as IRN)."""

    def __init__(self, chans: Sequence[int], strides: Sequence[int], width: int):
        super().__init__()
        s1, s2, s3 = strides[1], strides[2], strides[3]
        w4, w2 = width // 4, width // 2
        self.d1, self.d2, self.d3 = (
            _unit(chans[0], w4, 1),
            _unit(chans[1], w2, 1),
            _unit(chans[2], width, 1),
        )
        self.d4, self.d5 = _unit(chans[3], width, s2), _unit(chans[4], width, s2 * s3)
        self.up = _unit(3 * width, width, s1)
        self.out = nn.Sequential(
            nn.Conv2d(w4 + w2 + width, width, 1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2, 1, bias=False),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4, x5 = feats
        d1, d2, d3 = self.d1(x1), self.d2(x2), self.d3(x3)
        d4, d5 = _crop(self.d4(x4), d3), _crop(self.d5(x5), d3)
        up = _crop(self.up(torch.cat([d3, d4, d5], dim=1)), d2)
        return self.out(torch.cat([d1, d2, up], dim=1))


class IrnNet(nn.Module):
    """IRN. ``forward(x: B x 3 x H x W normalised) -> (edge logits B x 1 x H/4 x W/4,
    displacement B x 2 x H/4 x W/4)``; in eval mode the stored mean displacement is subtracted.
    The backbone is frozen (no gradients, eval mode)."""

    disp_mean: torch.Tensor

    def __init__(self, cfg: IrnModelConfig):
        super().__init__()
        self.backbone = build_backbone(cfg.backbone)
        stage0 = self.backbone.stages[0]
        if not isinstance(stage0, nn.Sequential) or len(stage0) < 2:
            raise ConfigError("train_irn.model.backbone: first stage must be stem + layer")
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        stem_ch = next(m for m in stage0.modules() if isinstance(m, nn.Conv2d)).out_channels
        chans = [stem_ch, *self.backbone.channels]
        s = cfg.backbone.strides
        ups = [1, 1, s[1], s[1] * s[2], s[1] * s[2] * s[3]]
        self.edge = EdgeHead(chans, ups, cfg.edge_width)
        self.disp = DispHead(chans, s, cfg.disp_width)
        self.register_buffer("disp_mean", torch.zeros(2))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem output and the four stage outputs of the frozen backbone (no gradient)."""
        stages = self.backbone.stages
        stage0 = stages[0]
        assert isinstance(stage0, nn.Sequential)
        with torch.no_grad():
            x1 = stage0[:-1](x)
            feats = [x1, stage0[-1](x1)]
            for st in list(stages)[1:]:
                feats.append(st(feats[-1]))
        return [f.detach() for f in feats]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        edge, disp = self.edge(feats), self.disp(feats)
        if not self.training:
            disp = disp - self.disp_mean.view(1, 2, 1, 1).to(disp.dtype)
        return edge, disp

    def train(self, mode: bool = True) -> IrnNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def head_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters: (boundary branch, displacement branch)."""
        return list(self.edge.parameters()), list(self.disp.parameters())


def build_model(cfg: IrnModelConfig, for_inference: bool = False) -> IrnNet:
    """An :class:`IrnNet`; ``for_inference`` skips loading backbone weights (they come with
    the trained model's file, or from :func:`load_backbone_from_cam`)."""
    if for_inference:
        cfg = replace(cfg, backbone=replace(cfg.backbone, weights="none"))
    return IrnNet(cfg)


def load_backbone_from_cam(model: IrnNet, path: Path) -> None:
    """Copy the backbone of a CAM network file into ``model``'s frozen backbone.

    ``path``: a ``.safetensors`` file of :class:`qaclims.models.cam_resnet.CamNet` as
    train_cam (or released_cam) writes it: ``backbone.*`` tensors plus the classifier,
    which IRN does not use. The backbone's strides may differ from the CAM network's where
    they change no tensor (:func:`qaclims.models.backbone.tensor_layout`); a mismatch raises
    :class:`DataError` naming the file and the keys that do not fit.
    """
    from qaclims.artifacts.weights import check_fit, read_tensors

    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in read_tensors(path).items() if k.startswith(prefix)}
    check_fit(state, model.backbone.state_dict(), str(path), "CAM network file", "IRN backbone")
    model.backbone.load_state_dict(state, strict=False)  # num_batches_tracked may be absent


def normalize(image: np.ndarray, cfg: IrnModelConfig) -> np.ndarray:
    """``HxWx3 uint8`` -> ``HxWx3 float32`` normalised with ``cfg.mean`` / ``cfg.std``."""
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return (image.astype(np.float32) / 255.0 - mean) / std


@torch.no_grad()
def infer_edge(
    model: IrnNet, image: np.ndarray, cfg: IrnModelConfig, pad_to: int, device: torch.device
) -> torch.Tensor:
    """Boundary probabilities of one image (IRN inference: image + its flip, padded
    bottom/right to at least ``pad_to``; logits of the two averaged).

    Args:
        image: ``HxWx3 uint8`` RGB.

    Returns:
        ``ceil(H/4) x ceil(W/4) float32`` in [0,1] on ``device``.
    """
    h, w = image.shape[:2]
    x = torch.from_numpy(normalize(image, cfg)).permute(2, 0, 1).to(device)
    x = torch.stack([x, x.flip(-1)])
    x = F.pad(x, (0, max(pad_to, w) - w, 0, max(pad_to, h) - h))
    logits, _ = model(x)
    fh, fw = (h - 1) // STRIDE + 1, (w - 1) // STRIDE + 1
    e = logits[:, 0, :fh, :fw].float()
    return torch.sigmoid(e[0] / 2 + e[1].flip(-1) / 2)
