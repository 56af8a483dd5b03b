"""The benchmark scripts that feed the README's speed and GPU-hours tables run and record
(their CPU paths: gpu_check.sh runs the same code with the paper's networks on a GPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from qaclims.report import speed

ROOT = Path(__file__).resolve().parents[1]


def test_the_training_step_benchmark_records_both_steps(tmp_path: Path) -> None:
    rec = tmp_path / "r.jsonl"
    cmd = [sys.executable, "benchmarks/bench_train_ritc.py", "--steps", "1", "--train-cam",
           "--record", str(rec)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = speed.read([rec])
    assert [x["what"] for x in recs] == [
        "train_cam step, tiny, batch 16, 64 px",
        "RITC training step, tiny CAM net + tiny CLIP, batch 8",
    ]
    # CPU and tiny networks: rates, but not the GPU-hours table's (no stage)
    assert all(x["device"] == "cpu" and "stage" not in x and x["ours"] > 0 for x in recs)
    assert recs[0]["reference"] is None and recs[1]["reference"] > 0
    assert "train_cam step, tiny, batch 16, 64 px:" in r.stdout


def test_every_flag_gpu_check_passes_is_one_its_benchmark_takes() -> None:
    # gpu_check.sh runs on a lent GPU machine with minutes of budget: a misspelt flag there
    # costs a run. Each benchmark's --help lists the flags its parser takes.
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    calls = re.findall(r"python3 (benchmarks/\w+\.py)([^\"\n]*)", script)
    assert len(calls) >= 6
    helps: dict[str, str] = {}
    for path, args in calls:
        if path not in helps:
            r = subprocess.run([sys.executable, path, "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)  # fmt: skip
            assert r.returncode == 0, (path, r.stderr[-1000:])
            helps[path] = r.stdout
        flags = re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", args)
        assert flags, path
        for flag in flags:
            assert re.search(rf"(?<![\w-]){flag}(?![\w-])", helps[path]), f"{path}: no {flag}"
