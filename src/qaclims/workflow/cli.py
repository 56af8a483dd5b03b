"""Entry point of the multi-GPU training stages under torchrun.

``python -m qaclims.workflow.cli MODULE JOB_JSON``: MODULE is a stage module with a
``worker(job, device)`` function (``qaclims.ritc.train_ritc``,
``qaclims.seg.train_deeplab``) and JOB_JSON the job's inputs, outputs, resolved config and
resume path (:func:`qaclims.workflow.launch.job_args`).
Started once per GPU by :mod:`qaclims.workflow.launch`; rank 0 writes the outputs and logs at INFO.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from qaclims.core import devices, logs

WORKERS = ("qaclims.ritc.train_ritc", "qaclims.seg.train_deeplab")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in WORKERS:
        print(
            f"usage: python -m qaclims.workflow.cli {{{','.join(WORKERS)}}} JOB_JSON",
            file=sys.stderr,
        )
        return 2
    job = json.loads(args[1])
    rank = int(os.environ.get("RANK", "0"))
    # stderr only: the launcher writes it to the rule's log and, tagged, to the terminal
    log = logs.setup(None, logging.INFO if rank == 0 else logging.WARNING)
    device = devices.torch_device(job["config"].get("device", "auto"))
    world = os.environ.get("WORLD_SIZE", "1")
    log.info("%s on %s (rank %d of %s)", args[0], device, rank, world)
    try:
        importlib.import_module(args[0]).worker(job, device)
    except Exception:
        log.exception("%s failed", args[0])
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
