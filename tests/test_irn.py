"""IRN (qaclims.models.irn, qaclims.refine.train_irn): affinity labels, model shapes, loss
values, augmentation and a resumable tiny training run on CPU."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qaclims.core.errors import DataError
from qaclims.core.io import read_label_png, write_image, write_label_png, write_parquet
from qaclims.models import irn as irn_model
from qaclims.models.backbone import BackboneConfig
from qaclims.refine import random_walk as rw
from qaclims.refine import train_irn

torch.set_num_threads(1)

TINY = irn_model.IrnModelConfig(
    backbone=BackboneConfig(arch="tiny", weights="none", widths=(8, 16, 16, 32)),
    edge_width=8,
    disp_width=16,
)
CFG = train_irn.TrainIrnConfig(
    model=TINY,
    crop=48,
    batch_size=2,
    epochs=2,
    radius=4,
    num_workers=0,
    log_every=1,
    resume_every=1,
)


def hand_label() -> np.ndarray:
    lab = np.zeros((8, 9), dtype=np.uint8)
    lab[1:5, 1:4] = 1
    lab[2:7, 5:8] = 2
    lab[6:8, 0:3] = 255
    lab[0, 6] = 255
    return lab


def test_pair_labels_match_brute_force() -> None:
    lab = hand_label()
    g = rw.pair_geometry(3)
    bg, fg, neg = (t[0].numpy() for t in rw.pair_labels(torch.from_numpy(lab)[None].long(), g))
    m = g.margin
    srcs = [(y, x) for y in range(8 - m) for x in range(m, 9 - m)]
    seen = {"bg": 0, "fg": 0, "neg": 0, "ignored": 0}
    for di, (dy, dx) in enumerate(g.directions.tolist()):
        for si, (y, x) in enumerate(srcs):
            a, b = lab[y, x], lab[y + dy, x + dx]
            kind = "ignored" if 255 in (a, b) else "neg" if a != b else "bg" if a == 0 else "fg"
            seen[kind] += 1
            assert (bg[di, si], fg[di, si], neg[di, si]) == (
                kind == "bg",
                kind == "fg",
                kind == "neg",
            ), (dy, dx, y, x)
    assert min(seen.values()) > 0


def test_pair_displacement_of_a_coordinate_field_is_minus_the_offset() -> None:
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    disp = torch.stack([ys, xs])[None]
    g = rw.pair_geometry(4)
    pd_ = rw.pair_displacement(disp, g)[0]
    expected = -torch.as_tensor(g.directions.T, dtype=torch.float32)[:, :, None]
    torch.testing.assert_close(pd_, expected.expand_as(pd_))


def test_model_shapes_and_frozen_backbone() -> None:
    net = irn_model.build_model(TINY).train()
    edge, disp = net(torch.randn(2, 3, 48, 64))
    assert edge.shape == (2, 1, 12, 16) and disp.shape == (2, 2, 12, 16)
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.backbone.training
    e, d = net.head_parameters()
    assert e and d and all(p.requires_grad for p in e + d)


def test_loss_values_for_saturated_boundaries() -> None:
    lab = torch.from_numpy(hand_label())[None].long()
    g = rw.pair_geometry(3)
    disp = torch.zeros(1, 2, 8, 9)
    no_edge = train_irn.irn_losses(torch.full((1, 1, 8, 9), -50.0), disp, lab, g)
    all_edge = train_irn.irn_losses(torch.full((1, 1, 8, 9), 50.0), disp, lab, g)
    # affinity 1 everywhere: positives cost -log(1 + eps) ~ 0, negatives -log(eps)
    assert float(no_edge["pos"]) == pytest.approx(0.0, abs=1e-4)
    assert float(no_edge["neg"]) == pytest.approx(-math.log(1e-5), rel=1e-3)
    assert float(all_edge["pos"]) == pytest.approx(-math.log(1e-5), rel=1e-3)
    assert float(all_edge["neg"]) == pytest.approx(0.0, abs=1e-4)
    assert float(no_edge["disp_bg"]) == 0.0
    # zero displacement: each fg positive pair costs |dy| + |dx|, averaged over 2 * count
    _, fg, _ = rw.pair_labels(lab, g)
    cost = torch.as_tensor(np.abs(g.directions).sum(1), dtype=torch.float32)[:, None]
    expected = float((fg[0] * cost).sum() / (2 * fg.sum()))
    assert float(no_edge["disp_fg"]) == pytest.approx(expected, rel=1e-4)


def test_augmentation_keeps_image_and_label_aligned() -> None:
    lab = np.zeros((40, 70), dtype=np.uint8)
    lab[5:30, 10:50] = 1
    img = np.where(lab[..., None] == 1, [200, 10, 10], [10, 10, 200]).astype(np.uint8)
    cfg = replace(CFG, rescale=(1.0, 1.0), crop=48)
    for seed in range(8):
        x, y = train_irn._augment(img, lab, cfg, np.random.default_rng(seed))
        assert x.shape == (48, 48, 3) and y.shape == (48, 48)
        red = x[..., 0] > x[..., 2]
        inside = y != 255
        np.testing.assert_array_equal(red[inside], y[inside] == 1)
        assert (x[~inside] == 0).all()


def make_dataset(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = np.zeros((40, 56, 3), np.uint8)
        img[:] = (20, 40, 200)
        lab = np.zeros((40, 56), np.uint8)
        y0, x0 = rng.integers(0, 16, 2)
        img[y0 : y0 + 20, x0 : x0 + 24] = (220, 30, 30)
        lab[y0 : y0 + 20, x0 : x0 + 24] = 1 + i % 2
        lab[y0 + 18 : y0 + 22, :] = 255
        write_image(root / f"img{i}.png", img)
        write_label_png(root / f"ir{i % 2}" / f"im{i}.png", lab)
        rows.append(
            {
                "image_id": f"im{i}",
                "image_path": str(root / f"img{i}.png"),
                "height": 40,
                "width": 56,
                "labels": [i % 2],
                "gt_path": "",
            }
        )
    write_parquet(root / "manifest.parquet", pd.DataFrame(rows))
    return root / "manifest.parquet"


def train(root: Path, tag: str, max_steps: int | None = None) -> tuple[Path, Path, Path]:
    out = (
        root / tag / "model.safetensors",
        root / tag / "history.parquet",
        root / tag / "state.pt",
    )
    train_irn.run_train(
        root / "manifest.parquet",
        [root / "ir0", root / "ir1"],
        CFG,
        out[0],
        out[1],
        device="cpu",
        resume_path=out[2],
        max_steps=max_steps,
    )
    return out


def test_interrupted_training_resumes_to_the_same_result(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    full_model, full_hist, full_state = train(tmp_path, "full")
    assert not full_state.exists()
    model, hist, state = train(tmp_path, "resumed", max_steps=2)
    assert state.is_file() and not model.exists() and not hist.exists()
    train(tmp_path, "resumed")
    assert not state.exists()
    a, b = load_file(str(full_model)), load_file(str(model))
    assert a.keys() == b.keys() and "disp_mean" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    ha, hb = pd.read_parquet(full_hist), pd.read_parquet(hist)
    assert list(ha["step"]) == [1, 2, 3, 4, 5, 6]  # 6 images / batch 2 * 2 epochs
    pd.testing.assert_frame_equal(ha, hb, atol=1e-6)
    # the saved network loads into a fresh model (weights "none": nothing downloaded)
    net = irn_model.build_model(TINY, for_inference=True)
    net.load_state_dict(a)


def test_missing_ir_label_names_the_image(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / "ir1" / "im3.png").unlink()
    with pytest.raises(DataError, match="im3.png"):
        train(tmp_path, "x")


def test_resume_state_from_other_ir_labels_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed under one upstream setting, rerun under another (other ir labels): the stale
    state is discarded with a log line and the result is the fresh run's."""
    make_dataset(tmp_path)
    _, _, state = train(tmp_path, "run", max_steps=2)
    assert state.is_file()
    for png in tmp_path.glob("ir*/*.png"):
        lab = read_label_png(png)
        write_label_png(png, np.where(lab == 1, 2, lab).astype(np.uint8))
    with caplog.at_level("WARNING"):
        model, _, _ = train(tmp_path, "run")
    assert any("discarding resume state" in r.getMessage() for r in caplog.records)
    fresh, _, _ = train(tmp_path, "fresh")
    a, b = load_file(str(model)), load_file(str(fresh))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


# ------------------------------------------------- backbone from the CAM network (demo)


def cam_network(path: Path, widths: tuple[int, ...], seed: int) -> Path:
    """A CAM network file as train_cam writes it (random weights, BatchNorm statistics set
    away from their initial 0 / 1 so that copying them is visible)."""
    from qaclims.models.cam_resnet import CamModelConfig, CamNet
    from qaclims.training import save_weights

    torch.manual_seed(seed)
    bb = BackboneConfig(arch="tiny", weights="none", widths=widths, strides=(2, 2, 1, 1))
    net = CamNet(CamModelConfig(backbone=bb), num_classes=2)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    save_weights(path, net)
    return path


#: IRN's strides (2, 2, 2, 1) against the CAM network's (2, 2, 1, 1): widths that change in
#: every stage, so both have the same tensors (qaclims.models.backbone.tensor_layout)
WIDTHS = (8, 16, 32, 64)


def train_from_cam(root: Path, tag: str, cam: Path | None, **kw: object) -> Path:
    out = root / tag / "model.safetensors"
    model = replace(TINY, backbone=replace(TINY.backbone, widths=WIDTHS))
    train_irn.run_train(
        root / "manifest.parquet",
        [root / "ir0", root / "ir1"],
        replace(CFG, model=model, epochs=1, backbone_from="train_cam" if cam else "weights"),
        out,
        root / tag / "history.parquet",
        device="cpu",
        resume_path=root / tag / "state.pt",
        cam_weights=cam,
        **kw,  # type: ignore[arg-type]
    )
    return out


def test_the_backbone_from_the_cam_network_is_copied_and_stays_frozen(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    cam = cam_network(tmp_path / "cam.safetensors", WIDTHS, seed=1)
    trained = load_file(str(train_from_cam(tmp_path, "a", cam)))
    given = {k: v for k, v in load_file(str(cam)).items() if k.startswith("backbone.")}
    assert len(given) > 20 and not any(k.startswith("classifier") for k in given)
    # every backbone tensor (weights and BatchNorm statistics) is the CAM network's, after
    # training too (strides (2, 2, 1, 1) there, (2, 2, 2, 1) in IRN: no tensor changes)
    assert {k for k in trained if k.startswith("backbone.")} == set(given)
    for k, v in given.items():
        assert torch.equal(trained[k], v), k
    own = load_file(str(train_from_cam(tmp_path, "b", None)))  # backbone_from: weights
    assert not torch.equal(
        own["backbone.stages.1.conv1.weight"], given["backbone.stages.1.conv1.weight"]
    )


def test_a_cam_network_of_other_widths_or_a_missing_one_is_refused(tmp_path: Path) -> None:
    from qaclims.core.errors import ConfigError

    make_dataset(tmp_path)
    wide = cam_network(
        tmp_path / "wide.safetensors", (8, 16, 32, 32), seed=1
    )  # no stage-3 shortcut
    with pytest.raises(DataError, match=r"wide\.safetensors does not fit the IRN backbone"):
        train_from_cam(tmp_path, "a", wide)
    cam = cam_network(tmp_path / "cam.safetensors", WIDTHS, seed=1)
    args = (tmp_path / "manifest.parquet", [tmp_path / "ir0", tmp_path / "ir1"])
    outs = {"out_model": tmp_path / "m.safetensors", "out_history": tmp_path / "h.parquet",
            "device": "cpu", "resume_path": tmp_path / "s.pt"}  # fmt: skip
    with pytest.raises(ConfigError, match="'train_cam' but train_cam's network was not given"):
        train_irn.run_train(*args, replace(CFG, backbone_from="train_cam"), **outs)
    with pytest.raises(ConfigError, match="'weights' but train_cam's network was given"):
        train_irn.run_train(*args, CFG, **outs, cam_weights=cam)
    assert not (tmp_path / "m.safetensors").exists()


def test_resume_state_made_on_another_cam_network_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The resume state holds the heads only (the backbone is rebuilt from its file): a state
    trained on one CAM network must not continue on another."""
    make_dataset(tmp_path)
    cam_a = cam_network(tmp_path / "a.safetensors", WIDTHS, seed=1)
    cam_b = cam_network(tmp_path / "b.safetensors", WIDTHS, seed=2)
    train_from_cam(tmp_path, "run", cam_a, max_steps=1)
    assert (tmp_path / "run" / "state.pt").is_file()
    with caplog.at_level("WARNING"):
        resumed = load_file(str(train_from_cam(tmp_path, "run", cam_b)))
    assert any("discarding resume state" in r.getMessage() for r in caplog.records)
    fresh = load_file(str(train_from_cam(tmp_path, "fresh", cam_b)))
    for k in fresh:
        torch.testing.assert_close(resumed[k], fresh[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cam_arch", ["tiny", "resnet18"])
def test_tensor_layout_says_when_two_backbones_share_their_tensors(cam_arch: str) -> None:
    """Against the networks themselves: equal layouts exactly when the built backbones have
    the same tensor names and shapes."""
    from itertools import product

    from qaclims.models.backbone import build_backbone, tensor_layout

    def shapes(arch: str, widths: tuple[int, ...], strides: tuple[int, ...]) -> set[tuple]:
        cfg = BackboneConfig(arch=arch, weights="none", widths=widths, strides=strides)
        return {(k, tuple(v.shape)) for k, v in build_backbone(cfg).state_dict().items()}

    cam = (cam_arch, (8, 16, 16, 32), (2, 2, 1, 1))
    cases = [
        ("tiny", w, s)
        for w, s in product(
            [(8, 16, 16, 32), (8, 16, 32, 64), (8, 8, 16, 16)],
            [(2, 2, 1, 1), (2, 2, 2, 1), (2, 1, 1, 1)],
        )  # fmt: skip
    ] + [("resnet18", (8, 16, 16, 32), (2, 2, 2, 1)), ("resnet34", (8, 16, 16, 32), (2, 2, 1, 1))]
    seen = set()
    for case in cases:
        same = shapes(*case) == shapes(*cam)
        assert (tensor_layout(*case) == tensor_layout(*cam)) == same, case
        seen.add(same)
    assert seen == {True, False}  # both answers occur
