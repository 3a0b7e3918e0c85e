"""Low-dimensional views of the latent codes z: PCA, UMAP, k-means, Gaussian mixtures
and the density of particles on a 2-D grid.

Dimension letters: n particles, k latent dimension, c principal components, K clusters,
gx / gy grid cells along x / y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def as_latents(z, name: str = "z") -> np.ndarray:
    """z as a float64 (n, k) numpy array; accepts numpy, torch or :class:`io.Latents`."""
    if hasattr(z, "mu"):  # cryofire_nb.io.Latents: use the means
        z = z.mu
    if hasattr(z, "detach"):
        z = z.detach().cpu().numpy()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1:
        raise InputError(None, f"{name} has shape {z.shape}, expected (n, k) with n >= 2 and k >= 1",
                         "pass one latent vector per particle")
    if not np.isfinite(z).all():
        raise InputError(None, f"{name} contains NaN or infinite values", "check the latents file")
    return z


def _points2d(points, name: str = "points") -> np.ndarray:
    p = as_latents(points, name)
    if p.shape[1] != 2:
        raise InputError(None, f"{name} has shape {p.shape}, expected (n, 2)",
                         "pass 2-D coordinates, e.g. pca(z).coords[:, :2]")
    return p


# --------------------------------------------------------------------------- PCA


@dataclass(frozen=True)
class PCAResult:
    """Principal components of z.

    components: (c, k) unit loading vectors, rows ordered by decreasing variance; the
    sign of each is fixed so that its largest-magnitude entry is positive (as
    :func:`cryofire_nb.metrics.pca_pc1`). explained_variance: (c,) variance of z along
    each (denominator n - 1); explained_variance_ratio: (c,) its share of the total
    variance of z. mean: (k,) mean of z. coords: (n, c) projections of the centred z.
    """

    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    coords: np.ndarray

    def transform(self, z) -> np.ndarray:
        """Coordinates (n, c) of new latent vectors z (n, k)."""
        return (as_latents(z) - self.mean) @ self.components.T

    def to_z(self, coords) -> np.ndarray:
        """Latent vectors (m, k) at PC coordinates (m, c') with c' <= c (missing PCs = 0)."""
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        c = coords.shape[1]
        if c > len(self.components):
            raise ValueError(f"{c} coordinates given for {len(self.components)} components")
        return self.mean + coords @ self.components[:c]


def pca(z, n_components: int | None = None) -> PCAResult:
    """PCA of z (n, k) by SVD of the centred data; ``n_components`` defaults to min(n, k)."""
    z = as_latents(z)
    n, k = z.shape
    c = min(n, k) if n_components is None else int(n_components)
    if not 1 <= c <= min(n, k):
        raise InputError(None, f"n_components={c} is out of range for z of shape {z.shape}",
                         f"choose 1 .. {min(n, k)}")
    mean = z.mean(0)
    zc = z - mean  # (n, k)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)  # vt (min(n, k), k)
    vt = vt[:c]
    signs = np.sign(vt[np.arange(c), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    var = s ** 2 / (n - 1)
    total = float(var.sum())
    ratio = var[:c] / total if total > 0 else np.full(c, 1.0 / c)
    return PCAResult(vt, var[:c], ratio, mean, zc @ vt.T)


# --------------------------------------------------------------------------- UMAP


class UmapUnavailableError(ImportError):
    """umap-learn cannot be imported."""


@dataclass(frozen=True)
class UmapResult:
    """2-D UMAP embedding (n, 2) float32 and the settings that made it."""

    embedding: np.ndarray
    n_neighbors: int
    min_dist: float
    seed: int


def umap_embedding(z, n_neighbors: int = 10, min_dist: float = 0.1, seed: int = 0) -> UmapResult:
    """UMAP of z (n, k) to 2-D, seeded (single-threaded, so reproducible).

    ``n_neighbors`` is clipped to n - 1. The first call in a process spends tens of
    seconds compiling umap's numba code. Raises :class:`UmapUnavailableError` when
    umap-learn is not installed (use ``pca(z).coords[:, :2]`` instead).
    """
    z = as_latents(z)
    try:
        import umap
    except ImportError as err:
        raise UmapUnavailableError(
            f"UMAP needs the umap-learn package, which cannot be imported ({err}). "
            "Fix: `pip install umap-learn`, or use the PCA view pca(z).coords[:, :2]") from err
    nn = int(max(2, min(n_neighbors, len(z) - 1)))
    reducer = umap.UMAP(n_components=2, n_neighbors=nn, min_dist=min_dist, random_state=seed, n_jobs=1)
    emb = reducer.fit_transform(z.astype(np.float32))  # (n, 2)
    return UmapResult(np.asarray(emb, dtype=np.float32), nn, float(min_dist), int(seed))


# --------------------------------------------------------------------------- k-means


@dataclass(frozen=True)
class KMeansResult:
    """k-means clusters of z.

    labels: (n,) int64 cluster of each particle; centres: (K, k) cluster centres in z
    space; nearest_indices: (K,) int64 particle whose z is nearest each centre (an
    on-data point, as cryoDRGN's ``analyze`` uses for its volumes); counts: (K,) particles
    per cluster; inertia: sum of squared distances to the centres.
    """

    labels: np.ndarray
    centres: np.ndarray
    nearest_indices: np.ndarray
    counts: np.ndarray
    inertia: float


def nearest_points(z, targets) -> np.ndarray:
    """Index (m,) int64 of the row of z (n, k) nearest each target (m, k) (Euclidean)."""
    z, t = as_latents(z), np.atleast_2d(np.asarray(targets, dtype=np.float64))
    d2 = (t * t).sum(1)[:, None] - 2 * t @ z.T + (z * z).sum(1)[None, :]  # (m, n)
    return np.argmin(d2, axis=1).astype(np.int64)


def kmeans(z, n_clusters: int = 20, seed: int = 0, n_init: int = 10) -> KMeansResult:
    """k-means (scikit-learn, seeded) of z (n, k) into ``n_clusters`` clusters."""
    from sklearn.cluster import KMeans

    z = as_latents(z)
    if not 1 <= n_clusters <= len(z):
        raise InputError(None, f"n_clusters={n_clusters} for {len(z)} particles",
                         f"choose 1 .. {len(z)} clusters")
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit(z)
    labels = km.labels_.astype(np.int64)
    centres = np.asarray(km.cluster_centers_, dtype=np.float64)  # (K, k)
    return KMeansResult(labels, centres, nearest_points(z, centres),
                        np.bincount(labels, minlength=n_clusters).astype(np.int64), float(km.inertia_))


@dataclass(frozen=True)
class GMMResult:
    """Gaussian mixture model of z.

    labels: (n,) int64 most probable component of each particle; probabilities: (n, K)
    posterior responsibilities; means: (K, k) component means in z space;
    nearest_indices: (K,) int64 particle whose z is nearest each mean; weights: (K,)
    mixing fractions; bic: Bayesian information criterion of the fit (lower is better:
    compare fits with different K).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    means: np.ndarray
    nearest_indices: np.ndarray
    weights: np.ndarray
    bic: float


def gmm(z, n_components: int = 2, seed: int = 0, covariance_type: str = "full", n_init: int = 3) -> GMMResult:
    """Gaussian mixture (scikit-learn ``GaussianMixture``, seeded, k-means initialised)
    of z (n, k) with ``n_components`` components. Unlike k-means, components may have
    different sizes and shapes (``covariance_type`` 'full', 'diag', 'tied', 'spherical')."""
    from sklearn.mixture import GaussianMixture

    z = as_latents(z)
    if not 1 <= n_components <= len(z):
        raise InputError(None, f"n_components={n_components} for {len(z)} particles",
                         f"choose 1 .. {len(z)} components")
    model = GaussianMixture(n_components=n_components, covariance_type=covariance_type, random_state=seed,
                            n_init=n_init).fit(z)
    prob = model.predict_proba(z)  # (n, K)
    means = np.asarray(model.means_, dtype=np.float64)
    return GMMResult(prob.argmax(1).astype(np.int64), prob, means, nearest_points(z, means),
                     np.asarray(model.weights_, dtype=np.float64), float(model.bic(z)))


# --------------------------------------------------------------------------- density


@dataclass(frozen=True)
class DensityGrid:
    """Density of particles on a regular 2-D grid.

    density: (gy, gx) indexed ``[y, x]`` (as an image: ``imshow(density, origin='lower',
    extent=grid.extent)``), normalised to integrate to 1 over the whole plane (a
    histogram counts only points inside the grid); x_edges (gx + 1,), y_edges (gy + 1,);
    method: 'hist' or 'kde'.
    """

    density: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray
    method: str

    @property
    def x_centres(self) -> np.ndarray:
        return 0.5 * (self.x_edges[1:] + self.x_edges[:-1])

    @property
    def y_centres(self) -> np.ndarray:
        return 0.5 * (self.y_edges[1:] + self.y_edges[:-1])

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) for matplotlib's ``imshow``."""
        return (float(self.x_edges[0]), float(self.x_edges[-1]), float(self.y_edges[0]), float(self.y_edges[-1]))


def density_grid(points2d, bins: int = 64, method: str = "hist", extent=None,
                 bandwidth: float | str | None = None) -> DensityGrid:
    """Density of ``points2d`` (n, 2), e.g. ``pca(z).coords[:, :2]``, on a bins x bins grid.

    method 'hist': 2-D histogram; 'kde': Gaussian kernel density (scipy, ``bandwidth``
    as scipy's ``bw_method``: None = Scott's rule) at the cell centres. ``extent``
    (x_min, x_max, y_min, y_max) defaults to the data range padded by 5 %.
    """
    p = _points2d(points2d)
    if method not in ("hist", "kde"):
        raise ValueError(f"method must be 'hist' or 'kde', got {method!r}")
    if extent is None:
        lo, hi = p.min(0), p.max(0)
        pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    x_edges = np.linspace(extent[0], extent[1], bins + 1)
    y_edges = np.linspace(extent[2], extent[3], bins + 1)
    if method == "hist":
        counts, _, _ = np.histogram2d(p[:, 1], p[:, 0], bins=(y_edges, x_edges))  # (gy, gx)
        area = (x_edges[1] - x_edges[0]) * (y_edges[1] - y_edges[0])
        density = counts / (len(p) * area)
    else:
        from scipy.stats import gaussian_kde

        kde = gaussian_kde(p.T, bw_method=bandwidth)
        xc, yc = 0.5 * (x_edges[1:] + x_edges[:-1]), 0.5 * (y_edges[1:] + y_edges[:-1])
        gx, gy = np.meshgrid(xc, yc)  # (gy, gx)
        density = kde(np.stack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    return DensityGrid(density, x_edges, y_edges, method)
