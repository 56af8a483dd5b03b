"""The demo workflow on a real SLURM cluster, through snakemake-executor-plugin-slurm.

Needs the one-node CI cluster of ``.ci/slurm/up.sh`` (root; partitions ``cpu`` and ``gpu``,
account ``qaclims``, 4 fake GPUs, accounting through slurmdbd) and ``QACLIMS_SLURM=1``::

    sudo .ci/slurm/up.sh && QACLIMS_SLURM=1 .venv/bin/pytest -m slurm tests/test_slurm.py

Without ``QACLIMS_SLURM=1`` the SLURM tests skip with that reason, except under ``CI=true``,
where they fail: CI must never skip them silently. With it set, any problem is a failure.

The README's command line, ``snakemake --profile profiles/slurm --configfile config/voc12.yaml``,
runs from the root of a clone (a copy of this repository) whose ``profiles/slurm`` carries this
cluster's account and requests shrunk to its one node (the overlay), against a fake VOC tree
where ``config/voc12.yaml`` looks for it, with a given baseline CAM network (as a released
model; training a ResNet-50 here would take an hour): dataset, then ``targets()`` (make_cam ->
eval_cam). Nothing else is added: ``profiles/default`` loads as it does for a user. A tiny probe
workflow beside it records the environment SLURM gave its GPU job. The tests then compare what
Snakemake planned (its "Job stats" table and job blocks) with what SLURM's accounting
(``sacct``) says ran, and check the outputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qaclims.artifacts import camfile
from qaclims.core import io
from tests.workflow_util import copy_repo, fake_checkpoints, fake_voc, user_env

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = os.environ.get("QACLIMS_SLURM_ACCOUNT", "qaclims")  # as in .ci/slurm/common.sh
RUN = "voc12"  # results/<RUN>/ inside the clone, as config/voc12.yaml names it
README_CMD = "snakemake --profile profiles/slurm --configfile config/voc12.yaml"
VOC_IDS = {
    "train_aug": [f"2007_{i:06d}" for i in range(8)],
    "train": [f"2007_{i:06d}" for i in range(4)],
    "val": ["2008_000001"],
}


def targets(cfg: dict) -> list[str]:
    """The part of the DAG this test runs: the baseline CAMs and their evaluation."""
    split = cfg["splits"]["eval_cam"]
    return [f"results/{RUN}/eval_cam/cam/{split}/summary.json"]


# profiles/slurm asks for cluster-sized jobs; these values make every request fit one small
# node (the keys a rule's entry has are replaced, partitions and everything else are kept).
FIT = {"mem_mb": 1000, "runtime": 20, "cpus_per_gpu": 1, "cpus_per_task": 1}
# The plugin polls sacct INIT s after a submission, then waits 10 s longer after each check
# that saw nothing finish (checks at INIT, 2*INIT+10, 3*INIT+30 s). A smoke job takes 13-19 s
# here (two Snakemake start-ups plus torch), so INIT=5 sees most finish at the 20 s check.
SLURM_FLAGS = {
    "slurm-init-seconds-before-status-checks": 5,
    "seconds-between-status-checks": 2,
    "slurm-keep-successful-logs": True,
}
RUN_TIMEOUT_S = 900

PROBE_SNAKEFILE = """
rule probe:
    output: "probe/{i}.json"
    log: "probe/{i}.log"
    threads: 1
    resources: gpu=1, slurm_partition="gpu"
    script: "probe.py"
"""
PROBE_SCRIPT = """
import json, os
from qaclims.workflow.smk import job

before = os.environ.get("CUDA_VISIBLE_DEVICES")
with job(snakemake) as j:
    inside = os.environ.get("CUDA_VISIBLE_DEVICES")
with open(snakemake.output[0], "w") as f:
    json.dump({"before": before, "inside": inside, "device": j.device,
               "gpu": int(snakemake.resources.gpu),
               "job_id": os.environ.get("SLURM_JOB_ID"),
               "step_gpus": os.environ.get("SLURM_STEP_GPUS")}, f)
"""
PROBE_TARGETS = ["probe/0.json"]  # one job: the node's other CPU keeps the main chain going


# ----------------------------------------------------------------------------- the gate


def slurm_test(f: Callable[..., None]) -> Callable[..., None]:
    """Marks a test ``slurm`` (needs the CI cluster) and ``workflow`` (runs snakemake)."""
    return pytest.mark.workflow(pytest.mark.slurm(f))


def require_cluster() -> None:
    """Skip visibly (fail under CI) without QACLIMS_SLURM=1; fail if the cluster is broken."""
    if os.environ.get("QACLIMS_SLURM") != "1":
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(
                "CI=true but QACLIMS_SLURM is not 1: CI must run `sudo .ci/slurm/up.sh` and "
                "export QACLIMS_SLURM=1, the SLURM test may not be skipped there",
                pytrace=False,
            )
        pytest.skip("no CI SLURM cluster: run `sudo .ci/slurm/up.sh`, then QACLIMS_SLURM=1")
    for tool in ("sbatch", "sacct", "sinfo", "scancel"):
        assert shutil.which(tool), f"QACLIMS_SLURM=1 but {tool} is not on PATH"
    out = _check(["sinfo", "-h", "-o", "%P|%a|%G"])
    parts = {line.split("|")[0].rstrip("*"): line for line in out.splitlines()}
    for part in ("cpu", "gpu"):
        assert part in parts and "|up|" in parts[part], f"partition {part} not up:\n{out}"
    assert "gpu:" in parts["gpu"], f"the node has no gpu gres:\n{out}"


def _check(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}"
    return p.stdout


# ------------------------------------------------------------------------------ set-up


def write_profile(dst: Path, logdir: Path) -> Path:
    """profiles/slurm with this cluster's account, requests shrunk to FIT, fast polling."""
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.v8+.yaml").read_text())
    prof["default-resources"] = {
        **prof.get("default-resources", {}),
        "slurm_account": ACCOUNT,
        "mem_mb": FIT["mem_mb"],
        "runtime": FIT["runtime"],
    }
    for res in (prof.get("set-resources") or {}).values():
        res.update({k: v for k, v in FIT.items() if k in res})
    prof["set-threads"] = {rule: 1 for rule in prof.get("set-threads") or {}}
    prof["retries"] = 0  # a failure must show at once, not after a silent second try
    prof.update(SLURM_FLAGS)
    prof["slurm-logdir"] = str(logdir)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.v8+.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dst


def clone_with_data(dst: Path) -> tuple[Path, dict]:
    """A copy of the repository with a fake VOC tree where config/voc12.yaml looks."""
    repo = copy_repo(dst)
    cfg = yaml.safe_load((repo / "config/voc12.yaml").read_text())
    fake_voc(repo / cfg["dataset"]["root"], VOC_IDS, size=(24, 32))
    fake_checkpoints(repo, repo / "config/voc12.yaml")
    return repo, cfg


def released_cam_model(repo: Path) -> None:
    """A ResNet-50 CAM network in the project's format (random weights) and its history."""
    code = (
        "import dataclasses, pandas as pd, torch, yaml\n"
        "from qaclims.core import io\nfrom qaclims.core.config import from_mapping\n"
        "from qaclims.models.cam_resnet import CamModelConfig, CamNet\n"
        "from qaclims.training import save_weights\n"
        "m = from_mapping(CamModelConfig, yaml.safe_load(open('config/voc12.yaml'))"
        "['train_cam']['model'], 'train_cam.model')\n"
        "m = dataclasses.replace(m, backbone=dataclasses.replace(m.backbone, weights='none'))\n"
        "torch.manual_seed(0)\n"
        "save_weights('results/voc12/train_cam/model.safetensors', CamNet(m, 20))\n"
        "io.write_parquet('results/voc12/train_cam/history.parquet', pd.DataFrame({'step': [0]}))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, timeout=300)


def job_env(tmp: Path) -> dict[str, str]:
    """Environment of snakemake and, through sbatch --export=ALL, of every job. The fake
    4-GPU nvidia-smi stands in for the driver: the device picker would pick a GPU itself
    (logging CUDA_VISIBLE_DEVICES=) in any GPU job where SLURM had not set it."""
    return user_env(tmp, gpus=4)


def probe_cmd(snakefile: Path, workdir: Path, profile: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(snakefile),
        "--directory", str(workdir), "--workflow-profile", str(profile), *extra,
    ]  # fmt: skip


def readme_cmd(targets: list[str]) -> list[str]:
    """The README's SLURM line as a user types it (``snakemake`` from the venv on PATH)."""
    return ["bash", "-c", f"{README_CMD} -- {' '.join(targets)}"]


# ------------------------------------------------------------------------ the run itself


@dataclass
class PlannedJob:
    """One job block Snakemake printed before submitting it."""

    rule: str
    gpu: int
    log: str
    local: bool


@dataclass
class SlurmRun:
    """One snakemake run through the plugin: its output, plan, SLURM run id and sacct rows."""

    workdir: Path
    output: str
    returncode: int
    run_id: str
    stats: Counter[str]  # the "Job stats" table printed before anything ran: rule -> jobs
    jobs: dict[str, PlannedJob]  # snakemake job id -> its printed block
    submitted: dict[str, str]  # SLURM job id -> snakemake job id
    sacct: pd.DataFrame  # JobIDRaw, JobName, Partition, State, ExitCode, AllocTRES, Comment

    def remote_plan(self) -> Counter[str]:
        """Jobs per rule the plan sends to SLURM (all but local rules)."""
        local = Counter(j.rule for j in self.jobs.values() if j.local)
        return self.stats - local


def job_stats(text: str) -> Counter[str]:
    """The first "Job stats" table of a snakemake output, without its total."""
    m = re.search(r"^Job stats:\njob +count\n[- ]+\n((?:\S+ +\d+\n)+)", text, re.M)
    assert m, f"no 'Job stats' table in the snakemake output:\n{text[-4000:]}"
    rows = (line.split() for line in m.group(1).splitlines())
    return Counter({rule: int(n) for rule, n in rows if rule != "total"})


def job_blocks(text: str) -> dict[str, PlannedJob]:
    """Snakemake job id -> rule, gpu resource and log of each printed job block."""
    jobs: dict[str, PlannedJob] = {}
    block: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.match(r"^(local)?rule (\w+):$", line):
            block = {"rule": m.group(2), "local": m.group(1) or ""}
        elif block and (m := re.match(r"^    (jobid|log|resources): (.*)$", line)):
            block[m.group(1)] = m.group(2)
            if m.group(1) == "resources" and "jobid" in block:
                g = re.search(r"\bgpu=(\d+)", block["resources"])
                gpu = int(g.group(1)) if g else 0
                jobs[block["jobid"]] = PlannedJob(
                    block["rule"], gpu, block.get("log", ""), bool(block["local"])
                )
                block = {}
    return jobs


def start(
    cmd: list[str], env: dict[str, str], out: Path, cwd: Path | None = None
) -> subprocess.Popen:
    with out.open("w") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd
        )


def finish(
    proc: subprocess.Popen, out: Path, workdir: Path, since: datetime, deadline: float
) -> SlurmRun:
    """Wait for a started run (killing it and its SLURM jobs past the deadline); read sacct."""
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    text = out.read_text()
    m = re.search(r"SLURM run ID: (\S+)", text)
    assert m, f"no 'SLURM run ID' in the snakemake output (plugin not used?):\n{text[-4000:]}"
    run_id = m.group(1)
    subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=60)
    pattern = r"Job (\d+) has been submitted with SLURM jobid (\d+)"
    submitted = {ext: job for job, ext in re.findall(pattern, text)}
    return SlurmRun(
        workdir, text, rc, run_id, job_stats(text), job_blocks(text), submitted,
        sacct(run_id, since),
    )  # fmt: skip


def sacct(run_id: str, since: datetime) -> pd.DataFrame:
    cols = ["JobIDRaw", "JobName", "Partition", "State", "ExitCode", "AllocTRES", "Comment"]
    start_day = since.strftime("%Y-%m-%dT00:00:00")
    out = _check(
        ["sacct", "-X", "-n", "-P", "--name", run_id, "--starttime", start_day,
         "--format=" + ",".join(cols)]
    )  # fmt: skip
    rows = [line.split("|", len(cols) - 1) for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=cols)


@dataclass
class Runs:
    main: SlurmRun
    probe: SlurmRun
    cfg: dict
    seconds: float


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    require_cluster()
    tmp = tmp_path_factory.mktemp("slurm")
    repo, cfg = clone_with_data(tmp / "qaclims")
    write_profile(repo / "profiles" / "slurm", tmp / "slurm_logs")  # the cluster overlay
    env = job_env(tmp)
    probe_profile = write_profile(tmp / "probe_profile", tmp / "probe_logs")
    probe_dir = tmp / "probe"
    probe_dir.mkdir()
    (probe_dir / "Snakefile").write_text(PROBE_SNAKEFILE)
    (probe_dir / "probe.py").write_text(PROBE_SCRIPT)
    t0, since = time.monotonic(), datetime.now()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    probe = start(
        probe_cmd(probe_dir / "Snakefile", probe_dir, probe_profile, ["--", *PROBE_TARGETS]),
        env, tmp / "probe.out",
    )  # fmt: skip
    data = start(readme_cmd([f"results/{RUN}/data/classes.json"]), env, tmp / "data.out", repo)
    first = finish(data, tmp / "data.out", repo, since, deadline)
    _ok(first)
    released_cam_model(repo)
    main = finish(
        start(readme_cmd(targets(cfg)), env, tmp / "main.out", repo),
        tmp / "main.out", repo, since, deadline,
    )  # fmt: skip
    probe_run = finish(probe, tmp / "probe.out", probe_dir, since, deadline)
    seconds = time.monotonic() - t0
    n_jobs = len(first.submitted) + len(main.submitted) + len(probe_run.submitted)
    print(f"\nSLURM workflow test: {seconds:.0f} s, {n_jobs} SLURM jobs (work dir {tmp})")
    yield Runs(main, probe_run, cfg, seconds)


def _ok(run: SlurmRun) -> None:
    assert run.returncode == 0, f"snakemake exited {run.returncode}:\n{run.output[-6000:]}"


# ---------------------------------------------------------------------------------- tests


@slurm_test
def test_workflow_outputs_are_complete_and_sane(runs: Runs) -> None:
    _ok(runs.main)
    work, cfg = runs.main.workdir, runs.cfg
    for t in targets(cfg):
        summary = json.loads((work / t).read_text())
        assert 0.0 <= summary["miou"] <= 1.0, summary
        assert summary["num_images"] == len(VOC_IDS[cfg["splits"]["eval_cam"]]), summary
    for split in cfg["splits"]["cam"]:
        manifest = pd.read_parquet(work / f"results/{RUN}/data/manifest/{split}.parquet")
        assert len(manifest) == len(VOC_IDS[split])
        cams = sorted((work / f"results/{RUN}/make_cam/cam/{split}").glob("*/*.npz"))
        assert sorted(p.stem for p in cams) == sorted(manifest["image_id"])
        assert io.read_npz(cams[0])["cam"].dtype == np.uint8  # CAM file format 2
        _, cam = camfile.read_cam(cams[0])
        assert cam.dtype == np.float32 and 0.0 <= cam.min() and cam.max() <= 1.0


def rule_of(comment: str) -> str:
    """Rule name from the plugin's job comment ``rule_<name>[_wildcards_<values>]``."""
    m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment)
    assert m, f"unexpected SLURM job comment {comment!r}"
    return m.group(1)


@slurm_test
def test_every_planned_job_ran_as_one_completed_slurm_job(runs: Runs) -> None:
    run = runs.main
    _ok(run)
    acct = run.sacct
    assert set(acct["JobIDRaw"]) == set(run.submitted), (
        f"sacct and snakemake disagree on the job ids:\n{acct}\n{run.submitted}"
    )
    assert (acct["State"] == "COMPLETED").all() and (acct["ExitCode"] == "0:0").all(), acct
    assert Counter(map(rule_of, acct["Comment"])) == run.remote_plan(), acct
    for jid, comment in zip(acct["JobIDRaw"], acct["Comment"], strict=True):
        assert run.jobs[run.submitted[jid]].rule == rule_of(comment), (jid, comment)


@slurm_test
def test_gpu_jobs_got_their_gpus_on_the_gpu_partition(runs: Runs) -> None:
    run = runs.main
    _ok(run)
    gpu_rules = {j.rule for j in run.jobs.values() if j.gpu > 0}
    assert "make_cam" in gpu_rules, gpu_rules
    for _, row in run.sacct.iterrows():
        planned = run.jobs[run.submitted[row["JobIDRaw"]]]
        got = re.search(r"gres/gpu=(\d+)", row["AllocTRES"])
        assert (int(got.group(1)) if got else 0) == planned.gpu, (planned, row.to_dict())
        # GPU jobs must land on the gpu partition; the profile may also send a GPU-family
        # rule that needs no GPU in this config (vqa with precomputed answers) there.
        if planned.gpu:
            assert row["Partition"] == "gpu", (planned, row.to_dict())


@slurm_test
def test_gpu_jobs_keep_the_devices_slurm_chose(runs: Runs) -> None:
    _ok(runs.probe)
    acct = runs.probe.sacct.set_index("JobIDRaw")
    for t in PROBE_TARGETS:
        rec = json.loads((runs.probe.workdir / t).read_text())
        assert rec["gpu"] == 1 and rec["job_id"] in acct.index, rec
        assert re.fullmatch(r"[0-3]", rec["before"] or ""), f"SLURM set no GPU: {rec}"
        assert rec["inside"] == rec["before"] == rec["step_gpus"], rec
        assert "gres/gpu=1" in acct.loc[rec["job_id"], "AllocTRES"]
        probe_log = (runs.probe.workdir / t.replace(".json", ".log")).read_text()
        assert f"set by SLURM job {rec['job_id']}" in probe_log, probe_log
    _ok(runs.main)
    gpu_jobs = [j for j in runs.main.jobs.values() if j.gpu > 0]
    assert gpu_jobs
    for job in gpu_jobs:
        text = (runs.main.workdir / job.log).read_text()
        assert f"rule {job.rule} on" in text and "(set by SLURM job" in text, text
        assert "CUDA_VISIBLE_DEVICES=" not in text, text  # the picker chose nothing itself


def test_fake_nvidia_smi_makes_the_picker_choose(tmp_path: Path, monkeypatch, caplog) -> None:
    """Control for the test above: with no CUDA_VISIBLE_DEVICES the picker does log."""
    from qaclims.core import devices

    env = job_env(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("QACLIMS_GPU_LOCK_DIR", env["QACLIMS_GPU_LOCK_DIR"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.count_gpus() == 4
    with caplog.at_level("INFO", logger="qaclims.core.devices"), devices.acquire_gpus(1) as ids:
        assert ids == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "using GPUs" in caplog.text
