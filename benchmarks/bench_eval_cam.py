"""Time eval_cam on synthetic VOC-sized CAMs (500x375, 2 classes, 55-threshold sweep).

Prints seconds per image for the in-memory scoring (fixed threshold + sweep) and for a
full ``eval_cam.run`` including reading PNG/npz files. Usage:
``python benchmarks/bench_eval_cam.py [n_images]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qaclims.cam import eval_cam
from qaclims.core import io
from qaclims.evaluation.metrics import ConfusionAccumulator

H, W, C = 375, 500, 20


def make(root: Path, n: int, rng: np.random.Generator) -> Path:
    rows = []
    for i in range(n):
        keys = np.sort(rng.choice(C, size=2, replace=False)).astype(np.int16)
        cam = rng.random((2, H, W)).astype(np.float16)
        gt = rng.integers(0, C + 1, size=(H, W)).astype(np.uint8)
        io.write_npz(root / "cams" / f"{i:05d}.npz", {"keys": keys, "cam": cam})
        io.write_label_png(root / "gt" / f"{i:05d}.png", gt)
        rows.append({"image_id": f"{i:05d}", "gt_path": str(root / "gt" / f"{i:05d}.png")})
    io.write_parquet(root / "m.parquet", pd.DataFrame(rows))
    return root / "m.parquet"


def main(n: int) -> None:
    rng = np.random.default_rng(0)
    cfg = eval_cam.EvalCamConfig()
    keys = np.array([3, 7])
    cam = rng.random((2, H, W)).astype(np.float16)
    gt = rng.integers(0, C + 1, size=(H, W)).astype(np.uint8)
    fixed, sweep = ConfusionAccumulator(C + 1), eval_cam.ThresholdSweep(cfg.thresholds, C + 1)
    t0 = time.perf_counter()
    for _ in range(n):
        fixed.update(gt, eval_cam.cam_to_label(cam, keys, cfg.threshold))
    t1 = time.perf_counter()
    for _ in range(n):
        sweep.update(gt, cam, keys)
    sweep.confusions()
    t2 = time.perf_counter()
    print(f"fixed threshold: {(t1 - t0) / n * 1e3:.1f} ms/image")
    print(f"55-threshold sweep: {(t2 - t1) / n * 1e3:.1f} ms/image")
    with tempfile.TemporaryDirectory() as d:
        man = make(Path(d), n, rng)
        o = Path(d) / "out"
        t3 = time.perf_counter()
        eval_cam.run(
            man,
            [Path(d) / "cams"],
            [f"c{i}" for i in range(C)],
            cfg,
            o / "s.json",
            o / "p.parquet",
            o / "w.parquet",
        )
        t4 = time.perf_counter()
    print(f"eval_cam.run with file I/O: {(t4 - t3) / n * 1e3:.1f} ms/image ({n} images)")
    print(f"-> VOC train (1,464 images) ~ {(t4 - t3) / n * 1464:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
