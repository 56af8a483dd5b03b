"""Pair geometry, affinities, transition matrix and random walk (qaclims.refine.random_walk),
checked against brute-force enumerations of pixel pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qaclims.refine import random_walk as rw

torch.set_num_threads(1)


def brute_path(dy: int, dx: int) -> set[tuple[int, int]]:
    """Grid points of the box of (0,0)-(dy,dx) at Euclidean distance < 1 from their line."""
    norm = math.hypot(dy, dx)
    return {
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if abs(dy * x - dx * y) / norm < 1 - 1e-12
    }


def brute_affinity_matrix(edge: np.ndarray, radius: int, beta: float) -> np.ndarray:
    """Dense A: (1 - max edge on the path) ** beta for all pixel pairs closer than radius."""
    h, w = edge.shape
    a = np.eye(h * w)
    for y, x, ty, tx in (
        (y, x, ty, tx) for y in range(h) for x in range(w) for ty in range(h) for tx in range(w)
    ):
        dy, dx = ty - y, tx - x
        if (dy, dx) == (0, 0) or dy * dy + dx * dx >= radius**2:
            continue
        worst = max(edge[y + py, x + px] for py, px in brute_path(dy, dx))
        a[y * w + x, ty * w + tx] = (1.0 - worst) ** beta
    return a


def test_geometry_is_the_half_disc_with_line_paths() -> None:
    g = rw.pair_geometry(5)
    brute = {
        (dy, dx)
        for dy in range(5)
        for dx in range(-4, 5)
        if dy * dy + dx * dx < 25 and (dy > 0 or dx > 0)
    }
    dirs = [tuple(d) for d in g.directions.tolist()]
    assert len(dirs) == len(brute) == 34 and set(dirs) == brute
    paths = {tuple(o[0]): {tuple(p) for p in o} for _, offs in g.groups for o in offs.tolist()}
    assert paths[(0, 3)] == {(0, 0), (0, 1), (0, 2), (0, 3)}
    assert paths[(1, 1)] == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for d in brute:
        assert paths[d] == brute_path(*d)


def test_edge_to_affinity_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    edge = rng.random((9, 11)).astype(np.float32)
    g = rw.pair_geometry(4)
    aff = rw.edge_to_affinity(torch.from_numpy(edge)[None], g)[0].numpy()
    m = g.margin
    srcs = [(y, x) for y in range(9 - m) for x in range(m, 11 - m)]
    assert aff.shape == (len(g.directions), len(srcs))
    for di, (dy, dx) in enumerate(g.directions.tolist()):
        for si, (y, x) in enumerate(srcs):
            expected = 1 - max(edge[y + py, x + px] for py, px in brute_path(dy, dx))
            assert aff[di, si] == pytest.approx(expected, abs=1e-6)


def test_transition_matrix_is_the_row_normalised_brute_force_affinity() -> None:
    rng = np.random.default_rng(1)
    edge = (rng.random((7, 8)) ** 2).astype(np.float32)
    a = brute_affinity_matrix(edge.astype(np.float64), 4, 3.0)
    expected = a / a.sum(axis=1, keepdims=True)
    p = rw.transition_matrix(torch.from_numpy(edge), 4, 3.0).double().numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, expected, atol=1e-6)
    sparse = rw.transition_sparse(torch.from_numpy(edge), 4, 3.0).to_dense().double().numpy()
    np.testing.assert_allclose(sparse, p, atol=1e-7)


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_walk_without_boundaries_spreads_a_seed_uniformly(method: str) -> None:
    h, w, r = 10, 12, 5
    seed = (3, 4)
    cams = torch.zeros(1, h, w)
    cams[0, seed[0], seed[1]] = 1.0
    out = rw.propagate(cams, torch.zeros(h, w), radius=r, beta=10.0, exp_times=8, method=method)
    # stationary distribution of a walk on an undirected graph is proportional to the degree
    deg = np.ones((h, w))
    for y in range(h):
        for x in range(w):
            deg[y, x] += sum(
                1 for ty in range(h) for tx in range(w) if 0 < (ty - y) ** 2 + (tx - x) ** 2 < r * r
            )
    expected = deg[seed] / deg.sum()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_walk_does_not_cross_a_closed_boundary(method: str) -> None:
    h = w = 18
    edge = torch.zeros(h, w)
    edge[3:15, 3:15] = 1.0
    edge[5:13, 5:13] = 0.0  # a closed ring, 2 pixels thick, around rows/cols 5..12
    cams = torch.zeros(1, h, w)
    cams[0, 8, 8] = 1.0
    out = rw.propagate(cams, edge, radius=5, beta=10.0, exp_times=8, method=method)[0]
    inside = out[5:13, 5:13]
    outside = out.clone()
    outside[3:15, 3:15] = 0.0
    assert float(outside.abs().max()) == 0.0
    assert float(out[3:15, 3:15][edge[3:15, 3:15] == 1].abs().max()) == 0.0
    assert float(inside.min()) > 0.0
    assert float(inside.max() / inside.min()) < 1.05  # uniform inside the region


def test_sparse_and_dense_walks_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    edge = torch.rand(11, 13, generator=gen) ** 3
    cams = torch.rand(3, 11, 13, generator=gen)
    a = rw.propagate(cams, edge, 5, 10.0, 6, "dense")
    b = rw.propagate(cams, edge, 5, 10.0, 6, "sparse")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="method"):
        rw.propagate(cams, edge, 5, 10.0, 6, "magic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_walk_on_gpu_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    edge = torch.rand(30, 40, generator=gen) ** 3
    cams = torch.rand(2, 30, 40, generator=gen)
    cpu = rw.propagate(cams, edge, 5, 10.0, 8, "sparse")
    for method in ("sparse", "dense"):
        gpu = rw.propagate(cams.cuda(), edge.cuda(), 5, 10.0, 8, method).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-3)
