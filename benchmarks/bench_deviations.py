"""Measure the deliberate deviations of docs/REPRODUCING.md on the embedded demo.

Runs the preset ``config/deviations-demo.yaml`` as the README's experiment command does
(each variant flips one switch of the demo; what the switch reaches is computed again, up
to DeepLab), times it, and records the comparison with where it ran in
``benchmarks/records/deviations-demo.json`` (:func:`qaclims.report.deviations.make_record`).
``python -m qaclims.report.readme --deviations benchmarks/records/deviations-demo.json
--write docs/REPRODUCING.md`` then tables it there.

    python benchmarks/bench_deviations.py --cores 2 --gpus 1
    python benchmarks/bench_deviations.py --record-only   # re-record a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qaclims.core import provenance  # noqa: E402
from qaclims.report import deviations  # noqa: E402
from tests.workflow_util import job_counts  # noqa: E402

PRESET = "config/deviations-demo.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus", type=int, default=None, help="--resources gpu= (default: cores)")
    ap.add_argument("--record", default="benchmarks/records/deviations-demo.json")
    ap.add_argument("--record-only", action="store_true", help="record a finished run again")
    ap.add_argument("--run-dir", default=None, help="the run (default: results/<run> of the demo)")
    args = ap.parse_args()
    gpus = args.gpus if args.gpus is not None else args.cores
    files = ["config/config.yaml", PRESET]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--resources",
           f"gpu={gpus}", "--configfile", *files]  # fmt: skip
    cfg = yaml.safe_load((ROOT / files[0]).read_text())
    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "results" / str(cfg.get("run", "demo"))
    wall = run_dir / "experiments" / "benchmarks" / "deviations-wall.json"
    if not args.record_only:
        dry = subprocess.run([*cmd, "-n"], cwd=ROOT, capture_output=True, text=True, check=True)
        jobs = job_counts(dry.stdout + dry.stderr)
        code = provenance.code_version()  # what ran, not what is checked out when recording
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        timing = {
            "code": code,
            "seconds": round(time.perf_counter() - t0, 1),
            "jobs": jobs,
            "command": "snakemake " + " ".join(cmd[3:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "cores": args.cores,
        }
        wall.parent.mkdir(parents=True, exist_ok=True)
        wall.write_text(json.dumps(timing, indent=1) + "\n")
    timing = json.loads(wall.read_text())
    preset = yaml.safe_load((ROOT / PRESET).read_text())
    record = deviations.make_record(run_dir, preset, timing)
    out = ROOT / args.record
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(deviations.block(record))


if __name__ == "__main__":
    main()
