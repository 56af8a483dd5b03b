"""Time the COCO dataset stage (manifests + evaluation masks) at several worker counts.

Writes a fake COCO 2014 ``val`` split of ``--images`` 640x480 images (tiny JPEG files: the
mask cost is in the annotations) with ``--anns`` random polygon annotations each, then
runs :func:`qaclims.data.dataset.run` once per ``--workers`` value into a fresh output folder
and prints seconds and the speed-up over the first value. The dataset rule passes its
job's threads as ``workers`` (``threads.cpu_shard``).

    python benchmarks/bench_dataset.py --images 2000 --workers 1 2 4 8 [--record FILE]

It also times the part of the first run that the workers share (writing the masks: most of
the stage) and prints Amdahl's speed-up for each worker count, ``1 / ((1 - p) + p / n)``
with ``p`` that share, beside the measured one, and for ``--project`` counts beyond what was
measured (a machine with fewer cores than workers cannot measure them; a projection, never
recorded as a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from qaclims.data import coco as coco_data
from qaclims.data import dataset as datasets
from qaclims.report import speed


def fake_coco(root: Path, n: int, anns: int, rng: np.random.Generator) -> None:
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    tiny = root / "val2014" / "_.jpg"
    Image.new("RGB", (640, 480)).save(tiny)
    images, annotations = [], []
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        os.link(tiny, root / "val2014" / name)
        images.append({"id": i + 1, "file_name": name, "height": 480, "width": 640})
        for _ in range(anns):
            cx, cy = rng.uniform(50, 590), rng.uniform(50, 430)
            t = np.sort(rng.uniform(0, 2 * np.pi, 12))
            r = rng.uniform(10, 120, 12)
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0, "area": 1.0,
                   "category_id": int(rng.integers(1, 4)), "bbox": [0, 0, 1, 1]}  # fmt: skip
            annotations.append(ann | {"segmentation": [poly]})
    tiny.unlink()
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": cats})
    )


def amdahl(p: float, n: int, base: int) -> float:
    """Amdahl's speed-up of ``n`` workers over ``base`` when a share ``p`` of the work is
    split among the workers: ``(1 - p + p / base) / (1 - p + p / n)``."""
    return (1 - p + p / base) / (1 - p + p / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--anns", type=int, default=7, help="annotations per image (COCO: ~7)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--record", default=None, help="append the results to this JSON-lines file")
    ap.add_argument("--project", type=int, nargs="*", default=[8], help="Amdahl: worker counts")
    args = ap.parse_args()
    shared = [0.0]  # seconds in write_masks (the part the workers share)
    write_masks = coco_data.write_masks

    def timed_write_masks(*a: object, **k: object) -> int:
        t = time.perf_counter()
        try:
            return write_masks(*a, **k)  # type: ignore[arg-type]
        finally:
            shared[0] += time.perf_counter() - t

    coco_data.write_masks = timed_write_masks  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        fake_coco(tmp / "coco", args.images, args.anns, np.random.default_rng(0))
        cfg = datasets.DatasetConfig(
            name="coco14", root=str(tmp / "coco"), splits=("val",), check_images=False
        )
        print(f"{args.images} images x {args.anns} polygons, 640x480, cpus={os.cpu_count()}")
        print(f"{'workers':>8} {'seconds':>8} {'speed-up':>9} {'Amdahl':>7}")
        first, p = None, 0.0
        for w in args.workers:
            shared[0] = 0.0
            t0 = time.perf_counter()
            datasets.run(cfg, tmp / f"out{w}", workers=w)
            dt = time.perf_counter() - t0
            if first is None:
                first, p = dt, shared[0] / dt
            print(f"{w:>8} {dt:>8.2f} {first / dt:>8.2f}x {amdahl(p, w, args.workers[0]):>6.2f}x")
            if args.record and w != args.workers[0]:
                speed.append(
                    args.record,
                    bench="bench_dataset.py",
                    what=f"dataset, COCO masks + manifest, {args.images} images of 640×480, "
                    f"{args.anns} polygons each (reference: {args.workers[0]} worker)",
                    unit="img/s",
                    reference=args.images / first,
                    ours=args.images / dt,
                    threads=w,
                )
        print(f"shared part (writing masks) at {args.workers[0]} worker(s): {100 * p:.1f} %")
        for n in args.project:
            print(f"Amdahl at {n} workers: {amdahl(p, n, args.workers[0]):.2f}x (projection)")


if __name__ == "__main__":
    main()
