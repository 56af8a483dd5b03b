"""Launch a multi-GPU training stage: ``python -m qaclims.launch --gpus N STAGE ARGS.json``.

Takes N free local GPUs (or the ones SLURM set in ``CUDA_VISIBLE_DEVICES``), then starts
``torchrun --standalone --nproc-per-node=<visible GPUs>`` once, which forks one worker per
GPU running ``python -m qaclims.cli STAGE ARGS.json``. Without a GPU (or with
``device: cpu``) the stage runs as one plain process on the CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from qaclims.devices import acquire_gpus


def _visible() -> int:
    v = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([x for x in v.split(",") if x.strip()]) if v else 0


def run(stage: str, gpus: int, args_json: str, log_path: str | None = None) -> int:
    """Run ``stage`` holding ``gpus`` free GPUs; its output is appended to ``log_path``.

    Returns the exit status (torchrun's when several GPUs are visible).
    """
    cli = ["-m", "qaclims.cli", stage, args_json]
    with acquire_gpus(gpus):
        n = _visible()
        cmd = [sys.executable, *cli]
        if n > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={n}", *cli]
        if log_path is None:
            return subprocess.call(cmd)
        with open(log_path, "a") as log:
            return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=0, help="GPUs the rule's resources ask for")
    p.add_argument("--cpu", action="store_true", help="force one CPU process")
    p.add_argument("stage")
    p.add_argument("args_json")
    a = p.parse_args(argv)
    cli = [sys.executable, "-m", "qaclims.cli", a.stage, a.args_json]
    with acquire_gpus(0 if a.cpu else a.gpus):
        n = 0 if a.cpu else _visible()
        if n <= 1:
            return subprocess.call(cli)
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
        ]
        return subprocess.call(torchrun + ["-m", "qaclims.cli", a.stage, a.args_json])


if __name__ == "__main__":
    sys.exit(main())
