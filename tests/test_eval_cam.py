"""eval_cam (CAM seeds + threshold sweep) and evaluate.run_labels on hand-made data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qaclims.cam import eval_cam
from qaclims.core import io
from qaclims.core.config import from_mapping
from qaclims.core.errors import ConfigError, DataError
from qaclims.evaluation import eval_labels as evaluate
from qaclims.evaluation import metrics

CLASSES = ["cat", "dog", "car"]  # labels 1, 2, 3


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    df = pd.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "image_path": [f"{r[0]}.jpg" for r in rows],
            "height": [2] * len(rows),
            "width": [3] * len(rows),
            "labels": [[0] for _ in rows],
            "gt_path": [r[1] for r in rows],
        }
    )
    io.write_parquet(path, df)
    return path


def write_cam(path: Path, keys: list[int], cam: np.ndarray) -> None:
    io.write_npz(path, {"keys": np.array(keys, np.int16), "cam": cam.astype(np.float16)})


# ------------------------------------------------------------------ eval_cam by hand


def hand_case(tmp_path: Path) -> tuple[Path, Path]:
    cam = np.array(
        [
            [[0.9, 0.1, 0.2], [0.05, 0.5, 0.14]],  # channel -> class 0 (label 1)
            [[0.3, 0.12, 0.6], [0.1, 0.5, 0.1]],  # channel -> class 2 (label 3)
        ]
    )
    write_cam(tmp_path / "cams" / "a.npz", [0, 2], cam)
    gt = np.array([[1, 0, 3], [255, 2, 0]], np.uint8)
    io.write_label_png(tmp_path / "gt" / "a.png", gt)
    man = write_manifest(tmp_path / "m.parquet", [("a", str(tmp_path / "gt" / "a.png")), ("b", "")])
    return man, tmp_path / "cams"


def test_cam_to_label_by_hand() -> None:
    cam = np.array([[[0.9, 0.1, 0.2], [0.05, 0.5, 0.14]], [[0.3, 0.12, 0.6], [0.1, 0.5, 0.1]]])
    # (1,1) ties 0.5 / 0.5 -> first channel; 0.12 and 0.14 are below 0.15 -> background
    expected = np.array([[1, 0, 3], [0, 1, 0]])
    np.testing.assert_array_equal(eval_cam.cam_to_label(cam, np.array([0, 2]), 0.15), expected)
    # a pixel exactly at the threshold goes to background (IRN: argmax picks channel 0)
    lab = eval_cam.cam_to_label(np.array([[[0.5, 0.75]]]), np.array([1]), 0.5)
    np.testing.assert_array_equal(lab, [[0, 2]])
    empty = eval_cam.cam_to_label(np.zeros((0, 2, 2)), np.zeros(0, np.int64), 0.15)
    np.testing.assert_array_equal(empty, np.zeros((2, 2)))


def test_run_by_hand(tmp_path: Path) -> None:
    man, cams = hand_case(tmp_path)
    cfg = eval_cam.EvalCamConfig()
    out = tmp_path / "out"
    s = eval_cam.run(
        man,
        [cams],
        CLASSES,
        cfg,
        out / "s.json",
        out / "pc.parquet",
        out / "sw.parquet",
        split="train",
    )
    # pred [[1,0,3],[.,1,0]] vs gt [[1,0,3],[255,2,0]]:
    # bg 2/2=1, cat 1/2, dog 0/1, car 1/1 -> 0.625 ; all-background: bg 2/5 -> 0.1
    assert s["miou"] == pytest.approx(0.625)
    assert s["all_background_miou"] == pytest.approx(0.1)
    assert (s["num_images"], s["num_images_in_manifest"], s["split"]) == (1, 2, "train")
    assert s["threshold"] == 0.15 and s["best_is_gt_tuned_upper_bound"] is True
    assert json.loads((out / "s.json").read_text())["miou"] == pytest.approx(0.625)
    pc = pd.read_parquet(out / "pc.parquet")
    assert list(pc["class"]) == ["background", *CLASSES]
    np.testing.assert_allclose(pc["iou"], [1.0, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(pc["precision"], [1.0, 0.5, math.nan, 1.0], equal_nan=True)
    assert list(pc["gt_pixels"]) == [2, 1, 1, 1]
    sw = pd.read_parquet(out / "sw.parquet")
    assert len(sw) == 55 and sw["threshold"].iloc[0] == 0.05 and sw["threshold"].iloc[-1] == 0.59
    assert sw.loc[np.isclose(sw["threshold"], 0.15), "miou"].item() == pytest.approx(0.625)


# ------------------------------------------------------------------ sweep == single runs


def random_case(tmp_path: Path, seed: int) -> tuple[Path, list[Path], list]:
    """4 images over 2 shard folders; CAMs on a 1/8 grid so thresholds can tie exactly."""
    rng = np.random.default_rng(seed)
    rows, cases = [], []
    for i in range(4):
        h, w = int(rng.integers(4, 9)), int(rng.integers(4, 9))
        keys = sorted(rng.choice(3, size=int(rng.integers(0, 3)), replace=False).tolist())
        cam = rng.integers(0, 9, size=(len(keys), h, w)) / 8.0
        gt = rng.integers(0, 4, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        write_cam(tmp_path / f"shard{i % 2}" / f"im{i}.npz", keys, cam)
        io.write_label_png(tmp_path / "gt" / f"im{i}.png", gt)
        rows.append((f"im{i}", str(tmp_path / "gt" / f"im{i}.png")))
        cases.append((gt, cam, np.array(keys, np.int64)))
    man = write_manifest(tmp_path / "m.parquet", rows)
    return man, [tmp_path / "shard0", tmp_path / "shard1"], cases


@pytest.mark.parametrize(("seed", "workers"), [(0, 1), (1, 1), (0, 2)])
def test_sweep_equals_single_threshold_runs(tmp_path: Path, seed: int, workers: int) -> None:
    man, dirs, cases = random_case(tmp_path, seed)
    thresholds = (0.5, 0.1, 0.25, 0.3, 0.75, 0.0, 1.0)  # unsorted, some on the 1/8 grid
    cfg = eval_cam.EvalCamConfig(threshold=0.25, thresholds=thresholds)
    o = tmp_path / "o"
    s = eval_cam.run(
        man, dirs, CLASSES, cfg, o / "s.json", o / "p.parquet", o / "w.parquet", workers=workers
    )
    sweep = pd.read_parquet(o / "w.parquet")
    assert list(sweep["threshold"]) == sorted(thresholds)
    for t in thresholds:
        # independent: per-image IRN argmax labels + brute confusion over all pixels
        conf = np.zeros((4, 4), np.int64)
        for gt, cam, keys in cases:
            pred = eval_cam.cam_to_label(cam, keys, t)
            for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
                if g != 255:
                    conf[g, p] += 1
        row = sweep.loc[sweep["threshold"] == t, "miou"].item()
        assert row == pytest.approx(metrics.miou(conf), nan_ok=True)
        single = eval_cam.EvalCamConfig(threshold=t, thresholds=(t,))
        s1 = eval_cam.run(man, dirs, CLASSES, single, o / "1.json", o / "1.p", o / "1.w")
        assert s1["miou"] == pytest.approx(row)
    best = int(np.nanargmax(sweep["miou"].to_numpy()))
    assert s["best_threshold"] == sweep["threshold"][best]
    assert s["best_miou"] == pytest.approx(sweep["miou"].max())


def test_sweep_confusions_equal_direct(tmp_path: Path) -> None:
    _, _, cases = random_case(tmp_path, 3)
    thresholds = [0.375, 0.0, 0.2, 0.625, 1.0]
    sw = eval_cam.ThresholdSweep(thresholds, 4)
    for gt, cam, keys in cases:
        sw.update(gt, cam, keys)
    confs = sw.confusions()
    for j, t in enumerate(thresholds):
        direct = sum(
            metrics.confusion(gt, eval_cam.cam_to_label(cam, k, t), 4) for gt, cam, k in cases
        )
        np.testing.assert_array_equal(confs[j], direct)


def test_strided_cams_upsampled(tmp_path: Path) -> None:
    # 8x8 image, stride-4 CAM rows 0.9 / 0.0: bilinear x4 gives rows
    # 0.9 0.9 0.7875 0.5625 0.3375 0.1125 0 0
    strided = np.array([[[0.9, 0.9], [0.0, 0.0]]])
    io.write_npz(
        tmp_path / "c" / "a.npz",
        {
            "keys": np.array([1], np.int16),
            "cam": np.zeros((1, 8, 8), np.float16),
            "cam_strided": strided.astype(np.float16),
        },
    )
    gt = np.zeros((8, 8), np.uint8)
    gt[:5] = 2
    io.write_label_png(tmp_path / "a.png", gt)
    man = write_manifest(tmp_path / "m.parquet", [("a", str(tmp_path / "a.png"))])
    cfg = eval_cam.EvalCamConfig(threshold=0.15, thresholds=(0.15, 0.35), use_strided=True)
    o = tmp_path / "o"
    s = eval_cam.run(man, [tmp_path / "c"], CLASSES, cfg, o / "s.json", o / "p.pq", o / "w.pq")
    assert s["miou"] == pytest.approx(1.0)  # rows 0-4 foreground, exactly the GT
    sw = pd.read_parquet(o / "w.pq")
    # at 0.35 rows 0-3 foreground: bg IoU 3/4, dog IoU 4/5 (cat / car absent -> NaN)
    assert sw["miou"].iloc[1] == pytest.approx((3 / 4 + 4 / 5) / 2)


# ------------------------------------------------------------------ errors / config


def test_missing_cam_listed(tmp_path: Path) -> None:
    man, cams = hand_case(tmp_path)
    (cams / "a.npz").unlink()
    with pytest.raises(DataError, match=r"1 of 1 evaluated images .*a\.npz"):
        eval_cam.run(
            man,
            [cams],
            CLASSES,
            eval_cam.EvalCamConfig(),
            tmp_path / "s.json",
            tmp_path / "p.pq",
            tmp_path / "w.pq",
        )
    assert not (tmp_path / "s.json").exists()


def test_bad_cam_and_gt_named(tmp_path: Path) -> None:
    man, cams = hand_case(tmp_path)
    args = (CLASSES, eval_cam.EvalCamConfig(), tmp_path / "s.json", tmp_path / "p", tmp_path / "w")
    write_cam(cams / "a.npz", [0, 2], np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="a.npz.*GT"):
        eval_cam.run(man, [cams], *args)
    write_cam(cams / "a.npz", [0, 5], np.zeros((2, 2, 3)))
    with pytest.raises(DataError, match="a.npz.*keys"):
        eval_cam.run(man, [cams], *args)
    write_cam(cams / "a.npz", [0, 2], np.zeros((2, 2, 3)))
    io.write_label_png(tmp_path / "gt" / "a.png", np.full((2, 3), 7, np.uint8))
    with pytest.raises(DataError, match="a.png holds label 7"):
        eval_cam.run(man, [cams], *args)


def test_config() -> None:
    cfg = from_mapping(eval_cam.EvalCamConfig, {"thresholds": [0.1, 0.2]}, "eval_cam")
    assert cfg.thresholds == (0.1, 0.2) and cfg.threshold == 0.15 and not cfg.use_strided
    np.testing.assert_allclose(eval_cam.EvalCamConfig().thresholds, np.arange(5, 60) / 100)
    with pytest.raises(ConfigError, match="eval_cam.thresholds"):
        from_mapping(eval_cam.EvalCamConfig, {"thresholds": []}, "eval_cam")
    with pytest.raises(ConfigError, match="eval_cam.threshold"):
        from_mapping(eval_cam.EvalCamConfig, {"threshold": 1.5}, "eval_cam")
    with pytest.raises(ConfigError, match="ignore_pred_255"):
        evaluate.EvalLabelsConfig(ignore_pred_255="skip")


# ------------------------------------------------------------------ label PNGs with 255


def labels_case(tmp_path: Path) -> Path:
    io.write_label_png(tmp_path / "gt" / "a.png", np.array([[0, 1, 1], [2, 255, 0]], np.uint8))
    io.write_label_png(tmp_path / "p0" / "a.png", np.array([[0, 255, 1], [255, 0, 0]], np.uint8))
    (tmp_path / "p1").mkdir()
    return write_manifest(
        tmp_path / "m.parquet", [("a", str(tmp_path / "gt" / "a.png")), ("b", "")]
    )


@pytest.mark.parametrize(
    ("mode", "miou", "ious"),
    [
        # covered pixels: (0,0) bg ok, (0,2) cat ok, (1,2) bg ok ; dog uncovered -> NaN
        ("exclude", 1.0, [1.0, 1.0, math.nan]),
        # holes -> bg: bg tp2/pred4 = .5, cat 1/2, dog 0/1
        ("as_background", 1 / 3, [0.5, 0.5, 0.0]),
    ],
)
def test_run_labels_coverage(tmp_path: Path, mode: str, miou: float, ious: list) -> None:
    man = labels_case(tmp_path)
    s = evaluate.run_labels(
        man,
        [tmp_path / "p0", tmp_path / "p1"],
        CLASSES[:2],
        tmp_path / "s.json",
        tmp_path / "pc.pq",
        ignore_pred_255=mode,
    )
    assert s["coverage"] == pytest.approx(3 / 5)  # 5 labelled px, 2 of them predicted 255
    assert s["miou_covered"] == pytest.approx(1.0)
    assert s["miou"] == pytest.approx(miou)
    assert s["num_images"] == 1 and s["ignore_pred_255"] == mode
    pc = pd.read_parquet(tmp_path / "pc.pq")
    np.testing.assert_allclose(pc["iou"], ious, equal_nan=True)


def test_run_labels_errors(tmp_path: Path) -> None:
    man = labels_case(tmp_path)
    dirs = [tmp_path / "p0", tmp_path / "p1"]
    out = (tmp_path / "s.json", tmp_path / "pc.pq")
    with pytest.raises(DataError, match=r"p0/a\.png.*255"):
        evaluate.run_labels(man, dirs, CLASSES[:2], *out)
    io.write_label_png(tmp_path / "p1" / "a.png", np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match="twice"):
        evaluate.run_labels(man, dirs, CLASSES[:2], *out, ignore_pred_255="exclude")
    (tmp_path / "p0" / "a.png").unlink()
    s = evaluate.run_labels(man, dirs, CLASSES[:2], *out)  # dense prediction: all background
    assert s["coverage"] == 1.0 and s["miou"] == pytest.approx((2 / 5) / 3)
    io.write_label_png(tmp_path / "p1" / "a.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError, match="shape"):
        evaluate.run_labels(man, dirs, CLASSES[:2], *out)


def test_sweep_of_levels_with_more_thresholds_than_a_byte_holds_equals_direct() -> None:
    # 300 thresholds: the per-level table no longer fits uint8 (it is uint16 then)
    rng = np.random.default_rng(3)
    n, thresholds = 5, list(np.linspace(0.0, 1.0, 300)[::-1])
    sw = eval_cam.ThresholdSweep(thresholds, n)
    assert sw._below_level.dtype == np.uint16
    direct = np.zeros((len(thresholds), n, n), np.int64)
    for _ in range(3):
        keys = np.sort(rng.choice(n - 1, size=2, replace=False))
        levels = rng.integers(0, 201, (2, 6, 7)).astype(np.uint8)
        gt = rng.integers(0, n, (6, 7)).astype(np.uint8)
        gt[0, :2] = 255
        sw.update(gt, levels, keys)
        for j, t in enumerate(thresholds):
            direct[j] += metrics.confusion(gt, eval_cam.cam_to_label(levels, keys, t), n)
    np.testing.assert_array_equal(sw.confusions(), direct)


def test_label_scores_of_worker_processes_equal_one_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(9):
        gt = rng.integers(0, 3, (5, 6)).astype(np.uint8)
        gt[0, i % 6] = 255
        pred = rng.integers(0, 3, (5, 6)).astype(np.uint8)
        pred[1, i % 6] = 255  # holes: coverage below 1
        io.write_label_png(tmp_path / "gt" / f"i{i}.png", gt)
        io.write_label_png(tmp_path / f"p{i % 2}" / f"i{i}.png", pred)
        rows.append((f"i{i}", str(tmp_path / "gt" / f"i{i}.png")))
    man = write_manifest(tmp_path / "m.parquet", rows)
    dirs = [tmp_path / "p0", tmp_path / "p1"]
    out = [(tmp_path / f"s{w}.json", tmp_path / f"pc{w}.pq") for w in (1, 2)]
    one, two = (
        evaluate.run_labels(man, dirs, CLASSES[:2], *o, ignore_pred_255="exclude", workers=w)
        for w, o in zip((1, 2), out, strict=True)
    )
    assert one == two and 0 < one["coverage"] < 1
    pd.testing.assert_frame_equal(pd.read_parquet(out[0][1]), pd.read_parquet(out[1][1]))
    # an error in a worker's chunk stops the run and names the file
    io.write_label_png(tmp_path / "p0" / "i8.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"p0/i8\.png has shape"):
        evaluate.run_labels(man, dirs, CLASSES[:2], *out[1], ignore_pred_255="exclude", workers=2)
