"""Time DeepLab inference (multi-scale + flip, dense CRF) and one training step.

Prints, for the chosen backbone: seconds per image of
:func:`qaclims.seg.infer_deeplab.predict_logits`
at VOC size (375x500) for the reference test (scales 1, 0.75, 0.5, no flip) and with
flips, seconds per image of the dense CRF (deeplab-pytorch parameters), and seconds per
multi-scale training step at the given batch and crop. With ``--demo`` it also trains the
tiny net on a synthetic colour-block set and prints the resulting val mIoU (a "does it
learn" figure for the demo config).

Usage: ``python benchmarks/bench_deeplab_infer.py [--arch tiny|resnet101] [--device cpu]
[--images 3] [--batch 2] [--crop 321] [--demo] [--record FILE]``. Weights are random (nothing is
downloaded); speed does not depend on them.
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

from qaclims.core import io
from qaclims.core.config import from_mapping
from qaclims.core.devices import torch_device
from qaclims.data.manifest import write_manifest
from qaclims.evaluation import metrics
from qaclims.models import deeplab as dlm
from qaclims.seg import infer_deeplab, train_deeplab
from qaclims.seg.loss import Units

os.environ.setdefault("HF_HUB_OFFLINE", "1")
H, W = 375, 500


def model_cfg(arch: str) -> dlm.DeeplabModelConfig:
    bb = {"arch": arch, "weights": "none"}
    return from_mapping(dlm.DeeplabModelConfig, {"backbone": bb}, "train_deeplab.model")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_infer(net: torch.nn.Module, dev: torch.device, n: int, flip: bool) -> float:
    x = torch.randn(1, 3, H, W, device=dev)
    infer_deeplab.predict_logits(net, x, (1.0, 0.75, 0.5), flip, "max")  # warm-up
    sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        infer_deeplab.predict_logits(net, x, (1.0, 0.75, 0.5), flip, "max")
    sync(dev)
    return (time.perf_counter() - t) / n


def time_crf(n: int) -> float:
    from qaclims.models.crf import dense_crf

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3)).astype(np.uint8)
    probs = torch.softmax(torch.randn(21, H, W), 0).numpy()
    cfg = infer_deeplab._crf_config(infer_deeplab.DeeplabCrfConfig())
    t = time.perf_counter()
    for _ in range(n):
        dense_crf(img, probs, cfg)
    return (time.perf_counter() - t) / n


def time_train(net: dlm.DeepLab, dev: torch.device, batch: int, crop: int, n: int) -> float:
    cfg = train_deeplab.TrainDeeplabConfig(model=model_cfg("tiny"))
    msc = dlm.MultiScaleNet(net, cfg.msc_scales).train()
    opt = train_deeplab.build_optimizer(net, cfg)
    x = torch.randn(batch, 3, crop, crop, device=dev)
    y = torch.randint(0, 21, (batch, crop, crop), device=dev)
    units = Units.of_positions(0, batch, batch, batch)
    train_deeplab.train_step(msc, opt, x, y, units, cfg.loss, 1, amp=False)
    sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        train_deeplab.train_step(msc, opt, x, y, units, cfg.loss, 1, amp=False)
    sync(dev)
    return (time.perf_counter() - t) / n


def blocks(root: Path, n: int, seed: int) -> Path:
    """``n`` 64x80 images with one coloured block of class 1..3 each; GT = pseudo mask."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = int(rng.integers(1, 4))
        lab = np.zeros((64, 80), np.uint8)
        t, left = int(rng.integers(0, 32)), int(rng.integers(0, 40))
        lab[t : t + 28, left : left + 36] = c
        colours = np.array([[90, 90, 90], [200, 40, 40], [40, 200, 40], [40, 40, 200]])
        img = np.clip(colours[lab] + rng.normal(0, 25, (64, 80, 3)), 0, 255).astype(np.uint8)
        io.write_image(root / "img" / f"{i:04d}.png", img)
        io.write_label_png(root / "mask" / f"{i:04d}.png", lab)
        rows.append(
            {
                "image_id": f"{i:04d}",
                "image_path": str(root / "img" / f"{i:04d}.png"),
                "height": 64,
                "width": 80,
                "labels": [c - 1],
                "gt_path": str(root / "mask" / f"{i:04d}.png"),
            }
        )
    write_manifest(root / "m.parquet", pd.DataFrame(rows))
    return root / "m.parquet"


def demo(root: Path, iterations: int) -> None:
    train, val = blocks(root / "train", 40, 0), blocks(root / "val", 20, 1)
    tiny = {"arch": "tiny", "weights": "none"}
    cfg = from_mapping(train_deeplab.TrainDeeplabConfig, {
        "model": {"backbone": tiny, "aspp_rates": [1, 2, 3, 4]}, "batch_size": 4, "crop": 48,
        "iterations": iterations, "lr": 0.01, "num_workers": 0, "log_every": 50,
    }, "train_deeplab")  # fmt: skip
    t = time.perf_counter()
    train_deeplab.train_run(train, [root / "train" / "mask"], 4, cfg, root / "m.st", root / "h.pq",
                      "cpu", root / "state.pt")  # fmt: skip
    print(f"demo: {iterations} steps of batch 4 in {time.perf_counter() - t:.1f} s")
    icfg = infer_deeplab.InferDeeplabConfig()
    infer_deeplab.infer_run(val, root / "m.st", cfg.model, 4, icfg, root / "nocrf", root / "crf", 0,
                      1, "cpu")  # fmt: skip
    for kind in ("nocrf", "crf"):
        conf = np.zeros((4, 4), np.int64)
        for p in sorted((root / "val" / "mask").glob("*.png")):
            pred = io.read_label_png(root / kind / p.name)
            conf += metrics.confusion(io.read_label_png(p), pred, 4)
        print(f"demo val mIoU ({kind}): {100 * metrics.miou(conf):.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=321)
    p.add_argument("--demo", type=int, default=0, help="demo training steps (0: skip)")
    p.add_argument("--record", default=None, help="append the results to this JSON-lines file")
    a = p.parse_args()
    dev = torch.device(torch_device(a.device))
    torch.manual_seed(0)
    net = dlm.build_model(model_cfg(a.arch), 21).to(dev).eval()
    print(f"arch {a.arch} on {dev}, {torch.get_num_threads()} threads, image {H}x{W}")
    infer = time_infer(net, dev, a.images, False)
    print(f"infer 3 scales:        {infer:.3f} s/img")
    print(f"infer 3 scales + flip: {time_infer(net, dev, a.images, True):.3f} s/img")
    print(f"dense CRF (21 cls):    {time_crf(a.images):.3f} s/img")
    step = time_train(net, dev, a.batch, a.crop, 2)
    print(f"train step (MSC, batch {a.batch}, crop {a.crop}): {step:.3f} s")
    if a.record:
        from qaclims.report import speed

        # the paper's network (DeepLab-v2 ResNet-101, MSC training on 321 crops) on a GPU:
        # the GPU-hours table's train_deeplab and infer_deeplab rates
        paper = dev.type == "cuda" and a.arch == "resnet101"
        speed.append(a.record, bench="bench_deeplab_infer.py",
                     what=f"DeepLab inference, {a.arch}, {W}×{H}, scales 1/0.75/0.5 (no CRF)",
                     unit="img/s", ours=1 / infer, device=str(dev),
                     stage="infer_deeplab" if paper else None)  # fmt: skip
        speed.append(a.record, bench="bench_deeplab_infer.py",
                     what=f"DeepLab training step, {a.arch}, MSC, batch {a.batch}, crop {a.crop}",
                     unit="img/s", ours=a.batch / step, device=str(dev),
                     stage="train_deeplab" if paper and a.crop == 321 else None)  # fmt: skip
    if a.demo:
        with tempfile.TemporaryDirectory() as d:
            demo(Path(d), a.demo)


if __name__ == "__main__":
    main()
