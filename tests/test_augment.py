"""augment: IRN-style crop/resize draws, normalisation, PIL-compatible tensor resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qaclims.data import augment


def test_scaled_size_rounds_half_to_even() -> None:
    assert augment.scaled_size(375, 500, 0.5) == (188, 250)  # 187.5 -> 188
    assert augment.scaled_size(375, 500, 1.5) == (562, 750)  # 562.5 -> 562
    assert augment.scaled_size(3, 3, 0.01) == (1, 1)


@pytest.mark.parametrize("hw", [(20, 30), (50, 70), (64, 64), (10, 80)])
def test_crop_box_keeps_pixels_and_fills_the_rest(hw: tuple[int, int]) -> None:
    h, w, crop = *hw, 64
    rng = np.random.default_rng(3)
    image = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1  # every pixel unique, > 0
    for _ in range(20):
        out = augment.apply_crop(image, augment.draw_crop_box(h, w, crop, rng), fill=-1.0)
        assert out.shape == (crop, crop)
        kept = out[out > 0]
        assert kept.size == min(h, crop) * min(w, crop)
        # the kept pixels form one contiguous window of the image
        ys, xs = np.unravel_index((kept - 1).astype(int), (h, w))
        assert ys.max() - ys.min() + 1 == min(h, crop) and xs.max() - xs.min() + 1 == min(w, crop)
        assert (out[out <= 0] == -1).all()


def test_resize_long_range_and_aspect() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        h, w = augment.draw_resize_long(300, 400, (10, 14), rng)
        seen.add(w)
        assert abs(h / w - 0.75) < 0.1
    assert seen == {10, 11, 12, 13, 14}


def test_normalize_and_chw() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 1] = 255
    out = augment.normalize(image, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    np.testing.assert_allclose(out[0, 0], [-2.0, 1.0, -0.5])
    t = augment.to_chw(out)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32 and float(t[1, 1, 2]) == 1.0


@pytest.mark.parametrize("size", [(19, 27), (74, 106)])
def test_resize_tensor_matches_pil_bicubic(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.random((37, 53), dtype=np.float32) * 255
    pil = np.asarray(Image.fromarray(img, mode="F").resize(size[::-1], Image.BICUBIC))
    ours = augment.resize_tensor(torch.from_numpy(img)[None, None], size)[0, 0].numpy()
    np.testing.assert_allclose(ours, pil, atol=5e-3)
    np.testing.assert_allclose(augment.resize(img, size), pil, atol=1e-6)


def test_classification_sample_is_a_function_of_its_rng() -> None:
    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3)).astype(np.uint8)
    a = augment.classification_sample(image, augment.sample_rng(7, 1, 2), (20, 40), 32, True)
    b = augment.classification_sample(image, augment.sample_rng(7, 1, 2), (20, 40), 32, True)
    c = augment.classification_sample(image, augment.sample_rng(7, 1, 3), (20, 40), 32, True)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
