"""The measured effect of each deliberate deviation (docs/REPRODUCING.md), never typed by hand.

``benchmarks/bench_deviations.py`` runs the experiment ``config/deviations-demo.yaml`` on
the demo (each variant flips one switch of the run's settings; everything the switch
reaches is computed again, up to DeepLab) and :func:`make_record` turns the run's
comparison (rule ``compare_experiments``) into a JSON record: per variant the switched keys
with the run's and the variant's values and the metrics whose evaluation the variant
computed itself, per (variant, metric) the mean and its change
against the reference, the stored bytes per image of the CAM files where a variant changes
``make_cam.store``, and where and when it ran. :func:`block` renders the record as the
Markdown between ``<!-- deviations:begin -->`` and ``<!-- deviations:end -->``
(``python -m qaclims.report.readme --deviations RECORD --write docs/REPRODUCING.md``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from qaclims.artifacts import camfile
from qaclims.core import provenance
from qaclims.core.errors import DataError
from qaclims.report.experiments import HEADINGS, METRICS

BEGIN, END = "<!-- deviations:begin -->", "<!-- deviations:end -->"


def switches(overrides: Mapping[str, Any], run: Mapping[str, Any]) -> list[list[Any]]:
    """``[dotted key, the run's value, the variant's value]`` for every leaf of a variant's
    ``overrides`` (nested mappings), looked up in the run's resolved config ``run``.

    A key the run's config lacks raises :class:`DataError` naming it.
    """
    out: list[list[Any]] = []

    def walk(over: Mapping[str, Any], base: Any, prefix: str) -> None:
        for key, value in over.items():
            dotted = f"{prefix}{key}"
            if not isinstance(base, Mapping) or key not in base:
                raise DataError(f"the run's config has no {dotted}")
            if isinstance(value, Mapping):
                walk(value, base[key], dotted + ".")
            else:
                out.append([dotted, base[key], value])

    walk(overrides, run, "")
    return out


def cam_bytes(files: Sequence[Path]) -> tuple[float, float]:
    """(mean bytes of the stored CAM files, mean bytes the reference's float32 ``.npy``
    dictionary of the same CAMs takes: ``high_res`` K x H x W plus ``cam`` K x h x w, 4
    bytes a value). ``files``: CAM files (``.npz``) of one folder tree; empty raises."""
    if not files:
        raise DataError("no CAM files to measure")
    stored = float(np.mean([f.stat().st_size for f in files]))
    ref = []
    for f in files:
        _, full = camfile.read_cam_arrays(f)
        _, strided = camfile.read_cam_arrays(f, "cam_strided")
        ref.append(4 * (full.size + strided.size))
    return stored, float(np.mean(ref))


def reached(cell_dirs: Sequence[Path]) -> list[str]:
    """The metric columns (:data:`qaclims.report.experiments.METRICS`) whose evaluation a
    variant computed itself: an ``eval_*`` folder in one of its cell folders
    (``experiments/<variant>/seed<s>`` or ``common``). The others are the run's own figures,
    which the switch does not reach."""
    present = {p.name for d in cell_dirs for p in d.glob("eval_*") if p.is_dir()}
    return [
        col
        for evaluation, rows in METRICS.items()
        for col, _, _ in rows
        if ("eval_deeplab" if evaluation.startswith("eval_deeplab") else evaluation) in present
    ]


def _cam_files(root: Path, split: str) -> list[Path]:
    return sorted(root.glob(f"make_cam/ritc/{split}/*/*.npz"))


def make_record(
    run_dir: Path, preset: Mapping[str, Any], timing: Mapping[str, Any]
) -> dict[str, Any]:
    """The record of a finished run of ``preset`` (the parsed experiments overlay).

    ``run_dir``: ``results/<run>``, holding ``config.yaml`` and
    ``experiments/comparison.csv`` of exactly the preset's variants (another experiment's
    comparison raises :class:`DataError`). ``timing``: what the benchmark measured
    (seconds, command, machine, cores, and ``code``: the checkout's version when the run
    started; without it, the version now), copied in.
    """
    exp = preset["experiments"]
    run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    path = run_dir / "experiments" / "comparison.csv"
    if not path.is_file():
        raise DataError(f"{path} is missing: run the experiment first")
    table = pd.read_csv(path)
    variants = dict(exp["variants"])
    if list(dict.fromkeys(table["variant"])) != list(variants):
        raise DataError(
            f"{path} compares {sorted(set(table['variant']))}, not the preset's variants "
            f"{sorted(variants)}: run the preset again"
        )
    reference = str(exp.get("reference") or next(iter(variants)))
    split = str(run_cfg["splits"]["eval_cam"])
    sizes: dict[str, float] = {}
    cells = {
        name: [p for p in sorted((run_dir / "experiments" / name).glob("*")) if p.is_dir()]
        for name in variants
    }
    for name, over in variants.items():
        if name == reference or "store" not in over.get("make_cam", {}):
            continue
        sizes[name], _ = cam_bytes([f for c in cells[name] for f in _cam_files(c, split)])
    if sizes:
        sizes[reference], sizes["float32 (reference's .npy)"] = cam_bytes(
            _cam_files(run_dir, split)
        )
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in table.to_dict("records")
    ]
    return {
        "reference": reference,
        "seeds": [int(s) for s in exp["seeds"]],
        "split": split,
        "variants": [
            {"name": name, "switches": switches(over, run_cfg), "reached": reached(cells[name])}
            for name, over in variants.items()
            if name != reference
        ],
        "rows": rows,
        "cam_bytes": sizes,
        "threads": run_cfg.get("threads", {}).get("train_torch"),
        "code": timing.get("code") or provenance.code_version(),
        "date": dt.date.today().isoformat(),
        **{k: timing[k] for k in ("seconds", "command", "machine", "cores") if k in timing},
    }


def _value(v: Any) -> str:
    return (
        "`" + (yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()) + "`"
    )


def block(record: Mapping[str, Any]) -> str:
    """The record as Markdown between :data:`BEGIN` and :data:`END`: the reference's
    figures, then one row per variant with the switch (run's value -> variant's) and the
    change of each metric it reaches in points (empty where it does not reach the stage);
    the CAM bytes; where and when it ran."""
    rows = pd.DataFrame(record["rows"])
    metrics = list(dict.fromkeys(rows["metric"]))
    by = rows.set_index(["variant", "metric"])
    ref = record["reference"]
    lines = [
        "| switch: the demo's value -> the variant's | "
        + " | ".join(HEADINGS[m] + " (%)" for m in metrics)
        + " |",
        "|:--|" + "--:|" * len(metrics),
        f"| none (the demo, `{ref}`) | "
        + " | ".join(f"{by.loc[(ref, m), 'mean']:.2f}" for m in metrics)
        + " |",
    ]
    for v in record["variants"]:
        what = "; ".join(f"`{k}`: {_value(a)} -> {_value(b)}" for k, a, b in v["switches"])
        cells = []
        for m in metrics:
            d = by.loc[(v["name"], m), "delta"]
            if m not in v["reached"] or d is None or (isinstance(d, float) and math.isnan(d)):
                cells.append("")
            else:
                cells.append("0.00" if round(float(d), 2) == 0 else f"{float(d):+.2f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    seeds = " ".join(str(s) for s in record["seeds"])
    text = "\n".join(lines)
    text += (
        f"\n\nFirst row: the demo's figures on its {record['split']} split; below, the change in "
        "points when one switch is flipped and everything it reaches is computed again; an "
        "empty cell is a stage the switch does not reach. One run per variant (seed "
        f"{seeds}): a trained stage after a switch (IRN, DeepLab) also moves because its "
        "inputs changed at all; the README's seed table gives the spread a seed alone causes."
    )
    sizes = record.get("cam_bytes") or {}
    if sizes:
        ref32 = sizes.get("float32 (reference's .npy)")
        parts = [
            f"{name} {b / 1024:.1f} KiB" + (f" ({b / ref32:.2f}x)" if ref32 else "")
            for name, b in sizes.items()
            if not name.startswith("float32")
        ]
        text += (
            f" CAM files per image: {', '.join(parts)} of the {ref32 / 1024:.1f} KiB the "
            "reference's float32 `.npy` of the same CAMs takes."
            if ref32
            else ""
        )
    text += (
        f" Recorded by `benchmarks/bench_deviations.py` on {record.get('date', '?')} "
        f"({record.get('machine', '?')}, --cores {record.get('cores', '?')}, torch training "
        f"threads {record.get('threads', '?')}; {record.get('code', '?')}); "
        f"`{record.get('command', '?')}` took {float(record.get('seconds', 0)) / 60:.1f} min."
    )
    return "\n".join([BEGIN, text, END])
