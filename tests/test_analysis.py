"""Latent-space analysis: PCA, UMAP, k-means, density, traversals, volumes, selections."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cryofire_nb import analysis as A
from cryofire_nb.errors import InputError
from cryofire_nb.io import read_cs, read_indices, read_star


def _line_data(n=400, k=6, seed=0):
    """z spread mostly along one random unit direction u (std 5) plus small noise."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=k)
    u /= np.linalg.norm(u)
    t = rng.normal(size=n) * 5.0
    z = 1.5 + t[:, None] * u + 0.3 * rng.normal(size=(n, k))
    return z, u, t


def _blobs(seed=0, n_per=60):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 3.0]])
    z = np.concatenate([m + 0.5 * rng.normal(size=(n_per, 3)) for m in means])
    return z, np.repeat(np.arange(3), n_per), means


# --------------------------------------------------------------------------- PCA


def test_pca_recovers_dominant_direction_and_round_trips():
    z, u, _ = _line_data()
    res = A.pca(z)
    assert res.components.shape == (6, 6) and res.coords.shape == (400, 6)
    assert abs(res.components[0] @ u) > 0.995
    assert res.explained_variance_ratio[0] > 0.9
    assert np.all(np.diff(res.explained_variance) <= 1e-12)
    assert res.explained_variance_ratio.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(res.transform(z), res.coords, atol=1e-10)
    np.testing.assert_allclose(res.to_z(res.coords), z, atol=1e-10)  # all components: exact
    # sign convention: each loading's largest-magnitude entry is positive
    assert np.all(res.components[np.arange(6), np.abs(res.components).argmax(1)] > 0)


def test_pca_agrees_with_metrics_pc1_and_accepts_torch():
    from cryofire_nb.metrics import pca_pc1

    z, _, _ = _line_data(seed=3)
    res = A.pca(torch.tensor(z, dtype=torch.float64), n_components=2)
    ref = pca_pc1(z)
    assert res.components.shape == (2, 6)
    np.testing.assert_allclose(res.components[0], ref.loading, atol=1e-8)
    np.testing.assert_allclose(res.coords[:, 0], ref.scores, atol=1e-8)
    assert res.explained_variance_ratio[0] == pytest.approx(ref.explained_variance_ratio, rel=1e-8)


def test_pca_rejects_bad_input():
    with pytest.raises(InputError, match="NaN"):
        A.pca(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(InputError, match="n_components"):
        A.pca(np.zeros((5, 2)), n_components=3)


# --------------------------------------------------------------------------- UMAP


def test_umap_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` raise ImportError
    with pytest.raises(A.UmapUnavailableError, match="umap-learn"):
        A.umap_embedding(np.random.default_rng(0).normal(size=(20, 3)))


@pytest.mark.slow  # numba compiles umap's code on first use: ~50 s per process on 2 cores
def test_umap_seeded_and_separates_clusters():
    z, labels, _ = _blobs()
    a = A.umap_embedding(z, seed=1)
    b = A.umap_embedding(z, seed=1)
    assert a.embedding.shape == (len(z), 2) and a.embedding.dtype == np.float32
    np.testing.assert_array_equal(a.embedding, b.embedding)
    km = A.kmeans(a.embedding, 3, seed=0)
    assert all(len(np.unique(km.labels[labels == c])) == 1 for c in range(3))


# --------------------------------------------------------------------------- k-means


def test_kmeans_finds_blobs_and_on_data_centres():
    z, labels, means = _blobs()
    km = A.kmeans(z, 3, seed=0)
    assert km.labels.dtype == np.int64 and km.centres.shape == (3, 3)
    assert km.counts.sum() == len(z) and sorted(km.counts) == [60, 60, 60]
    for c in range(3):  # every true blob is one cluster
        assert len(np.unique(km.labels[labels == c])) == 1
    # each centre is near one true mean; its on-data point is the particle nearest it
    for j, centre in enumerate(km.centres):
        assert np.linalg.norm(means - centre, axis=1).min() < 0.3
        dist = np.linalg.norm(z - centre, axis=1)
        assert km.nearest_indices[j] == np.argmin(dist)
        assert km.labels[km.nearest_indices[j]] == j
    again = A.kmeans(z, 3, seed=0)
    np.testing.assert_array_equal(again.labels, km.labels)
    with pytest.raises(InputError):
        A.kmeans(z[:2], 3)


# --------------------------------------------------------------------------- density


def test_density_hist_normalised_and_indexed_y_x():
    rng = np.random.default_rng(1)
    # x small (0..1), y large (9..10) for most points: mass in low columns, high rows
    pts = np.column_stack([rng.uniform(0, 1, 300), rng.uniform(9, 10, 300)])
    pts = np.concatenate([pts, [[10.0, 0.0]]])  # one point sets the far corner of the grid
    g = A.density_grid(pts, bins=10)
    assert g.density.shape == (10, 10) and g.method == "hist"
    area = np.diff(g.x_edges)[0] * np.diff(g.y_edges)[0]
    assert g.density.sum() * area == pytest.approx(1.0)
    row, col = np.unravel_index(np.argmax(g.density), g.density.shape)
    assert row == 9 and col == 0
    # one cell, counted by hand
    inside = ((pts[:, 0] >= g.x_edges[0]) & (pts[:, 0] < g.x_edges[1])
              & (pts[:, 1] >= g.y_edges[9]) & (pts[:, 1] <= g.y_edges[10]))
    assert g.density[9, 0] * area * len(pts) == pytest.approx(inside.sum())
    assert g.extent[0] < 0 and g.extent[3] > 10


def test_density_kde_integrates_to_one_and_peaks_at_mode():
    rng = np.random.default_rng(2)
    pts = rng.normal(loc=[3.0, -1.0], scale=[1.0, 0.5], size=(500, 2))
    g = A.density_grid(pts, bins=60, method="kde", extent=(-3, 9, -5, 3))
    area = np.diff(g.x_edges)[0] * np.diff(g.y_edges)[0]
    assert g.density.sum() * area == pytest.approx(1.0, abs=0.02)
    row, col = np.unravel_index(np.argmax(g.density), g.density.shape)
    assert abs(g.x_centres[col] - 3.0) < 0.4 and abs(g.y_centres[row] + 1.0) < 0.3


# --------------------------------------------------------------------------- traversals


def test_pc_traversal_points_on_pc1_at_percentiles():
    z, u, _ = _line_data(seed=4)
    res = A.pca(z)
    tr = A.pc_traversal(z, pc=1, percentiles=[10, 50, 90], pca_result=res)
    assert tr.z.shape == (3, 6) and tr.nearest_indices.shape == (3,)
    np.testing.assert_allclose(tr.coords, np.percentile(res.coords[:, 0], [10, 50, 90]))
    # each point is mean + c * PC1, i.e. PC coordinates (c, 0, 0, ...)
    np.testing.assert_allclose(res.transform(tr.z), np.column_stack([tr.coords, np.zeros((3, 5))]), atol=1e-9)
    assert abs((tr.z[2] - tr.z[0]) @ u) / np.linalg.norm(tr.z[2] - tr.z[0]) > 0.995
    for zi, i in zip(tr.z, tr.nearest_indices):
        assert np.linalg.norm(z[i] - zi) == pytest.approx(np.linalg.norm(z - zi, axis=1).min())
    with pytest.raises(InputError, match="pc=7"):
        A.pc_traversal(z, pc=7)


def _spiral(n=300, seed=5):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.5, 3 * np.pi, n) + 0.002 * rng.normal(size=n)  # arm well sampled, no gaps
    return np.column_stack([t * np.cos(t), t * np.sin(t), 0.01 * rng.normal(size=n)])


def test_graph_path_ends_and_steps_are_neighbours():
    z = _spiral()
    start, end = 0, len(z) - 1
    gp = A.graph_path(z, start, end, n_neighbors=6, n_points=8)
    graph = A.knn_graph(z, 6)
    assert gp.indices[0] == start and gp.indices[-1] == end
    assert len(np.unique(gp.indices)) == len(gp.indices)
    for a, b in zip(gp.indices[:-1], gp.indices[1:]):
        assert graph[a, b] > 0
    steps = np.linalg.norm(np.diff(z[gp.indices], axis=0), axis=1)
    assert gp.length == pytest.approx(steps.sum())
    # rows are ordered along the spiral arm: the path follows the arm (never jumps
    # between turns) and its length is close to the arm's polyline length
    assert np.all(np.diff(gp.indices) > 0)
    def arc(t):  # arc length of the spiral r = t from 0 to t
        return 0.5 * (t * np.sqrt(1 + t * t) + np.arcsinh(t))

    assert gp.length == pytest.approx(arc(3 * np.pi) - arc(0.5), rel=0.03)
    assert len(gp.sampled_indices) == 8 and gp.z.shape == (8, 3)
    assert gp.sampled_indices[0] == start and gp.sampled_indices[-1] == end
    pos = [int(np.flatnonzero(gp.indices == i)[0]) for i in gp.sampled_indices]
    assert pos == sorted(pos)
    np.testing.assert_array_equal(gp.z, z[gp.sampled_indices])


def test_graph_path_disconnected_raises():
    z, _, _ = _blobs(n_per=20)
    with pytest.raises(InputError, match="not connected"):
        A.graph_path(z, 0, 59, n_neighbors=3)
    with pytest.raises(InputError, match="end=999"):
        A.graph_path(z, 0, 999)


def test_volumes_at_calls_generator_per_point():
    pts = np.array([[0.0, 1.0], [2.0, -1.0], [5.0, 0.5]])

    def fn(zz):
        assert isinstance(zz, torch.Tensor) and zz.shape == (2,)
        return torch.full((4, 4, 4), float(zz[0] + 10 * zz[1]))

    vols = A.volumes_at(pts, fn)
    assert vols.shape == (3, 4, 4, 4) and vols.dtype == np.float32
    np.testing.assert_allclose(vols[:, 0, 0, 0], pts[:, 0] + 10 * pts[:, 1])


def test_volumes_at_with_decoder_eval_volume():
    from cryofire_nb.model.decoder import HyperVolume, HyperVolumeConfig

    dec = HyperVolume(HyperVolumeConfig(d=8, zdim=2, hidden=16, n_layers=1, seed=0)).eval()
    z, _, _ = _line_data(n=50, k=2)
    tr = A.pc_traversal(z, percentiles=[20, 80])
    vols = A.volumes_at(tr, dec.eval_volume)
    assert vols.shape == (2, 8, 8, 8)
    for i in range(2):
        ref = dec.eval_volume(torch.tensor(tr.z[i], dtype=torch.float32)).numpy()
        np.testing.assert_allclose(vols[i], ref, rtol=1e-6, atol=1e-6)
    assert not np.allclose(vols[0], vols[1])


# --------------------------------------------------------------------------- selections


def test_indices_in_polygon_square():
    xs, ys = np.meshgrid(np.arange(10) + 0.5, np.arange(10) + 0.5)
    pts = np.column_stack([xs.ravel(), ys.ravel()])  # none on the square's edges
    square = [(2, 3), (6, 3), (6, 7), (2, 7)]
    got = A.indices_in_polygon(pts, square)
    expected = np.flatnonzero((pts[:, 0] > 2) & (pts[:, 0] < 6) & (pts[:, 1] > 3) & (pts[:, 1] < 7))
    assert got.dtype == np.int64 and len(got) == 16
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(InputError, match="polygon"):
        A.indices_in_polygon(pts, [(0, 0), (1, 1)])


def test_write_selection_pkl_round_trip(out_dir):
    out = A.write_selection(np.array([7, 2, 2, 5]), out_dir / "sel.pkl")
    ind = read_indices(out)
    assert ind.dtype == np.int64
    np.testing.assert_array_equal(ind, [2, 5, 7])
    mask = np.zeros(10, dtype=bool)
    mask[[1, 4]] = True
    np.testing.assert_array_equal(read_indices(A.write_selection(mask, out_dir / "m.pkl")), [1, 4])
    with pytest.raises(InputError, match="negative"):
        A.write_selection([-1, 2], out_dir / "bad.pkl")
    assert not (out_dir / "bad.pkl").exists()


def test_write_selection_star_subset(out_dir, fixtures_dir):
    src = fixtures_dir / "cryodrgn" / "relion31.star"
    table = read_star(src)
    out = A.write_selection([3, 0], out_dir / "sub.star", source=src)
    sub = read_star(out)
    assert len(sub) == 2 and sub.optics is not None
    np.testing.assert_array_equal(sub.particles["rlnImageName"].to_numpy(),
                                  table.particles["rlnImageName"].to_numpy()[[0, 3]])
    np.testing.assert_allclose(sub.particles["rlnDefocusU"].to_numpy(),
                               table.particles["rlnDefocusU"].to_numpy()[[0, 3]])
    assert len(sub.optics) == len(table.optics)
    # range checked against the source; nothing written on error
    with pytest.raises(InputError, match="out of range"):
        A.write_selection([0, len(table)], out_dir / "bad.star", source=src)
    with pytest.raises(InputError, match="out of range"):
        A.write_selection([len(table)], out_dir / "bad.pkl", source=src)
    with pytest.raises(InputError, match="source"):
        A.write_selection([0], out_dir / "nosrc.star")
    assert sorted(p.name for p in out_dir.iterdir()) == ["sub.star"]


def test_write_selection_cs_subset(out_dir, fixtures_dir):
    src = fixtures_dir / "cryodrgn" / "cryosparc_J2_particles_exported.cs"
    table = read_cs(src)
    out = A.write_selection([5, 1, 20], out_dir / "sub.cs", source=src)
    sub = read_cs(out)
    assert sub.dtype == table.dtype
    np.testing.assert_array_equal(sub, table[[1, 5, 20]])
    with pytest.raises(InputError, match=r"\.cs subset needs a \.cs source"):
        A.write_selection([0], out_dir / "x.cs", source=fixtures_dir / "cryodrgn" / "relion31.star")


# --------------------------------------------------------------------------- diagnostics


def test_confounders_find_the_variable_z_follows():
    rng = np.random.default_rng(0)
    n = 500
    defocus = rng.uniform(1.0, 2.5, n)
    t = rng.uniform(0, 1, n)
    z = np.stack([t + 0.01 * rng.normal(size=n), defocus + 0.01 * rng.normal(size=n)], 1)
    res = A.confounder_correlations(z, {"defocus": defocus, "t": t})
    assert res.names == ("defocus", "t") and res.spearman.shape == (2, 2)
    assert res.spearman[0, 1] > 0.99 and abs(res.spearman[0, 0]) < 0.15
    assert res.max_abs["t"] > 0.99
    assert set(res.to_dict()) == {"defocus", "t"}
    with pytest.raises(InputError):
        A.confounder_correlations(z, {"short": defocus[:10]})


def test_pose_covariates_tilt_azimuth_and_shift():
    rots = np.stack([np.eye(3), np.diag([1.0, -1.0, -1.0])])  # views +z and -z
    cov = A.pose_covariates(rots, np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(cov["view_tilt_deg"], [0.0, 180.0], atol=1e-9)
    np.testing.assert_allclose(cov["shift_px"], [5.0, 0.0])
    assert "shift_px" not in A.pose_covariates(rots)
    with pytest.raises(InputError):
        A.pose_covariates(np.zeros((2, 3)))


def test_latent_outliers_flag_far_points_only():
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(size=(300, 2)), [[40.0, 40.0], [-50.0, 10.0]]])
    out = A.latent_outliers(z, n_neighbors=5, threshold=20.0)
    assert out.n_flagged == 2 and set(np.flatnonzero(out.mask)) == {300, 301}
    assert len(out.keep) == 300 and out.keep.dtype == np.int64
    assert abs(np.median(out.score) - 1.0) < 1e-9


def test_write_volume_series_mrc_and_chimerax_script(out_dir):
    from cryofire_nb.io import read_mrc

    vols = np.random.default_rng(2).normal(size=(3, 8, 8, 8)).astype(np.float32)
    paths = A.write_volume_series(vols, out_dir / "series", "pc1", 2.5, labels=["a", "b", "c"])
    assert [p.name for p in paths] == ["pc1_000.mrc", "pc1_001.mrc", "pc1_002.mrc", "pc1.cxc"]
    back = read_mrc(paths[1])
    np.testing.assert_array_equal(back.data, vols[1])
    assert abs(back.pixel_size_angstrom - 2.5) < 1e-6
    script = paths[-1].read_text()
    assert "vseries true" in script and "pc1_001.mrc: b" in script
    with pytest.raises(InputError):
        A.write_volume_series(np.zeros((2, 4, 4, 5)), out_dir, "bad", 1.0)


def test_to_original_indices_after_ind():
    ind = np.array([10, 3, 7, 42])  # the run kept these rows of the original stack, in this order
    np.testing.assert_array_equal(A.to_original_indices([0, 3], ind), [10, 42])
    np.testing.assert_array_equal(A.to_original_indices(np.array([True, True, False, False]), ind), [3, 10])
    with pytest.raises(InputError):
        A.to_original_indices([4], ind)


def test_centre_contrast_separates_particles_from_empty_picks():
    rng = np.random.default_rng(3)
    d = 32
    yy, xx = np.mgrid[0:d, 0:d] - d // 2
    blob = np.exp(-(yy ** 2 + xx ** 2) / (2 * 4.0 ** 2))
    particles = blob + 0.5 * rng.normal(size=(50, d, d))
    empty = 0.5 * rng.normal(size=(50, d, d))
    c = A.centre_contrast(np.concatenate([particles, empty]))
    assert c.shape == (100,) and c[:50].min() > c[50:].max()
    assert abs(np.median(c[50:])) < 0.1
    with pytest.raises(InputError):
        A.centre_contrast(np.zeros((2, 4, 5)))
