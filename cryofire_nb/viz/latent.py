"""Figures of the latent space: a static scatter coloured by a value, the density of
particles on a grid, and an interactive scatter whose lasso selection calls back.

Points are 2-D coordinates (n, 2), e.g. ``analysis.pca(z).coords[:, :2]`` or a UMAP
embedding; row i is particle i. The interactive scatter is an extra on top of the static
one: in a notebook run headless (CI), draw :func:`latent_scatter` and select with
:func:`cryofire_nb.analysis.indices_in_polygon`.

Dimension letters: n particles, m highlighted / annotated points.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._figure import finish_axes, new_figure
from .images import _numpy


def _points(points) -> np.ndarray:
    p = _numpy(points).astype(np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be (n, 2), got {p.shape}")
    return p


def _is_categorical(values: np.ndarray, categorical: bool | None) -> bool:
    if categorical is not None:
        return categorical
    return (np.issubdtype(values.dtype, np.integer) or values.dtype == bool) and len(np.unique(values)) <= 20


def latent_scatter(points, color=None, color_label: str | None = None, categorical: bool | None = None,
                   title: str | None = None, xlabel: str = "PC1", ylabel: str = "PC2",
                   marker_size: float | None = None, alpha: float = 0.6, cmap: str = "viridis",
                   highlight=None, annotate=None):
    """Static scatter of ``points`` (n, 2).

    color: (n,) values; integers with <= 20 distinct values (or ``categorical=True``) get
    one colour each and a legend, other values a colour map and a colour bar (a second
    axes). highlight: indices drawn as red rings (e.g. a selection). annotate: (m, 2)
    points labelled 0 .. m-1 (e.g. k-means centres mapped to the same 2-D view).
    """
    p = _points(points)
    n = len(p)
    size = marker_size if marker_size is not None else float(np.clip(3000.0 / max(n, 1), 0.5, 12.0))
    fig = new_figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if color is None:
        ax.scatter(p[:, 0], p[:, 1], s=size, alpha=alpha, color="C0", linewidths=0, rasterized=n > 5000)
    else:
        c = _numpy(color).reshape(-1)
        if len(c) != n:
            raise ValueError(f"color has {len(c)} values for {n} points")
        if _is_categorical(c, categorical):
            for j, value in enumerate(np.unique(c)):
                sel = c == value
                ax.scatter(p[sel, 0], p[sel, 1], s=size, alpha=alpha, color=f"C{j % 10}", linewidths=0,
                           label=str(value), rasterized=n > 5000)
            ax.legend(title=color_label, fontsize=7, markerscale=max(1.0, 12.0 / size) ** 0.5)
        else:
            sc = ax.scatter(p[:, 0], p[:, 1], c=c.astype(np.float64), s=size, alpha=alpha, cmap=cmap,
                            linewidths=0, rasterized=n > 5000)
            fig.colorbar(sc, ax=ax, label=color_label)
    if highlight is not None:
        h = np.asarray(highlight, dtype=np.int64).reshape(-1)
        ax.scatter(p[h, 0], p[h, 1], s=size * 4, facecolors="none", edgecolors="red", linewidths=0.8,
                   label="selected")
    if annotate is not None:
        a = _points(annotate)
        ax.scatter(a[:, 0], a[:, 1], s=30, color="black", marker="x")
        for j, (x, y) in enumerate(a):
            ax.annotate(str(j), (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    return finish_axes(fig, ax, xlabel, ylabel, title)


def density_plot(grid, points=None, log: bool = False, title: str | None = None,
                 xlabel: str = "PC1", ylabel: str = "PC2", cmap: str = "magma"):
    """Image of a :class:`cryofire_nb.analysis.DensityGrid` (log10 of the density when
    ``log``), optionally with the points (n, 2) over it; the image and its colour bar."""
    dens = np.asarray(grid.density, dtype=np.float64)
    if log:
        positive = dens[dens > 0]
        floor = positive.min() if positive.size else 1.0
        dens = np.log10(np.maximum(dens, floor))
    fig = new_figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(dens, origin="lower", extent=grid.extent, aspect="auto", cmap=cmap)
    if points is not None:
        p = _points(points)
        ax.scatter(p[:, 0], p[:, 1], s=1, color="white", alpha=0.3, linewidths=0, rasterized=len(p) > 5000)
    fig.colorbar(im, ax=ax, label=("log10 " if log else "") + f"density ({grid.method})")
    return finish_axes(fig, ax, xlabel, ylabel, title)


def selection_handler(on_select: Callable[[np.ndarray], object]) -> Callable:
    """Adapter from plotly's ``on_selection(trace, points, selector)`` to
    ``on_select(indices (m,) int64)`` (rows of the plotted points, sorted)."""

    def handler(trace, points, selector) -> None:
        on_select(np.sort(np.asarray(points.point_inds, dtype=np.int64)))

    return handler


def make_selectable_scatter(points, on_select: Callable[[np.ndarray], object], color=None,
                            color_label: str | None = None, xlabel: str = "PC1", ylabel: str = "PC2",
                            title: str | None = None, marker_size: float = 4.0, webgl: bool | None = None):
    """Interactive plotly ``go.FigureWidget`` scatter of ``points`` (n, 2), lasso mode.

    Each lasso or box selection calls ``on_select(indices)`` with the sorted int64 rows
    of ``points`` selected (particle indices when the points are z's rows). Needs a live
    Jupyter kernel and anywidget; raises ImportError naming the fix otherwise.
    ``webgl``: draw with ``Scattergl`` (fast for many points, needs WebGL in the browser)
    or ``Scatter`` (SVG, renders everywhere); default WebGL above 10,000 points.
    """
    import plotly.graph_objects as go

    p = _points(points)
    marker = dict(size=marker_size, opacity=0.7)
    if color is not None:
        c = _numpy(color).reshape(-1).astype(np.float64)
        if len(c) != len(p):
            raise ValueError(f"color has {len(c)} values for {len(p)} points")
        marker.update(color=c, colorscale="Viridis", showscale=True, colorbar=dict(title=color_label or ""))
    use_gl = len(p) > 10_000 if webgl is None else bool(webgl)
    trace = go.Scattergl if use_gl else go.Scatter
    scatter = trace(x=p[:, 0], y=p[:, 1], mode="markers", marker=marker,
                           hovertemplate="particle %{pointNumber}<extra></extra>")
    try:
        widget = go.FigureWidget(data=[scatter])
    except ImportError as err:
        raise ImportError(f"the interactive scatter needs anywidget ({err}). Fix: `pip install anywidget`, "
                          "or draw latent_scatter() and select with analysis.indices_in_polygon()") from err
    widget.update_layout(dragmode="lasso", title=title, xaxis_title=xlabel, yaxis_title=ylabel,
                         width=560, height=480, margin=dict(l=40, r=10, t=40, b=40))
    widget.data[0].on_selection(selection_handler(on_select))
    return widget


def pc1_histogram(pc1, labels, thresholds=None, bins: int = 60, title: str | None = None,
                  xlabel: str = "PC1 of z", label_name: str = "true state"):
    """Histograms of PC1 (n,) per true class (``labels`` (n,)), overlaid, with the class
    boundaries ``thresholds`` (e.g. ``ConfusionResult.thresholds``) as dashed lines; one axes."""
    x = _numpy(pc1).astype(np.float64).reshape(-1)
    lab = _numpy(labels).reshape(-1)
    if len(lab) != len(x):
        raise ValueError(f"{len(lab)} labels for {len(x)} PC1 values")
    edges = np.histogram_bin_edges(x, bins=bins)
    fig = new_figure(figsize=(5.6, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for j, value in enumerate(np.unique(lab)):
        sel = lab == value
        ax.hist(x[sel], bins=edges, alpha=0.55, color=f"C{j % 10}", label=f"{label_name} {value} ({sel.sum()})")
    for k, t in enumerate(() if thresholds is None else thresholds):
        if np.isfinite(t):
            ax.axvline(t, color="k", ls="--", lw=1.0, label="threshold" if k == 0 else None)
    return finish_axes(fig, ax, xlabel, "images", title, legend=dict(fontsize=7))


def scree_plot(pca_result, title: str | None = None):
    """Explained variance of each principal component (bars) and its running total (line)
    of a :class:`cryofire_nb.analysis.PCAResult`: how many directions of z carry signal."""
    ratio = np.asarray(pca_result.explained_variance_ratio, dtype=np.float64)
    x = np.arange(1, len(ratio) + 1)
    fig = new_figure(figsize=(4.6, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, ratio, color="C0", label="per component")
    ax.plot(x, np.cumsum(ratio), "o-", color="C1", label="cumulative")
    ax.set_xticks(x)
    ax.set_ylim(0, 1.05)
    return finish_axes(fig, ax, "principal component", "fraction of the variance of z", title,
                       legend=dict(fontsize=8, loc="center right"))


def confounder_plot(values, covariates: dict, value_label: str = "PC1", max_points: int = 3000, seed: int = 0,
                    title: str | None = None):
    """One panel per nuisance variable ({name: (n,)}, e.g. defocus, view tilt, shift
    length): the latent coordinate ``values`` (n,) against it, with the Spearman
    correlation in the panel title. A clear trend means z follows imaging conditions."""
    from scipy.stats import spearmanr

    y = _numpy(values).astype(np.float64).reshape(-1)
    names = list(covariates)
    fig = new_figure(figsize=(3.2 * max(len(names), 1), 3.0))
    show = np.arange(len(y))
    if len(y) > max_points:
        show = np.sort(np.random.default_rng(seed).choice(len(y), max_points, replace=False))
    for i, name in enumerate(names):
        x = np.asarray(covariates[name], dtype=np.float64).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"covariate {name!r} has {len(x)} values for {len(y)} particles")
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.scatter(x[show], y[show], s=2, alpha=0.4, color="C0", linewidths=0, rasterized=len(show) > 5000)
        rho = spearmanr(x, y).statistic if np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0
        ax.set_title(f"Spearman {rho:+.2f}", fontsize=9)
        ax.set_xlabel(name)
        if i == 0:
            ax.set_ylabel(value_label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def outlier_histogram(outliers, bins: int = 60, title: str | None = None):
    """Histogram of the outlier scores of :func:`cryofire_nb.analysis.latent_outliers`
    (log count), with the threshold drawn and the number flagged in the legend."""
    score = np.asarray(outliers.score, dtype=np.float64)
    fig = new_figure(figsize=(4.8, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(score, bins=bins, color="C0", log=True)
    ax.axvline(outliers.threshold, color="C3", ls="--",
               label=f"threshold {outliers.threshold:g}: {outliers.n_flagged} flagged")
    return finish_axes(fig, ax, "mean distance to nearest neighbours in z (x median)", "particles",
                       title, legend=dict(fontsize=8))
