"""Time eval_cam on synthetic VOC-sized CAMs (500x375, 2 classes of 20, 55-threshold sweep)
or COCO-sized ones (``--coco``: 640x480, 3 classes of 80).

Prints milliseconds per image, on the same CAMs and GT:

- reference style at one threshold: a plain float32 ``.npy`` read (the reference stores
  float32 ``high_res``), the threshold padded in front, argmax, key lookup, one bincount
  confusion (IRN's ``eval_cam.py`` with chainercv's confusion written as a bincount);
- this project at one threshold: the CAM file read (format 2: uint8 levels) and
  :meth:`qaclims.cam.eval_cam.ThresholdSweep.update` (a running max over the channels, a
  level table, one bincount), without and with the 55-threshold sweep eval_cam runs;
- the older per-threshold path (``cam_to_label`` on the levels + ``confusion``);
- ``eval_cam.run`` end to end (PNG GT and CAM reads, fixed threshold and sweep).

Usage: ``python benchmarks/bench_eval_cam.py [n_images] [--coco]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qaclims.artifacts import camfile
from qaclims.cam import eval_cam
from qaclims.core import io
from qaclims.evaluation.metrics import confusion
from qaclims.report import speed

H, W, C, K = 375, 500, 20, 2
T = 0.15


def make(root: Path, n: int, rng: np.random.Generator) -> Path:
    """``n`` images: GT PNGs, format-2 CAM files and the same CAMs as float32 ``.npy``."""
    rows = []
    for i in range(n):
        keys = np.sort(rng.choice(C, size=K, replace=False)).astype(np.int16)
        cam = rng.random((K, H, W)).astype(np.float32)
        gt = rng.integers(0, C + 1, size=(H, W)).astype(np.uint8)
        strided = rng.random((K, -(-H // 4), -(-W // 4))).astype(np.float32)
        camfile.write_cam(root / "cams" / f"{i:05d}.npz", camfile.cam_arrays(keys, cam, strided))
        (root / "ref").mkdir(parents=True, exist_ok=True)
        np.save(root / "ref" / f"{i:05d}.npy", camfile.read_cam(root / "cams" / f"{i:05d}.npz")[1])
        np.save(root / "ref" / f"{i:05d}_keys.npy", keys.astype(np.int64))
        io.write_label_png(root / "gt" / f"{i:05d}.png", gt)
        rows.append({"image_id": f"{i:05d}", "gt_path": str(root / "gt" / f"{i:05d}.png")})
    io.write_parquet(root / "m.parquet", pd.DataFrame(rows))
    return root / "m.parquet"


def per_image(fn, items: list) -> float:  # type: ignore[no-untyped-def,type-arg]
    t = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t) / len(items) * 1e3


def main(n: int, record: str | None = None) -> None:
    rng = np.random.default_rng(0)
    cfg = eval_cam.EvalCamConfig()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        man = make(root, n, rng)
        ids = [f"{i:05d}" for i in range(n)]
        gts = {i: io.read_label_png(root / "gt" / f"{i}.png") for i in ids}
        k = C + 1

        def reference(i: str) -> np.ndarray:
            cams = np.load(root / "ref" / f"{i}.npy")
            keys = np.load(root / "ref" / f"{i}_keys.npy")
            cams = np.pad(cams, ((1, 0), (0, 0), (0, 0)), constant_values=T)
            labels = np.pad(keys + 1, (1, 0))[np.argmax(cams, axis=0)]
            gt = gts[i]
            keep = gt != 255
            return np.bincount(gt[keep].astype(np.int64) * k + labels[keep], minlength=k * k)

        one = eval_cam.ThresholdSweep([T], k)
        full = eval_cam.ThresholdSweep(cfg.thresholds, k)

        def ours(i: str, sweep: eval_cam.ThresholdSweep = one) -> np.ndarray:
            keys, cam = camfile.read_cam_arrays(root / "cams" / f"{i}.npz")
            sweep.update(gts[i], cam, keys)
            return sweep.hist

        def older(i: str) -> np.ndarray:
            keys, cam = camfile.read_cam_arrays(root / "cams" / f"{i}.npz")
            return confusion(gts[i], eval_cam.cam_to_label(cam, keys, T), k)

        for i in ids[:3]:  # the three agree
            check = eval_cam.ThresholdSweep([T], k)
            ours(i, check)
            a, b, c = reference(i).reshape(k, k), check.confusions()[0], older(i)
            assert np.array_equal(a, b) and np.array_equal(b, c)
        ms = {}
        for label, fn in [
            ("reference style, one threshold (float32 .npy)", reference),
            ("this project, one threshold (format 2)", ours),
            ("this project, one threshold + 55-threshold sweep", lambda i: ours(i, full)),
            ("older path: cam_to_label + confusion (float)", older),
        ]:
            fn(ids[0])  # warm-up
            ms[label] = per_image(fn, ids)
            print(f"{label}: {ms[label]:.2f} ms/image")
        run_ms, summaries = {}, []
        for workers in sorted({1, os.cpu_count() or 1}):
            o = root / f"out{workers}"
            t = time.perf_counter()
            summaries.append(eval_cam.run(man, [root / "cams"], [f"c{i}" for i in range(C)],
                                          cfg, o / "s.json", o / "p.parquet", o / "w.parquet",
                                          workers=workers))  # fmt: skip
            run_ms[workers] = (time.perf_counter() - t) / n * 1e3
        assert all(s == summaries[0] for s in summaries)  # workers change no figure
    for workers, v in run_ms.items():
        print(f"eval_cam.run with file I/O, {workers} worker processes: {v:.2f} ms/image "
              f"({n} images of {W}x{H}, {K} of {C} classes)")  # fmt: skip
    print(f"machine: {os.uname().machine}, {os.cpu_count()} CPUs")
    if record:
        speed.append(
            record,
            bench="bench_eval_cam.py",
            what=f"eval_cam, one threshold, {W}×{H}, {K} of {C} classes (CAM read + confusion)",
            unit="ms/img",
            reference=ms["reference style, one threshold (float32 .npy)"],
            ours=ms["this project, one threshold (format 2)"],
            threads=None,  # numpy, one process
        )
        if len(run_ms) > 1:
            top = max(run_ms)
            speed.append(
                record,
                bench="bench_eval_cam.py",
                what=f"eval_cam stage incl. PNG/CAM reads, {W}×{H}, {K} of {C} classes, 55 "
                f"thresholds (reference: 1 worker)",
                unit="ms/img",
                reference=run_ms[1],
                ours=run_ms[top],
                threads=top,
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n_images", type=int, nargs="?", default=40)
    ap.add_argument("--coco", action="store_true", help="640x480, 3 of 80 classes")
    ap.add_argument("--record", default=None, help="append the result to this JSON-lines file")
    args = ap.parse_args()
    if args.coco:
        H, W, C, K = 480, 640, 80, 3
    main(args.n_images, args.record)
