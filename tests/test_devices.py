"""The GPU picker: distinct devices per job, all-or-nothing, shared by every user, SLURM's
choice and the user's pool respected, locks kept while the command runs. Each property is
checked with real processes holding real ``flock`` locks (no GPU needed: ids are names)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qaclims.core import devices

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "locks"
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(d))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return d


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(extra)
    return env


def _holder(n: int, total: int, seconds: float, env: dict[str, str]) -> subprocess.Popen[str]:
    """A process that takes ``n`` of ``total`` GPUs, prints them, holds them ``seconds``."""
    code = (
        "import sys, time; from qaclims.core import devices\n"
        f"with devices.acquire_gpus({n}, total={total}, poll_s=0.05, timeout_s=60) as g:\n"
        "    print(','.join(g), flush=True); time.sleep(" + repr(seconds) + ")\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )


def _free(devs: list[str], folder: Path) -> bool:
    """True if every device in ``devs`` can be locked right now (then released)."""
    held = devices.try_acquire(devs, len(devs), folder)
    if held is None:
        return False
    for _, fd in held:
        os.close(fd)
    return True


def test_two_processes_get_distinct_devices_then_both_are_free(locks: Path) -> None:
    with devices.acquire_gpus(1, total=2) as a:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == a[0]
        p = _holder(1, 2, 0.0, _env(**{devices.LOCK_DIR_ENV: str(locks)}))
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == {"0": "1", "1": "0"}[a[0]]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with devices.acquire_gpus(2, total=2) as both:
        assert sorted(both) == ["0", "1"]


def test_lock_released_when_holder_crashes(locks: Path) -> None:
    code = (
        "import os; from qaclims.core import devices\n"
        "with devices.acquire_gpus(1, total=1): os._exit(3)"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(**{devices.LOCK_DIR_ENV: str(locks)}))
    assert r.returncode == 3
    with devices.acquire_gpus(1, total=1, timeout_s=2) as got:
        assert got == ["0"]


def test_no_hold_and_wait_a_partial_set_is_never_kept(locks: Path) -> None:
    """Device 1 busy: asking for all 3 must leave 0 and 2 unlocked while it waits."""
    locks.mkdir(parents=True)
    busy = devices.try_acquire(["1"], 1, locks)
    assert busy is not None
    assert devices.try_acquire(["0", "1", "2"], 3, locks) is None
    assert _free(["0", "2"], locks)  # nothing of the failed attempt is still held
    for _, fd in busy:
        os.close(fd)
    assert _free(["0", "1", "2"], locks)


def test_competing_multi_gpu_jobs_never_deadlock(locks: Path) -> None:
    """Six jobs of 2 GPUs on 3 devices, started together (the hold-and-wait deadlock set-up)."""
    env = _env(**{devices.LOCK_DIR_ENV: str(locks)})
    procs = [_holder(2, 3, 0.3, env) for _ in range(6)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(len(set(o.split(","))) == 2 for o in outs), outs


def test_users_cuda_visible_devices_is_the_pool(locks: Path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    env = _env(CUDA_VISIBLE_DEVICES="2,5", **{devices.LOCK_DIR_ENV: str(locks)})
    other = _holder(1, 8, 3.0, env)
    assert other.stdout is not None
    first = other.stdout.readline().strip()
    assert first in ("2", "5")
    with devices.acquire_gpus(1, total=8) as a:  # total (nvidia-smi) is ignored: the pool rules
        assert a == [({"2", "5"} - {first}).pop()] and os.environ["CUDA_VISIBLE_DEVICES"] == a[0]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5"  # the user's value is restored
    with pytest.raises(TimeoutError, match=r"\['2', '5'\]"):
        with devices.acquire_gpus(2, timeout_s=0.3, poll_s=0.05):
            pass
    other.wait(timeout=60)
    with pytest.raises(ValueError, match="pool has 2"):
        with devices.acquire_gpus(3):
            pass


def test_slurm_allocation_is_left_alone(locks: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with devices.acquire_gpus(1, total=4) as got:
        assert got == ["3"] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not locks.exists() or not list(locks.glob("gpu-*.lock"))


def test_waiting_job_logs_what_it_waits_for(locks: Path, caplog) -> None:
    with devices.acquire_gpus(1, total=1):
        with caplog.at_level(logging.INFO, logger="qaclims.core.devices"):
            with pytest.raises(TimeoutError):
                with devices.acquire_gpus(1, total=1, timeout_s=0.3, poll_s=0.05):
                    pass
    assert f"waiting for 1 free GPU(s) of ['0']; held: 0 (pid {os.getpid()}" in caplog.text


def test_locks_are_shared_by_every_user(locks: Path) -> None:
    """Lock folder 1777 and lock files 0666 whatever the umask; a second Unix user can lock."""
    old = os.umask(0o077)
    try:
        with devices.acquire_gpus(1, total=2):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(locks.stat().st_mode) == 0o1777
    for f in locks.glob("*.lock"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666, f
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("a second Unix user needs root (CI runs as root)")
    user = "qaclims-gpu-test"
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", user], check=True)
    pw = pwd.getpwnam(user)
    # the other user cannot enter root's pytest folders: a world-readable copy of the picker
    # (standard library only) and the system Python
    shared = Path(tempfile.mkdtemp(prefix="qaclims-users-"))
    try:
        shared.chmod(0o755)
        (shared / "qaclims" / "core").mkdir(parents=True)
        (shared / "qaclims" / "__init__.py").write_text("")
        (shared / "qaclims" / "core" / "__init__.py").write_text("")
        shutil.copy(ROOT / "src/qaclims/core/devices.py", shared / "qaclims/core/devices.py")
        for f in shared.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
        shared_locks = shared / "locks"
        with devices.acquire_gpus(1, total=2):  # root creates the folder and a lock, umask 077
            pass
        os.umask(0o077)
        try:
            os.environ[devices.LOCK_DIR_ENV] = str(shared_locks)
            with devices.acquire_gpus(1, total=2) as mine:
                code = (
                    "import sys; sys.path.insert(0, sys.argv[1])\n"
                    "from qaclims.core import devices\n"
                    "with devices.acquire_gpus(1, total=2, timeout_s=10) as g: print(g[0])"
                )
                r = subprocess.run(
                    [shutil.which("python3", path="/usr/bin") or "/usr/bin/python3", "-c", code,
                     str(shared)],
                    env={"PATH": "/usr/bin:/bin", devices.LOCK_DIR_ENV: str(shared_locks),
                         "HOME": "/tmp"},
                    user=pw.pw_uid, group=pw.pw_gid, umask=0o077,
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert r.returncode == 0, r.stderr
                assert r.stdout.strip() == {"0": "1", "1": "0"}[mine[0]]
        finally:
            os.umask(old)
            os.environ[devices.LOCK_DIR_ENV] = str(locks)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


CHILD = """
import signal, sys, time
def term(*_):
    open(sys.argv[1], "w").write("got SIGTERM")
    time.sleep(1.5)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(sys.argv[1] + ".started", "w").close()
time.sleep(60)
"""


def _start_picker(tmp_path: Path, locks: Path) -> tuple[subprocess.Popen[bytes], Path]:
    marker = tmp_path / "child"
    # what the launcher does: hold 1 GPU, run the command as a child (run_child)
    holder = (
        "import sys\nfrom qaclims.core import devices\n"
        "with devices.acquire_gpus(1):\n    sys.exit(devices.run_child(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", holder, sys.executable, "-c", CHILD, str(marker)]
    env = _env(**{devices.LOCK_DIR_ENV: str(locks), "PATH": os.environ["PATH"]})
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nprintf '0\\n'\n")
    smi.chmod(0o755)
    env["PATH"] = f"{smi.parent}{os.pathsep}{env['PATH']}"
    p = subprocess.Popen(cmd, env=env)
    for _ in range(200):
        if (tmp_path / "child.started").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "child.started").exists()
    return p, marker


def test_sigterm_reaches_the_command_and_gpus_stay_held_until_it_ends(tmp_path, locks) -> None:
    p, marker = _start_picker(tmp_path, locks)
    assert not _free(["0"], locks)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert marker.read_text() == "got SIGTERM"
    assert not _free(["0"], locks)  # the command still runs: its GPU is still taken
    assert p.wait(timeout=30) == 0
    assert _free(["0"], locks)


def test_killed_picker_leaves_the_gpu_held_by_its_command(tmp_path, locks) -> None:
    p, marker = _start_picker(tmp_path, locks)
    p.kill()
    p.wait(timeout=30)
    assert not _free(["0"], locks)  # the command inherited the lock
    subprocess.run(["pkill", "-TERM", "-f", str(marker)], check=False)
    for _ in range(100):
        if _free(["0"], locks):
            break
        time.sleep(0.1)
    assert _free(["0"], locks)


def test_cpu_fallback_warns(caplog) -> None:
    log = logging.getLogger("qaclims.test")
    with caplog.at_level(logging.WARNING, logger="qaclims.test"):
        devices.warn_cpu_fallback(["1"], "cpu", "auto", log)
        devices.warn_cpu_fallback(["1"], "cpu", "cpu", log)  # asked for: no warning
        devices.warn_cpu_fallback([], "cpu", "auto", log)  # no GPU held: no warning
        devices.warn_cpu_fallback(["1"], "cuda:0", "auto", log)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "holds GPU(s) 1 but torch sees no CUDA device" in caplog.text


def test_launcher_hands_its_gpus_to_the_workers_and_echoes_their_output(
    tmp_path: Path, locks: Path, monkeypatch
) -> None:
    """launch.run: GPUs taken for the whole job, worker count = GPUs held, every worker line
    in the rule's log and, tagged, on the terminal; a progress bar's \\r updates become lines."""
    import io as _io

    from qaclims.workflow import launch

    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    seen: dict[str, object] = {}

    def command(module: str, job_json: str, workers: int) -> list[str]:
        seen.update(module=module, workers=workers)
        code = (
            "import os, sys\n"
            "print('GPUS', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
            "sys.stderr.write('bar 1/2\\rbar 2/2\\n'); sys.stderr.flush()\n"
            "print('step 10 loss 0.5000')\n"
        )
        return [sys.executable, "-c", code]

    monkeypatch.setattr(launch, "command", command)
    echo = _io.StringIO()
    log = tmp_path / "logs" / "train_ritc.log"
    rc = launch.run(
        "qaclims.ritc.train_ritc", gpus=2, job={}, log_path=str(log), tag="[train_ritc] ", echo=echo
    )
    assert rc == 0 and seen == {"module": "qaclims.ritc.train_ritc", "workers": 2}
    lines = log.read_text().splitlines()
    assert lines[0] in ("GPUS 0,1", "GPUS 0,2", "GPUS 1,2")
    assert {"bar 1/2", "bar 2/2", "step 10 loss 0.5000"} <= set(lines)
    assert echo.getvalue().splitlines() == [f"[train_ritc] {line}" for line in lines]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # released and restored after the job
    assert _free(["0", "1", "2"], locks)


def test_launcher_refuses_a_module_that_is_not_a_training_stage() -> None:
    """launch.run names its stage; a name outside cli.WORKERS fails before any GPU is taken."""
    from qaclims.workflow import launch

    with pytest.raises(ValueError, match=r"qaclims\.cam\.eval_cam.*not a training stage"):
        launch.run("qaclims.cam.eval_cam", gpus=0, job={})


JOB_PROBE = """
import json, sys, types
from qaclims.workflow.smk import job

smk = types.SimpleNamespace(
    rule="probe", log=[sys.argv[1]], threads=1, wildcards=None,
    resources=types.SimpleNamespace(gpu=0), config={"device": "cpu"},
)
seen = {}
with job(smk) as j:
    seen["torch_in_block"] = "torch" in sys.modules
    if sys.argv[2] == "read":
        seen["device"] = j.device
        seen["torch_after_read"] = "torch" in sys.modules
        import torch
        seen["threads"] = torch.get_num_threads()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("read", ["read", "skip"])
def test_a_job_that_never_reads_its_device_never_imports_torch(tmp_path: Path, read) -> None:
    """smk.job: a CPU job whose script has not imported torch does not import it (eval_cam,
    corpus, report: 2-3 s a job); reading ``j.device`` resolves it then and sets the job's
    threads."""
    import json
    import subprocess

    script = tmp_path / "probe.py"
    script.write_text(JOB_PROBE)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "probe.log"), read],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    seen = json.loads(out.stdout)
    assert seen["torch_in_block"] is False
    if read == "read":
        assert seen == {
            "torch_in_block": False, "device": "cpu", "torch_after_read": True, "threads": 1
        }  # fmt: skip
    assert "rule probe with 1 threads" in (tmp_path / "probe.log").read_text()
