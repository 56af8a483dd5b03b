"""The artifact layer: the CAM file (format 2, and format 1 still read), the one shard index,
and eval_cam's one-argmax scoring against a brute-force computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qaclims.artifacts import camfile, shards, tables
from qaclims.cam import eval_cam
from qaclims.core import io
from qaclims.core.errors import DataError


def test_cam_file_round_trip_rounds_up_by_less_than_a_level(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cam = rng.random((3, 17, 23)).astype(np.float32)
    cam[0, 0, 0], cam[1, 0, 0] = 1.0, 0.0
    strided = rng.random((3, 5, 6)).astype(np.float32)
    camfile.write_cam(tmp_path / "a.npz", camfile.cam_arrays([4, 0, 9], cam, strided))
    keys, back = camfile.read_cam(tmp_path / "a.npz")
    assert keys.tolist() == [4, 0, 9] and back.dtype == np.float32
    err = back.astype(np.float64) - cam
    assert err.min() >= -1e-7 and err.max() < 1 / 200 + 1e-7  # v <= q/200 < v + 1/200
    assert back[0, 0, 0] == 1.0 and back[1, 0, 0] == 0.0
    _, st = camfile.read_cam(tmp_path / "a.npz", "cam_strided")
    np.testing.assert_allclose(st, strided.astype(np.float16).astype(np.float32))
    raw = np.load(tmp_path / "a.npz")
    assert raw["cam"].dtype == np.uint8 and int(raw["format"]) == 2
    # bytes: a third of the reference's float32 high_res + cam (K x H x W and K x h/4 x w/4)
    h, w = 375, 500
    big = camfile.cam_arrays([1, 2], rng.random((2, h, w)), rng.random((2, 94, 125)))
    camfile.write_cam(tmp_path / "b.npz", big)
    reference = 4 * (2 * h * w + 2 * 94 * 125)
    assert (tmp_path / "b.npz").stat().st_size < reference / 3


def test_format_1_files_are_read_and_others_refused(tmp_path: Path) -> None:
    cam = np.linspace(0, 1, 24, dtype=np.float32).reshape(1, 4, 6)
    io.write_npz(
        tmp_path / "old.npz", {"keys": np.array([3], np.int16), "cam": cam.astype(np.float16)}
    )
    keys, back = camfile.read_cam(tmp_path / "old.npz")
    assert keys.tolist() == [3]
    np.testing.assert_array_equal(back, cam.astype(np.float16).astype(np.float32))
    io.write_npz(
        tmp_path / "future.npz", {"keys": np.array([3], np.int16), "cam": cam, "format": np.int8(7)}
    )
    with pytest.raises(DataError, match=r"future\.npz.*format 7.*rerun make_cam"):
        camfile.read_cam(tmp_path / "future.npz")
    io.write_npz(tmp_path / "bad.npz", {"keys": np.array([3, 4], np.int16), "cam": cam})
    with pytest.raises(DataError, match=r"bad\.npz: cam is \(1, 4, 6\) for 2 keys"):
        camfile.read_cam(tmp_path / "bad.npz")


def test_shard_index_refuses_an_id_in_two_folders(tmp_path: Path) -> None:
    for d, names in {"0": ["a.png", "b.png", ".c.png.tmp"], "1": ["c.png"]}.items():
        (tmp_path / d).mkdir()
        for n in names:
            (tmp_path / d / n).write_bytes(b"x")
    got = shards.index_files([tmp_path / "0", tmp_path / "1"], ".png", "label")
    assert {k: v.parent.name for k, v in got.items()} == {"a": "0", "b": "0", "c": "1"}
    (tmp_path / "1" / "a.png").write_bytes(b"y")
    with pytest.raises(DataError, match=r"a\.png occurs twice: .*0/a\.png and .*1/a\.png"):
        shards.index_files([tmp_path / "0", tmp_path / "1"], ".png", "label")
    with pytest.raises(DataError, match="missing label folder"):
        shards.index_files([tmp_path / "2"], ".png", "label")


def _brute_label(cam: np.ndarray, keys: np.ndarray, t: float, y: int, x: int) -> int:
    """IRN's rule for one pixel, by hand: background unless some CAM value exceeds ``t``;
    the first channel with the largest value wins."""
    best, label = t, 0
    for k in range(cam.shape[0]):
        if cam[k, y, x] > best:
            best, label = cam[k, y, x], int(keys[k]) + 1
    return label


@pytest.mark.parametrize("stored", ["float", "levels"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_one_argmax_scoring_equals_brute_force(stored: str, k: int) -> None:
    rng = np.random.default_rng(k)
    h, w, n = 9, 11, 6
    cam = rng.random((k, h, w)).astype(np.float32)
    if k > 1:
        cam[1, :2] = cam[0, :2]  # ties: the first channel wins
    levels = camfile.quantise(cam)
    if stored == "levels":
        if k:
            levels[:, 4, :] = 30  # the level of 0.15 exactly: background at 0.15
        cam_in, values = levels, camfile.LEVEL_VALUES[levels]
    else:
        cam_in, values = cam, cam
    keys = np.array([4, 0, 2][:k])
    gt = rng.integers(0, n, (h, w)).astype(np.uint8)
    gt[0, :3] = 255
    # 0.15 twice, as score_cams appends the fixed threshold to a sweep that holds it
    thresholds = [0.15, 0.155, 0.5, 0.05, 0.15]
    sweep = eval_cam.ThresholdSweep(thresholds, n)
    sweep.update(gt, cam_in, keys)
    confs = sweep.confusions()
    for t, conf in zip(thresholds, confs, strict=True):
        want = np.zeros((n, n), np.int64)
        for y in range(h):
            for x in range(w):
                if gt[y, x] != 255:
                    want[gt[y, x], _brute_label(values, keys, t, y, x)] += 1
        np.testing.assert_array_equal(conf, want)


def test_dead_cam_shares_sum_each_epoch_per_class() -> None:
    history = pd.DataFrame({
        "step": [1, 2, 3, 4], "epoch": [0, 0, 1, 1],
        "pairs:0": [2, 1, 0, 0], "dead:0": [1, 0, 0, 0],
        "pairs:1": [1, 1, 2, 2], "dead:1": [0, 1, 2, 1],
    })  # fmt: skip
    got = tables.dead_cam_shares(history)
    assert list(got.columns) == list(tables.DEAD_COLUMNS)
    # by hand: epoch 0: class 0 1 of 3, class 1 1 of 2; epoch 1: class 0 no pairs, class 1 3 of 4
    assert got[["epoch", "class_index", "pairs", "dead"]].values.tolist() == [
        [0, 0, 3, 1], [0, 1, 2, 1], [1, 1, 4, 3]]  # fmt: skip
    np.testing.assert_allclose(got["share"], [1 / 3, 1 / 2, 3 / 4])
    assert tables.dead_cam_shares(history[["step", "epoch"]]).empty  # an older history
