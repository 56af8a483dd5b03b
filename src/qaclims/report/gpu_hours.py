"""GPU-hours of a whole run, stage by stage: the work a config asks for, divided by the
throughput the GPU benchmarks recorded.

:func:`workload` reads a resolved config (schema defaults filled in; :func:`load_config`) and
counts, for every GPU stage it runs, the items that stage processes: images seen by a
training stage (``epochs x (images // batch_size) x batch_size``, the drop-last batches of
the trainers; ``iterations x batch_size`` for DeepLab), images an inference stage reads
(``methods x`` the CAM splits for ``make_cam``), answers the VQA stage generates (``pairs x``
the questions; the (image, class) pairs are the split's labels, which only the data set
knows, so they are an argument: counted from a manifest, or an estimate that the table
names). :func:`estimate` divides each count by the benchmark rate recorded for that stage
(speed records, :mod:`qaclims.report.speed`, that carry a ``stage`` field: the benchmark ran
that stage's network at the config's settings on a GPU) and :func:`block` makes the README
table, one column per GPU. Stages without a record are listed as not measured, never
guessed; the CPU stages (CRF seeds, evaluation) are outside the table.

GPU-hours assume the throughput of one GPU scales with the GPU count (a 4-GPU job takes a
quarter of the wall time); the DDP overhead of the multi-GPU jobs is not in them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaclims.core.errors import ConfigError, DataError
from qaclims.report import speed

BEGIN, END = "<!-- gpu-hours:begin -->", "<!-- gpu-hours:end -->"
ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: Images per split of PASCAL VOC 2012 + SBD (IRN's ``voc12/*.txt`` lists).
VOC12_SIZES: Mapping[str, int] = {"train_aug": 10582, "train": 1464, "val": 1449}


@dataclass(frozen=True)
class Work:
    """What one stage processes in a run.

    stage: the rule's name. items: how many (>= 0). unit: the rate unit a benchmark of the
    stage records (``img/s`` or ``answers/s``). how: the count spelled out (config keys)."""

    stage: str
    items: int
    unit: str
    how: str


def load_config(
    paths: Sequence[str | os.PathLike[str]], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config the workflow resolves from ``paths`` (merged left to right, as
    ``--configfiles``) and the defaults of ``schema`` (default: the checkout's schema)."""
    import yaml

    from qaclims.core.validate import validate_config

    if schema is None:
        if not SCHEMA.is_file():
            raise ConfigError(f"the config schema {SCHEMA} is missing: run from a checkout")
        schema = yaml.safe_load(SCHEMA.read_text())
    merged: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        _merge(merged, yaml.safe_load(path.read_text()) or {})
    validate_config(merged, schema)
    return merged


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _size(sizes: Mapping[str, int], split: str) -> int:
    if split not in sizes:
        raise ConfigError(f"no image count for split {split!r} (known: {sorted(sizes)})")
    return sizes[split]


def workload(config: Mapping[str, Any], sizes: Mapping[str, int], pairs: float) -> list[Work]:
    """The GPU work of the run ``config`` asks for, in pipeline order.

    ``sizes``: images per split name; ``pairs``: (image, class) pairs of ``splits.train``
    (the VQA stage asks every question of each pair)."""
    sp, methods = config["splits"], list(config["methods"])
    n_train = _size(sizes, sp["train"])
    cam_images = sum(_size(sizes, s) for s in sp["cam"])
    cam_splits = " + ".join(f"{s} ({_size(sizes, s):,})" for s in sp["cam"])
    out: list[Work] = []

    def trained(stage: str, what: str) -> None:
        c = config[stage]
        per_epoch = n_train // c["batch_size"]
        out.append(Work(stage, c["epochs"] * per_epoch * c["batch_size"], "img/s",
                        f"{c['epochs']} epochs × {per_epoch:,} batches of {c['batch_size']} "
                        f"({what})"))  # fmt: skip

    if config["vqa"]["backend"] == "blip":
        q = config["vqa"]["questions"]
        n_q = len(q["fg"]) + len(q["bg"])
        how = f"{pairs:,.0f} (image, class) pairs of {sp['train']} × {n_q} questions"
        out.append(Work("vqa", round(pairs * n_q), "answers/s", how))
    if "cam" in methods:
        trained("train_cam", f"{sp['train']}, crop {config['train_cam']['crop']}")
    if "ritc" in methods:
        trained("train_ritc", f"{sp['train']}, crop {config['train_ritc']['crop']}")
    mc = config["make_cam"]
    out.append(Work("make_cam", len(methods) * cam_images, "img/s",
                    f"{len(methods)} methods × {cam_splits}, {len(mc['scales'])} scales"
                    + (" + flip" if mc["flip"] else "")))  # fmt: skip
    if config["refine"]["enabled"]:
        trained("train_irn", f"{sp['train']}, crop {config['train_irn']['crop']}")
        out.append(Work("make_sem_seg", cam_images, "img/s", cam_splits))
    if config["deeplab"]["enabled"]:
        d = config["train_deeplab"]
        out.append(Work("train_deeplab", d["iterations"] * d["batch_size"], "img/s",
                        f"{d['iterations']:,} iterations × {d['batch_size']} crops of "
                        f"{d['crop']}"))  # fmt: skip
        n_val = _size(sizes, sp["val"])
        inf = config["infer_deeplab"]
        out.append(Work("infer_deeplab", n_val, "img/s",
                        f"{sp['val']} ({n_val:,}), {len(inf['scales'])} scales"
                        + (" + flip" if inf["flip"] else "")))  # fmt: skip
    return out


@dataclass(frozen=True)
class Estimate:
    """One stage on one GPU: ``rate`` (``unit``) from the record ``what``; ``hours`` =
    items / rate / 3600."""

    stage: str
    device: str
    rate: float
    hours: float
    what: str


def estimate(work: Iterable[Work], records: Iterable[Mapping[str, Any]]) -> list[Estimate]:
    """Hours per (stage, GPU) for every stage with a GPU record of its unit (the latest
    record of each stage and device wins); stages without one are left out."""
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in records:
        if r.get("stage") and r["device"] != "cpu":
            latest[(r["stage"], r["device"])] = r
    out = []
    for w in work:
        for (stage, device), r in latest.items():
            if stage != w.stage:
                continue
            if r["unit"] != w.unit:
                raise DataError(
                    f"speed record for stage {stage} on {device} is in {r['unit']}, "
                    f"its work in {w.unit}"
                )
            rate = float(r["ours"])
            out.append(Estimate(stage, device, rate, w.items / rate / 3600, r["what"]))
    return out


def _hours(h: float) -> str:
    return f"{h:.2f}" if h < 10 else f"{h:.1f}"


def table(work: Sequence[Work], estimates: Sequence[Estimate], note: str) -> str:
    """Markdown: a row per stage (its work, then hours and rate on each GPU), a total row."""
    devices = sorted({e.device for e in estimates})
    cell = {(e.stage, e.device): e for e in estimates}
    head = "| stage | work | " + " | ".join(devices or ["GPU"]) + " |"
    lines = [head, "|---|---|" + "---|" * max(1, len(devices))]
    for w in work:
        cells = []
        for d in devices or ["-"]:
            e = cell.get((w.stage, d))
            cells.append(
                f"{_hours(e.hours)} h ({speed.number(e.rate)} {w.unit})" if e else "not measured"
            )
        noun = "answers" if w.unit == "answers/s" else "images"
        lines.append(f"| {w.stage} | {w.items:,} {noun}: {w.how} | " + " | ".join(cells) + " |")
    totals = []
    for d in devices or ["-"]:
        done = [cell[(w.stage, d)].hours for w in work if (w.stage, d) in cell]
        missing = len(work) - len(done)
        total = f"{_hours(math.fsum(done))} h" if done else "none measured"
        totals.append(total + (f" + {missing} stages not measured" if missing and done else ""))
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n\n" + note


def _shown(path: str | os.PathLike[str]) -> str:
    """``path`` as the README names it: relative to the repository when inside it."""
    p = Path(path)
    try:
        return p.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return p.as_posix()


def block(
    configs: Sequence[str | os.PathLike[str]],
    record_paths: Sequence[str | os.PathLike[str]],
    pairs: float,
    pairs_source: str,
    sizes: Mapping[str, int] = VOC12_SIZES,
) -> str:
    """The README block (markers included) for the run ``configs`` resolve to."""
    cfg = load_config(configs)
    work = workload(cfg, sizes, pairs)
    records = speed.read(record_paths)
    est = estimate(work, records)
    names = " + ".join(f"`{_shown(c)}`" for c in configs)
    srcs = ", ".join(f"`{_shown(p)}`" for p in record_paths)
    rates = sorted({f"{e.stage}: {e.what}" for e in est})
    note = (
        f"Work from {names} (split sizes: "
        + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
        + f"; VQA pairs: {pairs_source}). Rates: the GPU records with a `stage` in {srcs}"
        + (" (" + "; ".join(rates) + ")" if rates else ": none yet")
        + ". Hours assume linear scaling over GPUs (no DDP overhead). Not in it: the CPU stages"
        " (dense-CRF seeds, evaluation) and text_features (one CLIP text pass over the corpus)."
    )
    return "\n".join([BEGIN, table(work, est, note), END])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=[str(ROOT / "config" / "voc12.yaml")])
    ap.add_argument("--records", nargs="+", required=True, help="speed record files")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--pairs-per-image", type=float, help="assumed (image, class) pairs per splits.train image"
    )
    g.add_argument("--manifest", help="the split's manifest (Parquet): count its pairs")
    ap.add_argument("--write", default=None, help="README to update in place")
    a = ap.parse_args(argv)
    if a.manifest:
        from qaclims.data.manifest import read_manifest

        pairs = float(sum(len(v) for v in read_manifest(Path(a.manifest))["labels"]))
        source = f"{pairs:,.0f}, counted in {a.manifest}"
    else:
        cfg = load_config(a.config)
        n = _size(VOC12_SIZES, cfg["splits"]["train"])
        pairs = a.pairs_per_image * n
        source = f"{a.pairs_per_image:g} per image assumed, not counted (`--manifest` counts them)"
    text = block(a.config, a.records, pairs, source)
    if a.write:
        from qaclims.report.readme import replace_block

        readme = Path(a.write)
        readme.write_text(replace_block(readme.read_text(), text, str(readme), (BEGIN, END)))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
