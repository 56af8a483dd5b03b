"""Per-image CPU work over a job's threads: contiguous chunks of a list, in forked processes.

Fork, not spawn/forkserver: those re-run the ``__main__`` script in every child, and the
workflow's scripts are not ``__main__``-guarded. All workers are forked at the first submit,
before the progress bar starts its thread. ``fn`` and its chunks travel to the workers by
multiprocessing (module-level functions and plain values); results come back in chunk order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into contiguous lists of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_chunks(
    fn: Callable[[list[T]], R],
    items: Sequence[T],
    workers: int,
    *,
    desc: str,
    chunk_size: int | None = None,
    unit: str = "img",
) -> list[R]:
    """``[fn(c) for c in chunks(items, chunk_size)]``, in ``workers`` forked processes when
    ``workers > 1`` (else in this process), with a progress bar counting items.

    ``chunk_size``: items per call; default: about four chunks per worker (a hundred in one
    process, for the bar). The first error cancels the chunks not started and is raised.
    """
    n = len(items)
    if chunk_size is None:
        parts = 100 if workers <= 1 else 4 * workers
        chunk_size = max(1, math.ceil(n / parts))
    cut = chunks(items, chunk_size)
    results: list[R] = []
    with tqdm(total=n, desc=desc, unit=unit) as bar:
        if workers <= 1 or len(cut) <= 1:
            for c in cut:
                results.append(fn(c))
                bar.update(len(c))
            return results
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork")) as ex:
            futures = [ex.submit(fn, c) for c in cut]
            size = {f: len(c) for f, c in zip(futures, cut, strict=True)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in done:
                    err = f.exception()
                    if err is not None:
                        ex.shutdown(wait=True, cancel_futures=True)
                        raise err
                    bar.update(size[f])
            return [f.result() for f in futures]
