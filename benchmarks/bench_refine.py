"""Speed of the refinement stages, against image-at-a-time loops as in the reference (IRN).

* cam_to_ir_label: images/s of ``cam_to_ir_label.run`` with ``--threads`` worker processes
  against a single-process loop over the same images (read, two dense CRFs, write), which
  is how the reference processes each of its worker's images.
* random walk: images/s of ``random_walk.propagate`` with the sparse stencil product
  (``2^t`` steps) against the reference's method, dense repeated squaring of the ``n x n``
  transition matrix, one image at a time; also their largest difference.

Inputs are synthetic (random ellipses, smooth CAMs and boundary maps), identical for both
sides. Run: ``python benchmarks/bench_refine.py [--device cuda] [--images 16] ...``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from qaclims.core.devices import torch_device
from qaclims.core.io import write_image, write_npz, write_parquet
from qaclims.refine import cam_to_ir_label as c2i
from qaclims.refine.random_walk import propagate
from qaclims.report import speed


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with 1-3 coloured ellipses and their smooth CAMs (``K x H x W``)."""
    yy, xx = np.mgrid[:h, :w]
    img = np.broadcast_to(rng.integers(0, 255, 3), (h, w, 3)).astype(np.float64)
    cams = []
    for _ in range(int(rng.integers(1, 4))):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, h / 5, w / 5
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        img[d < 1] = rng.integers(0, 255, 3)
        cams.append(np.exp(-d / 2))
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.stack(cams).astype(np.float16)


def make_inputs(root: Path, n: int, h: int, w: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img, cams = synthetic_image(rng, h, w)
        write_image(root / "img" / f"{i:05d}.png", img)
        keys = np.arange(cams.shape[0], dtype=np.int16)
        write_npz(root / "cam" / f"{i:05d}.npz", {"keys": keys, "cam": cams})
        rows.append(
            {
                "image_id": f"{i:05d}",
                "image_path": str(root / "img" / f"{i:05d}.png"),
                "height": h,
                "width": w,
                "labels": keys.tolist(),
                "gt_path": "",
            }
        )
    write_parquet(root / "manifest.parquet", pd.DataFrame(rows))
    return root / "manifest.parquet"


def bench_ir_label(n: int, h: int, w: int, threads: list[int], record: str | None) -> None:
    cfg = c2i.IrLabelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_inputs(root, n, h, w)
        t0 = time.perf_counter()
        for i in range(n):  # the reference's loop: one image after another, one process
            c2i.label_image(
                str(root / "img" / f"{i:05d}.png"),
                str(root / "cam" / f"{i:05d}.npz"),
                str(root / "loop" / f"{i:05d}.png"),
                cfg,
            )
        base = n / (time.perf_counter() - t0)
        print(f"cam_to_ir_label {h}x{w}, {n} images: single-process loop {base:.2f} img/s")
        for t in threads:
            t0 = time.perf_counter()
            c2i.run(manifest, [root / "cam"], cfg, root / f"out{t}", 0, 1, t)
            rate = n / (time.perf_counter() - t0)
            print(f"  run(threads={t}): {rate:.2f} img/s ({rate / base:.2f}x), incl. start-up")
            if record:
                speed.append(
                    record,
                    bench="bench_refine.py",
                    what=f"cam_to_ir_label (dense CRF), {w}×{h}, {t} worker processes",
                    unit="img/s",
                    reference=base,
                    ours=rate,
                    threads=t,
                )


def walk_inputs(n: int, h: int, w: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        edge = (
            F.interpolate(
                torch.rand(1, 1, h // 4 + 1, w // 4 + 1, generator=gen), (h, w), mode="bilinear"
            )[0, 0]
            ** 4
        )
        cams = torch.rand(2, h, w, generator=gen)
        out.append((cams.to(device), edge.to(device)))
    return out


def time_walk(items: list[tuple[torch.Tensor, torch.Tensor]], method: str) -> tuple[float, list]:
    propagate(*items[0], method=method)  # warm-up
    if items[0][0].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = [propagate(c, e, 5, 10.0, 8, method) for c, e in items]
    if items[0][0].is_cuda:
        torch.cuda.synchronize()
    return len(items) / (time.perf_counter() - t0), res


def bench_walk(n: int, h: int, w: int, device: str, record: str | None) -> None:
    items = walk_inputs(n, h, w, device)
    dense, a = time_walk(items, "dense")
    sparse, b = time_walk(items, "sparse")
    diff = max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b, strict=True))
    print(
        f"random walk {h}x{w} grid (n={h * w}), 2^8 steps, {n} images on {device}: "
        f"dense squaring (reference) {dense:.2f} img/s, sparse {sparse:.2f} img/s "
        f"({sparse / dense:.1f}x); max relative difference {diff:.1e}"
    )
    if record:
        speed.append(
            record,
            bench="bench_refine.py",
            what=f"random walk, {h}×{w} grid, 2^8 steps (reference: dense squaring)",
            unit="img/s",
            reference=dense,
            ours=sparse,
            device=device,
        )


def bench_irn(
    device: str, batch: int, steps: int, size: tuple[int, int], record: str | None
) -> None:
    """IRN (ResNet-50, random weights: nothing downloaded) training steps at crop 512 and
    make_sem_seg's per-image work (boundary inference + sparse walk) on ``device``."""
    from qaclims.models import irn as irn_model
    from qaclims.models.backbone import BackboneConfig
    from qaclims.refine import make_sem_seg, train_irn

    dev = torch.device(device)
    model_cfg = irn_model.IrnModelConfig(backbone=BackboneConfig(weights="none"))
    for amp in (False, True):
        cfg = train_irn.TrainIrnConfig(model=model_cfg, batch_size=batch, amp=amp)
        net = irn_model.build_model(model_cfg).to(dev).train()
        opt = train_irn.build_optimizer(net, cfg)
        img = torch.randn(batch, 3, 512, 512)
        lab = torch.randint(0, 3, (batch, 128, 128), dtype=torch.uint8)
        train_irn.train_step(net, opt, (img, lab), cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_irn.train_step(net, opt, (img, lab), cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        print(
            f"IRN train step, batch {batch}, crop 512, amp={amp}: {dt * 1e3:.0f} ms "
            f"({batch / dt:.1f} img/s)"
        )
        if record:
            speed.append(
                record,
                bench="bench_refine.py",
                what=f"IRN training step, ResNet-50, batch {batch}, crop 512"
                + (", bf16" if amp else ""),
                unit="img/s",
                ours=batch / dt,
                device=device,
                stage="train_irn" if dev.type == "cuda" and batch == 32 and not amp else None,
            )
    net.eval()
    rng = np.random.default_rng(0)
    sem = make_sem_seg.SemSegConfig()
    items = []
    for _ in range(4):
        im, cams = synthetic_image(rng, *size)
        small = cams[:, ::4, ::4].astype(np.float32)
        items.append({"image": im, "keys": np.arange(len(cams)), "cams": small})
    make_sem_seg.segment(net, items[0], model_cfg, sem, dev)
    t0 = time.perf_counter()
    for item in items:
        make_sem_seg.segment(net, item, model_cfg, sem, dev)
    rate = len(items) / (time.perf_counter() - t0)
    print(f"make_sem_seg per image {size[0]}x{size[1]} (IRN boundary + walk): {rate:.1f} img/s")
    if record:
        speed.append(
            record,
            bench="bench_refine.py",
            what=f"make_sem_seg, ResNet-50 IRN, {size[1]}×{size[0]} (boundary + walk)",
            unit="img/s",
            ours=rate,
            device=device,
            stage="make_sem_seg" if dev.type == "cuda" else None,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(375, 500), help="image H W")
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument(
        "--walk-grid",
        type=int,
        nargs=2,
        default=None,
        help="stride-4 grid H W (default: 94 125 on GPU, 32 40 on CPU)",
    )
    p.add_argument("--walk-images", type=int, default=4)
    p.add_argument("--skip-crf", action="store_true")
    p.add_argument("--skip-walk", action="store_true")
    p.add_argument("--irn", action="store_true", help="also time IRN training / inference")
    p.add_argument("--irn-batch", type=int, default=32)
    p.add_argument("--irn-steps", type=int, default=5)
    p.add_argument("--record", default=None, help="append the results to this JSON-lines file")
    a = p.parse_args()
    dev = torch_device(a.device)
    grid = a.walk_grid or ((94, 125) if dev.startswith("cuda") else (32, 40))
    if not a.skip_walk:
        bench_walk(a.walk_images, grid[0], grid[1], dev, a.record)
    if a.irn:
        bench_irn(dev, a.irn_batch, a.irn_steps, tuple(a.size), a.record)
    if not a.skip_crf:
        bench_ir_label(a.images, a.size[0], a.size[1], a.threads, a.record)


if __name__ == "__main__":
    main()
