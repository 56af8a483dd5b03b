"""The README's demo figures, made from a run's outputs (never typed by hand).

``python -m qaclims.report.readme results/demo [--seeds results/demo-seeds] [--write README.md]``
prints (or writes between the README's ``<!-- demo-figures:begin -->`` and
``<!-- demo-figures:end -->`` markers) a Markdown block with

- the stage table of the run (:func:`qaclims.report.summary.collect`), with the
  all-background floor;
- where it ran: the machine, torch's training threads (``threads.train_torch`` of the run's
  ``config.yaml``), the seeds, and the wall time ``make demo`` recorded
  (``benchmarks/make_demo_seconds.txt``);
- with ``--seeds``, the seed table of ``benchmarks/bench_demo_seeds.py``: mean +- sd and n
  of every stage it ran over the seeds, the smallest per-class gain, and in how many seeds
  QA-CLIMS beats the baseline (and IRN QA-CLIMS's CAMs).

``python -m qaclims.report.readme --experiments results/demo [--write README.md]`` makes the
block between ``<!-- experiments-figures:begin -->`` and ``<!-- experiments-figures:end -->``
instead: the comparison of the run's experiment (rule ``compare_experiments``), one row per
variant, mean ± sd (n seeds) and the change against the reference, with the wall time and
jobs ``benchmarks/bench_experiments.py`` recorded.

``python -m qaclims.report.readme --speed benchmarks/records/*.jsonl [--write README.md]``
makes the speed table between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` from the
benchmarks' records (:mod:`qaclims.report.speed`), and the dry-run table of the whole DAG
between ``<!-- dag:begin -->`` and ``<!-- dag:end -->`` from their ``bench_dag.py`` records;
with ``--write`` it also rewrites the GPU-hours block of the VOC pipeline
(:mod:`qaclims.report.gpu_hours`) from the same records.

``python -m qaclims.report.readme --deviations benchmarks/records/deviations-demo.json
[--write docs/REPRODUCING.md]`` makes the block between ``<!-- deviations:begin -->`` and
``<!-- deviations:end -->``: the measured effect of each deliberate deviation on the demo
(:mod:`qaclims.report.deviations`).

``python -m qaclims.report.readme --demo-settings [--write docs/REPRODUCING.md]`` makes the
block between ``<!-- demo-settings:begin -->`` and ``<!-- demo-settings:end -->``: each
setting of the demo that differs from the VOC paper config, with the demo file's comment on it
(:mod:`qaclims.report.demo_settings`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import yaml

from qaclims.core.errors import DataError
from qaclims.report import demo_settings, deviations, gpu_hours, speed
from qaclims.report.summary import collect

#: (image, class) pairs per VOC train_aug image that the README's GPU-hours table assumes
#: for the VQA stage (an estimate: ``python -m qaclims.report.gpu_hours --manifest`` counts
#: them in a built manifest).
VOC_PAIRS_PER_IMAGE = 1.5

#: the files the demo-settings block compares
DEMO_CONFIG = gpu_hours.ROOT / "config" / "config.yaml"
PAPER_CONFIG = gpu_hours.ROOT / "config" / "voc12.yaml"

BEGIN, END = "<!-- demo-figures:begin -->", "<!-- demo-figures:end -->"
EXP_BEGIN, EXP_END = "<!-- experiments-figures:begin -->", "<!-- experiments-figures:end -->"

#: (stage, variant suffix) -> row label of the README table
LABELS: tuple[tuple[str, str, str], ...] = (
    ("eval_cam", "cam", "CAM, baseline classifier (IRN recipe)"),
    ("eval_cam", "ritc", "CAM, QA-CLIMS (RITC)"),
    ("eval_seeds", "", "confident seeds after dense CRF"),
    ("eval_sem_seg", "", "IRN random-walk pseudo masks"),
    ("eval_deeplab", "nocrf", "DeepLab-v2 (tiny) on the pseudo masks, no CRF"),
    ("eval_deeplab", "crf", "DeepLab-v2 (tiny) on the pseudo masks, with CRF"),
)


def _pct(v: object) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"  # type: ignore[arg-type]


def stage_table(run_dir: Path) -> str:
    """The run's stage table as Markdown (mIoU %, GT-tuned best threshold, coverage)."""
    df = collect(run_dir)
    if df.empty:
        raise DataError(f"no evaluation summaries under {run_dir}: run the workflow first")
    lines = [
        "| stage | mIoU (%) | best threshold (GT-tuned) | pixels labelled |",
        "|---|---|---|---|",
    ]
    for stage, suffix, label in LABELS:
        for r in df[df["stage"] == stage].itertuples():
            parts = str(r.variant).split("/")
            if suffix and suffix not in parts:
                continue
            cov = "" if pd.isna(r.coverage) or r.coverage == 1 else f"{_pct(r.coverage)} %"
            lines.append(f"| {label} | {_pct(r.miou)} | {_pct(r.best_miou)} | {cov} |")
    floor = df["background_only_miou"].dropna()
    if len(floor):
        lines.append(f"| all background (the floor) | {_pct(float(floor.iloc[0]))} | | |")
    return "\n".join(lines)


def provenance(run_dir: Path) -> str:
    """Where and how the run was made: date, machine, threads, seeds, wall time."""
    cfg = (
        yaml.safe_load((run_dir / "config.yaml").read_text())
        if (run_dir / "config.yaml").is_file()
        else {}
    )
    threads = cfg.get("threads", {}).get("train_torch", "?")
    seeds = ", ".join(
        f"{k} {v['seed']}" for k, v in cfg.items() if isinstance(v, dict) and "seed" in v
    )
    summaries = list(run_dir.glob("eval_*/**/summary.json"))
    when = (
        dt.datetime.fromtimestamp(max(p.stat().st_mtime for p in summaries)).date()
        if summaries
        else "?"
    )
    wall = run_dir / "benchmarks" / "make_demo_seconds.txt"
    took = (
        f"; `make demo` took {int(wall.read_text().strip()) / 60:.1f} min" if wall.is_file() else ""
    )
    cpu = speed.cpu_model()
    return (
        f"Run of {when} on {platform.system()} {platform.machine()} ({cpu}, {os.cpu_count()} CPUs, "
        f"no GPU), torch training threads {threads}; seeds: {seeds or 'as shipped'}{took}."
    )


#: stage of ``bench_demo_seeds.py``'s summary -> row label of the seed table
SEED_LABELS = {
    "cam": "CAM, baseline",
    "ritc": "CAM, QA-CLIMS",
    "seeds": "confident seeds after dense CRF (labelled pixels)",
    "irn": "IRN random-walk pseudo masks",
    "deeplab": "DeepLab-v2 (tiny), no CRF",
    "deeplab_crf": "DeepLab-v2 (tiny), with CRF",
}


def seed_table(seeds_dir: Path) -> str:
    """``bench_demo_seeds.py``'s summary as Markdown: mean +- sd (n) per stage, and how often
    QA-CLIMS beats the baseline (and IRN QA-CLIMS's CAMs, where the refinement ran)."""
    path = seeds_dir / "benchmarks" / "seeds_summary.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: run benchmarks/bench_demo_seeds.py first")
    s = pd.read_csv(path)
    lines = ["| stage | mIoU (%), mean ± sd | n |", "|---|---|---|"]
    for r in s.itertuples():
        label = SEED_LABELS.get(str(r.stage), str(r.stage))
        lines.append(f"| {label} | {r.mean:.2f} ± {r.sd:.2f} | {r.n} |")
    ritc = s[s["stage"] == "ritc"].iloc[0]
    cam = s[s["stage"] == "cam"].iloc[0]
    keys = ", ".join(f"`{k}`" for k in str(ritc["keys"]).split())
    irn = s[s["stage"] == "irn"]
    refine = ""
    if len(irn):
        i = irn.iloc[0]
        refine = (
            f" IRN's pseudo masks beat QA-CLIMS's CAMs by {i['mean'] - ritc['mean']:+.2f} points "
            f"on average and in {int(i['wins'])} of {int(i['n'])} seeds, the smallest gain of "
            f"one seed is {i['min_seed_gain']:+.2f} (seed {int(i['min_seed'])})."
        )
    return (
        "\n".join(lines)
        + (
            f"\n\nGain {ritc['mean'] - cam['mean']:+.2f} points over seeds {ritc['seeds']} of "
            f"{keys}; QA-CLIMS beats the baseline in {int(ritc['wins'])} of {int(ritc['n'])} "
            f"seeds, the smallest gain of one seed is {ritc['min_seed_gain']:+.2f} (seed "
            f"{int(ritc['min_seed'])}); the smallest per-class gain (mean over the seeds) is "
            f"{ritc['min_class_gain']:+.2f} ({ritc['min_class']}); {ritc['machine']}."
        )
        + refine
        + kernel_spread(seeds_dir)
    )


def kernel_spread(seeds_dir: Path) -> str:
    """``bench_demo_kernels.py``'s table as one sentence (``""`` where it has not run): the
    QA-CLIMS mIoU per choice of CPU kernels on identical inputs and seed, and its spread."""
    path = seeds_dir / "benchmarks" / "kernels.csv"
    if not path.is_file():
        return ""
    k = pd.read_csv(path)
    each = ", ".join(
        f"{r.ritc:.2f} ({str(r.kernels).upper()}{' native' if r.native else ''})"
        for r in k.itertuples()
    )
    threads = ", ".join(str(t) for t in sorted(set(k["threads"])))
    return (
        f" On identical inputs and seed ({k['seed'].iloc[0]}) at {threads} training threads, "
        f"the CPU's kernels alone give QA-CLIMS {each}: a spread of "
        f"{k['ritc'].max() - k['ritc'].min():.2f} points ({k['machine'].iloc[0]}; "
        "`benchmarks/bench_demo_kernels.py`)."
    )


def block(run_dir: Path, seeds_dir: Path | None = None) -> str:
    """The whole README block between the markers (markers included)."""
    parts = [BEGIN, stage_table(run_dir), "", provenance(run_dir)]
    if seeds_dir is not None:
        parts += ["", seed_table(seeds_dir)]
    parts.append(END)
    return "\n".join(parts)


def experiments_block(run_dir: Path) -> str:
    """The experiment's comparison as Markdown between the experiments markers."""
    from qaclims.report.experiments import HEADINGS

    path = run_dir / "experiments" / "comparison.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: run the experiment first")
    t = pd.read_csv(path)
    metrics = list(dict.fromkeys(t["metric"]))
    lines = [
        "| variant | " + " | ".join(HEADINGS[m] + " (%)" for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    ref = str(t.loc[t["delta"].abs() < 1e-12, "variant"].iloc[0])
    for variant, rows in t.groupby("variant", sort=False):
        by = rows.set_index("metric")
        cells = []
        for m in metrics:
            r = by.loc[m]
            sd = "" if math.isnan(r["sd"]) else f" ± {r['sd']:.2f}"
            delta = "" if variant == ref else f" ({r['delta']:+.2f})"
            cells.append(f"{r['mean']:.2f}{sd}{delta}")
        name = f"{variant} (reference)" if variant == ref else str(variant)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = ", ".join(sorted(set(t["seeds"].astype(str))))
    text = "\n".join(lines) + f"\n\nmean ± sd over seeds {seeds} (n = {int(t['n'].max())}); in "
    text += "brackets the change of the mean against the reference."
    wall = run_dir / "experiments" / "benchmarks" / "wall.json"
    if wall.is_file():
        w = yaml.safe_load(wall.read_text())
        cells_run = sum(n for r, n in w["jobs"].items() if r.endswith("_cell"))
        own = sum(n for r, n in w["jobs"].items() if not r.endswith("_cell")) - 1  # all
        start = (
            "from a fresh clone (the run's own stages included)"
            if "synthetic" in w["jobs"]
            else "after the run's own stages"
        )
        text += (
            f" `{w['command']}` took {w['seconds'] / 60:.1f} min {start} on {w['machine']} "
            f"(--cores {w['cores']}; {cells_run} jobs of the cells and {own} of the run "
            "itself, recorded by `benchmarks/bench_experiments.py`)."
        )
    return "\n".join([EXP_BEGIN, text, EXP_END])


def replace_block(
    text: str, new_block: str, where: str = "README.md", markers: tuple[str, str] = (BEGIN, END)
) -> str:
    """``text`` with the part between the markers replaced; DataError without markers."""
    begin, end = markers
    if begin not in text or end not in text:
        raise DataError(f"{where} has no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    return head + new_block + rest.split(end, 1)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="results/demo")
    ap.add_argument("--seeds", default=None, help="run folder of bench_demo_seeds.py")
    ap.add_argument("--write", default=None, help="README to update in place")
    ap.add_argument("--experiments", action="store_true", help="the experiments block instead")
    ap.add_argument("--speed", nargs="+", default=None, help="speed record files: that block")
    ap.add_argument("--deviations", default=None, help="bench_deviations.py record: that block")
    ap.add_argument(
        "--demo-settings", action="store_true", help="the demo against the paper config: that block"
    )
    args = ap.parse_args(argv)
    if args.speed and args.write:  # the GPU-hours estimate comes from the same records
        gpu_hours.main(["--records", *args.speed, "--pairs-per-image", str(VOC_PAIRS_PER_IMAGE),
                        "--write", args.write])  # fmt: skip
    blocks: list[tuple[str, tuple[str, str]]] = []
    if args.speed:
        blocks = [
            (speed.block(args.speed), (speed.BEGIN, speed.END)),
            (speed.dag_block(args.speed), (speed.DAG_BEGIN, speed.DAG_END)),
        ]
    elif args.deviations:
        record = json.loads(Path(args.deviations).read_text())
        blocks = [(deviations.block(record), (deviations.BEGIN, deviations.END))]
    elif args.demo_settings:
        new = demo_settings.block(DEMO_CONFIG, PAPER_CONFIG)
        blocks = [(new, (demo_settings.BEGIN, demo_settings.END))]
    elif args.experiments:
        blocks = [(experiments_block(Path(args.run_dir)), (EXP_BEGIN, EXP_END))]
    else:
        seeds = Path(args.seeds) if args.seeds else None
        blocks = [(block(Path(args.run_dir), seeds), (BEGIN, END))]
    if args.write:
        readme = Path(args.write)
        text = readme.read_text()
        for new, markers in blocks:
            text = replace_block(text, new, str(readme), markers)
        readme.write_text(text)
    else:
        print("\n\n".join(new for new, _ in blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
