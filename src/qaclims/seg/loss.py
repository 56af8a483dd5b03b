"""DeepLab training losses, normalised per loss unit as the references do.

deeplab-pytorch and CLIMS's ``segmentation/deeplabv2`` compute one loss per loader batch of
``BATCH_SIZE.TRAIN`` images (the *loss unit*, ``train_deeplab.loss_batch`` here) and
accumulate ``ITER_SIZE`` such batches per optimiser step, each divided by ``ITER_SIZE``.
Per unit and per network output (the MSC outputs: 1x, each extra scale, their max; labels
resized to each output by nearest neighbour) the loss is

- ``ce``: mean cross entropy over the unit's pixels that are not 255
  (``nn.CrossEntropyLoss(ignore_index=255)``);
- ``balanced``: CLIMS's ``criterion_balance``: ``(mean CE over background pixels + mean CE
  over foreground pixels) / 2``, 255 ignored. Where a unit has no pixel of one group, that
  group's mean is taken as 0 (the reference divides 0 by 0 and trains on NaN).

The step loss is the mean over the step's units of the sum over outputs. Because every
mean's denominator is counted over the whole unit (:func:`group_counts`, summed over the
processes when a unit is split between them), the loss and its gradient do not depend on
how a step is split into memory chunks (``iter_size``) or over GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qaclims.evaluation.metrics import IGNORE_INDEX

#: loss names of ``train_deeplab.loss``
LOSSES = ("ce", "balanced")


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest resize (pixel-centre sampling, as PIL) of ``BxHxW int64`` labels to ``size``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")
    return out[:, 0].long()


def group_masks(labels: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """The pixel groups whose CE means make up loss ``kind``, as ``BxHxW bool`` masks:
    ``ce``: [not 255]; ``balanced``: [background (0), foreground (not 0, not 255)]."""
    valid = labels != IGNORE_INDEX
    if kind == "ce":
        return [valid]
    if kind == "balanced":
        bg = labels == 0
        return [bg, valid & ~bg]
    raise ValueError(f"loss {kind!r} is not one of {LOSSES}")


@dataclass(frozen=True)
class Units:
    """Which loss unit each image of a batch belongs to.

    index: ``(B,) int64`` unit of each image, in ``0..count-1``.
    count: units of the whole optimiser step (over every process).
    """

    index: torch.Tensor
    count: int

    @staticmethod
    def of_positions(first: int, n: int, loss_batch: int, batch: int) -> Units:
        """Units of the step's images ``first .. first+n-1`` when a step of ``batch`` images
        is cut into units of ``loss_batch`` consecutive images."""
        index = torch.arange(first, first + n, dtype=torch.int64) // loss_batch
        return Units(index, batch // loss_batch)


def group_counts(labels: Sequence[torch.Tensor], units: Units, kind: str) -> torch.Tensor:
    """Pixels per (unit, output, group): ``units.count x len(labels) x G float64``.

    ``labels``: one ``BxHxW int64`` tensor per network output (already resized to it). The
    counts live on the labels' device, so they can be all-reduced there (NCCL needs CUDA
    tensors) and are never copied back to the host.
    """
    n_groups = len(group_masks(labels[0][:1], kind))
    dev = labels[0].device
    counts = torch.zeros(units.count, len(labels), n_groups, dtype=torch.float64, device=dev)
    idx = units.index.to(dev)
    for o, lab in enumerate(labels):
        for g, mask in enumerate(group_masks(lab, kind)):
            counts[:, o, g].index_add_(0, idx, mask.flatten(1).sum(1).to(torch.float64))
    return counts


def unit_loss(
    outputs: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    units: Units,
    counts: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """This batch's share of the step loss (a float32 scalar with gradient).

    outputs: ``BxKxhxw`` logits per output; labels: ``Bxhxw int64`` per output (255 ignored);
    units: the images' units; counts: :func:`group_counts` of the WHOLE step (all chunks,
    all processes). Summed over every chunk of every process, the shares give
    ``mean over units of sum over outputs of the unit's loss``. A group with no pixel in a
    unit contributes 0 (finite, zero gradient).
    """
    n_groups = counts.shape[-1]
    scale = 1.0 / (n_groups * units.count)
    inv = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    weights = inv.to(device=outputs[0].device, dtype=torch.float32)[
        units.index.to(outputs[0].device)
    ]
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for o, (logits, lab) in enumerate(zip(outputs, labels, strict=True)):
        ce = F.cross_entropy(logits.float(), lab, ignore_index=IGNORE_INDEX, reduction="none")
        for g, mask in enumerate(group_masks(lab, kind)):
            per_image = (ce * mask).flatten(1).sum(1)
            total = total + (per_image * weights[:, o, g]).sum()
    return total * scale


def seg_loss(
    outputs: Sequence[torch.Tensor], labels: torch.Tensor, kind: str = "ce"
) -> torch.Tensor:
    """The loss of ``outputs`` (``BxKxhxw`` each) against ``BxHxW int64`` labels, the whole
    batch being one unit: the sum over outputs of loss ``kind`` (see the module doc)."""
    resized = [resize_labels(labels, o.shape[-2:]) for o in outputs]
    units = Units(torch.zeros(len(labels), dtype=torch.int64), 1)
    return unit_loss(outputs, resized, units, group_counts(resized, units, kind), kind)
