"""The order of the training images: one seeded shuffle per epoch, cut into step batches.

Every training stage (train_cam, train_ritc, train_irn, train_deeplab, train_tiny_clip,
train_tiny_blip) draws its batches from :class:`StepBatches` and its augmentation from
:func:`augment_rng` (per image) or :func:`step_rng` (per batch): a batch of step ``s`` is a
function of ``(seed, s)`` only, so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from qaclims.data import augment

#: stream tags of :func:`qaclims.data.augment.sample_rng` keys: every draw of a training
#: stage comes from ``sample_rng(seed, <tag>, ...)`` with one of these, so the data order of
#: epoch ``e`` and the augmentation of image ``e`` never share a stream
ORDER_STREAM = 0
AUGMENT_STREAM = 1
STEP_STREAM = 2


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled image order of ``epoch``: a permutation of ``0..n-1`` fixed by (seed, epoch)."""
    return augment.sample_rng(seed, ORDER_STREAM, epoch).permutation(n)


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation draws of image ``index`` in ``epoch`` (tagged :data:`AUGMENT_STREAM`)."""
    return augment.sample_rng(seed, AUGMENT_STREAM, epoch, index)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Draws made for a whole batch at once (e.g. batched perturbations) at global ``step``
    (tagged :data:`STEP_STREAM`)."""
    return augment.sample_rng(seed, STEP_STREAM, step)


class StepBatches(Sampler[list[tuple[int, int]]]):
    """The one sampler of every training stage: for each global step ``start..stop-1``, this
    process's share of the step's batch as ``(epoch, index)`` keys.

    ``wrap=False`` (IRN's ``drop_last=True``): an epoch is ``n // batch`` steps of its own
    shuffle, its last partial batch dropped. ``wrap=True`` (an endless stream, as a loader
    restarted when exhausted): sample ``g = step * batch + j`` is position ``g mod n`` of
    epoch ``g // n``'s shuffle. Process ``rank`` of ``world`` takes the contiguous slice
    ``[rank * b, (rank + 1) * b)`` of each batch (``b = batch / world``). A dataset draws the
    augmentation of key ``(e, i)`` from ``sample_rng(seed, AUGMENT_STREAM, e, i)``.
    """

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
        wrap: bool = False,
    ):
        if n < 1 or batch < 1 or (not wrap and n < batch):
            raise ValueError(f"cannot cut {n} items into batches of {batch}")
        if batch % world:
            raise ValueError(f"batch {batch} is not divisible by {world} processes")
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop
        self.wrap, self.share = wrap, batch // world
        self.first = rank * self.share
        self._order: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    @property
    def per_epoch(self) -> int:
        """Steps per pass over the data (at least 1)."""
        return max(1, self.n // self.batch)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _key(self, epoch: int, pos: int) -> tuple[int, int]:
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, self.n))
        return epoch, int(self._order[1][pos])

    def keys(self, step: int) -> list[tuple[int, int]]:
        """This process's keys of global step ``step``."""
        out = []
        for j in range(self.first, self.first + self.share):
            if self.wrap:
                e, pos = divmod(step * self.batch + j, self.n)
            else:
                e, b = divmod(step, self.n // self.batch)
                pos = b * self.batch + j
            out.append(self._key(e, pos))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield self.keys(step)
