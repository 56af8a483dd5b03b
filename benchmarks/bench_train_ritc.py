"""Time one RITC training step: this project's batched step against a reference-style one.

Both variants train the same networks on the same inputs (random images, 2 classes per
image, a text bank of 1 foreground and 10 background phrases per pair) and compute the
same loss:

- ``ours``: :func:`qaclims.ritc.objective.ritc_loss` (pairs gathered with one indexing
  op, one CLIP call per region kind, the InfoNCE losses of all pairs in one batched call);
- ``reference-style``: QA-CLIMS ``step/train_qa_clims.py``'s structure: a Python loop over
  the (image, class) pairs that builds the masked inputs one by one, one CLIP call per
  region kind on their stack, then a Python loop computing each pair's two losses.

Prints images/s and peak memory of each (each variant in its own process: peak RSS on the
CPU, ``torch.cuda.max_memory_allocated`` on a GPU). Default: the tiny CAM network and tiny
CLIP. ``--paper``: ResNet-50 CAM network and an untrained ViT-L/14 CLIP (open_clip
architecture, no download) at the paper's batch of 8, 512-px crops, on ``--device`` (``cpu``
or ``cuda``); ``--gpu`` is ``--paper --device cuda``. Only a GPU record of the paper's
networks carries a ``stage`` (the GPU-hours table's rate).

``--train-cam`` also times one ``train_cam`` step (the baseline CAM network's training: IRN's
recipe, ResNet-50 at batch 16 on 512-px crops with ``--paper``).

Usage: ``python benchmarks/bench_train_ritc.py [--steps 5] [--paper] [--device cpu|cuda]
[--gpu] [--train-cam] [--record FILE]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from typing import Any

import torch
import torch.nn.functional as F


def build(paper: bool, device: str) -> dict[str, Any]:
    from qaclims.core.config import from_mapping
    from qaclims.models.cam_resnet import CamModelConfig, CamNet
    from qaclims.models.clip import ClipConfig, ClipInput, TinyClipArch, load_clip
    from qaclims.ritc import objective, train_ritc

    torch.manual_seed(0)
    dev = torch.device(device)
    if paper:
        model_cfg = from_mapping(
            CamModelConfig, {"backbone": {"arch": "resnet50", "weights": "none"}}, "m"
        )
        clip_cfg = ClipConfig(name="ViT-L-14", pretrained="")
        batch, crop, classes = 8, 512, 20
    else:
        model_cfg = from_mapping(
            CamModelConfig, {"backbone": {"arch": "tiny", "weights": "none"}}, "m"
        )
        arch = TinyClipArch(embed_dim=32, image_size=32, patch_size=8, vision_width=32,
                            vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
                            text_heads=2, context_length=16, mask_prompt_depth=2)  # fmt: skip
        clip_cfg = ClipConfig(name="tiny", tiny=arch)
        batch, crop, classes = 8, 64, 6
    clip, info, _ = load_clip(clip_cfg, str(dev), None)
    assert isinstance(info, ClipInput)
    net = objective.RitcNet(CamNet(model_cfg, classes)).to(dev).train()
    cfg = from_mapping(
        train_ritc.TrainRitcConfig, {"batch_size": batch, "crop": crop}, "train_ritc"
    )
    x = torch.randn(batch, 3, crop, crop, device=dev)
    y = torch.zeros(batch, classes, device=dev)
    for b in range(batch):
        y[b, [b % classes, (b + 1) % classes]] = 1
    ids = [f"im{b}" for b in range(batch)]
    width = int(clip.text_projection.shape[-1])
    keys = [(ids[b], c) for b in range(batch) for c in range(classes) if y[b, c] > 0]
    feats = F.normalize(torch.randn(len(keys) * 11 + classes, width, device=dev), dim=-1)
    fg = {k: i * 11 for i, k in enumerate(keys)}
    bg = {k: [i * 11 + j for j in range(1, 11)] for i, k in enumerate(keys)}
    bank = train_ritc.TextBank(feats, fg, bg, list(range(len(keys) * 11, len(keys) * 11 + classes)))
    ctx = objective.StepContext(clip, info, bank, cfg, cfg.loss_images / batch)
    opt = train_ritc.build_optimizer(net, cfg)
    return {"net": net, "ctx": ctx, "x": x, "y": y, "ids": ids, "opt": opt, "dev": dev}


def reference_style_loss(
    net: Any, ctx: Any, x: torch.Tensor, y: torch.Tensor, ids: list[str]
) -> torch.Tensor:
    """The reference step's structure with the project's pieces (same loss value)."""
    from qaclims.models.clip_encode import region_features
    from qaclims.ritc import objective
    from qaclims.ritc.losses import ritc_pair_losses

    cfg, size = ctx.cfg, ctx.clip_input.image_size
    cams = net(x)
    cam_s = F.interpolate(cams, (size, size), mode="bilinear", align_corners=True)
    img_s = F.interpolate(x, (size, size), mode="bilinear", align_corners=True)
    fg_in, bg_in, fg_m, bg_m, keys = [], [], [], [], []
    for b, c in (y > 0).nonzero().tolist():  # the reference's per-pair loop
        cam = cam_s[b, c][None]
        m = objective.mask_adapter(cam[None], cfg.alpha)[0]
        img = objective.to_clip_space(img_s[b][None], cfg, ctx.clip_input)[0]
        fg_in.append(cam * img)
        bg_in.append((1 - cam) * img)
        fg_m.append(m)
        bg_m.append(1 - m)
        keys.append((ids[b], c))
    fg_feat = region_features(ctx.clip, torch.stack(fg_in), torch.stack(fg_m), cfg.region_encoding)
    bg_feat = region_features(ctx.clip, torch.stack(bg_in), torch.stack(bg_m), cfg.region_encoding)
    frc = brc = torch.zeros((), device=x.device)
    for i, k in enumerate(keys):  # the reference's per-pair loss loop
        fg_text, bg_text, valid = ctx.bank.gather([k])
        pl = ritc_pair_losses(fg_feat[i : i + 1], bg_feat[i : i + 1], fg_text, bg_text, valid,
                              cfg.temperature)  # fmt: skip
        frc, brc = frc + pl.frc.sum(), brc + pl.brc.sum()
    frc, brc = frc * ctx.scale, brc * ctx.scale
    return cfg.w_fg * frc + cfg.w_bg * brc + cfg.w_area * cams.mean()


def timed_steps(step: Any, steps: int, gpu: bool) -> tuple[float, float, float]:
    """``step()`` once to warm up, then ``steps`` times: (the warm-up's return value, seconds
    per step, peak memory in MiB: ``torch.cuda.max_memory_allocated`` of the timed steps on
    a GPU, the process's peak RSS on the CPU)."""
    first = step()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if gpu:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    return first, dt, peak


def in_process(ctx: Any, target: Any, *args: Any) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh process of ``ctx``; what it puts on the queue."""
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    res: dict[str, Any] = q.get()
    p.join()
    return res


def measure(variant: str, paper: bool, device: str, steps: int, out: Any) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from qaclims.ritc import objective

    gpu = device.startswith("cuda")
    s = build(paper, device)
    net, ctx, x, y, ids, opt = s["net"], s["ctx"], s["x"], s["y"], s["ids"], s["opt"]

    def step() -> float:
        if variant == "ours":
            loss, _ = objective.ritc_loss(net, ctx, x, y, ids)
        else:
            loss = reference_style_loss(net, ctx, x, y, ids)
        objective.optimizer_step(opt, loss)
        return float(loss.detach())

    first, dt, peak = timed_steps(step, steps, gpu)
    out.put({"variant": variant, "first_loss": first, "img_per_s": x.shape[0] / dt,
             "peak_mib": peak})  # fmt: skip


def measure_train_cam(paper: bool, device: str, steps: int, out: Any) -> None:
    """One ``train_cam`` step (:func:`qaclims.cam.train_cam.train_step`): IRN's recipe,
    ResNet-50 at batch 16 on 512-px crops with ``--paper``, the tiny net on 64 px otherwise."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from qaclims.cam import train_cam
    from qaclims.core.config import from_mapping
    from qaclims.models.cam_resnet import CamNet

    torch.manual_seed(0)
    dev, gpu = torch.device(device), device.startswith("cuda")
    arch, batch, crop, classes = ("resnet50", 16, 512, 20) if paper else ("tiny", 16, 64, 6)
    cfg = from_mapping(train_cam.TrainCamConfig, {
        "model": {"backbone": {"arch": arch, "weights": "none", "strides": [2, 2, 2, 1],
                               "frozen_bn": True}, "freeze_stem": True, "detach_stage2": True},
        "batch_size": batch, "crop": crop}, "train_cam")  # fmt: skip
    net = CamNet(cfg.model, classes).to(dev).train()
    opt = train_cam.build_optimizer(net, cfg)
    x = torch.randn(batch, 3, crop, crop, device=dev)
    y = (torch.rand(batch, classes, device=dev) < 0.15).float()
    _, dt, peak = timed_steps(lambda: train_cam.train_step(net, opt, x, y, cfg.amp), steps, gpu)
    out.put({"img_per_s": batch / dt, "peak_mib": peak, "arch": arch, "batch": batch,
             "crop": crop})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--paper", action="store_true", help="ResNet-50 + ViT-L/14 at batch 8")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--gpu", action="store_true", help="--paper --device cuda")
    ap.add_argument("--record", default=None, help="append the result to this JSON-lines file")
    ap.add_argument("--train-cam", action="store_true", help="also time one train_cam step")
    a = ap.parse_args()
    if a.gpu:
        a.paper, a.device = True, "cuda"
    gpu = a.device.startswith("cuda")
    threads = None if gpu else int(os.environ.get("BENCH_THREADS", "2"))
    ctx = mp.get_context("spawn")
    if a.train_cam:
        cam = in_process(ctx, measure_train_cam, a.paper, a.device, a.steps)
        print(f"train_cam step, {cam['arch']}, batch {cam['batch']}, {cam['crop']} px: "
              f"{cam['img_per_s']:.2f} images/s, peak {cam['peak_mib']:.0f} MiB")  # fmt: skip
        if a.record:
            from qaclims.report import speed

            speed.append(
                a.record,
                bench="bench_train_ritc.py",
                what=f"train_cam step, {cam['arch']}, batch {cam['batch']}, {cam['crop']} px",
                unit="img/s",
                ours=cam["img_per_s"],
                device=a.device,
                threads=threads,
                stage="train_cam" if a.paper and gpu else None,
            )
    rows = [
        in_process(ctx, measure, v, a.paper, a.device, a.steps) for v in ("reference-style", "ours")
    ]
    assert abs(rows[0]["first_loss"] - rows[1]["first_loss"]) <= 1e-4 * max(
        1.0, abs(rows[1]["first_loss"])
    )
    print(json.dumps({"device": a.device, "threads": threads, "steps": a.steps}))
    print("| variant | images/s | peak memory (MiB) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['img_per_s']:.2f} | {r['peak_mib']:.0f} |")
    if a.record:
        from qaclims.report import speed

        speed.append(
            a.record,
            bench="bench_train_ritc.py",
            what=(
                "RITC training step, ResNet-50 + ViT-L/14, batch 8, 512 px"
                if a.paper
                else "RITC training step, tiny CAM net + tiny CLIP, batch 8"
            ),
            unit="img/s",
            reference=rows[0]["img_per_s"],
            ours=rows[1]["img_per_s"],
            device=a.device,
            threads=threads,
            stage="train_ritc" if a.paper and gpu else None,
        )


if __name__ == "__main__":
    main()
