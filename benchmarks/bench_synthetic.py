"""Time the synthetic world generator and the dataset stage reading it back.

    .venv/bin/python benchmarks/bench_synthetic.py [--images 300] [--size 128]

Prints seconds and images per second; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qaclims.data import dataset as datasets
from qaclims.data import synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    n_val = args.images // 4
    cfg = synthetic.SyntheticConfig(
        image_size=args.size, num_images={"train": args.images - n_val, "val": n_val}
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"
        t0 = time.perf_counter()
        synthetic.run(root, cfg)
        t1 = time.perf_counter()
        dcfg = datasets.DatasetConfig(name="synthetic", root=str(root), splits=("train", "val"))
        datasets.run(dcfg, Path(tmp) / "data")
        t2 = time.perf_counter()
    print(f"synthetic.run: {args.images} images of {args.size} px in {t1 - t0:.2f} s "
          f"({args.images / (t1 - t0):.0f} images/s)")  # fmt: skip
    print(f"datasets.run (headers, masks, check_images): {t2 - t1:.2f} s "
          f"({args.images / (t2 - t1):.0f} images/s)")  # fmt: skip


if __name__ == "__main__":
    main()
