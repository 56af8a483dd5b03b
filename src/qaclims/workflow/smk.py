"""The glue every workflow script shares, so the scripts stay a few lines long.

``with job(snakemake) as j:`` sets up the rule's log file (and tags the job's terminal
lines), gives a job of an experiment's (variant, seed) that cell's config as ``smk.config``
(:func:`qaclims.workflow.experiments.job_config`), takes free GPUs when the rule asks for
``resources: gpu`` (see :mod:`qaclims.core.devices`), resolves the torch device from
``config["device"]``, sets torch's CPU threads to the rule's ``threads``, warns when a job
holding GPUs runs on the CPU, and logs any exception with its traceback before re-raising it.
The job's log file (not the terminal) gets the code version and software it ran with
(:mod:`qaclims.core.provenance`).

A job whose script has not imported torch and holds no GPU (eval_cam, corpus, the report,
...) does not import it here either (2-3 s a job): its device is resolved when the script
first reads ``Job.device``; until then torch's threads follow ``OMP_NUM_THREADS``, which
Snakemake sets to the job's threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qaclims.core import devices, logs, provenance
from qaclims.workflow import experiments


@dataclass(frozen=True)
class Job:
    """What a stage needs from its Snakemake job.

    ``device``: the torch device (``"cpu"``, ``"cuda:0"``; ``""`` for a launcher job), read
    lazily: a job that never reads it never imports torch."""

    requested: str
    threads: int
    log: logging.Logger
    gpus: tuple[str, ...] = ()
    tag: str = ""

    @functools.cached_property
    def device(self) -> str:
        if not self.requested:
            return ""
        dev = _set_up_torch(self.threads, self.requested)
        if info := provenance.torch_info(dev):
            logs.provenance().info("software: %s", info)
        return dev


def tag_of(smk: Any) -> str:
    """Terminal prefix of this job's lines, e.g. ``"[make_cam cam/val/001] "``."""
    wc = getattr(smk, "wildcards", None)
    items = dict(wc.items()) if wc is not None and hasattr(wc, "items") else {}
    return logs.job_tag(str(smk.rule), items)


def _set_up_torch(threads: int, requested: str) -> str:
    """Set torch's CPU threads and resolve the device (``"cpu"`` where torch is not
    installed: the CRF and report envs, CPU-only stages)."""
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(max(1, threads))
    return devices.torch_device(requested)


@contextlib.contextmanager
def job(smk: Any, gpus: bool = True) -> Iterator[Job]:
    """Context for one Snakemake ``script:`` job (``smk`` is the ``snakemake`` object).

    ``gpus=False``: the job's GPUs are taken by a launcher inside the block (multi-GPU
    training, :mod:`qaclims.workflow.launch`), so this context takes none and resolves no device.
    """
    log_path = smk.log[0] if len(smk.log) else None
    tag = tag_of(smk)
    wc = getattr(smk, "wildcards", None)
    if wc is not None and hasattr(wc, "items"):
        # a job of an experiment's (variant, seed): its scripts read that cell's config
        smk.config = experiments.job_config(smk.config, dict(wc.items()))
    logger = logs.setup(log_path, tag=tag)
    logs.provenance().info("software: %s", provenance.software())
    threads = int(smk.threads)
    n_gpu = int(getattr(smk.resources, "gpu", 0) or 0) if gpus else 0
    requested = str(smk.config.get("device", "auto"))
    try:
        with devices.acquire_gpus(n_gpu) as ids:
            if not gpus:
                logger.info("rule %s with %d threads", smk.rule, threads)
                yield Job(requested="", threads=threads, log=logger, tag=tag)
                return
            if not ids and "torch" not in sys.modules:
                logger.info("rule %s with %d threads (GPUs: none)", smk.rule, threads)
                yield Job(requested=requested, threads=threads, log=logger, tag=tag)
                return
            j = Job(requested=requested, threads=threads, log=logger, gpus=tuple(ids), tag=tag)
            dev = j.device  # resolved now: sets torch's threads
            logger.info(
                "rule %s on %s with %d threads (GPUs: %s)",
                smk.rule,
                dev,
                threads,
                ",".join(ids) or "none",
            )
            devices.warn_cpu_fallback(ids, dev, requested, logger)
            yield j
    except Exception:
        logger.exception("rule %s failed", smk.rule)
        raise
