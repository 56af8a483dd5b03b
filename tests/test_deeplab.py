"""DeepLab stage: network shapes, loss, augmentation, multi-scale inference, resume, outputs."""

from __future__ import annotations

import math
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qaclims.core import io
from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.data.manifest import write_manifest
from qaclims.models import deeplab as dlm
from qaclims.seg import infer_deeplab, submission, train_deeplab, training_data
from qaclims.seg import loss as seg_loss
from qaclims.training import load_weights
from qaclims.training.sampling import StepBatches

K = 4  # background + 3 classes
TINY = {"arch": "tiny", "weights": "none", "widths": [8, 8, 16, 16]}
SIZES = [(32, 32), (33, 49), (65, 49), (33, 49), (49, 65), (33, 49)]  # shard 1: one size


def tiny_model_cfg(version: str = "v2") -> dlm.DeeplabModelConfig:
    rates = [1, 2] if version == "v2" else [2, 3]
    mapping = {"version": version, "backbone": TINY, "aspp_rates": rates}
    return from_mapping(dlm.DeeplabModelConfig, mapping, "train_deeplab.model")


def tiny_train_cfg(**over: object) -> train_deeplab.TrainDeeplabConfig:
    m = {
        "model": {"version": "v2", "backbone": TINY, "aspp_rates": [1, 2]},
        "batch_size": 2,
        "crop": 24,
        "scales": [0.75, 1.0, 1.25],
        "iterations": 5,
        "lr": 0.01,
        "num_workers": 0,
        "log_every": 2,
        "resume_every": 2,
        "seed": 3,
    }
    m.update(over)
    return from_mapping(train_deeplab.TrainDeeplabConfig, m, "train_deeplab")


def make_world(root: Path, ignore_rows: bool = True) -> dict[str, Path]:
    """6 images (colour blocks) with pseudo masks split over two shard folders; with
    ``ignore_rows`` the top two rows of every mask are 255."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate(SIZES):
        lab = np.zeros((h, w), np.uint8)
        lab[h // 4 : 3 * h // 4, w // 3 :] = 1 + i % (K - 1)
        img = (rng.integers(0, 40, (h, w, 3)) + 60 * lab[..., None]).astype(np.uint8)
        if ignore_rows:
            lab[:2] = 255
        io.write_image(root / "img" / f"im{i}.png", img)
        io.write_label_png(root / f"pseudo{i % 2}" / f"im{i}.png", lab)
        rows.append(
            {
                "image_id": f"im{i}",
                "image_path": str(root / "img" / f"im{i}.png"),
                "height": h,
                "width": w,
                "labels": [i % (K - 1)],
                "gt_path": "",
            }
        )
    write_manifest(root / "train.parquet", pd.DataFrame(rows))
    return {
        "root": root,
        "manifest": root / "train.parquet",
        "pseudo": [root / "pseudo0", root / "pseudo1"],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("dl"))


def _interp(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("version", ["v2", "v3"])
@pytest.mark.parametrize("hw", [(33, 49), (65, 47), (32, 32), (41, 17)])
def test_output_is_ceil_stride_8_on_odd_sizes(version: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = dlm.build_model(tiny_model_cfg(version), K).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, *hw))
    # stem conv (k7 s2 p3), max pool (k3 s2 p1), one stride-2 stage: each n -> ceil(n / 2)
    assert y.shape == (2, K, math.ceil(hw[0] / 8), math.ceil(hw[1] / 8))


def test_resnet101_v2_has_output_stride_8_and_four_rates() -> None:
    torch.manual_seed(0)
    bb = dlm.DeeplabBackboneConfig(weights="none")
    net = dlm.build_model(dlm.DeeplabModelConfig(backbone=bb), 21).eval()
    assert [c.dilation for c in net.head.convs] == [(r, r) for r in (6, 12, 18, 24)]
    with torch.no_grad():
        y = net(torch.randn(1, 3, 41, 57))
    assert y.shape == (1, 21, 6, 8)


def test_msc_net_returns_each_scale_and_their_max() -> None:
    torch.manual_seed(0)
    base = dlm.build_model(tiny_model_cfg(), K).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        outs = dlm.MultiScaleNet(base, (0.5, 0.75))(x)
        full = base(x)
        half = base(_interp(x, (24, 20)))
        tq = base(_interp(x, (36, 30)))
    assert len(outs) == 4
    torch.testing.assert_close(outs[0], full)
    torch.testing.assert_close(outs[1], half)
    torch.testing.assert_close(outs[2], tq)
    ups = [_interp(t, (6, 5)) for t in (half, tq)]
    torch.testing.assert_close(outs[3], torch.maximum(full, torch.maximum(*ups)))


def _as_deeplab_pytorch(tv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict renamed by hand the way deeplab-pytorch names it."""
    parts = {
        "conv1": "reduce.conv",
        "bn1": "reduce.bn",
        "conv2": "conv3x3.conv",
        "bn2": "conv3x3.bn",
        "conv3": "increase.conv",
        "bn3": "increase.bn",
        "downsample.0": "shortcut.conv",
        "downsample.1": "shortcut.bn",
    }
    ref: dict[str, torch.Tensor] = {"aspp.c0.weight": torch.zeros(21, 2048, 3, 3)}
    for k, v in tv.items():
        if k.startswith("conv1."):
            ref["layer1.conv1.conv." + k[6:]] = v
        elif k.startswith("bn1."):
            ref["layer1.conv1.bn." + k[4:]] = v
        elif k.startswith("layer"):
            layer, block, rest = k.split(".", 2)
            part = next(p for p in parts if rest.startswith(p + "."))
            new = f"layer{int(layer[5]) + 1}.block{int(block) + 1}.{parts[part]}"
            ref[new + rest[len(part) :]] = v
    return ref


def test_deeplab_pytorch_checkpoint_is_renamed_into_backbone(tmp_path: Path) -> None:
    assert dlm.rename_deeplab_pytorch_key("layer1.conv1.bn.running_var") == "bn1.running_var"
    key = dlm.rename_deeplab_pytorch_key("base.layer4.block23.conv3x3.conv.weight")
    assert key == "layer3.22.conv2.weight"
    key = dlm.rename_deeplab_pytorch_key("layer2.block1.shortcut.bn.bias")
    assert key == "layer1.0.downsample.1.bias"
    assert dlm.rename_deeplab_pytorch_key("aspp.c0.weight") is None
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(_as_deeplab_pytorch(tv), tmp_path / "init.pth")
    bb = {"arch": "resnet50", "weights": str(tmp_path / "init.pth")}
    net = dlm.build_model(from_mapping(dlm.DeeplabModelConfig, {"backbone": bb}, "m"), 21)
    st = net.backbone.stages
    torch.testing.assert_close(st[0][0].weight, tv["conv1.weight"])
    torch.testing.assert_close(st[0][1].running_mean, tv["bn1.running_mean"])
    torch.testing.assert_close(st[0][4][1].bn3.weight, tv["layer1.1.bn3.weight"])
    torch.testing.assert_close(st[3][2].conv2.weight, tv["layer4.2.conv2.weight"])
    torch.testing.assert_close(st[1][0].downsample[1].bias, tv["layer2.0.downsample.1.bias"])


def test_caffe_style_strides_reduce_conv_and_subtracts_bgr_mean() -> None:
    bb = {"arch": "resnet50", "weights": "none"}
    cfg = from_mapping(dlm.DeeplabModelConfig, {"backbone": bb, "style": "caffe"}, "m")
    net = dlm.build_model(cfg, K).eval()
    first = net.backbone.stages[1][0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    with torch.no_grad():
        y = net(torch.randn(1, 3, 32, 40))
    # conv s2: 16x20; ceil-mode pool: ceil(15/2)+1=9, ceil(19/2)+1=11; 1x1 s2: 5x6
    assert y.shape == (1, K, 5, 6)
    x = dlm.normalise(np.array([[[123, 117, 104]]], np.uint8), "caffe")
    np.testing.assert_allclose(x[:, 0, 0], [104 - 104.008, 117 - 116.669, 123 - 122.675], atol=1e-4)


def test_partial_backbone_mapping_keeps_deeplab_defaults() -> None:
    mapping = {"model": {"backbone": {"arch": "tiny", "weights": "none"}}}
    cfg = from_mapping(train_deeplab.TrainDeeplabConfig, mapping, "train_deeplab")
    bb = cfg.model.backbone.to_backbone_config()
    assert (bb.strides, bb.dilations, bb.frozen_bn) == ((2, 2, 1, 1), (1, 1, 2, 4), True)
    with pytest.raises(ConfigError, match="train_deeplab.model.version"):
        train_deeplab.check_train_config(tiny_train_cfg(model={"version": "v9"}))
    with pytest.raises(ConfigError, match="infer_deeplab.fusion"):
        infer_deeplab.check_infer_config(infer_deeplab.InferDeeplabConfig(fusion="median"))


# ---------------------------------------------------------------- loss / optimiser


def test_all_ignore_batch_gives_zero_loss_and_zero_grad() -> None:
    logits = torch.randn(2, K, 5, 7, requires_grad=True)
    labels = torch.full((2, 9, 13), 255, dtype=torch.long)
    loss = seg_loss.seg_loss([logits, logits * 2], labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_loss_is_mean_ce_over_non_ignored_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, K, 6, 5)
    labels = torch.randint(0, K, (2, 6, 5))
    labels[0, :2] = 255
    lp = logits.log_softmax(1).numpy()
    terms = [
        -lp[b, labels[b, i, j], i, j]
        for b in range(2)
        for i in range(6)
        for j in range(5)
        if labels[b, i, j] != 255
    ]
    assert seg_loss.seg_loss([logits], labels).item() == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("size", [(5, 7), (9, 4), (17, 13)])
def test_label_resize_matches_pil_nearest(size: tuple[int, int]) -> None:
    lab = np.random.default_rng(1).integers(0, 6, (2, 13, 11)).astype(np.uint8)
    ours = seg_loss.resize_labels(torch.from_numpy(lab).long(), size).numpy()
    pil = [np.asarray(Image.fromarray(x).resize(size[::-1], Image.Resampling.NEAREST)) for x in lab]
    np.testing.assert_array_equal(ours, np.stack(pil))


def test_optimizer_groups_follow_reference_multipliers() -> None:
    cfg = tiny_train_cfg(lr=1e-3)
    net = dlm.build_model(cfg.model, K)
    opt = train_deeplab.build_optimizer(net, cfg)
    got = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    n_conv = sum(1 for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert got == [(1e-3, 5e-4, n_conv), (1e-2, 5e-4, 2), (2e-2, 0.0, 2)]


def _reference_step_loss(
    outputs: list[torch.Tensor], labels: torch.Tensor, kind: str, loss_batch: int
) -> torch.Tensor:
    """The references' step loss written out: for each loader batch of ``loss_batch``
    images and each output, ``CrossEntropyLoss(ignore_index=255)`` (ce) or CLIMS's
    ``criterion_balance`` (mean CE over label-0 pixels + mean CE over the other non-255
    pixels, halved), labels PIL-nearest resized per output; summed over outputs and
    divided by the number of batches (``ITER_SIZE``)."""
    n_units = len(labels) // loss_batch
    total = torch.zeros(())
    for u in range(n_units):
        sl = slice(u * loss_batch, (u + 1) * loss_batch)
        for logits in outputs:
            h, w = logits.shape[-2:]
            lab = torch.from_numpy(np.stack([
                np.asarray(Image.fromarray(x.astype(np.float32)).resize((w, h), Image.NEAREST))
                for x in labels[sl].numpy()
            ])).long()  # fmt: skip
            ce = F.cross_entropy(logits[sl], lab, ignore_index=255, reduction="none")
            if kind == "ce":
                total = total + ce[lab != 255].mean()
            else:
                bg, fg = lab == 0, (lab != 0) & (lab != 255)
                total = total + (ce[bg].sum() / bg.sum() + ce[fg].sum() / fg.sum()) / 2
    return total / n_units


def _step_grads(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, units: seg_loss.Units, kind: str,
    iter_size: int,
) -> tuple[float, list[torch.Tensor]]:  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss = train_deeplab.train_step(net, opt, x, y, units, kind, iter_size, amp=False)
    return float(loss), [p.grad.clone() for p in net.parameters() if p.grad is not None]


@pytest.mark.parametrize("kind", ["ce", "balanced"])
def test_step_loss_and_gradient_are_the_references_per_loss_unit(kind: str) -> None:
    """Two loss units of 3 images, 255 pixels and a background-heavy image included: the
    step's loss and gradient equal the reference formula's (autograd of it), for every
    chunking of the step (iter_size 1, 2, 4: chunks straddle the units)."""
    torch.manual_seed(0)
    net = dlm.MultiScaleNet(dlm.build_model(tiny_model_cfg(), K), (0.5,)).train()  # frozen BN
    x = torch.randn(6, 3, 24, 24)
    y = torch.randint(0, K, (6, 24, 24))
    y[:, :3] = 255
    y[1, 10:] = 0  # mostly background
    net.zero_grad()
    want = _reference_step_loss(net(x), y, kind, loss_batch=3)
    want.backward()
    want_grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    units = seg_loss.Units.of_positions(0, 6, loss_batch=3, batch=6)
    assert units.index.tolist() == [0, 0, 0, 1, 1, 1] and units.count == 2
    for iter_size in (1, 2, 4):
        loss, grads = _step_grads(net, x, y, units, kind, iter_size)
        assert loss == pytest.approx(want.item(), rel=1e-5)
        assert len(grads) == len(want_grads) > 0
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_balanced_loss_by_hand_and_a_unit_without_foreground() -> None:
    """Two pixels of background (CE a, b) and one of foreground (CE c): (mean(a, b) + c) / 2;
    a unit with no foreground pixel gives its background mean / 2, finite."""
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 3.0]]]])  # 1 x 2 classes x 1 x 3
    labels = torch.tensor([[[0, 0, 1]]])
    lse = torch.logsumexp(logits[0, :, 0], dim=0)
    ce = lse - logits[0, labels[0, 0], 0, torch.arange(3)]
    want = ((ce[0] + ce[1]) / 2 + ce[2]) / 2
    got = seg_loss.seg_loss([logits], labels, "balanced")
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    only_bg = torch.tensor([[[0, 0, 255]]])
    got = seg_loss.seg_loss([logits], only_bg, "balanced")
    assert float(got) == pytest.approx(float((ce[0] + ce[1]) / 4), rel=1e-6)


def test_loss_batch_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match="train_deeplab.loss_batch"):
        train_deeplab.check_train_config(tiny_train_cfg(batch_size=4, loss_batch=3))
    with pytest.raises(ConfigError, match="train_deeplab.loss"):
        tiny_train_cfg(loss="focal")
    units = train_deeplab.rank_units(tiny_train_cfg(batch_size=4, loss_batch=2), rank=1, per_rank=2)
    assert units.index.tolist() == [1, 1] and units.count == 2
    whole = train_deeplab.rank_units(tiny_train_cfg(batch_size=4), rank=0, per_rank=4)
    assert whole.index.tolist() == [0, 0, 0, 0] and whole.count == 1


# ---------------------------------------------------------------- data


def test_augmentation_pads_with_mean_and_ignore() -> None:
    cfg = tiny_train_cfg(crop=40, scales=[1.0], flip=False)
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    lab = np.random.default_rng(1).integers(0, K, (20, 30)).astype(np.uint8)
    x, y = training_data.augment_pair(img, lab, cfg, np.random.default_rng(5))
    assert x.shape == (3, 40, 40) and y.shape == (40, 40) and y.dtype == np.int64
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = ((img / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x[:, :20, :30], want, atol=1e-5)
    np.testing.assert_array_equal(y[:20, :30], lab)
    assert np.all(x[:, 20:] == 0) and np.all(x[:, :, 30:] == 0)
    assert np.all(y[20:] == 255) and np.all(y[:, 30:] == 255)


def test_augmentation_flip_and_scale_keep_image_and_mask_aligned() -> None:
    cfg = tiny_train_cfg(crop=16, scales=[0.5], flip=True)
    lab = np.zeros((40, 60), np.uint8)
    lab[:, 30:] = 2  # right half is class 2, and bright in the image
    img = np.where(lab[..., None] == 2, 250, 10).astype(np.uint8).repeat(3, axis=2)
    for seed in range(6):
        x, y = training_data.augment_pair(img, lab, cfg, np.random.default_rng(seed))
        assert x.shape == (3, 16, 16) and set(np.unique(y)) <= {0, 2}
        np.testing.assert_array_equal(x[0] > 0, y == 2)


def test_endless_batches_partition_each_step_and_visit_every_image_per_epoch() -> None:
    # 5 images in batches of 4 over 2 processes: the stream wraps across epochs
    one = list(StepBatches(5, 4, seed=3, start=0, stop=5, wrap=True))
    ranks = [list(StepBatches(5, 4, seed=3, start=0, stop=5, rank=r, world=2, wrap=True))
             for r in (0, 1)]  # fmt: skip
    for s in range(5):  # each step: rank 0 the first half, rank 1 the second
        assert ranks[0][s] + ranks[1][s] == one[s]
    stream = [k for batch in one for k in batch]  # 20 samples = 4 epochs of 5
    for e in range(4):
        keys = stream[5 * e : 5 * e + 5]
        assert {k[0] for k in keys} == {e} and sorted(k[1] for k in keys) == list(range(5))
    resumed = list(StepBatches(5, 4, seed=3, start=2, stop=5, wrap=True))
    assert resumed == one[2:]


def test_missing_and_bad_pseudo_masks_are_named(world: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"3 of 6 images .* im1\.png"):
        training_data.read_train_rows(world["manifest"], [world["pseudo"][0]])
    io.write_label_png(tmp_path / "bad.png", np.full((4, 4), 9, np.uint8))
    with pytest.raises(DataError, match="bad.png holds label 9"):
        training_data.checked_label(str(tmp_path / "bad.png"), (4, 4), K)


# ---------------------------------------------------------------- inference


def test_multiscale_flip_is_mean_of_direct_passes() -> None:
    torch.manual_seed(0)
    net = dlm.build_model(tiny_model_cfg(), K).eval()
    img = np.random.default_rng(2).integers(0, 255, (37, 45, 3)).astype(np.uint8)
    scales = (1.0, 0.5, 1.5)
    passes = []
    with torch.no_grad():
        for s in scales:
            for flip in (False, True):
                im = np.ascontiguousarray(img[:, ::-1]) if flip else img
                x = torch.from_numpy(dlm.normalise(im, "torchvision"))[None]
                if s != 1:
                    x = _interp(x, (int(37 * s), int(45 * s)))
                y = _interp(net(x), (37, 45))[0].numpy()
                passes.append(y[:, :, ::-1] if flip else y)
    x = torch.from_numpy(dlm.normalise(img, "torchvision"))[None]
    got = infer_deeplab.predict_logits(net, torch.cat([x, x]), scales, flip=True, fusion="mean")
    np.testing.assert_allclose(got[0].numpy(), np.mean(passes, axis=0), atol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), np.mean(passes, axis=0), atol=1e-5)
    got_max = infer_deeplab.predict_logits(net, x, scales, flip=True, fusion="max")
    np.testing.assert_allclose(got_max[0].numpy(), np.max(passes, axis=0), atol=1e-5)


def test_msc_fusion_is_deeplab_pytorchs() -> None:
    """deeplab-pytorch's MSC at test time, one image at a time: logits at scale 1, at each
    other scale (input by ``scale_factor``) resized to the scale-1 logit grid, their max,
    upsampled to the image; here written with numpy's max over explicit passes."""
    torch.manual_seed(0)
    net = dlm.build_model(tiny_model_cfg(), K).eval()
    img = np.random.default_rng(4).integers(0, 255, (41, 53, 3)).astype(np.uint8)
    x = torch.from_numpy(dlm.normalise(img, "torchvision"))[None]
    with torch.no_grad():
        base = net(x)
        grid = base.shape[-2:]
        passes = [base[0].numpy()]
        for s in (0.75, 0.5):
            h = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            passes.append(_interp(net(h), tuple(grid))[0].numpy())
        fused = torch.from_numpy(np.max(passes, axis=0))[None]
        want = _interp(fused, (41, 53))[0].numpy()
    got = infer_deeplab.predict_logits(net, x, (1.0, 0.75, 0.5), flip=False, fusion="msc")
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-5)
    at_full = infer_deeplab.predict_logits(net, x, (1.0, 0.75, 0.5), flip=False, fusion="max")
    assert np.abs(at_full[0].numpy() - want).max() > 1e-4  # fusing at full size differs
    assert infer_deeplab.InferDeeplabConfig().fusion == "msc"


# ---------------------------------------------------------------- train + infer runs


def _train(world: dict[str, Path], out: Path, max_steps: int | None = None) -> None:
    train_deeplab.train_run(
        world["manifest"], world["pseudo"], K, tiny_train_cfg(), out / "m.st",
        out / "h.parquet", "cpu", out / "state.pt", max_steps=max_steps,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(world: dict[str, Path]) -> Path:
    out = world["root"] / "full"
    _train(world, out)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_weights(path, dlm.build_model(tiny_train_cfg().model, K)).state_dict()


def test_interrupted_run_resumes_to_identical_weights(
    world: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    _train(world, tmp_path, max_steps=3)  # stopped after step 3 (state saved there)
    assert not (tmp_path / "m.st").exists()
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 3
    _train(world, tmp_path)
    hist = io.read_parquet(tmp_path / "h.parquet")
    assert hist["step"].tolist() == [1, 2, 3, 4, 5]  # optimiser steps done
    assert not (tmp_path / "state.pt").exists()
    ref = io.read_parquet(trained / "h.parquet")
    np.testing.assert_allclose(hist["loss"], ref["loss"], rtol=1e-5)
    a, b = _weights(trained / "m.st"), _weights(tmp_path / "m.st")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_infer_run_writes_label_pngs_per_shard(
    world: dict[str, Path], trained: Path, tmp_path: Path
) -> None:
    mapping = {"scales": [1.0, 0.5], "flip": True, "fusion": "mean", "batch_size": 2}
    cfg = from_mapping(infer_deeplab.InferDeeplabConfig, mapping, "infer_deeplab")
    model_cfg = tiny_train_cfg().model
    for shard in (0, 1):
        infer_deeplab.infer_run(
            world["manifest"], trained / "m.st", model_cfg, K, cfg,
            tmp_path / "nocrf" / str(shard), tmp_path / "crf" / str(shard), shard, 2, "cpu",
        )  # fmt: skip
    # the evaluation server's archive of the CRF masks holds them as they are
    crf_dirs = [tmp_path / "crf" / "0", tmp_path / "crf" / "1"]
    submission.pack(world["manifest"], crf_dirs, tmp_path / "s.tar.gz", K)
    with tarfile.open(tmp_path / "s.tar.gz") as tar:
        served = {
            Path(m.name).stem: np.asarray(Image.open(tar.extractfile(m)))  # type: ignore[arg-type]
            for m in tar.getmembers()
            if m.isfile()
        }
    net = load_weights(trained / "m.st", dlm.build_model(model_cfg, K, init=False)).eval()
    for i, (h, w) in enumerate(SIZES):
        img = io.read_image(world["root"] / "img" / f"im{i}.png")
        x = torch.from_numpy(dlm.normalise(img, "torchvision"))[None]
        want = infer_deeplab.predict_logits(net, x, (1.0, 0.5), True, "mean")[0].argmax(0).numpy()
        got = io.read_label_png(tmp_path / "nocrf" / str(i % 2) / f"im{i}.png")
        np.testing.assert_array_equal(got, want)
        crf = io.read_label_png(tmp_path / "crf" / str(i % 2) / f"im{i}.png")
        assert crf.shape == (h, w) and crf.max() < K
        np.testing.assert_array_equal(served.pop(f"im{i}"), crf)
    assert not served
    with pytest.raises(ConfigError, match="crf.enabled"):
        infer_deeplab.infer_run(
            world["manifest"], trained / "m.st", model_cfg, K, cfg, tmp_path / "x", None, 0,
            2, "cpu",
        )  # fmt: skip


def _infer(world: dict[str, Path], trained: Path, out: Path, **over: object) -> None:
    mapping = {"scales": [1.0, 0.5], "flip": False, "batch_size": 1, **over}
    cfg = from_mapping(infer_deeplab.InferDeeplabConfig, mapping, "infer_deeplab")
    infer_deeplab.infer_run(
        world["manifest"], trained / "m.st", tiny_train_cfg().model, K, cfg,
        out / "nocrf", out / "crf", 0, 1, "cpu",
    )  # fmt: skip


def test_interrupted_shard_resumes_from_its_partial_folders(
    world: dict[str, Path], trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard stopped after 2 of its images keeps them: the rerun computes only the other
    4 and ends with the masks of an uninterrupted run; under other settings the partial
    folders are discarded and every image is computed again."""
    _infer(world, trained, tmp_path / "fresh")
    real_write, written = infer_deeplab._write, []

    def write(image_id: str, *args: object) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt  # the job is killed
        written.append(image_id)
        real_write(image_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(infer_deeplab, "_write", write)
    with pytest.raises(KeyboardInterrupt):
        _infer(world, trained, tmp_path / "run")
    assert not (tmp_path / "run" / "nocrf").exists()
    partial = tmp_path / "run" / ".nocrf.partial"
    assert sorted(p.stem for p in partial.glob("*.png")) == sorted(written)
    first, written[:] = list(written), []
    computed: list[str] = []
    monkeypatch.setattr(
        infer_deeplab, "_write", lambda i, *a: (computed.append(i), real_write(i, *a))
    )
    _infer(world, trained, tmp_path / "run")
    assert len(computed) == len(SIZES) - 2 and not set(computed) & set(first)
    assert not partial.exists() and not (tmp_path / "run" / ".crf.partial").exists()
    for kind in ("nocrf", "crf"):
        names = sorted(p.name for p in (tmp_path / "fresh" / kind).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "run" / kind).iterdir())
        for n in names:
            np.testing.assert_array_equal(
                io.read_label_png(tmp_path / "run" / kind / n),
                io.read_label_png(tmp_path / "fresh" / kind / n),
            )
    # interrupted again, then rerun with another scale set: nothing is kept
    (tmp_path / "run2").mkdir()
    monkeypatch.setattr(infer_deeplab, "_write", write)
    with pytest.raises(KeyboardInterrupt):
        _infer(world, trained, tmp_path / "run2")
    computed.clear()
    monkeypatch.setattr(
        infer_deeplab, "_write", lambda i, *a: (computed.append(i), real_write(i, *a))
    )
    _infer(world, trained, tmp_path / "run2", scales=[1.0])
    assert len(computed) == len(SIZES)


# ---------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_cfg() -> train_deeplab.TrainDeeplabConfig:
    """Units of 4 images over 2 ranks of 2: each unit's pixel counts span both ranks."""
    return tiny_train_cfg(
        scales=[1.0, 1.5], crop=16, iterations=2, batch_size=8, loss_batch=4, loss="balanced"
    )


def _ddp_worker(rank: int, port: int, world: dict[str, Path], out: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    train_deeplab.train_run(
        world["manifest"], world["pseudo"], K, _ddp_cfg(), out / "m.st", out / "h.parquet",
        "cpu", out / "state.pt",
    )  # fmt: skip
    torch.distributed.destroy_process_group()


def test_two_rank_ddp_matches_single_process(tmp_path: Path) -> None:
    """Masks with 255 rows, crops that pad, the balanced loss, loss units split between the
    ranks: the DDP run's losses and weights equal the single-process run's."""
    import torch.multiprocessing as mp

    world = make_world(tmp_path / "data", ignore_rows=True)
    mp.spawn(_ddp_worker, args=(_free_port(), world, tmp_path / "ddp"), nprocs=2)
    one = tmp_path / "one"
    train_deeplab.train_run(
        world["manifest"], world["pseudo"], K, _ddp_cfg(), one / "m.st", one / "h.parquet",
        "cpu", one / "state.pt",
    )  # fmt: skip
    a, b = _weights(tmp_path / "ddp" / "m.st"), _weights(one / "m.st")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ha, hb = io.read_parquet(tmp_path / "ddp" / "h.parquet"), io.read_parquet(one / "h.parquet")
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-5)


def test_resume_state_from_other_pseudo_masks_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed under one upstream setting, rerun under another (other pseudo masks): the
    stale state is discarded with a log line and the result is the fresh run's."""
    w = make_world(tmp_path / "data")
    _train(w, tmp_path / "run", max_steps=3)
    assert (tmp_path / "run" / "state.pt").is_file()
    for d in w["pseudo"]:
        for png in d.glob("*.png"):
            lab = io.read_label_png(png)
            io.write_label_png(png, np.where(lab == 255, 255, np.minimum(lab, 1)).astype(np.uint8))
    with caplog.at_level("WARNING"):
        _train(w, tmp_path / "run")
    assert any("discarding resume state" in r.getMessage() for r in caplog.records)
    _train(w, tmp_path / "fresh")
    a, b = _weights(tmp_path / "run" / "m.st"), _weights(tmp_path / "fresh" / "m.st")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
