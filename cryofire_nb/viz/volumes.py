"""Figures of volumes: central slices, projections, a series of volumes (e.g. along a
latent traversal) and an interactive isosurface.

Volumes are real-space arrays (d, d, d) indexed ``[z, y, x]`` with the centre at index
d // 2 (cryoDRGN / RELION). Slices and projections are drawn as images with row 0 at the
top: the z-slice shows ``[y, x]``, the y-slice ``[z, x]`` and the x-slice ``[z, y]``.

Dimension letters: m volumes, d box.
"""

from __future__ import annotations

import math

import numpy as np

from ._figure import new_figure
from .images import _numpy

_PLANES = (("z", "x", "y"), ("y", "x", "z"), ("x", "y", "z"))  # (axis cut, horizontal, vertical)


def _volume(v, name: str = "volume") -> np.ndarray:
    v = _numpy(v).astype(np.float32)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise ValueError(f"{name} must be a cubic (d, d, d) array, got {v.shape}")
    return v


def _views(vol: np.ndarray, mode: str) -> list[np.ndarray]:
    """Three 2-D views along z, y, x: central slices or max / sum projections."""
    c = vol.shape[0] // 2
    if mode == "slice":
        return [vol[c], vol[:, c], vol[:, :, c]]
    if mode == "max":
        return [vol.max(axis=a) for a in range(3)]
    if mode == "sum":
        return [vol.sum(axis=a) for a in range(3)]
    raise ValueError(f"mode must be 'slice', 'max' or 'sum', got {mode!r}")


def _three_views(volume, mode: str, title: str | None, cmap: str):
    vol = _volume(volume)
    what = {"slice": "central slice", "max": "max projection", "sum": "projection"}[mode]
    fig = new_figure(figsize=(8.4, 3.0))
    for i, (img, (cut, h, v)) in enumerate(zip(_views(vol, mode), _PLANES)):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img, cmap=cmap)
        ax.set_title(f"{what} {'at' if mode == 'slice' else 'along'} {cut}", fontsize=8)
        ax.set_xlabel(h)
        ax.set_ylabel(v)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def volume_slices(volume, title: str | None = None, cmap: str = "gray"):
    """Three orthogonal central slices (z = d//2, y = d//2, x = d//2); three axes."""
    return _three_views(volume, "slice", title, cmap)


def volume_projections(volume, mode: str = "max", title: str | None = None, cmap: str = "gray"):
    """Projections along z, y and x (``mode`` 'max' = max intensity, 'sum'); three axes.
    The static stand-in for :func:`volume_isosurface`."""
    return _three_views(volume, mode, title, cmap)


def volume_series(volumes, titles=None, view: str = "slice", axis: str = "z", ncols: int | None = None,
                  cmap: str = "gray", panel_size_in: float = 1.6, suptitle: str | None = None,
                  colorbar: bool = False, colorbar_label: str | None = None):
    """One 2-D view of each of m volumes (m, d, d, d) (e.g. ``volumes_at(traversal, ...)``):
    the central slice or the 'max' / 'sum' projection across ``axis`` ('z', 'y' or 'x');
    one axes per volume, on a shared grey scale so changes along the series show
    (``colorbar``: draw that scale, labelled ``colorbar_label``)."""
    vols = _numpy(volumes).astype(np.float32)
    if vols.ndim != 4 or len(set(vols.shape[1:])) != 1:
        raise ValueError(f"volumes must be (m, d, d, d), got {vols.shape}")
    if axis not in ("z", "y", "x"):
        raise ValueError(f"axis must be 'z', 'y' or 'x', got {axis!r}")
    m = len(vols)
    if titles is not None and len(titles) != m:
        raise ValueError(f"{len(titles)} titles for {m} volumes")
    a = "zyx".index(axis)
    imgs = [_views(v, view)[a] for v in vols]
    vmin, vmax = float(min(i.min() for i in imgs)), float(max(i.max() for i in imgs))
    ncols = min(m, 10) if ncols is None else max(1, int(ncols))
    nrows = math.ceil(m / ncols)
    fig = new_figure(figsize=(panel_size_in * ncols, panel_size_in * nrows + (0.4 if suptitle else 0.0)))
    axes = []
    for i, img in enumerate(imgs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(i) if titles is None else str(titles[i]), fontsize=8)
        axes.append(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if colorbar:
        fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02, label=colorbar_label)
    return fig


def volume_isosurface(volume, level: float | None = None, pixel_size_angstrom: float = 1.0,
                      max_box: int = 32, color: str = "gold", title: str | None = None):
    """Interactive plotly isosurface (one ``go.Isosurface`` trace) at ``level``.

    ``level`` defaults to the 95th percentile of the voxel values (the densest 5 % of
    the box inside the surface). A volume larger than ``max_box`` is first Fourier-
    cropped to the largest even box <= ``max_box`` (the figure's size, and a notebook
    that stores it, grows as box^3: 32 -> ~0.5 MB). Axes in Angstrom, x y z as in the
    volume's ``[z, y, x]`` indexing.
    """
    import plotly.graph_objects as go

    vol = _volume(volume)
    d = vol.shape[0]
    voxel = float(pixel_size_angstrom)
    if d > max_box:
        import torch

        from ..fft import fourier_crop

        d_new = max_box - max_box % 2
        vol = fourier_crop(torch.from_numpy(vol).double(), d_new, ndim=3).float().numpy()
        voxel *= d / d_new
        d = d_new
    iso = float(np.quantile(vol, 0.95)) if level is None else float(level)
    r = ((np.arange(d) - d // 2) * voxel).astype(np.float32)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")  # each (d, d, d), [z, y, x]
    trace = go.Isosurface(x=xx.ravel(), y=yy.ravel(), z=zz.ravel(), value=vol.ravel(),
                          isomin=iso, isomax=float(vol.max()), surface_count=1, colorscale=[[0, color], [1, color]],
                          showscale=False, caps=dict(x_show=False, y_show=False, z_show=False))
    fig = go.Figure(trace)
    fig.update_layout(title=title or f"isosurface at {iso:.3g}", width=520, height=480,
                      margin=dict(l=0, r=0, t=40, b=0),
                      scene=dict(xaxis_title="x (A)", yaxis_title="y (A)", zaxis_title="z (A)", aspectmode="cube"))
    return fig


def isosurface_image(volume, level: float, axis: str = "z", upsample: int = 2,
                     light=(0.4, -0.5, 0.77)) -> np.ndarray:
    """A shaded picture of the isosurface ``volume >= level`` seen along ``axis``, (h, w)
    float in [0, 1] with NaN where the ray misses the surface (a static, headless stand-in
    for :func:`volume_isosurface`).

    The volume (d, d, d) ``[z, y, x]`` is first upsampled ``upsample`` times (cubic
    spline) for a smoother surface. Each ray runs from the high end of ``axis`` toward
    the low end (for 'z' the picture is ``[y, x]``, for 'y' ``[z, x]``, for 'x' ``[z, y]``,
    drawn with row 0 at the top like :func:`volume_slices`); the first crossing of
    ``level`` is found with sub-voxel (linear) precision, and the surface is lit by a
    Lambertian light from ``light`` (x, y, z of the picture: right, down, toward the
    viewer) plus 25 % ambient light.
    """
    from scipy import ndimage

    vol = _volume(volume).astype(np.float64)
    if axis not in ("z", "y", "x"):
        raise ValueError(f"axis must be 'z', 'y' or 'x', got {axis!r}")
    if upsample > 1:
        vol = ndimage.zoom(vol, upsample, order=3)
    v = np.moveaxis(vol, "zyx".index(axis), 0)[::-1]  # (depth, h, w), depth 0 nearest the viewer
    inside = v >= level
    hit = inside.any(0)  # (h, w)
    first = np.argmax(inside, axis=0)  # (h, w) first voxel inside along the ray
    prev = np.clip(first - 1, 0, None)
    a = np.take_along_axis(v, prev[None], 0)[0]
    b = np.take_along_axis(v, first[None], 0)[0]
    frac = np.where((first > 0) & (b > a), (level - a) / np.where(b > a, b - a, 1.0), 0.0)
    # normal = -grad(v) at the crossing (density falls outward), interpolated between the
    # two voxels; components (toward the viewer, down, right) -> picture (x right, y down, z out)
    g_depth, g_row, g_col = np.gradient(v)

    def at(g):
        ga = np.take_along_axis(g, prev[None], 0)[0]
        gb = np.take_along_axis(g, first[None], 0)[0]
        return ga + frac * (gb - ga)
    normal = np.stack([-at(g_col), -at(g_row), at(g_depth)], -1)  # depth grows away: z_out = -depth
    normal = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    lvec = np.asarray(light, dtype=np.float64)
    lvec = lvec / np.linalg.norm(lvec)
    shade = 0.25 + 0.75 * np.clip(normal @ lvec, 0.0, 1.0)
    return np.where(hit, shade, np.nan)


def volume_surfaces(volumes, level: float | None = None, titles=None, axes=("z", "x"),
                    panel_size_in: float = 1.5, suptitle: str | None = None, upsample: int = 2,
                    top_fraction: float = 0.05):
    """Shaded isosurface pictures (:func:`isosurface_image`) of m volumes (m, d, d, d),
    one row per viewing axis in ``axes`` and one column per volume; one axes per panel.

    ``level`` is shared by all volumes (so changes of size and shape show); by default
    the surface encloses the densest ``top_fraction`` of all voxels of all volumes
    together (set it near the molecule's share of the box; lower values hide noise).
    """
    import matplotlib

    vols = _numpy(volumes).astype(np.float32)
    if vols.ndim == 3:
        vols = vols[None]
    if vols.ndim != 4 or len(set(vols.shape[1:])) != 1:
        raise ValueError(f"volumes must be (m, d, d, d), got {vols.shape}")
    m = len(vols)
    if titles is not None and len(titles) != m:
        raise ValueError(f"{len(titles)} titles for {m} volumes")
    if not 0 < top_fraction < 1:
        raise ValueError(f"top_fraction must lie in (0, 1), got {top_fraction}")
    iso = float(np.quantile(vols, 1.0 - top_fraction)) if level is None else float(level)
    cmap = matplotlib.colormaps["bone"].with_extremes(bad="white")
    fig = new_figure(figsize=(panel_size_in * m, panel_size_in * len(axes) + (0.4 if suptitle else 0.0)))
    for r, axis in enumerate(axes):
        for i, vol in enumerate(vols):
            ax = fig.add_subplot(len(axes), m, r * m + i + 1)
            ax.imshow(isosurface_image(vol, iso, axis, upsample), cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(i) if titles is None else str(titles[i]), fontsize=8)
            if i == 0:
                ax.set_ylabel(f"along {axis}", fontsize=8)
    fig.suptitle((suptitle + "\n" if suptitle else "") + f"isosurface at {iso:.3g}", fontsize=9)
    fig.tight_layout()
    return fig
