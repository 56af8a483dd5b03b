"""The region-text contrastive losses of QA-CLIMS (RITC), batched over (image, class) pairs.

For one pair with foreground text feature ``t`` (``E``), background phrase features
``b_1..b_L`` and temperature ``T``:

* L_FRC (foreground region vs text): the foreground image feature ``f`` (L2-normalised here)
  should match ``t`` rather than any ``b_j``::

      L_FRC = -log( e^{f.t/T} / (e^{f.t/T} + sum_j e^{f.b_j/T}) )

* L_BRC (background region vs text): the background image feature ``g`` (L2-normalised)
  should match the background phrases, *as a mean*, rather than ``t``::

      L_BRC = -log( mean_j e^{g.b_j/T} / (mean_j e^{g.b_j/T} + e^{g.t/T}) )

The reference (``clip_loss.py`` of CVI-SZU/QA-CLIMS) sums the negatives in L_FRC but
averages the positives in L_BRC, exactly as above; text features are used as given (the
phrase features are unit vectors, the mixed foreground feature is not re-normalised).
A pair without any background phrase is skipped by the reference; here its losses are 0
and it is flagged in ``has_bg``. Both are computed with ``logsumexp`` (same values, no
overflow).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairLosses:
    """Per-pair losses ``P float32`` (0 where ``has_bg`` is False) and ``has_bg: P bool``."""

    frc: torch.Tensor
    brc: torch.Tensor
    has_bg: torch.Tensor


def _check(
    fg_img: torch.Tensor,
    bg_img: torch.Tensor,
    fg_text: torch.Tensor,
    bg_text: torch.Tensor,
    bg_valid: torch.Tensor,
) -> None:
    p, e = fg_img.shape
    if bg_img.shape != (p, e) or fg_text.shape != (p, e):
        raise ValueError(
            f"fg/bg image and fg text features must be PxE, got {fg_img.shape}, "
            f"{bg_img.shape}, {fg_text.shape}"
        )
    if bg_text.ndim != 3 or bg_text.shape[0] != p or bg_text.shape[2] != e:
        raise ValueError(f"bg_text must be P x L x E, got {tuple(bg_text.shape)}")
    if bg_valid.shape != bg_text.shape[:2] or bg_valid.dtype != torch.bool:
        raise ValueError(f"bg_valid must be P x L bool, got {bg_valid.shape} {bg_valid.dtype}")


def ritc_pair_losses(
    fg_img: torch.Tensor,
    bg_img: torch.Tensor,
    fg_text: torch.Tensor,
    bg_text: torch.Tensor,
    bg_valid: torch.Tensor,
    temperature: float,
) -> PairLosses:
    """L_FRC and L_BRC of ``P`` pairs (see the module docstring).

    fg_img, bg_img: ``PxE`` CLIP features of each pair's foreground / background region
    (any scale; normalised here). fg_text: ``PxE`` foreground text feature per pair.
    bg_text: ``PxLxE`` background phrase features, padded; bg_valid: ``PxL bool`` marks the
    real ones. Computed in float32.
    """
    _check(fg_img, bg_img, fg_text, bg_text, bg_valid)
    has_bg = bg_valid.any(dim=1)
    frc = fg_img.new_zeros(fg_img.shape[0], dtype=torch.float32)
    brc = frc.clone()
    idx = has_bg.nonzero().squeeze(1)
    if idx.numel():
        f_loss, b_loss = _losses(
            fg_img[idx].float(),
            bg_img[idx].float(),
            fg_text[idx].float(),
            bg_text[idx].float(),
            bg_valid[idx],
            temperature,
        )
        frc = frc.index_put((idx,), f_loss)
        brc = brc.index_put((idx,), b_loss)
    return PairLosses(frc, brc, has_bg)


def _losses(
    fg_img: torch.Tensor,
    bg_img: torch.Tensor,
    fg_text: torch.Tensor,
    bg_text: torch.Tensor,
    bg_valid: torch.Tensor,
    t: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both losses for pairs that all have >= 1 background phrase."""
    f = F.normalize(fg_img, dim=-1)
    g = F.normalize(bg_img, dim=-1)
    neg_inf = torch.finfo(torch.float32).min
    # L_FRC: positive f.t against {f.t} U {f.b_j}
    pos = (f * fg_text).sum(-1) / t  # P
    neg = torch.einsum("pe,ple->pl", f, bg_text) / t  # P x L
    neg = neg.masked_fill(~bg_valid, neg_inf)
    frc = torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos
    # L_BRC: log of the mean over phrases of e^{g.b_j/T}, against e^{g.t/T}
    sim_b = torch.einsum("pe,ple->pl", g, bg_text) / t
    sim_b = sim_b.masked_fill(~bg_valid, neg_inf)
    count = bg_valid.sum(dim=1).to(sim_b.dtype)
    log_mean = torch.logsumexp(sim_b, dim=1) - torch.log(count)
    sim_t = (g * fg_text).sum(-1) / t
    brc = torch.logsumexp(torch.stack([log_mean, sim_t], dim=1), dim=1) - log_mean
    return frc, brc
