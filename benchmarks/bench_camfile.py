"""CAM file format 2 (uint8 levels) against format 1 (float16) and the reference's float32.

Takes a finished run whose CAMs are format-1 files (a run of the project before format 2,
or any folder of float CAM files) and, for each CAM network of the run:

- bytes per image of the stored files, of the same CAMs in format 2, and of the reference's
  float32 ``.npy`` dictionaries (``high_res`` K x H x W + ``cam`` K x H/4 x W/4, computed);
- eval_cam's mIoU at the configured threshold and the sweep's best, on the stored files
  and on their format-2 conversion;
- the seeds' mIoU (cam_to_ir_label's CRF + eval_seeds' scoring) from both;
- seconds per image of eval_cam at one threshold (read + score) for format 2, against a
  reference-style computation (a plain float32 ``.npy`` read, the threshold padded in front,
  argmax, key lookup, one bincount confusion) on the same CAMs.

Usage: ``python benchmarks/bench_camfile.py results/demo [--split train]``. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from qaclims.artifacts import camfile
from qaclims.cam import eval_cam
from qaclims.core import io
from qaclims.core.config import from_mapping
from qaclims.data.manifest import read_classes
from qaclims.evaluation import eval_labels
from qaclims.refine import cam_to_ir_label as c2i


def convert(src_dirs: list[Path], dst: Path) -> list[Path]:
    """Every CAM file of ``src_dirs`` rewritten in format 2 under ``dst/<shard>``."""
    out = []
    for d in src_dirs:
        o = dst / d.name
        o.mkdir(parents=True, exist_ok=True)
        for p in sorted(d.glob("*.npz")):
            keys, cam = camfile.read_cam(p)
            _, st = camfile.read_cam(p, "cam_strided")
            camfile.write_cam(o / p.name, camfile.cam_arrays(keys.tolist(), cam, st))
        out.append(o)
    return out


def sizes(dirs: list[Path]) -> tuple[float, float]:
    """(mean bytes per file, mean bytes of the reference's float32 arrays) over ``dirs``."""
    files = [p for d in dirs for p in d.glob("*.npz")]
    ours = np.mean([p.stat().st_size for p in files])
    ref = []
    for p in files:
        _, cam = camfile.read_cam_arrays(p)
        _, st = camfile.read_cam_arrays(p, "cam_strided")
        ref.append(4 * (cam.size + st.size))
    return float(ours), float(np.mean(ref))


def eval_cams(run: Path, dirs: list[Path], split: str, cfg: dict, out: Path) -> tuple[float, float]:
    classes = read_classes(run / "data" / "classes.json")
    ecfg = from_mapping(eval_cam.EvalCamConfig, cfg.get("eval_cam", {}), "eval_cam")
    s = eval_cam.run(
        run / "data" / "manifest" / f"{split}.parquet", dirs, classes, ecfg,
        out / "s.json", out / "p.parquet", out / "w.parquet", split,
    )  # fmt: skip
    return 100 * s["miou"], 100 * (s.get("best_miou") or float("nan"))


def seeds(run: Path, dirs: list[Path], cfg: dict, out: Path, split: str) -> float:
    classes = read_classes(run / "data" / "classes.json")
    icfg = from_mapping(c2i.IrLabelConfig, cfg.get("cam_to_ir_label", {}), "cam_to_ir_label")
    manifest = run / "data" / "manifest" / f"{split}.parquet"
    c2i.run(manifest, dirs, icfg, out / "seeds" / "0", 0, 1, os.cpu_count() or 1)
    s = eval_labels.run_labels(
        manifest, [out / "seeds" / "0"], classes, out / "ss.json", out / "sp.parquet", "exclude"
    )
    return 100 * s["miou"]


def time_eval(dirs: list[Path], run: Path, split: str, threshold: float) -> tuple[float, float]:
    """Seconds per image at one threshold: ours (format 2) vs the reference-style path."""
    rows = pd.read_parquet(run / "data" / "manifest" / f"{split}.parquet")
    rows = rows[rows["gt_path"].astype(str) != ""]
    index = {p.stem: p for d in dirs for p in d.glob("*.npz")}
    pairs = [(g, index[i]) for i, g in zip(rows["image_id"], rows["gt_path"], strict=True)]
    n = len(read_classes(run / "data" / "classes.json")) + 1
    gts = [io.read_label_png(g) for g, _ in pairs]
    with tempfile.TemporaryDirectory() as t:
        npys = []
        for k, (_, p) in enumerate(pairs):
            keys, cam = camfile.read_cam(p)
            np.save(Path(t) / f"{k}.npy", cam.astype(np.float32))
            np.save(Path(t) / f"{k}_keys.npy", keys)
            npys.append((Path(t) / f"{k}.npy", Path(t) / f"{k}_keys.npy"))
        t0 = time.perf_counter()
        conf = np.zeros((n, n), np.int64)
        for gt, (p, pk) in zip(gts, npys, strict=True):
            cams, keys = np.load(p), np.load(pk)
            cams = np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=threshold)
            labels = np.pad(keys + 1, (1, 0))[np.argmax(cams, axis=0)]
            keep = gt != 255
            g = gt[keep].astype(np.int64)
            conf += np.bincount(g * n + labels[keep], minlength=n * n).reshape(n, n)
        ref = (time.perf_counter() - t0) / max(1, len(pairs))
    sweep = eval_cam.ThresholdSweep([threshold], n)
    t0 = time.perf_counter()
    for gt, (_, p) in zip(gts, pairs, strict=True):
        keys, cam = camfile.read_cam_arrays(p)
        sweep.update(gt, cam, keys)
    ours = (time.perf_counter() - t0) / max(1, len(pairs))
    return ours, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="results/<run> of a finished run (format-1 CAMs)")
    ap.add_argument("--split", default="train", help="the eval_cam split")
    ap.add_argument("--no-seeds", action="store_true", help="skip the CRF seeds (slow)")
    a = ap.parse_args()
    cfg = yaml.safe_load((a.run / "config.yaml").read_text())
    rows = []
    for model_dir in sorted((a.run / "make_cam").iterdir()):
        dirs = sorted(p for p in (model_dir / a.split).iterdir() if p.is_dir())
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            new = convert(dirs, tmp / "f2")
            (b1, bref), (b2, _) = sizes(dirs), sizes(new)
            m1 = eval_cams(a.run, dirs, a.split, cfg, tmp / "e1")
            m2 = eval_cams(a.run, new, a.split, cfg, tmp / "e2")
            s1 = s2 = float("nan")
            if not a.no_seeds:
                s1 = seeds(a.run, dirs, cfg, tmp / "s1", a.split)
                s2 = seeds(a.run, new, cfg, tmp / "s2", a.split)
            ours, ref = time_eval(
                new, a.run, a.split, cfg.get("eval_cam", {}).get("threshold", 0.15)
            )
        rows.append({
            "cams": model_dir.name, "stored/ref bytes": round(b1 / bref, 3),
            "format 2/ref bytes": round(b2 / bref, 3),
            "mIoU stored": round(m1[0], 2), "mIoU format 2": round(m2[0], 2),
            "best stored": round(m1[1], 2), "best format 2": round(m2[1], 2),
            "seeds stored": round(s1, 2), "seeds format 2": round(s2, 2),
            "eval ms/img (ours)": round(1e3 * ours, 2),
            "eval ms/img (ref-style)": round(1e3 * ref, 2),
        })  # fmt: skip
    print(json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count()}))
    cols = list(rows[0]) if rows else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
