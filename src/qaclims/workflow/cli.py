"""Entry point of a training stage's worker process (one, or one per GPU under torchrun).

``python -m qaclims.workflow.cli MODULE JOB_JSON``: MODULE is a training stage module with a
``worker(job, device)`` function (:data:`WORKERS`) and JOB_JSON the job's inputs, outputs,
resolved config, resume path and threads (:func:`qaclims.workflow.launch.job_args`).
Started by :mod:`qaclims.workflow.launch`; torch gets ``threads.train_torch`` CPU threads
(or the job's threads shared among the workers); rank 0 writes the outputs and logs at INFO.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from qaclims.core import devices, logs, provenance

WORKERS = (
    "qaclims.qape.train_tiny_blip",
    "qaclims.cam.train_cam",
    "qaclims.ritc.train_tiny_clip",
    "qaclims.ritc.train_ritc",
    "qaclims.refine.train_irn",
    "qaclims.seg.train_deeplab",
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in WORKERS:
        print(
            f"usage: python -m qaclims.workflow.cli {{{','.join(WORKERS)}}} JOB_JSON",
            file=sys.stderr,
        )
        return 2
    import torch  # here, not at import: the launcher imports this module for WORKERS

    job = json.loads(args[1])
    rank = int(os.environ.get("RANK", "0"))
    # stderr only: the launcher writes it to the rule's log and, tagged, to the terminal
    log = logs.setup(None, logging.INFO if rank == 0 else logging.WARNING)
    device = devices.torch_device(job["config"].get("device", "auto"))
    world = os.environ.get("WORLD_SIZE", "1")
    fixed = int(job["config"].get("threads", {}).get("train_torch", 0))
    torch.set_num_threads(fixed or max(1, int(job.get("threads", 1)) // int(world)))
    log.info("%s on %s (rank %d of %s)", args[0], device, rank, world)
    log.info("software: %s; %s", provenance.software(), provenance.torch_info(device))
    try:
        importlib.import_module(args[0]).worker(job, device)
    except Exception:
        log.exception("%s failed", args[0])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
