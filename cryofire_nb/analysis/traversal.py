"""Paths through the latent space and the volumes along them.

* :func:`pc_traversal`: points at given percentiles of the particles' coordinate on one
  principal component, mapped back to z (the other PCs at 0, i.e. at the mean of z).
* :func:`graph_path`: the shortest path between two particles on a k-nearest-neighbour
  graph of z (edge weight = Euclidean distance), so every step stays on the data.
* :func:`volumes_at`: call a volume generator (e.g. ``decoder.eval_volume``) at each
  point and stack the maps.

Dimension letters: n particles, k latent dimension, m points on a traversal, p particles
on a graph path, d box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from .latent import PCAResult, as_latents, nearest_points, pca


@dataclass(frozen=True)
class Traversal:
    """Points along a principal component.

    z: (m, k) latent points; pc: the component (1-based: 1 = PC1); percentiles: (m,);
    coords: (m,) coordinate on that PC; nearest_indices: (m,) int64 particle whose z is
    nearest each point.
    """

    z: np.ndarray
    pc: int
    percentiles: np.ndarray
    coords: np.ndarray
    nearest_indices: np.ndarray


def pc_traversal(z, pc: int = 1, percentiles=(5, 15, 25, 35, 45, 55, 65, 75, 85, 95),
                 pca_result: PCAResult | None = None) -> Traversal:
    """Points at ``percentiles`` of the particles' coordinate on PC ``pc`` (1-based),
    mapped back to z as ``mean + coord * component``. Pass ``pca_result`` to reuse a PCA."""
    z = as_latents(z)
    res = pca(z) if pca_result is None else pca_result
    if not 1 <= pc <= len(res.components):
        raise InputError(None, f"pc={pc} but only {len(res.components)} components exist",
                         f"choose 1 .. {len(res.components)} (1 = PC1)")
    q = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    if q.size == 0 or (q < 0).any() or (q > 100).any():
        raise InputError(None, f"percentiles {q.tolist()} must be non-empty and within 0 .. 100", None)
    coords = np.percentile(res.coords[:, pc - 1], q)  # (m,)
    zs = res.mean + coords[:, None] * res.components[pc - 1]  # (m, k)
    return Traversal(zs, pc, q, coords, nearest_points(z, zs))


# --------------------------------------------------------------------------- graph


def knn_graph(z, n_neighbors: int = 10):
    """Symmetric kNN graph of z (n, k): scipy CSR (n, n), weight = Euclidean distance.

    i and j are joined when either is among the other's ``n_neighbors`` nearest.
    Coincident points get a tiny positive weight so the edge is kept.
    """
    from sklearn.neighbors import NearestNeighbors

    z = as_latents(z)
    nn = int(min(n_neighbors, len(z) - 1))
    if nn < 1:
        raise InputError(None, f"n_neighbors={n_neighbors}", "use at least 1 neighbour")
    graph = NearestNeighbors(n_neighbors=nn).fit(z).kneighbors_graph(mode="distance")  # (n, n)
    scale = float(np.abs(z).max()) or 1.0
    graph.data = np.maximum(graph.data, 1e-12 * scale)
    return graph.maximum(graph.T).tocsr()


@dataclass(frozen=True)
class GraphPath:
    """Shortest path on the kNN graph of z between particles ``indices[0]`` and
    ``indices[-1]``.

    indices: (p,) int64 every particle on the path, consecutive ones joined by an edge;
    sampled_indices: (m,) int64 the subsample, evenly spaced in steps along the path
    and keeping both ends; z: (m, k) their latent vectors; length: total Euclidean
    length of the path in z; n_neighbors: of the graph.
    """

    indices: np.ndarray
    sampled_indices: np.ndarray
    z: np.ndarray
    length: float
    n_neighbors: int


def graph_path(z, start: int, end: int, n_neighbors: int = 10, n_points: int | None = None) -> GraphPath:
    """Shortest path from particle ``start`` to particle ``end`` (0-based rows of z) on
    :func:`knn_graph`, subsampled to ``n_points`` (default: every particle on the path)."""
    from scipy.sparse.csgraph import dijkstra

    z = as_latents(z)
    n = len(z)
    for name, i in (("start", start), ("end", end)):
        if not 0 <= int(i) < n:
            raise InputError(None, f"{name}={i} is not a particle index (n = {n})", f"choose 0 .. {n - 1}")
    start, end = int(start), int(end)
    graph = knn_graph(z, n_neighbors)
    dist, pred = dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    if not np.isfinite(dist[end]):
        raise InputError(None, f"particles {start} and {end} are not connected on the {n_neighbors}-NN graph",
                         "increase n_neighbors, or pick end points in the same region of z")
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    path = np.asarray(path[::-1], dtype=np.int64)  # (p,)
    if n_points is None or n_points >= len(path):
        sampled = path
    else:
        if n_points < 2:
            raise InputError(None, f"n_points={n_points}", "ask for at least 2 points (the two ends)")
        steps = np.round(np.linspace(0, len(path) - 1, n_points)).astype(np.int64)  # distinct: spacing >= 1
        sampled = path[steps]
    return GraphPath(path, sampled, z[sampled], float(dist[end]), int(min(n_neighbors, n - 1)))


# --------------------------------------------------------------------------- volumes


def volumes_at(z_points, volume_fn: Callable, progress: bool = False) -> np.ndarray:
    """Volumes (m, d, d, d) float32 from ``volume_fn`` at each row of ``z_points`` (m, k).

    ``volume_fn`` receives one float32 torch tensor (k,) and returns a (d, d, d) array or
    tensor, e.g. ``decoder.eval_volume`` (real space, indexed ``[z, y, x]``).
    ``z_points`` may also be a :class:`Traversal` or :class:`GraphPath` (its ``.z``).
    """
    import torch

    pts = getattr(z_points, "z", z_points)
    pts = pts.detach().cpu().numpy() if hasattr(pts, "detach") else pts
    pts = np.atleast_2d(np.asarray(pts, dtype=np.float64))  # (m, k)
    if pts.ndim != 2 or not np.isfinite(pts).all():
        raise InputError(None, f"z_points has shape {pts.shape} or non-finite values, expected finite (m, k)",
                         "pass latent points such as traversal.z")
    rows = range(len(pts))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="volumes")
    out = []
    with torch.no_grad():
        for i in rows:
            vol = volume_fn(torch.as_tensor(pts[i], dtype=torch.float32))
            vol = vol.detach().cpu().numpy() if hasattr(vol, "detach") else np.asarray(vol)
            if vol.ndim != 3 or out and vol.shape != out[0].shape:
                raise ValueError(f"volume_fn returned shape {vol.shape} at point {i}, expected a (d, d, d) "
                                 f"volume{'' if not out else ' like ' + str(out[0].shape)}")
            out.append(vol.astype(np.float32))
    return np.stack(out)
