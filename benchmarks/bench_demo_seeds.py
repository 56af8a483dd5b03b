"""Run the demo over several seeds and write the seed table.

For each seed, sets the given config keys (default ``train_ritc.seed``) to it in an overlay
on ``config/config.yaml`` and runs the workflow up to both CAM evaluations (``--to cam``) or
up to every evaluation (``--to deeplab``: seeds, IRN, DeepLab too) in one run folder
(``results/<run>``), so every stage upstream of the first seeded one is computed once and
reused. Writes ``results/<run>/benchmarks/seeds.csv`` (one row per seed and class: baseline
and QA-CLIMS IoU) and ``seeds_summary.csv`` (per stage: mean, sd and n over the seeds of
mIoU; the smallest per-class gain of QA-CLIMS; for QA-CLIMS against the baseline and for
IRN against QA-CLIMS, the seeds where it is better and the smallest gain of a single
seed), and prints them.

    python benchmarks/bench_demo_seeds.py                       # seeds 0 1 2 of train_ritc
    python benchmarks/bench_demo_seeds.py --whole --to deeplab --seeds 0 1 2 3 4  # all seeds

``--whole``: the seed of every seeded stage up to the last one run (the synthetic world, the
tiny BLIP and CLIP, train_cam, train_ritc; with ``--to deeplab`` also train_irn and
train_deeplab: :data:`WHOLE`, :data:`WHOLE_REFINE`), so each seed is a new pipeline from
the data on.

The README's seed table is made from these files by ``python -m qaclims.report.readme``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qaclims.core.io import read_json  # noqa: E402

#: the seed keys of every seeded stage up to the CAMs, upstream first
WHOLE = ("synthetic.seed", "train_tiny_blip.seed", "train_tiny_clip.seed", "train_cam.seed",
         "train_ritc.seed")  # fmt: skip
#: ... and of the seeded stages after them (``--to deeplab``)
WHOLE_REFINE = (*WHOLE, "train_irn.seed", "train_deeplab.seed")

#: stage -> the evaluation summary it is read from (under ``results/<run>``), in DAG order
EVALS = {
    "cam": "eval_cam/cam/val",
    "ritc": "eval_cam/ritc/val",
    "seeds": "eval_seeds/ritc/val",
    "irn": "eval_sem_seg/ritc/val",
    "deeplab": "eval_deeplab/val/nocrf",
    "deeplab_crf": "eval_deeplab/val/crf",
}
#: stage -> the stage its per-seed gain is counted against
AGAINST = {"ritc": "cam", "irn": "ritc"}


def cpu_kernels(native: bool = False) -> str:
    """torch's CPU kernels (``AVX2``, ``AVX512``, ``DEFAULT``) in a job started from this
    process's environment, or with ``native`` torch's own choice on this machine (without
    ``ATEN_CPU_CAPABILITY``); ``unknown`` where torch does not say."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if not (native and k == "ATEN_CPU_CAPABILITY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip() or "unknown"


def summarise(table: pd.DataFrame, stages: pd.DataFrame) -> pd.DataFrame:
    """Per stage (``cam``, ``ritc``, and ``seeds`` ... ``deeplab_crf`` where they ran, in
    :data:`EVALS` order): mean, sd, n of mIoU over the seeds; for ``ritc`` the smallest
    per-class gain (mean over the seeds) and its class; for each stage of :data:`AGAINST`
    the stage it is compared with (``against``), the number of seeds where it is better
    (``wins``) and the smallest mIoU gain of one seed (``min_seed_gain``, ``min_seed``);
    ``-1`` / NaN / ``""`` where a column does not apply. ``table``: seed, class, gain (ritc -
    cam); ``stages``: seed, stage, miou."""
    per_stage = stages.groupby("stage")["miou"].agg(["mean", "std", "count"])
    order = [s for s in EVALS if s in per_stage.index]
    summary = per_stage.loc[order].rename(columns={"std": "sd", "count": "n"}).reset_index()
    gains = table.groupby("class")["gain"].mean()
    wide = stages.pivot(index="seed", columns="stage", values="miou")
    summary["min_class_gain"] = [float(gains.min()) if s == "ritc" else float("nan") for s in order]
    summary["min_class"] = [str(gains.idxmin()) if s == "ritc" else "" for s in order]
    against, wins, worst, worst_seed = [], [], [], []
    for stage in order:
        ref = AGAINST.get(stage, "")
        gain = wide[stage] - wide[ref] if ref in wide else None
        against.append(ref if gain is not None else "")
        wins.append(int((gain > 0).sum()) if gain is not None else -1)
        worst.append(float(gain.min()) if gain is not None else float("nan"))
        worst_seed.append(int(gain.idxmin()) if gain is not None else -1)
    summary["against"] = against
    summary["wins"] = wins
    summary["min_seed_gain"] = worst
    summary["min_seed"] = worst_seed
    return summary


def overlay(run: str, keys: list[str], seed: int) -> dict[str, object]:
    """``{run: ..., stage: {seed: s}, ...}`` for dotted ``keys`` such as ``train_ritc.seed``."""
    out: dict[str, object] = {"run": run}
    for key in keys:
        *path, leaf = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = seed  # type: ignore[index]
    return out


def run_evals(
    run: str,
    over: dict[str, object],
    cores: int,
    env: dict[str, str] | None = None,
    forcerun: tuple[str, ...] = (),
    to: str = "cam",
) -> tuple[dict[str, pd.DataFrame], dict[str, float], float]:
    """Run the workflow on ``config/config.yaml`` + ``over`` in ``results/<run>`` up to both
    CAM evaluations on val (``to="cam"``) or up to every evaluation (``to="deeplab"``);
    returns the per-class tables of ``cam`` and ``ritc``, the mIoU (%) of every stage run
    (keys of :data:`EVALS`) and the wall time in seconds. ``env``: extra environment (say
    ``ATEN_CPU_CAPABILITY``); ``forcerun``: rules to run again even when up to date."""
    res = ROOT / "results" / run
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"run": run, **over}, f)
    stages = list(EVALS) if to == "deeplab" else ["cam", "ritc"]
    rel = res.relative_to(ROOT)  # Snakemake names outputs relative to the repository
    targets = [str(rel / EVALS[s] / "summary.json") for s in stages]
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--resources", "gpu=1",
           "--configfile", "config/config.yaml", f.name]  # fmt: skip
    if forcerun:
        cmd += ["--forcerun", *forcerun]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--", *targets], cwd=ROOT, check=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    per = {m: pd.read_parquet(res / EVALS[m] / "per_class.parquet") for m in ("cam", "ritc")}
    miou = {s: 100 * float(read_json(res / EVALS[s] / "summary.json")["miou"]) for s in stages}
    return per, miou, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keys", nargs="+", default=["train_ritc.seed"])
    ap.add_argument(
        "--to",
        choices=("cam", "deeplab"),
        default="cam",
        help="run up to the CAM evaluations or up to every evaluation",
    )
    ap.add_argument(
        "--whole",
        action="store_true",
        help=f"--keys {' '.join(WHOLE)} (--to deeplab: and train_irn, train_deeplab)",
    )
    ap.add_argument("--run", default="demo-seeds")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if args.whole:
        args.keys = list(WHOLE_REFINE if args.to == "deeplab" else WHOLE)
    res = ROOT / "results" / args.run
    rows, stages, seconds = [], [], []
    for seed in args.seeds:
        over = overlay(args.run, args.keys, seed)
        per, miou, took = run_evals(args.run, over, args.cores, to=args.to)
        seconds.append(took)
        for c, a, b in zip(per["cam"]["class"], per["cam"]["iou"], per["ritc"]["iou"], strict=True):
            rows.append({"seed": seed, "class": c, "cam": 100 * a, "ritc": 100 * b})
        stages += [{"seed": seed, "stage": m, "miou": v} for m, v in miou.items()]
        figures = ", ".join(f"{m} {v:.2f}" for m, v in miou.items())
        print(f"seed {seed}: {figures} ({seconds[-1]:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    table["gain"] = table["ritc"] - table["cam"]
    summary = summarise(table, pd.DataFrame(stages))
    summary["keys"] = " ".join(args.keys)
    summary["seeds"] = " ".join(map(str, args.seeds))
    summary["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_kernels()} kernels, "
        f"--cores {args.cores}"
    )
    summary["seconds_per_seed"] = sum(seconds[1:]) / max(1, len(seconds) - 1)
    out = res / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "seeds.csv", index=False, float_format="%.4f")
    summary.to_csv(out / "seeds_summary.csv", index=False, float_format="%.4f")
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 140):
        print(table.pivot(index="class", columns="seed", values="gain").to_string())
        print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
