"""Print the headline figures of a finished run: ``python -m qaclims.report.summary results/<run>``.

Collects every ``eval_*/.../summary.json`` under the run folder into one table (stage,
method, split, images, mIoU, best-threshold mIoU, all-background baseline, coverage), then
a line per archive made for the VOC evaluation server (``submission/<split>.json``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from qaclims.core.io import read_json

STAGE_ORDER = ["eval_cam", "eval_seeds", "eval_sem_seg", "eval_deeplab"]


def collect(run_dir: str | Path) -> pd.DataFrame:
    """One row per ``summary.json`` found under ``run_dir/eval_*``; empty frame if none."""
    rows: list[dict[str, Any]] = []
    for p in sorted(Path(run_dir).glob("eval_*/**/summary.json")):
        s = read_json(p)
        rel = p.relative_to(run_dir).parts
        rows.append(
            {
                "stage": rel[0],
                "variant": "/".join(rel[1:-1]),
                "images": s.get("num_images"),
                "miou": s.get("miou"),
                "best_miou": s.get("best_miou"),
                "background_only_miou": s.get("all_background_miou"),
                "coverage": s.get("coverage"),
            }
        )
    df = pd.DataFrame(rows)
    if not df.empty:
        df["order"] = df["stage"].map({s: i for i, s in enumerate(STAGE_ORDER)}).fillna(99)
        df = df.sort_values(["order", "variant"]).drop(columns="order").reset_index(drop=True)
    return df


def submission_line(path: str | Path) -> str:
    """The sentence of one ``submission/<split>.json`` (rule voc_submission): the archive's
    path beside it, its mask count and kind, its folder and sha256."""
    p = Path(path)
    s = read_json(p)
    return (
        f"VOC server archive {p.with_name(s['archive'])}: {s['images']} masks "
        f"({s['variant']}) under {s['members']}, sha256 {s['sha256']}"
    )


def submissions(run_dir: str | Path) -> list[str]:
    """:func:`submission_line` of every ``submission/*.json`` under ``run_dir``."""
    return [submission_line(p) for p in sorted(Path(run_dir).glob("submission/*.json"))]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    run_dir = Path(args[0] if args else "results/demo")
    df = collect(run_dir)
    if df.empty:
        print(f"no evaluation summaries under {run_dir}")
        return 1
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(df.to_string(index=False))
    for line in submissions(run_dir):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
