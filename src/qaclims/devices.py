"""Give each local GPU job its own free devices.

Snakemake counts GPUs (``resources: gpu=N``) but never sets ``CUDA_VISIBLE_DEVICES``, so
every local job would otherwise land on GPU 0. :func:`acquire_gpus` takes an exclusive
``flock`` on one lock file per device and exports the chosen ids; the kernel drops the
locks when the process ends, even by a crash. When SLURM or the user already set
``CUDA_VISIBLE_DEVICES`` it is left alone. With no GPU everything runs on the CPU.

Command line (used by multi-GPU rules, so the locks outlive ``torchrun``'s workers)::

    python -m qaclims.devices --gpus 4 -- torchrun --nproc-per-node 4 -m qaclims.cli ...
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "QACLIMS_GPU_LOCK_DIR"


def count_gpus() -> int:
    """Number of NVIDIA GPUs on the machine, without initialising CUDA (0 if none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip())


def lock_dir() -> Path:
    """Folder of the per-device lock files (``$QACLIMS_GPU_LOCK_DIR`` or the temp folder)."""
    d = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "qaclims-gpu-locks")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


@contextlib.contextmanager
def acquire_gpus(
    n: int, total: int | None = None, poll_s: float = 2.0, timeout_s: float | None = None
) -> Iterator[list[int]]:
    """Lock ``n`` free GPU ids out of ``total`` and export them in ``CUDA_VISIBLE_DEVICES``.

    Yields the chosen physical ids (``[]`` when ``n == 0``, when no GPU exists, or when
    ``CUDA_VISIBLE_DEVICES`` was already set, in which case it is not touched). Waits,
    polling every ``poll_s`` seconds, while fewer than ``n`` devices are free; raises
    ``TimeoutError`` after ``timeout_s``. Must run before CUDA is initialised.
    """
    if n <= 0 or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield []
        return
    total = count_gpus() if total is None else total
    if total == 0:
        yield []
        return
    if n > total:
        raise ValueError(f"asked for {n} GPUs but the machine has {total}")
    held: list[tuple[int, int]] = []
    start = time.monotonic()
    try:
        while True:
            for i in range(total):
                if len(held) == n:
                    break
                fd = _try_lock(lock_dir() / f"gpu{i}.lock")
                if fd is not None:
                    held.append((i, fd))
            if len(held) == n:
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no {n} free GPUs within {timeout_s} s")
            time.sleep(poll_s)
        ids = [i for i, _ in held]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        log.info("using GPUs %s (CUDA_VISIBLE_DEVICES)", ids)
        yield ids
    finally:
        for _, fd in held:
            os.close(fd)
        if held:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def torch_device(requested: str = "auto") -> str:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a torch device string.

    Returns ``"cuda:0"`` (or the given ``"cuda:N"``) or ``"cpu"``; resolving twice is safe.
    """
    import torch

    if requested.startswith("cuda:") and requested[5:].isdigit():  # already resolved
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested} was asked for but no CUDA device is visible")
        return requested
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda:0"
    if requested == "cuda":
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    """``python -m qaclims.devices --gpus N -- CMD...``: run CMD holding N free GPUs."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given")
    with acquire_gpus(a.gpus):
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
