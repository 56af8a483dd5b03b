"""train_cam: learning on a tiny synthetic set, poly lr, exact resume, label checks."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qaclims.cam import train_cam
from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_parquet, write_image
from qaclims.data.manifest import manifest_frame, write_manifest
from qaclims.training.sampling import epoch_order

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
TINY_MODEL = {
    "backbone": {"arch": "tiny", "weights": "none", "widths": [8, 16, 16, 32], "frozen_bn": False},
    "freeze_stem": False,
    "detach_stage2": False,
}


def make_manifest(root: Path, n: int = 16, hw: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """``n`` images of dim noise with 1-2 coloured squares; class c = colour c."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = (rng.integers(0, 128, (*hw, 3))).astype(np.uint8)
        labels = sorted(rng.choice(3, int(rng.integers(1, 3)), replace=False).tolist())
        for c in labels:
            y, x = rng.integers(0, hw[0] - 14), rng.integers(0, hw[1] - 14)
            img[y : y + 14, x : x + 14] = COLOURS[c]
        path = root / f"im{i:02d}.png"
        write_image(path, img)
        rows.append(
            {
                "image_id": f"im{i:02d}",
                "image_path": str(path),
                "height": hw[0],
                "width": hw[1],
                "labels": labels,
                "gt_path": "",
            }
        )
    write_manifest(root / "manifest.parquet", manifest_frame(rows))
    return root / "manifest.parquet"


def config(**over: Any) -> train_cam.TrainCamConfig:
    base: dict[str, Any] = {
        "model": TINY_MODEL,
        "batch_size": 4,
        "epochs": 2,
        "resize_long": [32, 48],
        "crop": 32,
        "num_workers": 0,
        "amp": False,
        "log_every": 1,
        "resume_every": 3,
    }
    return from_mapping(train_cam.TrainCamConfig, {**base, **over}, "train_cam")


def train(
    root: Path,
    manifest: Path,
    cfg: train_cam.TrainCamConfig,
    tag: str,
    max_steps: int | None = None,
) -> tuple[Path, Path, Path]:
    out = (root / f"{tag}.safetensors", root / f"{tag}.parquet", root / f"{tag}.state.pt")
    train_cam.run(manifest, 3, out[0], out[1], cfg, "cpu", out[2], max_steps=max_steps)
    return out


def test_loss_goes_down(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path)
    model, hist, state = train(tmp_path, manifest, config(epochs=8, log_every=100), "run")
    df = read_parquet(hist)
    assert list(df.columns) == ["step", "epoch", "loss", "lr"]
    per_epoch = df.groupby("epoch")["loss"].mean()
    assert len(df) == 8 * 4 and len(per_epoch) == 8
    assert per_epoch.iloc[-1] < 0.7 * per_epoch.iloc[0], per_epoch.tolist()
    assert model.is_file() and not state.exists()
    weights = load_file(str(model))
    assert weights["classifier.weight"].shape == (3, 32, 1, 1)


def test_poly_learning_rate_per_step(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=8)
    _, hist, _ = train(tmp_path, manifest, config(epochs=3, lr=0.05, poly_power=0.9), "run")
    df = read_parquet(hist)
    total = 2 * 3  # 8 images // batch 4, 3 epochs
    expected = [0.05 * (1 - t / total) ** 0.9 for t in range(total)]
    np.testing.assert_allclose(df["lr"], expected, rtol=1e-12)
    assert df["step"].tolist() == list(range(1, total + 1))  # optimiser steps done
    assert df["epoch"].tolist() == [0, 0, 1, 1, 2, 2]


def test_optimizer_groups_and_epoch_order() -> None:
    from qaclims.models.cam_resnet import CamNet

    cfg = config(lr=0.2, classifier_lr_mult=10.0, momentum=0.0, weight_decay=1e-4)
    opt = train_cam.build_optimizer(CamNet(cfg.model, 3), cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 2.0]
    assert all(g["momentum"] == 0.0 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
    a, b = epoch_order(0, 1, 50), epoch_order(0, 1, 50)
    assert sorted(a.tolist()) == list(range(50)) and np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(0, 2, 50))


def test_resume_continues_and_matches_uninterrupted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = make_manifest(tmp_path)
    cfg = config(epochs=2)  # 4 steps/epoch, 8 steps; saves after steps 3, 4, 6, 8
    ref_model, ref_hist, _ = train(tmp_path, manifest, cfg, "ref")

    model, hist, state = train(tmp_path, manifest, cfg, "cut", max_steps=6)
    assert not model.exists() and not hist.exists()
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 6 and saved["history"]["values"][-1, 1] == 1  # epoch of step 6

    caplog.set_level(logging.INFO, logger="qaclims")
    # a different worker count must not change the data or invalidate the state
    train(tmp_path, manifest, dataclasses.replace(cfg, num_workers=1), "cut")
    assert "continuing from step 6" in caplog.text
    lines = [r.getMessage().split() for r in caplog.records]
    trained = [w[2] for w in lines if w[:2] == ["train_cam", "step"]]
    assert trained == ["7/8", "8/8"]
    assert not state.exists()
    pd.testing.assert_frame_equal(read_parquet(hist), read_parquet(ref_hist))
    a, b = load_file(str(ref_model)), load_file(str(model))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_changed_config_ignores_stale_resume_state(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=8)
    _, _, state = train(tmp_path, manifest, config(epochs=2), "cut", max_steps=3)
    assert torch.load(state, weights_only=True)["step"] == 3
    _, hist, _ = train(tmp_path, manifest, config(epochs=2, lr=0.05), "cut")
    assert read_parquet(hist)["step"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("labels, match", [([], "no class label"), ([1, 3], r"\[3\]")])
def test_bad_labels_name_the_image(tmp_path: Path, labels: list[int], match: str) -> None:
    manifest = make_manifest(tmp_path, n=6)
    df = pd.read_parquet(manifest)
    df.at[4, "labels"] = labels
    write_manifest(manifest, df)
    with pytest.raises(DataError, match=f"im04.*{match}"):
        train(tmp_path, manifest, config(), "bad")
    assert not (tmp_path / "bad.state.pt").exists()


def test_missing_image_and_bad_config(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=6)
    (tmp_path / "im02.png").unlink()
    with pytest.raises(DataError, match="im02.png"):
        train(tmp_path, manifest, config(), "bad")
    with pytest.raises(ConfigError, match="train_cam.resize_long"):
        train_cam.check_config(config(resize_long=[64, 32]))
    with pytest.raises(ConfigError, match="train_cam.batch_size"):
        config(batch_size=2.5)
