"""Give each local GPU job its own free devices.

Snakemake counts GPUs (``resources: gpu=N``) but never says which, so every local job would
otherwise land on GPU 0. :func:`acquire_gpus` takes an exclusive ``flock`` on one lock file
per device and exports the chosen ids in ``CUDA_VISIBLE_DEVICES``; the kernel drops the locks
when the last process holding them ends, even by a crash.

- **Pool.** The machine's GPUs (``nvidia-smi``), or, when the user exported
  ``CUDA_VISIBLE_DEVICES`` for the whole run, exactly those devices. Inside a SLURM job the
  value SLURM set is the job's allocation and is left alone.
- **All or nothing.** A job takes its ``n`` devices in one step under a pool lock, or none:
  no job ever holds some devices while waiting for others, so jobs of several runs cannot
  deadlock. A waiting job logs what it waits for and who holds it.
- **Every user.** The lock folder is world-writable with the sticky bit (like ``/tmp``) and the
  lock files are ``0666``, so jobs of several users on one machine share one set of locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "QACLIMS_GPU_LOCK_DIR"
WAIT_LOG_EVERY_S = 60.0
_HELD_FDS: list[int] = []  # lock fds held by this process (passed on to child commands)


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


def under_slurm() -> bool:
    """True inside a SLURM job (its ``CUDA_VISIBLE_DEVICES`` is the job's allocation)."""
    return "SLURM_JOB_ID" in os.environ


def gpu_pool(total: int | None = None) -> list[str]:
    """Device ids a local job may pick from (strings as ``CUDA_VISIBLE_DEVICES`` names them).

    The user's ``CUDA_VISIBLE_DEVICES`` when set (``""`` means no GPU), else ``0..total-1``
    with ``total`` from ``nvidia-smi`` unless given.
    """
    user = os.environ.get("CUDA_VISIBLE_DEVICES")
    if user is not None:
        return [d.strip() for d in user.split(",") if d.strip()]
    total = count_gpus() if total is None else total
    return [str(i) for i in range(total)]


def lock_dir() -> Path:
    """Folder of the per-device lock files (``$QACLIMS_GPU_LOCK_DIR`` or the temp folder).

    Created world-writable with the sticky bit, so every user's jobs can lock in it.
    """
    d = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "qaclims-gpu-locks")
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            d.chmod(0o1777)
    return d


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _open_shared(path: Path) -> int:
    """Open (creating ``0666``) a lock file any user can lock; read-only if not writable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    with contextlib.suppress(PermissionError):
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o666)  # the umask must not make it private
    return fd


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path``, or ``None`` if another process holds it."""
    fd = _open_shared(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.environ.get('USER', os.geteuid())}\n".encode())
    return fd


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "?"
    return "?"


def try_acquire(devices: Sequence[str], n: int, folder: Path) -> list[tuple[str, int]] | None:
    """Lock ``n`` of ``devices`` at once under the pool lock, or none of them.

    Returns ``(device, fd)`` pairs (the caller closes the fds to release), or ``None``.
    """
    pool_fd = _open_shared(folder / "pool.lock")
    try:
        fcntl.flock(pool_fd, fcntl.LOCK_EX)  # short: only while trying, never while waiting
        held: list[tuple[str, int]] = []
        for dev in devices:
            fd = _try_lock(folder / _lock_name(dev))
            if fd is not None:
                held.append((dev, fd))
                if len(held) == n:
                    return held
        for _, fd in held:
            os.close(fd)
        return None
    finally:
        os.close(pool_fd)


@contextlib.contextmanager
def acquire_gpus(
    n: int, total: int | None = None, poll_s: float = 2.0, timeout_s: float | None = None
) -> Iterator[list[str]]:
    """Lock ``n`` free GPUs of the pool and export them in ``CUDA_VISIBLE_DEVICES``.

    Yields the chosen device ids (``[]`` when ``n == 0`` or the pool is empty). Inside a
    SLURM job the devices SLURM set are yielded and nothing is locked or changed. Waits,
    polling every ``poll_s`` seconds, while fewer than ``n`` devices are free (logging what
    it waits for); raises ``TimeoutError`` after ``timeout_s``. Must run before CUDA is
    initialised. On exit the previous ``CUDA_VISIBLE_DEVICES`` is restored.
    """
    if n <= 0:
        yield []
        return
    if under_slurm() and "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = gpu_pool()
        log.info("using GPUs %s (set by SLURM job %s)", ids, os.environ["SLURM_JOB_ID"])
        yield ids
        return
    pool = gpu_pool(total)
    if not pool:
        yield []
        return
    if n > len(pool):
        raise ValueError(f"asked for {n} GPUs but the pool has {len(pool)}: {pool}")
    folder = lock_dir()
    start = next_log = time.monotonic()
    held = try_acquire(pool, n, folder)
    while held is None:
        now = time.monotonic()
        if now >= next_log:
            busy = ", ".join(f"{d} (pid {_holder(folder / _lock_name(d))})" for d in pool)
            log.info("waiting for %d free GPU(s) of %s; held: %s", n, pool, busy)
            next_log = now + WAIT_LOG_EVERY_S
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(f"no {n} free GPUs of {pool} within {timeout_s} s")
        time.sleep(poll_s)
        held = try_acquire(pool, n, folder)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d for d, _ in held]
    _HELD_FDS.extend(fd for _, fd in held)
    try:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        log.info("using GPUs %s (CUDA_VISIBLE_DEVICES=%s)", ids, ",".join(ids))
        yield ids
    finally:
        for _, fd in held:
            _HELD_FDS.remove(fd)
            os.close(fd)
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def torch_device(requested: str = "auto") -> str:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a torch device string.

    Returns ``"cuda:0"`` (or the given ``"cuda:N"``) or ``"cpu"``; resolving twice is safe.
    Without torch installed (the CRF and report envs) the answer is ``"cpu"``.
    """
    try:
        import torch
    except ImportError:
        if requested.startswith("cuda"):
            raise RuntimeError(
                f"device {requested} was asked for but torch is not installed"
            ) from None
        return "cpu"

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


def warn_cpu_fallback(
    gpus: Sequence[str], device: str, requested: str, logger: logging.Logger
) -> None:
    """Warn when a job holds GPUs but runs on the CPU (``device: auto`` found no CUDA)."""
    if gpus and device == "cpu" and requested != "cpu":
        logger.warning(
            "holds GPU(s) %s but torch sees no CUDA device (CPU-only torch build, or a driver "
            "too old for torch's CUDA): running on the CPU",
            ",".join(gpus),
        )


def run_child(
    cmd: Sequence[str],
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run ``cmd`` passing it the GPU locks this process holds; returns its exit status.

    With the lock fds inherited, the GPUs stay held as long as ``cmd`` runs, even if this
    process is killed; SIGTERM/SIGINT are passed on to ``cmd`` and waited for. With
    ``on_line``, the command's stdout and stderr are read line by line (a progress bar's
    carriage returns end lines too) and handed to it. ``env``: the command's environment.
    """
    pipe = subprocess.PIPE if on_line is not None else None
    proc = subprocess.Popen(
        list(cmd),
        pass_fds=tuple(_HELD_FDS),
        stdout=pipe,
        stderr=subprocess.STDOUT if on_line is not None else None,
        text=True,
        bufsize=1,
        env=env,
    )

    def forward(sig: int, _frame: object) -> None:
        proc.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if on_line is not None and proc.stdout is not None:
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
