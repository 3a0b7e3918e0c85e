"""Figures: types, axes/traces, the data they draw, headless PNG saving, the lasso callback."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from cryofire_nb import analysis as A
from cryofire_nb import viz as V
from cryofire_nb.errors import InputError
from cryofire_nb.rotations import random_rotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _saved_png(fig, path) -> bool:
    V.save_figure(fig, path)
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def _blob_volume(d=16, centre=(0.0, 0.0, 0.0)):
    r = torch.arange(d, dtype=torch.float32) - d // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    cx, cy, cz = centre
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / 8.0)


def _figures():
    """(name, factory, expected number of axes) for every static figure function."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 2))
    from cryofire_nb.fsc import fsc
    from cryofire_nb.metrics import rotation_errors

    vol = _blob_volume()
    rots = random_rotations(50, torch.Generator().manual_seed(0))
    history = [{"images_seen": 100 * i, "loss": 1.0 / (i + 1), "kl": 0.1} for i in range(10)]
    return [
        ("image_grid", lambda: V.image_grid(rng.normal(size=(5, 12, 12)), titles=list("abcde"), ncols=3), 5),
        ("ctf_profiles", lambda: V.ctf_profiles([1e4, 2e4, 3e4]), 1),
        ("ctf_image", lambda: V.ctf_image(32, 2.0, 15000, 12000, 30.0), 2),
        ("volume_slices", lambda: V.volume_slices(vol), 3),
        ("volume_projections", lambda: V.volume_projections(vol, mode="sum"), 3),
        ("volume_series", lambda: V.volume_series(torch.stack([vol] * 4), axis="y"), 4),
        ("latent_scatter", lambda: V.latent_scatter(pts), 1),
        ("latent_scatter_colour", lambda: V.latent_scatter(pts, color=pts[:, 0], color_label="x"), 2),
        ("density_plot", lambda: V.density_plot(A.density_grid(pts, bins=16), points=pts, log=True), 2),
        ("view_distribution", lambda: V.view_distribution(rots), 2),
        ("view_distribution_pair", lambda: V.view_distribution(rots, reference=rots), 4),
        ("angular_errors", lambda: V.angular_error_histograms(rotation_errors(rots, rots)), 3),
        ("fsc_curves", lambda: V.fsc_curves(fsc(vol, vol + 0.1 * torch.randn(16, 16, 16))), 1),
        ("training_curves", lambda: V.training_curves(history, keys=("loss", "kl")), 1),
        ("training_curves_separate", lambda: V.training_curves(history, keys=("loss", "kl"), separate=True), 2),
    ]


@pytest.mark.parametrize("name,factory,n_axes", _figures(), ids=[f[0] for f in _figures()])
def test_figure_type_axes_and_png(name, factory, n_axes, out_dir):
    fig = factory()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    assert _saved_png(fig, out_dir / f"{name}.png")


def test_save_figure_rejects_unknown_format(out_dir):
    with pytest.raises(InputError, match="name the file"):
        V.save_figure(V.image_grid(np.ones((1, 4, 4))), out_dir / "fig.xyz")
    assert list(out_dir.iterdir()) == []


def test_figures_are_detached_from_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    V.volume_slices(_blob_volume(8))
    assert plt.get_fignums() == before  # nothing left open for a notebook to auto-display


def test_headless_with_gui_backend_requested(tmp_path):
    """A GUI backend asked for without a display falls back to Agg and still saves PNG."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    out = tmp_path / "x.png"
    code = ("import matplotlib; matplotlib.use('TkAgg'); import numpy as np; from cryofire_nb import viz; "
            f"viz.save_figure(viz.image_grid(np.ones((2, 4, 4))), {str(out)!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert out.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- content


def test_image_grid_titles_and_data():
    imgs = np.random.default_rng(1).normal(size=(3, 6, 6))
    fig = V.image_grid(imgs, titles=["p0", "p1", "p2"])
    assert [ax.get_title() for ax in fig.axes] == ["p0", "p1", "p2"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), imgs[1], rtol=1e-6)


def test_ctf_2d_centre_and_profile():
    w = 0.1
    ctf = V.ctf_2d(64, 1.5, 20000, 20000, 0.0, 300.0, 2.7, w)
    assert ctf.shape == (64, 64)
    assert ctf[32, 32] == pytest.approx(-w)  # zero frequency at index d // 2
    np.testing.assert_allclose(ctf, ctf.T, atol=1e-12)  # no astigmatism: symmetric in kx, ky
    fig = V.ctf_profiles([20000], pixel_size_angstrom=1.5, amplitude_contrast=w)
    line = fig.axes[0].lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    assert y[0] == pytest.approx(-w) and x[-1] == pytest.approx(0.5 / 1.5)
    # the profile along kx equals the 2-D CTF's centre row at the lattice frequencies
    k = (np.arange(32, 64) - 32) / (64 * 1.5)
    np.testing.assert_allclose(np.interp(k, x, y), ctf[32, 32:], atol=0.05)


def test_ctf_2d_astigmatism_axis():
    """The defocus angle rotates the pattern: dfU lies along the angle, so a 90 deg turn
    swaps the kx and ky axes."""
    a = V.ctf_2d(48, 2.0, 25000, 15000, 0.0)
    b = V.ctf_2d(48, 2.0, 25000, 15000, 90.0)
    assert not np.allclose(a, a.T, atol=1e-3)
    # at angle 0 the larger defocus (dfU) is along kx: its first zero comes sooner than along ky
    first_zero = lambda v: int(np.flatnonzero(np.diff(np.sign(v)) != 0)[0])  # noqa: E731
    assert first_zero(a[24, 24:]) < first_zero(a[24:, 24])
    np.testing.assert_allclose(a, b.T, atol=1e-6)


def test_volume_slices_and_projections_show_the_right_planes():
    vol = _blob_volume(16, centre=(3.0, -2.0, 1.0)).numpy()  # off-centre in x, y, z
    fig = V.volume_slices(vol)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), vol[8], rtol=1e-6)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), vol[:, 8], rtol=1e-6)
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), vol[:, :, 8], rtol=1e-6)
    mip = V.volume_projections(vol, mode="max").axes[0].images[0].get_array()
    np.testing.assert_allclose(mip, vol.max(axis=0), rtol=1e-6)
    row, col = np.unravel_index(np.argmax(mip), mip.shape)
    assert (row, col) == (8 - 2, 8 + 3)  # [y, x] of the blob centre


def test_volume_isosurface_plotly(out_dir):
    import plotly.graph_objects as go

    vol = _blob_volume(16)
    fig = V.volume_isosurface(vol, pixel_size_angstrom=2.0)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    trace = fig.data[0]
    assert isinstance(trace, go.Isosurface) and len(trace.value) == 16 ** 3
    assert trace.isomin == pytest.approx(float(np.quantile(vol.numpy(), 0.95)), rel=1e-6)
    assert float(np.max(trace.x)) == pytest.approx(7 * 2.0)
    big = V.volume_isosurface(_blob_volume(40), max_box=20, level=0.5)
    assert len(big.data[0].value) == 20 ** 3 and big.data[0].isomin == 0.5
    assert V.save_figure(fig, out_dir / "iso.html").stat().st_size > 1000
    with pytest.raises(InputError, match="plotly"):
        V.save_figure(fig, out_dir / "iso.png")
    assert not (out_dir / "iso.png").exists()


def test_latent_scatter_categorical_legend_and_highlight():
    pts = np.random.default_rng(2).normal(size=(90, 2))
    labels = np.repeat([0, 1, 2], 30)
    fig = V.latent_scatter(pts, color=labels, highlight=[0, 5], annotate=np.zeros((4, 2)))
    ax = fig.axes[0]
    assert len(fig.axes) == 1  # legend, no colour bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    assert len(ax.texts) == 4  # annotations 0..3
    np.testing.assert_allclose(ax.collections[3].get_offsets(), pts[[0, 5]])


def test_view_histogram_equal_area_and_third_row():
    rots = random_rotations(40000, torch.Generator().manual_seed(3))
    hist = V.view_histogram(rots, n_lon=12, n_lat=6)
    assert hist.counts.shape == (6, 12) and hist.counts.sum() == 40000
    # uniform views fill equal-area cells equally (Poisson: sd ~ sqrt(555) ~ 24)
    assert np.abs(hist.counts - 40000 / 72).max() < 6 * np.sqrt(40000 / 72)
    # the view direction is the third row: identity -> north pole row; a 90 deg turn about
    # x puts R[2] = (0, 1, 0): equator, longitude +90 deg
    up = V.view_histogram(torch.eye(3)[None].repeat(5, 1, 1), n_lon=35, n_lat=17)
    assert up.counts[16].sum() == 5
    rx = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])[None]
    side = V.view_histogram(rx, n_lon=35, n_lat=17)
    assert side.counts[8, 26] == 1  # lat index of 0 rad, lon index of +pi/2 for 35 bins
    fig = V.view_distribution(rots[:100], reference=rots[:50], labels=("pred", "ref"))
    assert fig.axes[0].name == "mollweide" and "pred" in fig.axes[0].get_title()


def test_angular_error_histograms_median_and_named():
    from cryofire_nb.metrics import rotation_errors

    g = torch.Generator().manual_seed(4)
    r = random_rotations(200, g, dtype=torch.float64)
    errs = rotation_errors(r, random_rotations(200, g, dtype=torch.float64))
    fig = V.angular_error_histograms(errs, extra_deg=np.arange(10.0))
    assert len(fig.axes) == 4
    assert fig.axes[0].lines[0].get_xdata()[0] == pytest.approx(np.median(errs.view_deg))
    assert fig.axes[3].lines[0].get_xdata()[0] == pytest.approx(4.5)
    with pytest.raises(ValueError):
        V.angular_error_histograms()


def test_fsc_curves_lines_and_units():
    from cryofire_nb.fsc import fsc

    vol = _blob_volume(16)
    res = fsc(vol, vol + 0.2 * torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(0)),
              pixel_size_angstrom=2.0)
    fig = V.fsc_curves([res, (np.linspace(0, 0.25, 9), np.linspace(1, 0, 9))], labels=["a", "b"])
    ax = fig.axes[0]
    ys = sorted(line.get_ydata()[0] for line in ax.lines if len(set(line.get_ydata())) == 1)
    assert ys == pytest.approx([0.143, 0.5])
    assert "1/Angstrom" in ax.get_xlabel()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), res.frequency_per_angstrom.numpy())
    fig_px = V.fsc_curves(fsc(vol, vol))
    assert "cycles/pixel" in fig_px.axes[0].get_xlabel()


def test_training_curves_skip_missing_values():
    hist = {"train": [{"images_seen": i, "loss": 1.0 + i, "kl": None if i % 2 else 0.5} for i in range(6)]}
    fig = V.training_curves(hist, keys=("loss", "kl"))
    lines = fig.axes[0].lines
    assert len(lines[0].get_xdata()) == 6 and len(lines[1].get_xdata()) == 3
    assert fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="no \\['nope'\\]"):
        V.training_curves(hist, keys=("nope",))


# --------------------------------------------------------------------------- selection


class _Points:  # what plotly passes: point_inds are rows of the trace's data
    def __init__(self, inds):
        self.point_inds = inds


def test_selection_handler_passes_sorted_indices():
    got = []
    V.selection_handler(got.append)(None, _Points([9, 2, 4]), None)
    assert got[0].dtype == np.int64
    np.testing.assert_array_equal(got[0], [2, 4, 9])


def test_selectable_scatter_callback_gets_lasso_indices():
    pytest.importorskip("anywidget")
    import plotly.graph_objects as go
    from plotly.callbacks import LassoSelector, Points

    pts = np.random.default_rng(5).normal(size=(40, 2))
    got = []
    widget = V.make_selectable_scatter(pts, got.append, color=pts[:, 0])
    assert isinstance(widget, go.FigureWidget) and len(widget.data) == 1
    assert widget.layout.dragmode == "lasso"
    np.testing.assert_allclose(np.asarray(widget.data[0].x), pts[:, 0])
    # what the front end does on a lasso: dispatch the selected rows to the trace
    square = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    inside = A.indices_in_polygon(pts, square)
    points = Points(point_inds=inside[::-1].tolist(), xs=pts[inside, 0].tolist(), ys=pts[inside, 1].tolist(),
                    trace_name="", trace_index=0)
    lasso = LassoSelector(xs=[p[0] for p in square], ys=[p[1] for p in square])
    widget.data[0]._dispatch_on_selection(points, lasso)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0], inside)


def test_scree_confounder_and_outlier_figures(out_dir):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 3)) * np.array([3.0, 1.0, 0.3])
    res = A.pca(z)
    fig = V.scree_plot(res)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    bars = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(bars, res.explained_variance_ratio)
    fig = V.confounder_plot(res.coords[:, 0], {"defocus (um)": rng.uniform(1, 2, 200), "tilt (deg)": rng.uniform(0, 180, 200)})
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "defocus (um)"
    fig = V.outlier_histogram(A.latent_outliers(z))
    assert len(fig.axes) == 1 and _saved_png(fig, out_dir / "outliers.png")


def test_image_grid_and_volume_series_colour_bar():
    imgs = np.random.default_rng(0).normal(size=(3, 8, 8))
    fig = V.image_grid(imgs, colorbar=True, colorbar_label="intensity")
    assert len(fig.axes) == 4 and fig.axes[-1].get_ylabel() == "intensity"
    lims = {tuple(ax.images[0].get_clim()) for ax in fig.axes[:3]}
    assert len(lims) == 1  # one shared scale under one bar
    assert len(V.image_grid(imgs).axes) == 3
    vols = np.random.default_rng(1).normal(size=(2, 8, 8, 8))
    assert len(V.volume_series(vols, colorbar=True).axes) == 3
