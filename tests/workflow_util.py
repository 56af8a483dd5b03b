"""Helpers for tests that drive Snakemake as a user would (a subprocess per call)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "config.yaml"
SMOKE = ROOT / "config" / "smoke.yaml"


def snakemake(
    workdir: Path,
    *args: str,
    configfiles: tuple[Path, ...] = (CONFIG, SMOKE),
    check: bool = True,
    timeout: int = 1200,
    repo: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m snakemake`` on ``repo``'s Snakefile in ``workdir``."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        "--workflow-profile",
        "none",
        "--configfiles",
        *map(str, configfiles),
        *args,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
        )
    return r


def dry_run_jobs(workdir: Path, *args: str, **kw: Any) -> dict[str, int]:
    """Rule -> job count that a dry run would execute (parsed from the job stats table)."""
    r = snakemake(workdir, "-n", "--cores", "8", "--resources", "gpu=4", *args, **kw)
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    stats = out.split("Job stats:", 1)[1]
    jobs: dict[str, int] = {}
    for line in stats.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        jobs[m.group(1)] = int(m.group(2))
    jobs.pop("total", None)
    return jobs


def copy_repo(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, library) to edit in a test."""
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(
            ".venv",
            "results",
            ".snakemake",
            ".git",
            "logs",
            "__pycache__",
            "benchmarks",
            "tests",
            "*.egg-info",
            ".*_cache",
        ),
    )
    return dest


def write_overlay(path: Path, overlay: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(overlay))
    return path
