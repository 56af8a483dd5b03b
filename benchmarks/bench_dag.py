"""Time the dry run of a paper config's whole DAG at several shard counts.

Builds the manifests of a fake tree once (``tests/workflow_util.fake_coco`` / ``fake_voc``;
the dry run's cost depends on the jobs and edges, not on the images), then times
``snakemake -n`` over the complete DAG for each shard count, and prints jobs, dependency
edges (from ``--dag``) and seconds (best of ``--repeat``). With one shard layout through
the chain, edges grow linearly with the shard count.

The last column is Snakemake's own floor: the dry run of a generated Snakefile with the same
rules and job counts, each job a one-line script rule reading one file of one upstream job
(no config, no params, no logs). What lies above it is the workflow's; the floor itself
grows by ~3.5 ms per job on this 2-core machine (Snakemake 9.27.1: building each job,
reading its script, expanding its resources, printing it).

    python benchmarks/bench_dag.py                     # coco14 at 8, 32 and 128 shards
    python benchmarks/bench_dag.py --config voc12 --shards 8 64
    python benchmarks/bench_dag.py --config voc12 --shards 8 --overlay config/ablations-voc12.yaml

``--overlay``: more config files after the paper config (an experiment preset: its cells'
jobs are counted too). ``--record FILE`` appends one record per shard count to ``FILE``
(:func:`qaclims.report.speed.append_dag`); ``make speed-table`` makes the README's dry-run
table from ``benchmarks/records/``.

Where the SLURM client tools are installed, every Snakemake call (the floor's too) imports the
SLURM executor plugin, which asks ``sacct``/``squeue`` for its defaults at import: with the
controller unreachable that waits ~9 s per call here, so time with the cluster up
(``bash .ci/slurm/up.sh`` on this machine) or without the client tools.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qaclims.report import speed  # noqa: E402
from tests.workflow_util import (  # noqa: E402
    dry_run_jobs,
    fake_checkpoints,
    fake_coco,
    fake_voc,
    pretrained_caches,
    snakemake,
    write_overlay,
)


def floor_snakefile(jobs: dict[str, int], path: Path) -> None:
    """A Snakefile with ``jobs[rule]`` jobs per rule: each a script rule whose output is read
    by ``all`` and whose input is one file of rule ``root`` (one edge per job)."""
    (path.parent / "s.py").write_text("pass\n")
    lines = [
        "rule all:",
        "    input:",
        *(f"        expand('out/{r}/{{i}}', i=range({n}))," for r, n in jobs.items()),
        "rule root:",
        "    output: 'out/root'",
        "    shell: 'touch {output}'",
    ]
    for r in jobs:
        lines += [
            f"rule {r}:",
            "    input: 'out/root'",
            f"    output: 'out/{r}/{{i}}'",
            "    script: 's.py'",
        ]
    path.write_text("\n".join(lines) + "\n")


def floor_seconds(jobs: dict[str, int], tmp: Path, repeat: int) -> float:
    """Best of ``repeat`` dry runs (with the job listing) of :func:`floor_snakefile`."""
    d = tmp / "floor"
    d.mkdir(exist_ok=True)
    floor_snakefile({r: n for r, n in jobs.items() if r != "all"}, d / "Snakefile")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(d / "Snakefile"), "--directory", str(d),
           "--workflow-profile", "none", "-n", "--cores", "8", "--resources", "gpu=4"]  # fmt: skip
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="coco14", choices=["coco14", "voc12"])
    ap.add_argument("--shards", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--overlay", type=Path, nargs="*", default=[])
    ap.add_argument("--record", default=None, help="append the results to this JSON-lines file")
    args = ap.parse_args()
    cfg = ROOT / "config" / f"{args.config}.yaml"
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        if args.config == "coco14":
            fake_coco(data)
        else:
            fake_voc(data, {"train_aug": ["a", "b", "c"], "train": ["a", "b"], "val": ["d"]})
        fake_checkpoints(tmp, cfg)
        # offline (as the helper runs Snakemake): the parse checks that the models are cached
        os.environ.update(pretrained_caches(tmp / "caches", (cfg,)))
        over = write_overlay(tmp / "root.yaml", {"dataset": {"root": str(data)}})
        snakemake(tmp, "--cores", "1", "dataset", configfiles=(cfg, over))
        extra = tuple(p.resolve() for p in args.overlay)
        names = " + ".join([f"config/{args.config}.yaml", *map(str, args.overlay)])
        print(f"{names}, dry run of the whole DAG, cpus={os.cpu_count()}")
        print(f"{'shards':>7} {'jobs':>7} {'edges':>7} {'seconds':>8} {'floor':>6}")
        for n in args.shards:
            sh = write_overlay(tmp / f"s{n}.yaml", {"shards": n})
            files = (cfg, *extra, over, sh)
            best = float("inf")
            jobs: dict[str, int] = {}
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                jobs = dry_run_jobs(tmp, configfiles=files)
                best = min(best, time.perf_counter() - t0)
            dot = snakemake(tmp, "--dag", "--cores", "1", configfiles=files).stdout
            edges = sum(1 for line in dot.splitlines() if "->" in line)
            floor = floor_seconds(jobs, tmp, args.repeat)
            print(f"{n:>7} {sum(jobs.values()):>7} {edges:>7} {best:>8.2f} {floor:>6.2f}")
            if args.record:
                speed.append_dag(args.record, config=names, shards=n, jobs=sum(jobs.values()),
                                 edges=edges, seconds=best, floor=floor,
                                 snakemake=version("snakemake"))  # fmt: skip


if __name__ == "__main__":
    main()
