"""train_ritc: the step against a per-pair computation, learning, exact resume, and the
same weights from two torchrun processes as from one."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from qaclims.artifacts.tables import dead_cam_shares
from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.core.io import read_image, write_image
from qaclims.data import augment
from qaclims.data.manifest import manifest_frame, write_manifest
from qaclims.models.cam_resnet import CamModelConfig, CamNet
from qaclims.models.clip import ClipConfig, TinyClipArch, load_clip
from qaclims.models.clip_encode import encode_image_masked
from qaclims.ritc import objective, train_ritc
from qaclims.ritc import text_features as clip_text
from qaclims.ritc.train_tiny_clip import TinyClipConfig, train_tiny_clip
from qaclims.training import save_weights
from qaclims.training.sampling import StepBatches

CLASSES = ["red", "blue"]
COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230)}
MODEL = from_mapping(CamModelConfig, {
    "backbone": {"arch": "tiny", "weights": "none", "widths": [8, 8, 16, 16],
                 "strides": [2, 2, 1, 1], "frozen_bn": True},
    "freeze_stem": False, "detach_stage2": False}, "model")  # fmt: skip
TINY_ARCH = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 16,
             "vision_layers": 2, "vision_heads": 2, "text_width": 16, "text_layers": 1,
             "text_heads": 2, "context_length": 16, "mask_prompt_depth": 2}  # fmt: skip
CLIP = ClipConfig(name="tiny", tiny=TinyClipArch(**TINY_ARCH))
NO_BG = ("im3", 0)  # this pair has no background phrase: its losses are skipped


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    manifest: Path
    cam: Path
    clip: Path
    index: Path
    features: Path


def _images(root: Path, n: int = 8) -> list[dict[str, Any]]:
    """A VOC-layout tree: noise with 1-2 coloured squares, label maps, captions."""
    from qaclims.core.io import write_json, write_label_png

    rng = np.random.default_rng(0)
    rows, captions = [], []
    for i in range(n):
        img = (rng.random((32, 40, 3)) * 60 + 60).astype(np.uint8)
        lab = np.zeros((32, 40), np.uint8)
        labels = [0] if i == 3 else sorted(rng.choice(2, int(rng.integers(1, 3)), replace=False))
        for c in labels:
            y, x = rng.integers(0, 18), rng.integers(0, 26)
            img[y : y + 14, x : x + 14] = COLOURS[CLASSES[c]]
            lab[y : y + 14, x : x + 14] = c + 1
            captions.append((f"im{i}", f"fg:{CLASSES[c]}", f"a {CLASSES[c]} square"))
        captions += [(f"im{i}", "bg", "grey noise"), (f"im{i}", "image", "squares on noise")]
        write_image(root / "JPEGImages" / f"im{i}.jpg", img)
        write_label_png(root / "SegmentationClass" / f"im{i}.png", lab)
        rows.append({"image_id": f"im{i}", "image_path": str(root / "JPEGImages" / f"im{i}.jpg"),
                     "height": 32, "width": 40, "labels": [int(c) for c in labels],
                     "gt_path": ""})  # fmt: skip
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(
        "".join(f"{r['image_id']}\n" for r in rows)
    )
    write_json(root / "classes.json", {"dataset": "synthetic", "classes": CLASSES})
    pd.DataFrame(captions, columns=["image_id", "region", "caption"]).to_parquet(
        root / "captions.parquet"
    )
    return rows


def _corpus(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = []
    for r in rows:
        for c in r["labels"]:
            name, image = CLASSES[c], r["image_id"]
            out += [(image, name, "fg", f"{name} square"), (image, name, "fg", "tile")]
            if (image, c) != NO_BG:
                out += [(image, name, "bg", "grey noise"), (image, name, "bg", "floor")]
                if c == 1:
                    out.append((image, name, "bg", "carpet"))
    return pd.DataFrame(out, columns=["image_id", "class_name", "kind", "phrase"]).assign(count=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("ritc")
    rows = _images(root)
    write_manifest(root / "manifest.parquet", manifest_frame(rows))
    _corpus(rows).to_parquet(root / "corpus.parquet")
    torch.manual_seed(0)
    save_weights(root / "cam.safetensors", CamNet(MODEL, 2))
    tiny = TinyClipConfig(epochs=30, batch_size=12, lr=0.005, log_every=1000)
    train_tiny_clip(root, root / "captions.parquet", CLIP, tiny, root / "clip.safetensors", "cpu")
    clip_text.run(root / "corpus.parquet", CLASSES, CLIP, clip_text.TextFeatureConfig(),
                  root / "tf.safetensors", root / "index.parquet", "cpu",
                  root / "clip.safetensors")  # fmt: skip
    return World(
        root,
        root / "manifest.parquet",
        root / "cam.safetensors",
        root / "clip.safetensors",
        root / "index.parquet",
        root / "tf.safetensors",
    )


def config(**over: Any) -> train_ritc.TrainRitcConfig:
    base: dict[str, Any] = {
        "batch_size": 4,
        "epochs": 2,
        "lr": 0.01,
        "resize_long": [32, 40],
        "crop": 32,
        "frozen_bn": True,
        "num_workers": 0,
        "amp": False,
        "log_every": 1,
        "resume_every": 100,
    }
    return from_mapping(train_ritc.TrainRitcConfig, {**base, **over}, "train_ritc")


def train(w: World, cfg: train_ritc.TrainRitcConfig, tag: str,
          max_steps: int | None = None) -> tuple[Path, Path, Path]:  # fmt: skip
    out = (w.root / f"{tag}.safetensors", w.root / f"{tag}.parquet", w.root / f"{tag}.state.pt")
    train_ritc.run(w.manifest, 2, w.cam, MODEL, w.index, w.features, CLIP, w.clip, cfg, out[0],
                   out[1], "cpu", out[2], max_steps=max_steps)  # fmt: skip
    return out


# ------------------------------------------------------------------------------ pieces


def test_mask_adapter_thresholds_each_map_at_alpha_max() -> None:
    cam = torch.tensor([[[[0.0, 0.06], [0.1, 0.5]]], [[[0.2, 0.3], [0.01, 0.04]]],
                        [[[0.0, 0.0], [0.0, 0.0]]]])  # fmt: skip
    expected = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]], [[[1.0, 1.0], [0.0, 1.0]]],
                             [[[1.0, 1.0], [1.0, 1.0]]]])  # fmt: skip
    assert torch.equal(objective.mask_adapter(cam, 0.1), expected)
    # a value equal to the threshold is kept (>=), as the reference
    tie = torch.tensor([[[[0.0, 0.25], [0.2, 0.5]]]])
    assert objective.mask_adapter(tie, 0.5).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_text_bank_gathers_index_rows(world: World) -> None:
    bank = train_ritc.TextBank.load(world.index, world.features, 2, torch.device("cpu"))
    index = pd.read_parquet(world.index)
    feats = load_file(str(world.features))["features"]
    keys = [("im0", 0), NO_BG, ("nowhere", 1)]
    fg, bg, valid = bank.gather(keys)
    for i, (image, cls) in enumerate(keys):
        rows = index[(index.image_id == image) & (index.class_index == cls)]
        mix = rows[rows.kind == "fg_text"]["row"].tolist()
        cls_row = index[(index.kind == "class") & (index.class_index == cls)]["row"].item()
        torch.testing.assert_close(fg[i], feats[mix[0] if mix else cls_row])
        bg_rows = rows[rows.kind == "bg"]["row"].tolist()
        assert valid[i].sum() == len(bg_rows)
        torch.testing.assert_close(bg[i, : len(bg_rows)], feats[bg_rows])
    assert valid.tolist()[1] == [False] * valid.shape[1]


def test_config_errors_name_the_key(world: World) -> None:
    with pytest.raises(ConfigError, match="train_ritc.region_encoding"):
        train(world, config(region_encoding="patches"), "bad")
    with pytest.raises(ConfigError, match="train_ritc.alpha"):
        train(world, config(alpha=1.5), "bad")
    with pytest.raises(ConfigError, match="train_ritc.resize_long"):
        train(world, config(resize_long=[40, 32]), "bad")


def test_missing_inputs_are_named_before_any_model_is_built(world: World, tmp_path: Path) -> None:
    gone = dataclasses.replace(world, features=tmp_path / "nowhere.safetensors")
    with pytest.raises(DataError, match="nowhere.safetensors"):
        train(gone, config(), "bad")


def test_text_features_of_another_clip_width_are_refused(world: World, tmp_path: Path) -> None:
    """Features 8 wide against a CLIP that embeds in TINY_ARCH's width: named, refused."""
    feats = load_file(str(world.features))["features"]
    assert feats.shape[1] != 8
    from qaclims.artifacts.weights import write_tensors

    write_tensors(tmp_path / "narrow.safetensors", {"features": feats[:, :8]})
    narrow = dataclasses.replace(world, features=tmp_path / "narrow.safetensors")
    with pytest.raises(DataError, match=r"narrow\.safetensors are 8 wide, but CLIP tiny"):
        train(narrow, config(), "bad")


# ------------------------------------------------------------------------------ the step


def literal_losses(f: torch.Tensor, g: torch.Tensor, t: torch.Tensor, bgs: torch.Tensor,
                   temp: float) -> tuple[float, float]:  # fmt: skip
    f, g = (v.detach().double() / v.detach().double().norm() for v in (f, g))
    t, bgs = t.double(), bgs.double()
    pos, negs = math.exp(float(f @ t) / temp), [math.exp(float(f @ b) / temp) for b in bgs]
    frc = -math.log(pos / (pos + sum(negs)))
    mean_b = sum(math.exp(float(g @ b) / temp) for b in bgs) / len(bgs)
    brc = -math.log(mean_b / (mean_b + math.exp(float(g @ t) / temp)))
    return frc, brc


def load_batch(world: World, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    df = pd.read_parquet(world.manifest).set_index("image_id")
    x = torch.stack([augment.to_chw(augment.normalize(read_image(df.loc[i, "image_path"])))
                     for i in ids])  # fmt: skip
    y = torch.zeros(len(ids), 2)
    for n, i in enumerate(ids):
        y[n, list(df.loc[i, "labels"])] = 1
    return x, y


def test_step_loss_equals_a_pair_by_pair_computation(world: World) -> None:
    cfg = config()
    net = CamNet.from_weights(world.cam, MODEL, 2)
    clip, info, _ = load_clip(CLIP, "cpu", world.clip)
    bank = train_ritc.TextBank.load(world.index, world.features, 2, torch.device("cpu"))
    ids = ["im1", "im3", "im5"]
    x, y = load_batch(world, ids)
    scale = cfg.loss_images / len(ids)
    ctx = objective.StepContext(clip, info, bank, cfg, scale)
    with torch.no_grad():
        loss, terms = objective.ritc_loss(objective.RitcNet(net), ctx, x, y, ids)
        cams = torch.sigmoid(F.conv2d(net.features(x), net.classifier.weight))
        index = pd.read_parquet(world.index)
        feats = load_file(str(world.features))["features"]
        frc = brc = 0.0
        pairs = skipped = 0
        for b, image in enumerate(ids):
            for c in torch.nonzero(y[b]).flatten().tolist():
                pairs += 1
                cam = F.interpolate(cams[b : b + 1, c : c + 1], (32, 32), mode="bilinear",
                                    align_corners=True)  # fmt: skip
                img = F.interpolate(x[b : b + 1], (32, 32), mode="bilinear", align_corners=True)
                keep = (cam >= 0.1 * cam.max()).float()
                f = encode_image_masked(clip, cam * img, keep)[0]
                g = encode_image_masked(clip, (1 - cam) * img, 1 - keep)[0]
                rows = index[(index.image_id == image) & (index.class_index == c)]
                bg_rows = rows[rows.kind == "bg"]["row"].tolist()
                if not bg_rows:
                    skipped += 1
                    continue
                t = feats[rows[rows.kind == "fg_text"]["row"].item()]
                a, b_ = literal_losses(f, g, t, feats[bg_rows], cfg.temperature)
                frc, brc = frc + a, brc + b_
    assert (pairs, skipped) == (terms["pairs"], terms["skipped"])
    assert skipped == 1 and pairs - skipped >= 2
    assert terms["frc"] == pytest.approx(frc * scale, rel=1e-4)
    assert terms["brc"] == pytest.approx(brc * scale, rel=1e-4)
    assert terms["area"] == pytest.approx(float(cams.mean()), rel=1e-5)
    total = 10 * frc * scale + 8 * brc * scale + 0.2 * float(cams.mean())
    assert float(loss) == pytest.approx(total, rel=1e-4)


# ------------------------------------------------------------------------------ training


def eval_loss(world: World, weights: Path, cfg: train_ritc.TrainRitcConfig) -> float:
    """The RITC loss of all images (no augmentation) under ``weights``."""
    net = CamNet.from_weights(weights, MODEL, 2)
    clip, info, _ = load_clip(CLIP, "cpu", world.clip)
    bank = train_ritc.TextBank.load(world.index, world.features, 2, torch.device("cpu"))
    ids = [f"im{i}" for i in range(8)]
    x, y = load_batch(world, ids)
    ctx = objective.StepContext(clip, info, bank, cfg, cfg.loss_images / len(ids))
    with torch.no_grad():
        return float(objective.ritc_loss(objective.RitcNet(net).eval(), ctx, x, y, ids)[0])


def test_training_lowers_the_loss_and_writes_a_camnet(world: World) -> None:
    cfg = config(epochs=6, lr=0.05, log_every=2)
    model, hist, state = train(world, cfg, "learn")
    before, after = eval_loss(world, world.cam, cfg), eval_loss(world, model, cfg)
    assert after < 0.9 * before, (before, after)
    df = pd.read_parquet(hist)
    per_class = [f"{g}:{c}" for c in range(2) for g in ("pairs", "dead")]
    assert list(df.columns) == ["step", "epoch", "loss", "frc", "brc", "area", "pairs",
                                "skipped", *per_class, "lr"]  # fmt: skip
    assert (df["pairs"] == df["pairs:0"] + df["pairs:1"]).all()
    assert df["step"].tolist() == list(range(1, 13)) and not state.exists()
    assert (df["lr"].diff().dropna() < 0).all()
    CamNet.from_weights(model, MODEL, 2)  # make_cam's loader takes it as it is


def test_a_dead_class_is_counted_logged_and_warned_about(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = objective.RitcNet.forward

    def blue_dies(self: objective.RitcNet, x: torch.Tensor) -> torch.Tensor:
        cams = forward(self, x)  # blue's CAM scaled to at most 0.001: dead on every image
        return torch.cat([cams[:, :1], cams[:, 1:] * 1e-3], dim=1)

    monkeypatch.setattr(objective.RitcNet, "forward", blue_dies)
    w, cfg = world, config(epochs=1, lr=1e-9)
    out = (w.root / "dead.safetensors", w.root / "dead.parquet", w.root / "dead.state.pt")
    with caplog.at_level(logging.INFO, logger="qaclims"):
        train_ritc.run(w.manifest, 2, w.cam, MODEL, w.index, w.features, CLIP, w.clip, cfg,
                       *out[:2], "cpu", out[2], class_names=CLASSES)  # fmt: skip
    # the pairs of epoch 0, counted from the sampler's keys and the manifest by hand
    labels = pd.read_parquet(w.manifest)["labels"]
    keys = [k for b in StepBatches(len(labels), 4, cfg.seed, 0, 2) for k in b]
    blue = sum(1 in list(labels[i]) for _, i in keys)
    red = sum(0 in list(labels[i]) for _, i in keys)
    shares = dead_cam_shares(pd.read_parquet(out[1]))
    assert shares[["epoch", "class_index", "pairs", "dead"]].values.tolist() == [
        [0, 0, red, 0], [0, 1, blue, blue]]  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"'blue' is dying in epoch 0: {blue} of its {blue}" in warnings[0]
    assert any("red 0.00, blue 1.00" in r.getMessage() for r in caplog.records)


def test_resume_continues_from_the_saved_step(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(epochs=3, resume_every=100)
    full = train(world, cfg, "full")
    part = train(world, cfg, "part", max_steps=4)
    assert not part[0].exists() and part[2].is_file()
    with caplog.at_level(logging.INFO, logger="qaclims"):
        train(world, cfg, "part")
    assert "continuing from step 4" in caplog.text
    a, b = load_file(str(full[0])), load_file(str(part[0]))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ha, hb = (pd.read_parquet(p) for p in (full[1], part[1]))
    pd.testing.assert_frame_equal(ha, hb)
    assert not part[2].exists()


WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_train_ritc as t
from qaclims.ritc import objective, train_ritc
a = json.loads(sys.argv[1])
w = t.World(*(Path(p) for p in a["world"]))
cfg = t.config(**a["cfg"])
train_ritc.run(w.manifest, 2, w.cam, t.MODEL, w.index, w.features, t.CLIP, w.clip, cfg,
               Path(a["out"]), Path(a["hist"]), "cpu", Path(a["state"]))
"""


def test_two_processes_give_the_weights_of_one(world: World, tmp_path: Path) -> None:
    """The global batch is split over torchrun's processes and the pair sums are scaled by
    ``loss_images / per-rank batch``: 2 CPU processes (gloo) reproduce 1 process."""
    over = {"epochs": 2, "lr": 0.05}
    one = train(world, config(**over), "one")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    args = {"world": [str(p) for p in dataclasses.astuple(world)], "cfg": over,
            "out": str(tmp_path / "two.safetensors"), "hist": str(tmp_path / "two.parquet"),
            "state": str(tmp_path / "two.state.pt")}  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script), json.dumps(args)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(one[0])), load_file(str(tmp_path / "two.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ha, hb = (pd.read_parquet(p) for p in (one[1], tmp_path / "two.parquet"))
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-4)


def test_augmentation_and_data_order_draw_from_tagged_streams(world: World) -> None:
    """Image e's augmentation in epoch 0 must not replay the stream that shuffles epoch e
    (it did: both were ``default_rng([seed, 0, e])``); it is the tagged augmentation
    stream, recomputed here from the image."""
    from qaclims.core.io import read_image
    from qaclims.data import augment
    from qaclims.training import sampling

    cfg = config()
    df = pd.read_parquet(world.manifest).sort_values("image_id", ignore_index=True)
    data = train_ritc.RitcSet(list(df["image_path"]), np.zeros((len(df), 2), np.float32), cfg)
    for e in range(3):
        order = augment.sample_rng(cfg.seed, sampling.ORDER_STREAM, e).random(8)
        aug = augment.sample_rng(cfg.seed, sampling.AUGMENT_STREAM, 0, e).random(8)
        assert not np.allclose(order, aug)
        rng = augment.sample_rng(cfg.seed, sampling.AUGMENT_STREAM, 0, e)
        want = augment.classification_sample(read_image(df["image_path"][e]), rng,
                                             cfg.resize_long, cfg.crop, cfg.hflip, cfg.mean,
                                             cfg.std)  # fmt: skip
        torch.testing.assert_close(data[(0, e)][0], want)
