"""RITC losses (L_FRC, L_BRC) against their formulas written out literally."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qaclims.ritc.losses import ritc_pair_losses


def frc_literal(f: torch.Tensor, t: torch.Tensor, bgs: list[torch.Tensor], temp: float) -> float:
    """-log(e^{f.t/T} / (e^{f.t/T} + sum_j e^{f.b_j/T})), f normalised, in float64."""
    f = f.detach().double()
    f = f / f.norm()
    pos = math.exp(float(f @ t.double()) / temp)
    neg = sum(math.exp(float(f @ b.double()) / temp) for b in bgs)
    return -math.log(pos / (pos + neg))


def brc_literal(g: torch.Tensor, t: torch.Tensor, bgs: list[torch.Tensor], temp: float) -> float:
    """-log(mean_j e^{g.b_j/T} / (mean_j e^{g.b_j/T} + e^{g.t/T})), g normalised."""
    g = g.detach().double()
    g = g / g.norm()
    pos = sum(math.exp(float(g @ b.double()) / temp) for b in bgs) / len(bgs)
    neg = math.exp(float(g @ t.double()) / temp)
    return -math.log(pos / (pos + neg))


def random_pairs(seed: int, counts: list[int], e: int = 16) -> tuple[torch.Tensor, ...]:
    """P pairs with ``counts[p]`` background phrases each (unit text features, padded)."""
    g = torch.Generator().manual_seed(seed)
    p, width = len(counts), max(1, *counts)
    fg_img = torch.randn(p, e, generator=g) * 3.0  # not unit: the loss normalises
    bg_img = torch.randn(p, e, generator=g) * 0.5
    # a mixed foreground feature is not unit-length (0.5 class + 0.5 mean of answers)
    fg_text = 0.5 * F.normalize(torch.randn(p, e, generator=g), dim=-1) + 0.5 * F.normalize(
        torch.randn(p, e, generator=g), dim=-1
    )
    bg_text = F.normalize(torch.randn(p, width, e, generator=g), dim=-1)
    valid = torch.arange(width)[None, :] < torch.tensor(counts)[:, None]
    bg_text = bg_text * valid[..., None]  # padding rows are zeros
    return fg_img, bg_img, fg_text, bg_text, valid


@pytest.mark.parametrize("temp", [0.7, 0.1])
def test_losses_match_formulas_and_skip_pairs_without_background(temp: float) -> None:
    counts = [3, 1, 0, 5, 2]
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(0, counts)
    fg_img.requires_grad_(True)
    bg_img.requires_grad_(True)
    out = ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid, temp)
    assert out.has_bg.tolist() == [c > 0 for c in counts]
    for p, c in enumerate(counts):
        if c == 0:
            assert out.frc[p].item() == 0.0 and out.brc[p].item() == 0.0
            continue
        bgs = list(bg_text[p, :c])
        assert out.frc[p].item() == pytest.approx(frc_literal(fg_img[p], fg_text[p], bgs, temp),
                                                  rel=1e-5)  # fmt: skip
        assert out.brc[p].item() == pytest.approx(brc_literal(bg_img[p], fg_text[p], bgs, temp),
                                                  rel=1e-5)  # fmt: skip
    (out.frc.sum() + out.brc.sum()).backward()
    assert fg_img.grad is not None and bg_img.grad is not None
    assert torch.isfinite(fg_img.grad).all() and torch.isfinite(bg_img.grad).all()
    assert fg_img.grad[2].abs().sum() == 0 and bg_img.grad[2].abs().sum() == 0


def test_only_background_pairs_is_all_zero_not_nan() -> None:
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(1, [0, 0])
    out = ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid, 0.7)
    assert out.frc.tolist() == [0.0, 0.0] and out.brc.tolist() == [0.0, 0.0]
    assert not out.has_bg.any()


def test_brc_averages_phrases_frc_sums_them() -> None:
    """Repeating every background phrase twice leaves L_BRC (a mean) unchanged but adds the
    negatives of L_FRC (a sum) a second time."""
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(2, [2, 3])
    once = ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid, 0.7)
    twice = ritc_pair_losses(
        fg_img, bg_img, fg_text, torch.cat([bg_text, bg_text], 1), torch.cat([valid, valid], 1), 0.7
    )
    torch.testing.assert_close(twice.brc, once.brc)
    assert (twice.frc > once.frc).all()
    # with the negatives doubled: -log(e^s / (e^s + 2N)) where N = e^s (e^{L_FRC} - 1)
    expected = torch.log(2 * torch.exp(once.frc) - 1)
    torch.testing.assert_close(twice.frc, expected)


def test_scale_of_image_features_does_not_matter() -> None:
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(3, [4, 2, 1])
    a = ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid, 0.7)
    b = ritc_pair_losses(fg_img * 17.0, bg_img * 0.01, fg_text, bg_text, valid, 0.7)
    torch.testing.assert_close(a.frc, b.frc)
    torch.testing.assert_close(a.brc, b.brc)


def test_small_temperature_does_not_overflow() -> None:
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(4, [3, 2])
    out = ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid, 1e-3)
    assert torch.isfinite(out.frc).all() and torch.isfinite(out.brc).all()
    # log(1 + sum_j e^{d_j}) lies between max(0, max_j d_j) and that plus log(1 + L)
    f = F.normalize(fg_img, dim=-1)
    s_pos = (f * fg_text).sum(-1)
    s_neg = torch.einsum("pe,ple->pl", f, bg_text).masked_fill(~valid, -9.0).amax(1)
    hinge = torch.clamp(s_neg - s_pos, min=0) / 1e-3
    gap = out.frc - hinge
    assert (gap >= -1e-2 * (1 + hinge)).all()
    assert (gap <= torch.log(1.0 + valid.sum(1)) + 1e-2 * (1 + hinge)).all()


def test_shape_errors() -> None:
    fg_img, bg_img, fg_text, bg_text, valid = random_pairs(5, [1, 2])
    with pytest.raises(ValueError, match="P x L x E"):
        ritc_pair_losses(fg_img, bg_img, fg_text, bg_text[0], valid, 0.7)
    with pytest.raises(ValueError, match="bool"):
        ritc_pair_losses(fg_img, bg_img, fg_text, bg_text, valid.float(), 0.7)
