"""Dense CRF (qaclims.models.crf): refinement of noisy labels / probabilities on a synthetic
image."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from qaclims.models.crf import CrfConfig, crf_labels, dense_crf, densecrf_module, label_unary


def two_regions(h: int = 40, w: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image with a flat red rectangle on flat blue (slight noise) and its true labels."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), dtype=np.int64)
    truth[8:30, 10:36] = 1
    colours = np.array([[30, 40, 200], [210, 40, 30]], dtype=np.float64)
    img = colours[truth] + rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def flip_labels(truth: np.ndarray, frac: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = truth.copy()
    flip = rng.random(truth.shape) < frac
    noisy[flip] = 1 - noisy[flip]
    return noisy


def test_crf_labels_agree_with_true_regions_better_than_the_noisy_input() -> None:
    img, truth = two_regions()
    noisy = flip_labels(truth, 0.2)
    scores = np.stack([noisy == 0, noisy == 1]).astype(np.float32)
    out = crf_labels(img, scores, CrfConfig())
    acc_in, acc_out = (noisy == truth).mean(), (out == truth).mean()
    assert acc_in < 0.85
    assert acc_out > 0.98 and acc_out > acc_in
    assert out.shape == truth.shape and out.dtype == np.int64


def test_dense_crf_returns_distributions_closer_to_the_truth() -> None:
    img, truth = two_regions(seed=3)
    noisy = flip_labels(truth, 0.25, seed=4)
    probs = np.where(np.stack([noisy == 0, noisy == 1]), 0.7, 0.3).astype(np.float32)
    q = dense_crf(img, probs, CrfConfig())
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-4)
    assert q.min() >= 0.0 and q.max() <= 1.0 + 1e-6
    assert (q.argmax(0) == truth).mean() > 0.98 > (probs.argmax(0) == truth).mean()


def test_label_unary_matches_hand_computed_energies() -> None:
    labels = np.array([[0, 2], [1, 2]])
    u = label_unary(labels, 3, 0.7)
    own, other = -np.log(0.7), -np.log(0.15)  # (1 - 0.7) / (3 - 1) = 0.15
    expected = np.full((3, 4), other)
    expected[[0, 2, 1, 2], [0, 1, 2, 3]] = own
    np.testing.assert_allclose(u, expected, rtol=1e-6)


def test_weak_smoothing_keeps_the_input_labels() -> None:
    img, truth = two_regions()
    noisy = flip_labels(truth, 0.1)
    scores = np.stack([noisy == 0, noisy == 1]).astype(np.float32)
    cfg = CrfConfig(gauss_compat=0.0, bilateral_compat=0.0)
    np.testing.assert_array_equal(crf_labels(img, scores, cfg), noisy)


def test_single_label_and_bad_shapes() -> None:
    img, _ = two_regions()
    np.testing.assert_array_equal(crf_labels(img, np.ones((1, 40, 48)), CrfConfig()), 0)
    with pytest.raises(ValueError, match="image is"):
        crf_labels(img, np.ones((2, 40, 40)), CrfConfig())


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        densecrf_module()
