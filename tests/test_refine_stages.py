"""Stages cam_to_ir_label and make_sem_seg run end to end on tiny synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qaclims.core.errors import DataError
from qaclims.core.io import (
    read_image,
    read_label_png,
    write_image,
    write_label_png,
    write_npz,
    write_parquet,
)
from qaclims.models import irn as irn_model
from qaclims.models.backbone import BackboneConfig
from qaclims.models.crf import CrfConfig, crf_labels
from qaclims.refine import cam_to_ir_label as c2i
from qaclims.refine import make_sem_seg
from qaclims.training import save_weights

torch.set_num_threads(1)

H, W = 36, 44


def make_inputs(root: Path, n: int = 5) -> Path:
    """Images with a red object in a green halo on blue; CAMs high / weak / low on them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        obj = np.zeros((H, W), bool)
        y0, x0 = rng.integers(4, 14, 2)
        obj[y0 : y0 + 16, x0 : x0 + 20] = True
        halo = np.zeros((H, W), bool)
        halo[max(0, y0 - 5) : y0 + 21, max(0, x0 - 5) : x0 + 25] = True
        colour = np.where(
            obj[..., None], [210, 40, 30], np.where(halo[..., None], [40, 200, 40], [30, 40, 200])
        )
        img = colour + rng.normal(0, 3, (H, W, 3))
        write_image(root / "img" / f"im{i}.png", np.clip(img, 0, 255).astype(np.uint8))
        cam = np.full((H, W), 0.02)
        cam[halo] = 0.2
        cam[obj] = 0.9
        cls = [] if i == 4 else [i % 3]
        cams = np.repeat(cam[None], len(cls), axis=0).astype(np.float16)
        write_npz(
            root / "cam" / str(i % 2) / f"im{i}.npz",
            {
                "keys": np.asarray(cls, np.int16),
                "cam": cams,
                "cam_strided": cams[:, ::4, ::4].copy(),
            },
        )
        rows.append(
            {
                "image_id": f"im{i}",
                "image_path": str(root / "img" / f"im{i}.png"),
                "height": H,
                "width": W,
                "labels": cls,
                "gt_path": "",
            }
        )
    write_parquet(root / "manifest.parquet", pd.DataFrame(rows))
    return root / "manifest.parquet"


def cam_dirs(root: Path) -> list[Path]:
    return [root / "cam" / "0", root / "cam" / "1"]


def expected_ir_label(root: Path, image_id: str, cfg: c2i.IrLabelConfig) -> np.ndarray:
    """The IRN rule written out: fg where the fg-CRF says a class, 0 where both CRFs say
    background, 255 elsewhere."""
    img = read_image(root / "img" / f"{image_id}.png")
    z = np.load(next(root.glob(f"cam/*/{image_id}.npz")))
    keys, cam = z["keys"].astype(int), z["cam"].astype(np.float32)
    fg_idx = crf_labels(img, np.concatenate([np.full((1, H, W), cfg.conf_fg_thres), cam]), cfg.crf)
    bg_idx = crf_labels(img, np.concatenate([np.full((1, H, W), cfg.conf_bg_thres), cam]), cfg.crf)
    cls = np.concatenate([[0], keys + 1])
    return np.where(fg_idx > 0, cls[fg_idx], np.where(bg_idx > 0, 255, 0)).astype(np.uint8)


def test_cam_to_ir_label_writes_the_confident_labels(tmp_path: Path) -> None:
    manifest = make_inputs(tmp_path)
    cfg = c2i.IrLabelConfig()
    out = tmp_path / "ir" / "0"
    c2i.run(manifest, cam_dirs(tmp_path), cfg, out, shard=0, num_shards=1, threads=2)
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}.png" for i in range(5)]
    assert not out.with_name(".0.partial").exists()
    for i in range(5):
        got = read_label_png(out / f"im{i}.png")
        np.testing.assert_array_equal(got, expected_ir_label(tmp_path, f"im{i}", cfg))
    lab = read_label_png(out / "im0.png")
    assert {0, 1, 255} <= set(np.unique(lab).tolist())  # bg, class 0 (+1) and uncertain halo
    assert (read_label_png(out / "im4.png") == 0).all()  # no class: all background


def test_cam_to_ir_label_shards_and_resume(tmp_path: Path) -> None:
    manifest = make_inputs(tmp_path)
    cfg = c2i.IrLabelConfig(crf=CrfConfig(iterations=3))
    other = c2i.IrLabelConfig(conf_fg_thres=0.95)
    out = tmp_path / "ir" / "1"
    marker = np.full((H, W), 7, np.uint8)

    def interrupted(config: c2i.IrLabelConfig) -> None:
        """Leave ``.<out>.partial`` as a killed run of ``config`` would, holding a marker."""
        part = c2i.shard_partial(manifest, cam_dirs(tmp_path), config, out, 1, 2)[2]
        write_label_png(part.path / "im1.png", marker)
        (part.path / ".im3.png.tmp").write_bytes(b"half-written")

    interrupted(other)  # another config's leftovers are discarded
    c2i.run(manifest, cam_dirs(tmp_path), cfg, out, shard=1, num_shards=2, threads=1)
    # rows 1 and 3 of 5; no stamp or temporary file left
    assert sorted(p.name for p in out.iterdir()) == ["im1.png", "im3.png"]
    expected = expected_ir_label(tmp_path, "im1", cfg)
    np.testing.assert_array_equal(read_label_png(out / "im1.png"), expected)

    interrupted(cfg)  # the same config's finished images are kept, the rest computed
    c2i.run(manifest, cam_dirs(tmp_path), cfg, out, shard=1, num_shards=2, threads=1)
    np.testing.assert_array_equal(read_label_png(out / "im1.png"), marker)
    assert sorted(p.name for p in out.iterdir()) == ["im1.png", "im3.png"]
    np.testing.assert_array_equal(
        read_label_png(out / "im3.png"), expected_ir_label(tmp_path, "im3", cfg)
    )

    interrupted(cfg)  # same settings, but the CAMs change before the rerun: discarded
    cam = next(tmp_path.glob("cam/*/im1.npz"))
    z = dict(np.load(cam))
    z["cam"] = (z["cam"].astype(np.float32) * 0.5).astype(z["cam"].dtype)
    np.savez(cam, **z)
    c2i.run(manifest, cam_dirs(tmp_path), cfg, out, shard=1, num_shards=2, threads=1)
    np.testing.assert_array_equal(
        read_label_png(out / "im1.png"), expected_ir_label(tmp_path, "im1", cfg)
    )
    assert not (read_label_png(out / "im1.png") == marker).all()


def test_cam_to_ir_label_missing_cam_fails_before_work(tmp_path: Path) -> None:
    manifest = make_inputs(tmp_path)
    (tmp_path / "cam" / "1" / "im3.npz").unlink()
    with pytest.raises(DataError, match="im3.npz"):
        c2i.run(manifest, cam_dirs(tmp_path), c2i.IrLabelConfig(), tmp_path / "o", 0, 1, 1)
    assert not (tmp_path / ".o.partial").exists()


def test_cam_to_ir_label_worker_error_names_the_file(tmp_path: Path) -> None:
    manifest = make_inputs(tmp_path)
    (tmp_path / "img" / "im2.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    with pytest.raises(DataError, match="im2.png"):
        c2i.run(manifest, cam_dirs(tmp_path), c2i.IrLabelConfig(), out, 0, 1, threads=2)
    assert not out.exists()


def test_masks_from_walk_by_hand() -> None:
    walked = torch.zeros(2, 6, 8)
    walked[0, :, :3] = 2.0  # normalised to 1 -> class keys[0]
    walked[1, :, 5:] = 1.0  # normalised to 0.5 > 0.25 -> class keys[1]
    walked[:, :, 3:5] = 0.3  # 0.15 < 0.25 -> background
    mask = make_sem_seg.masks_from_walk(walked, np.array([4, 9]), (22, 30), 0.25)
    assert mask.shape == (22, 30) and mask.dtype == np.uint8
    assert (mask[:, :8] == 5).all() and (mask[:, 22:] == 10).all()
    assert (mask[:, 14:18] == 0).all()


def tiny_irn(root: Path, edge_bias: float) -> tuple[Path, irn_model.IrnModelConfig]:
    """A random tiny IRN whose boundary output is the constant ``sigmoid(edge_bias)``."""
    cfg = irn_model.IrnModelConfig(
        backbone=BackboneConfig(arch="tiny", weights="none", widths=(8, 8, 16, 16)),
        edge_width=8,
        disp_width=16,
    )
    net = irn_model.build_model(cfg)
    with torch.no_grad():
        net.edge.out.weight.zero_()
        net.edge.out.bias.fill_(edge_bias)
    path = root / f"irn{edge_bias}.safetensors"
    save_weights(path, net)
    return path, cfg


@pytest.mark.parametrize("edge_bias", [-30.0, 30.0])
def test_make_sem_seg_without_and_with_boundaries(tmp_path: Path, edge_bias: float) -> None:
    manifest = make_inputs(tmp_path)
    weights, icfg = tiny_irn(tmp_path, edge_bias)
    cfg = make_sem_seg.SemSegConfig(pad_to=48, num_workers=0)
    out = tmp_path / "sem" / "0"
    make_sem_seg.run(manifest, cam_dirs(tmp_path), weights, icfg, cfg, out, 0, 1, "cpu")
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}.png" for i in range(5)]
    for i in range(4):
        mask = read_label_png(out / f"im{i}.png")
        assert mask.shape == (H, W)
        # no boundary: the walk spreads the CAM over the whole image, whose maximum-normalised
        # score is then 1 everywhere -> all pixels of the class; all-boundary: CAMs are
        # multiplied by 1 - 1 = 0 -> all background
        assert (mask == (1 + i % 3 if edge_bias < 0 else 0)).all()
    assert (read_label_png(out / "im4.png") == 0).all()


def test_make_sem_seg_rejects_bad_inputs(tmp_path: Path) -> None:
    manifest = make_inputs(tmp_path)
    weights, icfg = tiny_irn(tmp_path, 0.0)
    other = irn_model.IrnModelConfig(backbone=BackboneConfig(arch="tiny", weights="none"))
    cfg = make_sem_seg.SemSegConfig(num_workers=0)
    with pytest.raises(DataError, match="does not fit"):
        make_sem_seg.run(
            manifest, cam_dirs(tmp_path), weights, other, cfg, tmp_path / "o", 0, 1, "cpu"
        )
    with pytest.raises(DataError, match="missing weights"):
        make_sem_seg.run(
            manifest,
            cam_dirs(tmp_path),
            tmp_path / "nope.safetensors",
            icfg,
            cfg,
            tmp_path / "o",
            0,
            1,
            "cpu",
        )
