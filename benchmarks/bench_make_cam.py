"""Benchmark make_cam's multi-scale CAM inference: reference style vs batched.

(a) reference: IRN's ``make_cam`` loop -- one image at a time, scale by scale, each
    forward = the image and its mirror image; every class upsampled, then the present ones
    kept.
(b) batched: ``qaclims.cam.multiscale.batch_cams`` -- ``--batch-size`` same-size images and
    their mirrors per forward, only the batch's classes upsampled.

Both use the same network (random weights, nothing downloaded) and the same synthetic
images, generated here; image loading is not timed. Each variant runs in a fresh process so
its peak memory is its own: peak RSS (``ru_maxrss``) on CPU, ``max_memory_allocated`` on GPU.

    python benchmarks/bench_make_cam.py                      # tiny model, 32 x 128x128, CPU
    python benchmarks/bench_make_cam.py --device cuda --arch resnet50 --size 500x375
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qaclims.artifacts import camfile
from qaclims.cam.make_cam import MakeCamConfig
from qaclims.cam.multiscale import batch_cams, cam_sizes, flip_cam
from qaclims.core.config import from_mapping  # noqa: E402
from qaclims.core.devices import torch_device  # noqa: E402
from qaclims.data import augment  # noqa: E402
from qaclims.models.cam_resnet import CamModelConfig, CamNet  # noqa: E402
from qaclims.report import speed  # noqa: E402

SCALES = (1.0, 0.5, 1.5, 2.0)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--arch", default="tiny", help="tiny | resnet18 | resnet50 | resnet101")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", default="128x128", help="WxH of the synthetic images")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward in (b)")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU) in both variants")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--record", default=None, help="append the result to this JSON-lines file")
    p.add_argument("--variant", choices=["reference", "batched"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(
    a: argparse.Namespace, device: torch.device
) -> tuple[CamNet, list[torch.Tensor], list[list[int]]]:
    """The network and ``--images`` normalised 3xHxW images with 1-3 labels each."""
    backbone: dict[str, Any] = {"arch": a.arch, "weights": "none"}
    if a.arch == "tiny":
        backbone["widths"] = [32, 64, 128, 256]
    torch.manual_seed(0)
    net = CamNet(from_mapping(CamModelConfig, {"backbone": backbone}, "model"), a.classes)
    with torch.no_grad():
        net.classifier.weight.abs_()
    net = net.to(device).eval()
    w, h = (int(v) for v in a.size.lower().split("x"))
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(a.images):
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        images.append(augment.to_chw(augment.normalize(img)).to(device))
        k = int(rng.integers(1, 4))
        labels.append(sorted(rng.choice(a.classes, k, replace=False).tolist()))
    return net, images, labels


@torch.no_grad()
def reference_one(net: CamNet, x: torch.Tensor, keys: list[int], amp: bool) -> np.ndarray:
    """IRN's per-image loop (on the device): returns the normalised high-res CAM (float32)."""
    h, w = x.shape[-2:]
    st_size, up_size = cam_sizes(h, w, net.output_stride)
    outs = [
        flip_cam(net, augment.resize_tensor(x[None], augment.scaled_size(h, w, s)), True, amp)[0]
        for s in SCALES
    ]
    strided = torch.stack([F.interpolate(o[None], st_size, mode="bilinear")[0] for o in outs])
    strided = strided.sum(0)
    highres = torch.stack([F.interpolate(o[:, None], up_size, mode="bilinear") for o in outs])
    highres = highres.sum(0)[:, 0, :h, :w]
    sel = torch.as_tensor(keys, device=x.device)
    strided, highres = strided[sel], highres[sel]
    strided = strided / (strided.amax(dim=(1, 2), keepdim=True) + 1e-5)
    highres = highres / (highres.amax(dim=(1, 2), keepdim=True) + 1e-5)
    strided.cpu().numpy()
    return highres.float().cpu().numpy()


def stored_sum(cam: np.ndarray) -> float:
    """Sum of the CAM values a stored array stands for (uint8 levels or floats)."""
    values = camfile.dequantise(cam) if cam.dtype == np.uint8 else cam
    return float(values.astype(np.float64).sum())


def variant(a: argparse.Namespace) -> dict[str, float | list[float]]:
    """Run one variant in this process; figures as a dict."""
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(torch_device(a.device))
    net, images, labels = build(a, dev)
    cfg = MakeCamConfig(scales=SCALES, batch_size=a.batch_size, amp=a.amp)
    sums: list[float] = []

    def work(idx: range) -> None:
        if a.variant == "reference":
            for i in idx:
                cam = reference_one(net, images[i], labels[i], a.amp)
                sums.append(stored_sum(camfile.quantise(cam)))  # on make_cam's level grid
            return
        for s in range(idx.start, idx.stop, a.batch_size):
            rows = range(s, min(s + a.batch_size, idx.stop))
            out = batch_cams(
                net, torch.stack([images[i] for i in rows]), [labels[i] for i in rows], cfg
            )
            sums.extend(stored_sum(o["cam"]) for o in out)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    work(range(0, min(a.batch_size, a.images)))  # warm-up (not timed)
    sums.clear()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    work(range(a.images))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "img_s": a.images / secs,
        "secs": secs,
        "peak_mib": peak,
        "rss_before_mib": rss0,
        "sums": sums,
        "device": str(dev),
    }


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.variant:
        print(json.dumps(variant(a)))
        return
    results = {}
    for v in ("reference", "batched"):
        cmd = [
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
            "--variant",
            v,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[v] = json.loads(out.strip().splitlines()[-1])
    ref, bat = results["reference"], results["batched"]
    diff = max(
        abs(x - y) / max(abs(x), 1e-9) for x, y in zip(ref["sums"], bat["sums"], strict=True)
    )
    mem = "peak GPU alloc MiB" if ref["device"].startswith("cuda") else "peak RSS MiB"
    print(
        f"make_cam benchmark: arch={a.arch} images={a.images} size={a.size} "
        f"scales={list(SCALES)} flip=True classes={a.classes} device={ref['device']} "
        f"threads={torch.get_num_threads() if not a.threads else a.threads} amp={a.amp}"
    )
    print(f"{'variant':<22}{'images/s':>10}{'seconds':>10}{mem:>22}")
    for name, r in (("(a) reference, 1 img", ref), (f"(b) batched, {a.batch_size} img", bat)):
        print(f"{name:<22}{r['img_s']:>10.2f}{r['secs']:>10.2f}{r['peak_mib']:>22.1f}")
    print(
        f"speed-up x{bat['img_s'] / ref['img_s']:.2f}; "
        f"max relative difference of per-image CAM sums {diff:.1e}"
    )
    if not ref["device"].startswith("cuda"):
        print(
            f"(peak RSS after building model and images, before inference: "
            f"a {ref['rss_before_mib']:.1f}, b {bat['rss_before_mib']:.1f} MiB)"
        )
    if a.record:
        w, h = a.size.split("x")
        speed.append(
            a.record,
            bench="bench_make_cam.py",
            what=f"make_cam, {a.arch}, {w}×{h}, {len(SCALES)} scales + flip"
            + (", bf16" if a.amp else ""),
            unit="img/s",
            reference=ref["img_s"],
            ours=bat["img_s"],
            device=ref["device"],
            threads=None
            if ref["device"].startswith("cuda")
            else a.threads or torch.get_num_threads(),
            # the paper's network and precision on a GPU: the GPU-hours table's make_cam rate
            stage="make_cam"
            if ref["device"].startswith("cuda") and a.arch == "resnet50" and not a.amp
            else None,
        )


if __name__ == "__main__":
    main()
