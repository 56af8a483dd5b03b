"""Run a training stage from its rule: one job, one worker process, or ``torchrun`` started
once with a worker per GPU. Every training rule (train_cam, train_tiny_clip, train_ritc,
train_irn, train_deeplab) is called this one way: its script is
``launch.run_rule(snakemake, "<stage module>")`` and the stage's ``worker(job, device)`` reads
the job (:func:`job_args`) in the worker process. The stage is named, not imported: the
job's own process never imports torch (3 s a job); only its workers do.

Takes N free local GPUs (or the ones SLURM set in ``CUDA_VISIBLE_DEVICES``), then starts
``torchrun --standalone --nproc-per-node=<GPUs held>`` once, which forks one worker per GPU
running ``python -m qaclims.workflow.cli MODULE JOB_JSON``. Without a GPU (or with
``device: cpu``) the
stage runs as one plain process on the CPU. The workers' output goes to the rule's log and,
tagged with the job, to the terminal; the GPU locks are passed on to the workers, so they
stay held until the last worker has ended.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from qaclims.core.devices import acquire_gpus, run_child
from qaclims.workflow import cli

log = logging.getLogger(__name__)


def job_args(smk: Any, resume: str) -> dict[str, Any]:
    """What a worker needs of its Snakemake job: named inputs/outputs, config, resume path,
    and the job's CPU threads (shared by its workers)."""

    def named(files: Any) -> dict[str, Any]:
        return {k: (v if isinstance(v, str) else list(v)) for k, v in files.items()}

    return {
        "input": {k: v for k, v in named(smk.input).items() if k != "code"},
        "output": named(smk.output),
        "config": dict(smk.config),
        "resume": resume,
        "threads": int(smk.threads),
    }


def command(module: str, job_json: str, workers: int) -> list[str]:
    """The command line: one plain process, or ``torchrun`` with ``workers`` processes."""
    worker = ["-m", cli.__name__, module, job_json]
    if workers <= 1:
        return [sys.executable, *worker]
    run = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]
    return [sys.executable, *run, *worker]


def _stage_name(stage: str) -> str:
    if stage not in cli.WORKERS:
        raise ValueError(f"{stage!r} is not a training stage: one of {', '.join(cli.WORKERS)}")
    return stage


def run(
    stage: str,
    gpus: int,
    job: dict[str, Any],
    log_path: str | None = None,
    tag: str = "",
    echo: TextIO | None = None,
) -> int:
    """Run ``worker`` of the stage module named ``stage`` (one of
    :data:`qaclims.workflow.cli.WORKERS`) holding ``gpus`` free GPUs; returns the exit status.

    Every output line of the workers is appended to ``log_path`` and written to ``echo``
    (default: stderr) prefixed with ``tag``.
    """
    out = echo if echo is not None else sys.stderr
    with acquire_gpus(gpus) as ids:
        cmd = command(_stage_name(stage), json.dumps(job), len(ids))
        log.info("%s holds GPUs %s: %d worker(s)", stage, ids or "none", max(1, len(ids)))
        if log_path is None:
            return run_child(cmd)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:

            def line(text: str) -> None:
                f.write(text + "\n")
                f.flush()
                out.write(f"{tag}{text}\n")
                out.flush()

            # progress bars through a pipe: one line per update, so update every 10 s
            env = dict(os.environ, TQDM_MININTERVAL="10")
            return run_child(cmd, on_line=line, env=env)


def run_rule(smk: Any, stage: str) -> None:
    """The whole script of a multi-GPU rule (``smk`` is the ``snakemake`` object, ``stage``
    the training stage's module name): the job's log and tag, then :func:`run` with the GPUs
    of ``resources: gpu``; a failure raises."""
    from qaclims.workflow.smk import job

    with job(smk, gpus=False) as j:
        status = run(
            stage,
            gpus=int(smk.resources.gpu),
            job=job_args(smk, resume=smk.params.resume),
            log_path=smk.log[0],
            tag=j.tag,
        )
    if status != 0:
        raise SystemExit(f"{smk.rule} failed with exit status {status}; see {smk.log[0]}")
