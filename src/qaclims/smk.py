"""The glue every workflow script shares, so the scripts stay a few lines long.

``with job(snakemake) as j:`` sets up the rule's log file, takes free GPUs when the rule
asks for ``resources: gpu`` (see :mod:`qaclims.devices`), resolves the torch device from
``config["device"]``, sets torch's CPU threads to the rule's ``threads`` and logs any
exception with its traceback before re-raising it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qaclims import devices, logs


@dataclass(frozen=True)
class Job:
    """What a stage needs from its Snakemake job."""

    device: str
    threads: int
    log: logging.Logger


@contextlib.contextmanager
def job(smk: Any) -> Iterator[Job]:
    """Context for one Snakemake ``script:`` job (``smk`` is the ``snakemake`` object)."""
    log_path = smk.log[0] if len(smk.log) else None
    logger = logs.setup(log_path)
    n_gpu = int(getattr(smk.resources, "gpu", 0) or 0)
    threads = int(smk.threads)
    try:
        with devices.acquire_gpus(n_gpu):
            import torch

            torch.set_num_threads(max(1, threads))
            dev = devices.torch_device(smk.config.get("device", "auto"))
            logger.info("rule %s on %s with %d threads", smk.rule, dev, threads)
            yield Job(device=dev, threads=threads, log=logger)
    except Exception:
        logger.exception("rule %s failed", smk.rule)
        raise
