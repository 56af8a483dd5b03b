"""Inter-pixel pairs within a radius, their affinity labels and affinities, and the random
walk that propagates CAMs along them (IRN, Ahn et al. 2019).

Geometry. For a radius ``r`` the *directions* are the integer offsets ``(dy, dx)`` with
``dy > 0`` or (``dy == 0`` and ``dx > 0``) and ``dy^2 + dx^2 < r^2`` (one half of the disc,
so each unordered pair is counted once). The *path* of a direction is every integer point
of the box spanned by ``(0, 0)`` and ``(dy, dx)`` whose distance to the line through them
is below 1 (both ends included). On an ``h x w`` grid the *source* pixels are rows
``[0, h - r + 1)`` and columns ``[r - 1, w - r + 1)``, so that every pair's destination lies
on the grid; pairs are laid out ``D x N`` (direction-major, sources row-major).

Affinity of a pair = ``1 - max`` of the boundary map over its path.

Random walk: the affinities of all pairs of an image (both orders) plus self-loops of 1,
raised to ``beta``, row-normalised, give a row-stochastic transition matrix ``P``
(``n x n``, ``n = h*w``). CAMs (times ``1 - boundary``) are propagated ``2**exp_times``
steps: ``v <- P^(2^t) v`` per class. ``method="dense"`` squares the dense ``P`` ``t`` times
(the reference's way: ``O(t n^3)``, GPU only in practice); ``method="sparse"`` applies the
sparse ``P`` ``2^t`` times (``O(2^t nnz K)``: same result, far cheaper on CPU and GPU).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255


@dataclass(frozen=True, eq=False)
class PairGeometry:
    """Directions and paths of one radius.

    radius: pairs are closer than ``radius`` (grid units).
    directions: ``D x 2 int64`` offsets ``(dy, dx)``, grouped by path length.
    groups: per path length ``L``, ``(first, offsets)``: directions ``first .. first+G-1``
        share length ``L``; ``offsets`` is ``G x L x 2 int64`` (their path points).
    """

    radius: int
    directions: np.ndarray
    groups: tuple[tuple[int, np.ndarray], ...]

    @property
    def margin(self) -> int:
        """Columns left and right (and rows at the bottom) that hold no source pixel."""
        return self.radius - 1

    def num_sources(self, h: int, w: int) -> int:
        """Number ``N`` of source pixels on an ``h x w`` grid."""
        return (h - self.margin) * (w - 2 * self.margin)


def half_disc(radius: int) -> list[tuple[int, int]]:
    """Directions of ``radius`` in generation order (row 0 first, then by row and column)."""
    out = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        out += [(dy, dx) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius**2]
    return out


def path_points(dy: int, dx: int) -> list[tuple[int, int]]:
    """Integer points of the box of ``(0,0)``-``(dy,dx)`` closer than 1 to the line through them."""
    n2 = dy * dy + dx * dx
    pts = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < n2
    ]
    return sorted(pts, key=lambda p: -abs(p[0]) - abs(p[1]))


@functools.lru_cache(maxsize=8)
def pair_geometry(radius: int) -> PairGeometry:
    """The :class:`PairGeometry` of an integer ``radius >= 2``."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    by_len: dict[int, list[tuple[tuple[int, int], list[tuple[int, int]]]]] = {}
    for d in half_disc(radius):
        p = path_points(*d)
        by_len.setdefault(len(p), []).append((d, p))
    dirs: list[tuple[int, int]] = []
    groups = []
    for length in sorted(by_len):
        items = by_len[length]
        groups.append((len(dirs), np.asarray([p for _, p in items], dtype=np.int64)))
        dirs += [d for d, _ in items]
    return PairGeometry(radius, np.asarray(dirs, dtype=np.int64), tuple(groups))


def _sources(geom: PairGeometry, h: int, w: int, device: torch.device) -> torch.Tensor:
    m = geom.margin
    if h <= m or w <= 2 * m:
        raise ValueError(f"grid {h}x{w} is too small for radius {geom.radius}")
    ys = torch.arange(h - m, device=device)
    xs = torch.arange(m, w - m, device=device)
    return (ys[:, None] * w + xs[None, :]).reshape(-1)


@functools.lru_cache(maxsize=16)
def _path_indices(geom: PairGeometry, h: int, w: int, device: torch.device) -> list[torch.Tensor]:
    """Per path-length group, ``G x L x N int64`` flat grid indices of the path points."""
    src = _sources(geom, h, w, device)
    out = []
    for _, offsets in geom.groups:
        off = torch.as_tensor(offsets[..., 0] * w + offsets[..., 1], device=device)
        out.append(off[..., None] + src)
    return out


def edge_to_affinity(edge: torch.Tensor, geom: PairGeometry) -> torch.Tensor:
    """Pair affinities from a boundary map.

    Args:
        edge: ``B x h x w`` float boundary probabilities in [0,1].
        geom: pair geometry.

    Returns:
        ``B x D x N`` float in [0,1]: ``1 - max(edge over the pair's path)``.
    """
    b, h, w = edge.shape
    flat = edge.reshape(b, h * w)
    parts = []
    for idx in _path_indices(geom, h, w, edge.device):
        g, length, n = idx.shape
        vals = flat[:, idx.reshape(-1)].reshape(b, g, length, n)
        parts.append(1.0 - vals.amax(dim=2))
    return torch.cat(parts, dim=1)


def _shifted(grid: torch.Tensor, geom: PairGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Source values ``B x 1 x N`` and destination values ``B x D x N`` of a ``B x h x w`` grid."""
    b, h, w = grid.shape
    m = geom.margin
    ch, cw = h - m, w - 2 * m
    src = grid[:, :ch, m : m + cw].reshape(b, 1, -1)
    dst = [grid[:, dy : dy + ch, m + dx : m + dx + cw].reshape(b, -1) for dy, dx in geom.directions]
    return src, torch.stack(dst, dim=1)


def pair_labels(
    label: torch.Tensor, geom: PairGeometry
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity labels of all pairs from a label map.

    Args:
        label: ``B x h x w`` integer labels (0 background, >0 classes, 255 ignore).
        geom: pair geometry.

    Returns:
        ``(bg_pos, fg_pos, neg)``, each ``B x D x N float32`` in {0,1}: both ends background;
        both ends the same foreground class; ends of different classes. Pairs with an end
        at 255 are in none of the three.
    """
    src, dst = _shifted(label, geom)
    valid = (src != IGNORE) & (dst != IGNORE)
    same = src == dst
    pos = same & valid
    bg_pos = pos & (src == 0)
    fg_pos = pos & (src > 0)
    neg = ~same & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def pair_displacement(disp: torch.Tensor, geom: PairGeometry) -> torch.Tensor:
    """``disp(src) - disp(dst)`` for all pairs: ``B x 2 x h x w`` -> ``B x 2 x D x N``."""
    b, c, h, w = disp.shape
    src, dst = _shifted(disp.reshape(b * c, h, w), geom)
    return (src - dst).reshape(b, c, dst.shape[1], -1)


def _forward_weights(edge: torch.Tensor, geom: PairGeometry, beta: float) -> torch.Tensor:
    """``D x h x w``: ``aff ** beta`` of the pair (p, p + d); 0 where p + d leaves the image."""
    h, w = edge.shape
    m = geom.margin
    padded = F.pad(edge[None], (m, m, 0, m), value=1.0)
    return (edge_to_affinity(padded, geom)[0] ** beta).reshape(-1, h, w)


def _backward_weights(fwd: torch.Tensor, geom: PairGeometry) -> torch.Tensor:
    """``D x h x w``: the weight of the pair (p - d, p), i.e. ``fwd[d]`` shifted by ``d``."""
    _, h, w = fwd.shape
    m = geom.margin
    padded = F.pad(fwd, (m, m, m, 0))
    shifted = [
        padded[i, m - dy : m - dy + h, m - dx : m - dx + w]
        for i, (dy, dx) in enumerate(geom.directions)
    ]
    return torch.stack(shifted)


def _neighbour_index(h: int, w: int, geom: PairGeometry, device: torch.device) -> torch.Tensor:
    """``(1 + 2D) x n int64``: the pixel ``p``, ``p + d`` and ``p - d`` (``p`` if outside)."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    ys, xs = ys.reshape(1, -1), xs.reshape(1, -1)
    d = torch.as_tensor(geom.directions, device=device)
    dy, dx = d[:, :1], d[:, 1:]
    own = ys * w + xs
    rows = [own]
    for sign in (1, -1):
        ty, tx = ys + sign * dy, xs + sign * dx
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        rows.append(torch.where(inside, ty * w + tx, own))
    return torch.cat(rows)


def transition_stencil(
    edge: torch.Tensor, radius: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random-walk transition matrix ``P`` of a boundary map, stored by rows.

    Args:
        edge: ``h x w`` float boundary probabilities in [0,1].
        radius, beta: pairs closer than ``radius``; affinities raised to ``beta``.

    Returns:
        ``(index, weight)``, both ``(1 + 2D) x n`` (``n = h*w``, pixels row-major): row ``i`` of
        ``P`` holds ``weight[o, i]`` at column ``index[o, i]``. ``P[i, j] = A_ij / sum_k A_ik``
        with ``A_ij = (pair affinity) ** beta`` for pairs closer than ``radius`` and
        ``A_ii = 1``; every row sums to 1.
    """
    geom = pair_geometry(radius)
    h, w = edge.shape
    fwd = _forward_weights(edge.float(), geom, beta)
    bwd = _backward_weights(fwd, geom)
    weight = torch.cat([torch.ones(1, h, w, device=edge.device), fwd, bwd]).reshape(-1, h * w)
    weight = weight / weight.sum(dim=0, keepdim=True)
    return _neighbour_index(h, w, geom, edge.device), weight


def transition_sparse(edge: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """:func:`transition_stencil` as an ``n x n`` sparse CSR float tensor (rows sum to 1)."""
    index, weight = transition_stencil(edge, radius, beta)
    n = index.shape[1]
    valid = index != index[:1]
    valid[0] = True
    cols, order = torch.where(valid, index, n).T.sort(dim=1)
    vals = weight.T.gather(1, order)
    keep = cols < n
    crow = torch.zeros(n + 1, dtype=torch.int64, device=edge.device)
    crow[1:] = keep.sum(dim=1).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, cols[keep], vals[keep], (n, n), check_invariants=False)


def transition_matrix(edge: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """Dense ``n x n`` float form of :func:`transition_stencil` (rows sum to 1)."""
    index, weight = transition_stencil(edge, radius, beta)
    n = index.shape[1]
    rows = torch.arange(n, device=edge.device).expand_as(index)
    p = torch.zeros(n, n, device=edge.device, dtype=weight.dtype)
    return p.index_put_((rows.reshape(-1), index.reshape(-1)), weight.reshape(-1), accumulate=True)


def propagate(
    cams: torch.Tensor,
    edge: torch.Tensor,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    method: str = "sparse",
) -> torch.Tensor:
    """Random-walk propagation of CAMs inside the boundaries.

    Args:
        cams: ``K x h x w`` float scores in [0,1] (stride-4 CAMs).
        edge: ``h x w`` float boundary probabilities in [0,1] on the same grid.
        radius, beta, exp_times: pairs closer than ``radius``; affinity power; ``2**exp_times``
            walk steps.
        method: ``"dense"`` (repeated squaring of the dense matrix, as the reference) or
            ``"sparse"`` (``2**exp_times`` products with the row stencil); same result.

    Returns:
        ``K x h x w`` float32, ``P^(2^t) (cams * (1 - edge))`` per class (non-negative).
    """
    k, h, w = cams.shape
    if edge.shape != (h, w):
        raise ValueError(f"edge is {tuple(edge.shape)} but the CAMs are {h}x{w}")
    v = (cams.float() * (1.0 - edge.float())).reshape(k, h * w).T.contiguous()
    if method == "dense":
        t = transition_matrix(edge, radius, beta)
        for _ in range(exp_times):
            t = t @ t
        v = t @ v
    elif method == "sparse":
        p = transition_sparse(edge, radius, beta)
        for _ in range(2**exp_times):
            v = p @ v
    else:
        raise ValueError(f"random-walk method must be dense or sparse, got {method!r}")
    return v.T.reshape(k, h, w)
