"""The order of the training images: one seeded shuffle per epoch, cut into step batches.

Shared by the training stages that step through epochs (train_cam, train_ritc); a batch of
step ``s`` is a function of ``(seed, s)`` only, so a resumed run sees the same batches.
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


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled image order of ``epoch``: a permutation of ``0..n-1`` fixed by (seed, epoch)."""
    return augment.sample_rng(seed, ORDER_STREAM, epoch).permutation(n)


class StepBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for global steps ``start..total-1`` (last partial batch of
    each epoch dropped, as IRN's ``drop_last=True``)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int):
        self.n, self.batch, self.seed, self.start, self.total = n, batch, seed, start, total
        self.per_epoch = n // batch

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.start, self.total):
            e, b = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.seed, e, self.n)
            yield [(e, int(i)) for i in order[b * self.batch : (b + 1) * self.batch]]
