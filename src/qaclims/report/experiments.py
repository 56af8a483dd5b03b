"""The comparison of an experiment's variants (rule ``compare_experiments``).

Input: a plan, one row per (variant, seed, evaluation) with that cell's ``summary.json`` and
``per_class.parquet`` (:func:`workflow/rules/experiments.smk:comparison_plan`). Output:

- ``comparison.parquet`` / ``.csv``: one row per (variant, metric): ``mean``, ``sd`` (sample
  standard deviation over seeds, ``ddof=1``; NaN with one seed), ``n`` and the seeds, in
  percent; plus ``delta`` (mean minus the reference variant's mean);
- ``per_class.csv``: one row per (variant, evaluation, class): IoU mean, sd, n, and the delta
  of the mean against the reference variant;
- ``comparison.html``: the table wide (a row per variant, ``mean ± sd (n)`` per metric) and
  the per-class deltas of the CAM; ``comparison.png``: a panel per metric on its own scale,
  a bar per variant with the seeds' sd as error bar and each seed as a dot.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qaclims.core.errors import DataError
from qaclims.core.io import PathLike, atomic_path, read_json
from qaclims.report.tables import STYLE

#: evaluation -> (metric column, summary key, heading)
METRICS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "eval_cam": (
        ("cam_miou", "miou", "CAM mIoU"),
        ("cam_best_miou", "best_miou", "CAM best-threshold mIoU (GT-tuned)"),
    ),
    "eval_seeds": (
        ("seeds_miou", "miou_covered", "seeds mIoU (labelled pixels)"),
        ("seeds_coverage", "coverage", "seeds coverage"),
    ),
    "eval_sem_seg": (("pseudo_miou", "miou", "pseudo masks mIoU"),),
    "eval_deeplab_nocrf": (("deeplab_miou", "miou", "DeepLab mIoU"),),
    "eval_deeplab_crf": (("deeplab_crf_miou", "miou", "DeepLab + CRF mIoU"),),
}
HEADINGS = {col: head for rows in METRICS.values() for col, _, head in rows}


def collect(plan: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-seed values: ``(metrics, per_class)``.

    ``metrics``: columns variant, seed, metric, value (percent). ``per_class``: variant,
    seed, stage, class, iou (percent). A missing file or key is a :class:`DataError` naming it.
    """
    rows, classes = [], []
    for r in plan:
        path = Path(r["summary"])
        if not path.is_file():
            raise DataError(f"missing evaluation summary: {path}")
        summary = read_json(path)
        for col, key, _ in METRICS[r["stage"]]:
            if key not in summary:
                raise DataError(f"{path} has no {key!r} (keys: {sorted(summary)})")
            rows.append(
                {
                    "variant": r["variant"],
                    "seed": int(r["seed"]),
                    "metric": col,
                    "value": 100 * float(summary[key]),
                }
            )
        pc = pd.read_parquet(r["per_class"], columns=["class", "iou"])
        classes.append(
            pd.DataFrame(
                {
                    "variant": r["variant"],
                    "seed": int(r["seed"]),
                    "stage": r["stage"],
                    "class": pc["class"].astype(str),
                    "iou": 100 * pc["iou"].astype(float),
                }
            )
        )
    return pd.DataFrame(rows), pd.concat(classes, ignore_index=True)


def _agg(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    order = {v: i for i, v in enumerate(dict.fromkeys(df["variant"]))}
    g = df.groupby(keys, sort=False)[value]
    out = g.agg(mean="mean", sd=lambda s: s.std(ddof=1), n="count").reset_index()
    out["seeds"] = g.apply(lambda s: " ".join(map(str, df.loc[s.index, "seed"]))).to_numpy()
    return out.sort_values("variant", key=lambda s: s.map(order), kind="stable")


def summarise(
    metrics: pd.DataFrame, per_class: pd.DataFrame, reference: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean, sd and n over seeds per (variant, metric) and per (variant, stage, class), each
    with ``delta`` = mean minus the reference variant's mean (same metric / class)."""
    if reference not in set(metrics["variant"]):
        raise DataError(f"reference variant {reference!r} has no results")
    table = _agg(metrics, ["variant", "metric"], "value")
    ref = table[table["variant"] == reference].set_index("metric")["mean"]
    table["delta"] = table["mean"] - table["metric"].map(ref)
    cls = _agg(per_class, ["variant", "stage", "class"], "iou")
    ref_c = cls[cls["variant"] == reference].set_index(["stage", "class"])["mean"]
    cls["delta"] = cls["mean"] - pd.Series(
        [ref_c.get((s, c), math.nan) for s, c in zip(cls["stage"], cls["class"], strict=True)],
        index=cls.index,
    )
    return table.reset_index(drop=True), cls.reset_index(drop=True)


def _fmt(mean: float, sd: float, n: int) -> str:
    sd_text = "" if math.isnan(sd) else f" ± {sd:.2f}"
    return f"{mean:.2f}{sd_text} ({n})"


def write_html(
    table: pd.DataFrame, per_class: pd.DataFrame, reference: str, out_html: PathLike
) -> None:
    """The wide comparison table and the per-class deltas of the first evaluation."""
    metrics = list(dict.fromkeys(table["metric"]))
    head = "".join(f"<th>{html.escape(HEADINGS[m])}</th>" for m in metrics)
    body = []
    for variant, rows in table.groupby("variant", sort=False):
        by = rows.set_index("metric")
        cells = []
        for m in metrics:
            r = by.loc[m]
            d = float(r["delta"])
            cls = "" if variant == reference or abs(d) < 1e-9 else (" good" if d > 0 else " bad")
            delta = "" if variant == reference else f"<br><small>{d:+.2f}</small>"
            cells.append(
                f'<td class="{cls.strip()}">{_fmt(r["mean"], r["sd"], r["n"])}{delta}</td>'
            )
        ref_mark = " (reference)" if variant == reference else ""
        body.append(
            f'<tr><td class="l">{html.escape(str(variant))}{ref_mark}</td>{"".join(cells)}</tr>'
        )
    parts = [
        "<p>Percent; mean ± sample sd over seeds (n seeds); below each: the change of the "
        f"mean against <b>{html.escape(reference)}</b>.</p>",
        f'<table><tr><th class="l">variant</th>{head}</tr>{"".join(body)}</table>',
    ]
    stage = per_class["stage"].iloc[0]
    wide = per_class[per_class["stage"] == stage].pivot_table(
        index="class", columns="variant", values="delta", sort=False
    )
    ths = "".join(f"<th>{html.escape(str(v))}</th>" for v in wide.columns)
    trs = []
    for c, row in wide.iterrows():
        tds = "".join(
            f'<td class="{"bad" if v < -1e-9 else "good" if v > 1e-9 else ""}">{v:+.2f}</td>'
            for v in row
        )
        trs.append(f'<tr><td class="l">{html.escape(str(c))}</td>{tds}</tr>')
    parts.append(
        f"<h3>IoU per class: change of the mean against {html.escape(reference)} ({stage})</h3>"
        f'<table><tr><th class="l">class</th>{ths}</tr>{"".join(trs)}</table>'
    )
    doc = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Experiments</title>'
        f"{STYLE}</head><body>\n<h2>Experiments</h2>\n{''.join(parts)}\n</body></html>\n"
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(doc, encoding="utf-8")


def figure(metrics: pd.DataFrame, table: pd.DataFrame, reference: str | None = None) -> Figure:
    """Small multiples: one panel per metric, a horizontal bar per variant (its mean, the
    sd over seeds as an error bar, each seed as a dot), each panel on its own scale so that
    a change of a few tenths shows; a dashed line marks the reference variant's mean.

    ``metrics``: per-seed values (variant, seed, metric, value in percent); ``table``: the
    summary of :func:`summarise` (variant, metric, mean, sd).
    """
    names = list(dict.fromkeys(table["metric"]))
    variants = list(dict.fromkeys(table["variant"]))
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    height = 0.32 * len(variants) + 1.2
    fig = Figure(figsize=(4.2 * ncols, height * nrows))
    y = np.arange(len(variants))[::-1]  # the first variant on top
    colours = [f"C{i % 10}" for i in range(len(variants))]
    for k, m in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        t = table[table["metric"] == m].set_index("variant").reindex(variants)
        seeds = metrics[metrics["metric"] == m]
        values = np.concatenate([t["mean"].to_numpy(float), seeds["value"].to_numpy(float)])
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        pad = max(0.5, 0.15 * (hi - lo))
        left = max(0.0, lo - pad)
        ax.barh(y, t["mean"] - left, left=left, height=0.7, color=colours,
                xerr=t["sd"].fillna(0), capsize=2)  # fmt: skip
        for yi, v in zip(y, variants, strict=True):
            vals = seeds.loc[seeds["variant"] == v, "value"]
            ax.plot(vals, [yi] * len(vals), "k.", markersize=3)
        if reference in variants:
            ax.axvline(float(t.loc[reference, "mean"]), color="k", ls="--", lw=0.8)
        ax.set_xlim(left, min(100.0, hi + pad))
        ax.set_yticks(y, variants if k % ncols == 0 else [""] * len(variants), fontsize=8)
        ax.set_title(HEADINGS[m], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("variants: mean ± sd over seeds (dots: seeds; dashed: the reference)")
    fig.tight_layout()
    return fig


def plot(
    metrics: pd.DataFrame, table: pd.DataFrame, out_png: PathLike, reference: str | None = None
) -> None:
    """:func:`figure` written as a PNG (atomically)."""
    fig = figure(metrics, table, reference)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def run(
    plan: Sequence[Mapping[str, Any]],
    reference: str,
    out_table: PathLike,
    out_csv: PathLike,
    out_per_class: PathLike,
    out_html: PathLike,
    out_png: PathLike,
) -> pd.DataFrame:
    """Write every output of the comparison (module docstring); returns the table."""
    metrics, per_class = collect(plan)
    table, cls = summarise(metrics, per_class, reference)
    with atomic_path(out_table, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_per_class) as tmp:
        cls.to_csv(tmp, index=False, float_format="%.4f")
    write_html(table, cls, reference, out_html)
    plot(metrics, table, out_png, reference)
    return table
