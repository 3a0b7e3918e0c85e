"""Figures of poses: the distribution of view directions on the sphere and histograms of
angular errors.

The view direction of a rotation R is its third row ``R[2]`` (cryoDRGN convention: pixel
(x, y) integrates the volume along z at ``[x, y, z] @ R``, so the beam runs along
``R[2]`` in the volume frame). Directions are binned in equal-area cells (uniform in
longitude and in sin(latitude)) and drawn on a Mollweide (equal-area) map, so counts per
cell compare directly: uniformly random views give a flat map.

Dimension letters: n images, a latitude bins, o longitude bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._figure import finish_axes, new_figure
from .images import _numpy


@dataclass(frozen=True)
class ViewHistogram:
    """Counts of view directions per equal-area cell, (a, o) indexed [latitude, longitude];
    edges in radians: lon_edges (o + 1,) in [-pi, pi], lat_edges (a + 1,) in [-pi/2, pi/2]."""

    counts: np.ndarray
    lon_edges: np.ndarray
    lat_edges: np.ndarray


def view_directions(rots) -> np.ndarray:
    """Unit view directions (n, 3): the third rows of the rotations (n, 3, 3)."""
    r = _numpy(rots).astype(np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (n, 3, 3), got {r.shape}")
    v = r[:, 2, :]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def view_histogram(rots, n_lon: int = 36, n_lat: int = 18) -> ViewHistogram:
    """Histogram of view directions in ``n_lat`` x ``n_lon`` equal-area cells."""
    v = view_directions(rots)
    lon = np.arctan2(v[:, 1], v[:, 0])  # (n,) in [-pi, pi]
    lat = np.arcsin(np.clip(v[:, 2], -1.0, 1.0))  # (n,)
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    lat_edges = np.arcsin(np.linspace(-1.0, 1.0, n_lat + 1))  # equal steps in sin(lat): equal areas
    counts, _, _ = np.histogram2d(lat, lon, bins=(lat_edges, lon_edges))  # (a, o)
    return ViewHistogram(counts, lon_edges, lat_edges)


def view_distribution(rots, reference=None, labels=("predicted", "reference"), n_lon: int = 36,
                      n_lat: int = 18, cmap: str = "viridis"):
    """Mollweide map(s) of view-direction counts: one map for ``rots`` (n, 3, 3), and a
    second for ``reference`` when given (e.g. predicted vs ground-truth poses). Each
    map has its own colour bar (an axes): 2 or 4 axes."""
    sets = [rots] if reference is None else [rots, reference]
    fig = new_figure(figsize=(5.6 * len(sets), 3.6))
    for i, r in enumerate(sets):
        hist = view_histogram(r, n_lon, n_lat)
        ax = fig.add_subplot(1, len(sets), i + 1, projection="mollweide")
        mesh = ax.pcolormesh(hist.lon_edges, hist.lat_edges, hist.counts, cmap=cmap, shading="flat")
        ax.set_xticklabels([])
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.set_title(f"{labels[i]} ({len(_numpy(r))} views)", fontsize=9)
        fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6, pad=0.06, label="views per equal-area cell")
    return fig


def angular_error_histograms(errors=None, bins: int = 60, max_deg: float | None = None, **named):
    """Histograms of per-image angular errors (degrees), one axes each, median marked.

    ``errors``: a :class:`cryofire_nb.metrics.RotationErrors` (view, in-plane and
    geodesic panels) or None; ``named``: extra arrays, e.g. ``view=err_deg``.
    """
    panels: list[tuple[str, np.ndarray]] = []
    if errors is not None:
        panels += [("view direction", errors.view_deg), ("in-plane", errors.in_plane_deg),
                   ("geodesic", errors.geodesic_deg)]
    panels += [(name.replace("_", " "), values) for name, values in named.items()]
    if not panels:
        raise ValueError("no errors given: pass a RotationErrors or arrays by name")
    fig = new_figure(figsize=(3.6 * len(panels), 3.0))
    for i, (name, values) in enumerate(panels):
        e = _numpy(values).astype(np.float64).reshape(-1)
        top = float(max_deg) if max_deg is not None else max(float(e.max()) if e.size else 1.0, 1.0)
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.hist(e, bins=bins, range=(0.0, top), color="C0")
        med = float(np.median(e)) if e.size else float("nan")
        ax.axvline(med, color="C3", lw=1.0, ls="--", label=f"median {med:.2f} deg")
        ax.set_xlabel(f"{name} error (deg)")
        ax.set_ylabel("images")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def view_error_map(rots, errors, n_lon: int = 24, n_lat: int = 12, statistic: str = "median",
                   min_count: int = 3, title: str | None = None, cmap: str = "magma"):
    """Mollweide map of a per-image error (n,) by view direction of ``rots`` (n, 3, 3):
    the median (or mean) error of the images in each equal-area cell (cells with fewer
    than ``min_count`` images left blank). Shows whether errors concentrate on some views
    (e.g. near a symmetry axis). The map and its colour bar (two axes)."""
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    e = _numpy(errors).astype(np.float64).reshape(-1)
    v = view_directions(rots)
    if len(v) != len(e):
        raise ValueError(f"{len(e)} errors for {len(v)} rotations")
    hist = view_histogram(rots, n_lon, n_lat)
    lon = np.arctan2(v[:, 1], v[:, 0])
    lat = np.arcsin(np.clip(v[:, 2], -1.0, 1.0))
    i_lat = np.clip(np.searchsorted(hist.lat_edges, lat, side="right") - 1, 0, n_lat - 1)
    i_lon = np.clip(np.searchsorted(hist.lon_edges, lon, side="right") - 1, 0, n_lon - 1)
    cell = i_lat * n_lon + i_lon
    stat = np.full(n_lat * n_lon, np.nan)
    for c in np.unique(cell):
        sel = e[cell == c]
        if sel.size >= min_count:
            stat[c] = np.median(sel) if statistic == "median" else sel.mean()
    fig = new_figure(figsize=(5.8, 3.6))
    ax = fig.add_subplot(1, 1, 1, projection="mollweide")
    mesh = ax.pcolormesh(hist.lon_edges, hist.lat_edges, np.ma.masked_invalid(stat.reshape(n_lat, n_lon)),
                         cmap=cmap, shading="flat")
    ax.set_xticklabels([])
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.set_title(title or f"{statistic} error per view direction ({len(e)} images)", fontsize=9)
    fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6, pad=0.06, label=f"{statistic} error (deg)")
    return fig


def binned_errors_plot(binned: dict, xlabel: str, ylabel: str = "error (deg)", title: str | None = None):
    """Median and interquartile range of errors per bin of another quantity, one line per
    entry of ``binned`` (label -> :class:`cryofire_nb.metrics.BinnedErrors`); one axes."""
    if not binned:
        raise ValueError("nothing to plot")
    fig = new_figure(figsize=(5.6, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, b) in enumerate(binned.items()):
        x = b.centres
        ax.plot(x, b.median, marker="o", ms=3, color=f"C{i % 10}", label=f"{label} (median)")
        ax.fill_between(x, b.q25, b.q75, color=f"C{i % 10}", alpha=0.2, lw=0)
    return finish_axes(fig, ax, xlabel, ylabel, title, legend=dict(fontsize=7, title="band: 25-75 %", title_fontsize=7))
