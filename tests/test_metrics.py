"""Confusion matrix / IoU against brute-force per-pixel loops and set-based IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qaclims.evaluation import metrics


def random_pair(rng: np.random.Generator, n: int, shape=(13, 17)) -> tuple[np.ndarray, np.ndarray]:
    """GT with ~15 % ignore pixels and classes 1, n-1 never in GT; prediction never uses 1."""
    present = [c for c in range(n) if c not in (1, n - 1)]
    gt = rng.choice(present, size=shape).astype(np.uint8)
    gt[rng.random(shape) < 0.15] = 255
    pred = rng.choice([c for c in range(n) if c != 1], size=shape).astype(np.int64)
    return gt, pred


def brute_confusion(gts, preds, n: int) -> np.ndarray:
    conf = np.zeros((n, n), dtype=np.int64)
    for gt, pred in zip(gts, preds, strict=True):
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
            if g != 255:
                conf[g, p] += 1
    return conf


def set_scores(gts, preds, n: int) -> dict[str, list[float]]:
    """IoU / precision / recall from pixel-index sets (independent of any matrix)."""
    g = np.concatenate([a.ravel() for a in gts])
    p = np.concatenate([a.ravel() for a in preds])
    keep = [i for i in range(len(g)) if g[i] != 255]
    out: dict[str, list[float]] = {"iou": [], "precision": [], "recall": []}
    for c in range(n):
        a = {i for i in keep if g[i] == c}
        b = {i for i in keep if p[i] == c}
        out["iou"].append(len(a & b) / len(a | b) if a | b else math.nan)
        out["precision"].append(len(a & b) / len(b) if b else math.nan)
        out["recall"].append(len(a & b) / len(a) if a else math.nan)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_confusion_and_scores_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    pairs = [random_pair(rng, n, shape=(int(rng.integers(5, 15)), 11)) for _ in range(3)]
    gts, preds = [p[0] for p in pairs], [p[1] for p in pairs]
    acc = metrics.ConfusionAccumulator(n)
    for gt, pred in pairs:
        acc.update(gt, pred)
    np.testing.assert_array_equal(acc.matrix, brute_confusion(gts, preds, n))
    assert acc.num_images == 3

    ref = set_scores(gts, preds, n)
    conf = acc.matrix
    np.testing.assert_allclose(acc.iou(), ref["iou"], equal_nan=True)
    precision = metrics.precision_from_confusion(conf)
    np.testing.assert_allclose(precision, ref["precision"], equal_nan=True)
    recall = metrics.recall_from_confusion(conf)
    np.testing.assert_allclose(recall, ref["recall"], equal_nan=True)
    valid = [v for v in ref["iou"] if not math.isnan(v)]
    assert acc.miou() == pytest.approx(sum(valid) / len(valid))
    # class 1 is in neither GT nor prediction: NaN, left out of the mean;
    # class n-1 is predicted but absent from GT: IoU 0, counted
    assert math.isnan(acc.iou()[1])
    assert acc.iou()[n - 1] == 0.0
    g = np.concatenate([a.ravel() for a in gts])
    p = np.concatenate([a.ravel() for a in preds])
    k = g != 255
    assert acc.pixel_accuracy() == pytest.approx(float(np.mean(g[k] == p[k])))


def test_dataset_level_not_mean_of_images() -> None:
    # image A: 1 px class 1 right; image B: 3 px class 1 predicted background
    gt_a, pr_a = np.array([[1]], np.uint8), np.array([[1]])
    gt_b, pr_b = np.array([[1, 1, 1, 0]], np.uint8), np.array([[0, 0, 0, 0]])
    acc = metrics.ConfusionAccumulator(2)
    acc.update(gt_a, pr_a)
    acc.update(gt_b, pr_b)
    # bg: tp 1, gt 1, pred 4 -> 1/4 ; class 1: tp 1, gt 4, pred 1 -> 1/4
    np.testing.assert_allclose(acc.iou(), [0.25, 0.25])
    assert acc.miou() == pytest.approx(0.25)  # per-image mean would be (1 + 0.125) / 2


def test_absent_classes_by_hand() -> None:
    gt = np.array([[0, 0, 2, 255]], np.uint8)
    pred = np.array([[0, 3, 2, 1]])  # the 1 sits on an ignored pixel
    conf = metrics.confusion(gt, pred, 4)
    iou = metrics.iou_from_confusion(conf)
    # bg: tp1 / (2 + 1 - 1) ; class 1: nowhere counted -> NaN ; class 2: 1 ; class 3: 0/1
    np.testing.assert_allclose(iou, [0.5, math.nan, 1.0, 0.0], equal_nan=True)
    assert metrics.miou(conf) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert math.isnan(metrics.miou(np.zeros((3, 3), np.int64)))
    assert math.isnan(metrics.pixel_accuracy(np.zeros((3, 3), np.int64)))


def test_derived_tables_by_hand() -> None:
    conf = np.array([[5, 1, 0], [2, 3, 0], [0, 4, 0]], dtype=np.int64)
    table = metrics.per_class_frame(conf, ["background", "a", "b"])
    assert list(table["class"]) == ["background", "a", "b"]
    # a: tp 3, gt 5, pred 8 -> 3 / 10 ; b: tp 0, gt 4 -> 0
    np.testing.assert_allclose(table["iou"], [5 / 8, 3 / 10, 0.0])
    np.testing.assert_allclose(table["precision"], [5 / 7, 3 / 8, math.nan], equal_nan=True)
    np.testing.assert_allclose(table["recall"], [5 / 6, 3 / 5, 0.0])
    assert list(table["gt_pixels"]) == [6, 5, 4]
    assert list(table["pred_pixels"]) == [7, 8, 0]
    bg = metrics.all_background_confusion(conf)
    np.testing.assert_array_equal(bg[:, 0], [6, 5, 4])
    assert metrics.miou(bg) == pytest.approx((6 / 15 + 0 + 0) / 3)
    assert metrics.predicted_fg_on_bg(conf) == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="class names"):
        metrics.per_class_frame(conf, ["background", "a"])


@pytest.mark.parametrize(
    ("gt", "pred", "match"),
    [
        ([[0, 1]], [[0, 255]], "prediction holds value 255"),
        ([[0, 1]], [[0, 3]], "prediction holds value 3"),
        ([[0, 1]], [[-1, 0]], "prediction holds value -1"),
        ([[0, 3]], [[0, 0]], "GT holds value 3"),
        ([[0, 1, 2]], [[0, 0]], "shape"),
    ],
)
def test_errors(gt, pred, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.confusion(np.array(gt, np.int64), np.array(pred, np.int64), 3)


def test_float_input_refused_and_255_gt_ignored() -> None:
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion(np.zeros((2, 2)), np.zeros((2, 2), np.int64), 3)
    gt = np.full((2, 2), 255, np.uint8)
    assert metrics.confusion(gt, np.ones((2, 2), np.int64), 3).sum() == 0
    acc = metrics.ConfusionAccumulator(3)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2), np.int64))
