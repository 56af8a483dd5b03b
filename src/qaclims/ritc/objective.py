"""The RITC objective of one batch: the sigmoid CAM network, the mask adapter, CLIP's view of
the CAM-masked regions and the weighted loss (see :mod:`qaclims.ritc.train_ritc`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qaclims.models.cam_resnet import CamNet
from qaclims.models.clip import ClipInput
from qaclims.models.clip_encode import region_features
from qaclims.ritc.losses import ritc_pair_losses
from qaclims.ritc.text_bank import TextBank
from qaclims.training import autocast, unwrap

if TYPE_CHECKING:
    from qaclims.ritc.train_ritc import TrainRitcConfig


def mask_adapter(cam: torch.Tensor, alpha: float) -> torch.Tensor:
    """Binary masks of ``Nx1xHxW`` CAMs: 1 where ``cam >= alpha * max(cam)`` (per map),
    else 0; same dtype, no gradient. A map of zeros gives ones (as the reference)."""
    cam = cam.detach()
    top = cam.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (cam >= alpha * top).to(cam.dtype)


def camnet(model: nn.Module) -> CamNet:
    """The :class:`CamNet` inside a (DDP-wrapped) :class:`RitcNet`."""
    inner = unwrap(model)
    if not isinstance(inner, RitcNet):
        raise TypeError(f"expected a RitcNet, got {type(inner).__name__}")
    return inner.net


class RitcNet(nn.Module):
    """``forward(x: Bx3xHxW) -> B x C x h x w`` sigmoid CAMs in (0, 1) of a :class:`CamNet`
    (wrapped so DistributedDataParallel sees one forward)."""

    def __init__(self, net: CamNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net.classifier(self.net.features(x)))


@dataclass(frozen=True)
class StepContext:
    """What every step needs besides the batch."""

    clip: nn.Module
    clip_input: ClipInput
    bank: TextBank
    cfg: TrainRitcConfig
    scale: float  # loss_images / per-rank batch


def to_clip_space(x: torch.Tensor, cfg: TrainRitcConfig, info: ClipInput) -> torch.Tensor:
    """``Bx3xSxS`` images from the CAM network's normalisation to CLIP's (if asked for)."""
    if not cfg.clip_normalize:
        return x

    def col(v: Sequence[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    return (x * col(cfg.std) + col(cfg.mean) - col(info.mean)) / col(info.std)


def ritc_loss(
    model: nn.Module, ctx: StepContext, x: torch.Tensor, y: torch.Tensor, ids: Sequence[str]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The RITC loss of one batch ``x: Bx3xHxW``, ``y: BxC`` multi-hot, image ids ``ids``;
    returns the loss and its terms (loss, frc, brc, area, pairs, skipped) and, per class
    ``c``, ``pairs:c`` and ``dead:c``: its pairs, and those whose CAM peaks below
    ``cfg.dead_cam`` (a dead CAM shows CLIP an almost black region and gets almost no
    gradient through the sigmoid)."""
    cfg, size = ctx.cfg, ctx.clip_input.image_size
    with autocast(x.device, cfg.amp):
        cams = model(x)  # B x C x h x w in (0, 1)
        cam_s = F.interpolate(cams, (size, size), mode="bilinear", align_corners=True)
        img_s = F.interpolate(x, (size, size), mode="bilinear", align_corners=True)
        b_idx, c_idx = (y > 0).nonzero(as_tuple=True)
        cam_p = cam_s[b_idx, c_idx].unsqueeze(1)  # P x 1 x S x S
        mask = mask_adapter(cam_p, cfg.alpha)
        img_p = to_clip_space(img_s[b_idx], cfg, ctx.clip_input)
        fg_feat = region_features(ctx.clip, cam_p * img_p, mask, cfg.region_encoding)
        bg_feat = region_features(ctx.clip, (1 - cam_p) * img_p, 1 - mask, cfg.region_encoding)
    keys = [(ids[int(b)], int(c)) for b, c in zip(b_idx.tolist(), c_idx.tolist(), strict=True)]
    fg_text, bg_text, valid = ctx.bank.gather(keys)
    pl = ritc_pair_losses(fg_feat, bg_feat, fg_text, bg_text, valid, cfg.temperature)
    frc, brc = pl.frc.sum() * ctx.scale, pl.brc.sum() * ctx.scale
    area = cams.float().mean()
    loss = cfg.w_fg * frc + cfg.w_bg * brc + cfg.w_area * area
    terms = {
        "loss": float(loss.detach()),
        "frc": float(frc.detach()),
        "brc": float(brc.detach()),
        "area": float(area.detach()),
        "pairs": float(len(keys)),
        "skipped": float((~pl.has_bg).sum()),
    }
    num_classes = y.shape[1]
    dead = cam_p.detach().flatten(1).amax(1) < cfg.dead_cam
    per_class = torch.stack(
        [c_idx.bincount(minlength=num_classes), c_idx[dead].bincount(minlength=num_classes)]
    ).tolist()
    for c in range(num_classes):
        terms[f"pairs:{c}"], terms[f"dead:{c}"] = float(per_class[0][c]), float(per_class[1][c])
    return loss, terms


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Zero the gradients, back-propagate ``loss`` and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
