"""Every job's log names the code and software it ran with (qaclims.core.provenance)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import qaclims
from qaclims.core import provenance
from tests.workflow_util import ROOT

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GIT, "-C", str(root), *args], capture_output=True, text=True)


def test_code_version_of_this_checkout_names_its_commit() -> None:
    head = _git(ROOT, "rev-parse", "HEAD")
    if head.returncode != 0:  # a copy without .git
        assert provenance.code_version() == f"qaclims {qaclims.__version__} (no git commit)"
        return
    status = _git(ROOT, "status", "--porcelain", "--untracked-files=no", "--", "src",
                  "workflow", "Snakefile")  # fmt: skip
    want = f"qaclims {qaclims.__version__}, git {head.stdout.strip()}"
    want += " + local changes" if status.stdout.strip() else ""
    assert provenance.code_version() == want


def test_code_version_sees_edits_of_tracked_code_only(tmp_path: Path) -> None:
    version = provenance.code_version.__wrapped__  # type: ignore[attr-defined]
    assert version(tmp_path) == f"qaclims {qaclims.__version__} (no git commit)"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("doc\n")
    assert _git(tmp_path, "init", "-q").returncode == 0
    assert _git(tmp_path, "add", ".").returncode == 0
    assert _git(tmp_path, "commit", "-q", "-m", "one").returncode == 0
    head = _git(tmp_path, "rev-parse", "HEAD").stdout.strip()
    assert len(head) == 40
    clean = f"qaclims {qaclims.__version__}, git {head}"
    assert version(tmp_path) == clean
    (tmp_path / "README.md").write_text("other doc\n")  # not code
    (tmp_path / "src" / "new.py").write_text("y = 2\n")  # untracked
    assert version(tmp_path) == clean
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert version(tmp_path) == clean + " + local changes"


def test_torch_info_names_the_build_and_device() -> None:
    import torch

    info = provenance.torch_info("cpu")
    assert info.startswith(f"torch {torch.__version__} (") and info.endswith("; device cpu")
    if torch.version.cuda:
        assert f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" in info
    else:
        assert "(CPU build)" in info


PROBE = """
import sys, types
from qaclims.workflow.smk import job

smk = types.SimpleNamespace(
    rule="probe", log=[sys.argv[1]], threads=1, wildcards=None,
    resources=types.SimpleNamespace(gpu=0), config={"device": "cpu"},
)
with job(smk) as j:
    if sys.argv[2] == "read":
        j.device
"""


@pytest.mark.parametrize("read", ["read", "skip"])
def test_a_job_logs_its_software_to_its_log_file_only(tmp_path: Path, read: str) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    log = tmp_path / "probe.log"
    r = subprocess.run(
        [sys.executable, str(script), str(log), read],
        capture_output=True, text=True, env=dict(os.environ), check=True,
    )  # fmt: skip
    assert "software:" not in r.stderr and "rule probe" in r.stderr
    lines = [ln.split(" qaclims.provenance: ", 1)[1] for ln in log.read_text().splitlines()
             if " qaclims.provenance: " in ln]  # fmt: skip
    assert lines[0] == (
        f"software: {provenance.code_version()}; python {platform.python_version()}; "
        f"{platform.system()} {platform.machine()}; host {platform.node()}"
    )
    if read == "read":
        import torch

        assert len(lines) == 2 and lines[1].startswith(f"software: torch {torch.__version__} (")
        assert lines[1].endswith("; device cpu")
    else:
        assert len(lines) == 1  # torch was never imported: nothing to say about it


def test_a_training_worker_names_its_software_in_its_start_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker entry point (one per GPU under torchrun) logs code, software and device
    after its start line; its output reaches the rule's log through the launcher."""
    import types

    import torch

    from qaclims.workflow import cli

    ran: list[str] = []
    fake = types.SimpleNamespace(worker=lambda job, device: ran.append(device))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: fake)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    job = {"config": {"device": "cpu", "threads": {"train_torch": 1}}, "threads": 1}
    loggers = [logging.getLogger(n) for n in ("qaclims", "qaclims.provenance")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    threads = torch.get_num_threads()
    try:  # cli.main sets up logging and torch's threads for its process
        assert cli.main(["qaclims.cam.train_cam", json.dumps(job)]) == 0
    finally:
        torch.set_num_threads(threads)
        for lg, (handlers, propagate, level) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.propagate, lg.level = handlers, propagate, level
    assert ran == ["cpu"]
    err = capsys.readouterr().err
    assert "qaclims.cam.train_cam on cpu (rank 0 of 1)" in err
    want = f"software: {provenance.software()}; torch {torch.__version__} ("
    assert want in err and err.rstrip().endswith("; device cpu")
