"""The benchmark scripts that feed the README's speed and GPU-hours tables run and record
(their CPU paths: gpu_check.sh runs the same code with the paper's networks on a GPU)."""

from __future__ import annotations

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
