"""Time an experiment run as the README gives it, and record what ran.

Dry-runs the command first (the jobs per rule it will run: with the run's own stages
already there, only the cells' stages and the comparison), runs it, and writes
``results/<run>/experiments/benchmarks/wall.json`` (seconds, jobs per rule, machine,
cores) beside the comparison; ``python -m qaclims.report.readme --experiments`` puts it in
the README with the table.

    python benchmarks/bench_experiments.py          # config.yaml + experiments-demo.yaml
    python benchmarks/bench_experiments.py --configfiles \
        config/voc12.yaml config/ablations-voc12.yaml
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

from tests.workflow_util import job_counts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfiles", nargs="+",
                    default=["config/config.yaml", "config/experiments-demo.yaml"])  # fmt: skip
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus", type=int, default=None, help="--resources gpu= (default: cores)")
    args = ap.parse_args()
    gpus = args.gpus if args.gpus is not None else args.cores
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--resources",
           f"gpu={gpus}", "--configfile", *args.configfiles]  # fmt: skip
    dry = subprocess.run([*cmd, "-n"], cwd=ROOT, capture_output=True, text=True, check=True)
    jobs = job_counts(dry.stdout + dry.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    cfg: dict[str, object] = {}
    for f in args.configfiles:
        cfg.update(yaml.safe_load((ROOT / f).read_text()) or {})
    out = ROOT / "results" / str(cfg.get("run", "demo")) / "experiments" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "seconds": round(seconds, 1),
        "jobs": jobs,
        "command": "snakemake " + " ".join(cmd[3:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "cores": args.cores,
    }
    (out / "wall.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
