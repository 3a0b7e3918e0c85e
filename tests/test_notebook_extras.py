"""Helpers added for notebooks 03-05: an interpolated intermediate structure, GMM and
cluster-label errors, errors grouped by another quantity, a cryoSPARC table for a
simulated stack, the lasso SelectionSaver, and their figures (headless)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from cryofire_nb import analysis as A
from cryofire_nb import viz as V
from cryofire_nb.errors import InputError
from cryofire_nb.io import (CtfParams, Poses, make_cs_table, parse_cs_poses_ctf, read_cs, read_indices,
                            read_star, write_cs, write_relion31_star, image_names_for_stack)
from cryofire_nb.metrics import cluster_label_error, errors_by_bin
from cryofire_nb.rotations import random_rotations
from cryofire_nb.simulate import read_conformations, write_interpolated_structure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- structures


def test_interpolated_structure_is_the_path_point(repo_root, out_dir):
    states = [repo_root / "data_demo" / "adk_open.pdb.gz", repo_root / "data_demo" / "adk_closed.pdb.gz"]
    mid = write_interpolated_structure(states, 0.25, out_dir / "mid.pdb")
    both = read_conformations(states)
    three = read_conformations([states[0], mid, states[1]])  # same atoms, same order: accepted
    want = 0.75 * both.states_angstrom[0] + 0.25 * both.states_angstrom[1]
    np.testing.assert_allclose(three.states_angstrom[1], want, atol=6e-4)  # PDB keeps 3 decimals
    assert three.elements == both.elements and three.atom_ids == both.atom_ids
    # the ends reproduce the inputs
    end = write_interpolated_structure(states, 1.0, out_dir / "end.pdb")
    np.testing.assert_allclose(read_conformations([end]).states_angstrom[0], both.states_angstrom[1], atol=6e-4)
    with pytest.raises(InputError, match="outside"):
        write_interpolated_structure(states, 1.5, out_dir / "bad.pdb")
    with pytest.raises(InputError, match="two"):
        write_interpolated_structure(states[:1], 0.5, out_dir / "bad.pdb")
    assert not (out_dir / "bad.pdb").exists()


# --------------------------------------------------------------------------- clusters


def _blobs(weights=(140, 60), seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [6.0, 1.0, -2.0]])
    z = np.concatenate([m + rng.normal(size=(n, 3)) for m, n in zip(means, weights)])
    return z, np.repeat(np.arange(len(weights)), weights)


def test_cluster_label_error_is_permutation_invariant():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    for perm in itertools.permutations(range(3)):
        pred = np.asarray(perm)[true]
        res = cluster_label_error(pred, true)
        assert res.error_fraction == 0 and res.n_misclassified == 0
        assert all(res.mapping[perm[c]] == c for c in range(3))
    pred = np.array([5, 5, 7, 7, 7, 9, 9, 9, 9])  # one image of class 0 put with class 1
    res = cluster_label_error(pred, true)
    assert res.n_misclassified == 1 and res.error_fraction == pytest.approx(1 / 9)
    assert res.contingency.shape == (3, 3) and res.contingency.sum() == 9
    # more clusters than classes: the unmatched cluster counts as wrong
    res = cluster_label_error([0, 0, 1, 1, 2], [0, 0, 1, 1, 1])
    assert res.n_misclassified == 1
    with pytest.raises(InputError):
        cluster_label_error([0, 1], [0, 1, 1])


def test_gmm_finds_unequal_blobs_and_is_seeded():
    z, labels = _blobs()
    res = A.gmm(z, 2, seed=0)
    assert res.labels.dtype == np.int64 and res.probabilities.shape == (200, 2)
    np.testing.assert_allclose(res.probabilities.sum(1), 1.0, atol=1e-9)
    assert cluster_label_error(res.labels, labels).error_fraction < 0.02
    np.testing.assert_allclose(np.sort(res.weights), [0.3, 0.7], atol=0.03)
    # on-data particle nearest each mean
    for k, i in enumerate(res.nearest_indices):
        assert np.argmin(((z - res.means[k]) ** 2).sum(1)) == i
    again = A.gmm(z, 2, seed=0)
    np.testing.assert_array_equal(again.labels, res.labels)
    assert A.gmm(z, 1).bic > res.bic  # two components fit two blobs better
    with pytest.raises(InputError):
        A.gmm(z, 0)


# --------------------------------------------------------------------------- binned errors


def test_errors_by_bin_equal_count_and_width():
    x = np.arange(100, dtype=float)
    e = np.where(x < 50, 1.0, 3.0)
    b = errors_by_bin(x, e, n_bins=4)
    np.testing.assert_array_equal(b.count, [25, 25, 25, 25])
    np.testing.assert_allclose(b.median, [1, 1, 3, 3])
    assert b.edges[0] == 0 and b.edges[-1] == 99 and len(b.centres) == 4
    w = errors_by_bin(x, e, n_bins=2, equal_count=False)
    assert w.count.sum() == 100 and w.mean[0] == pytest.approx(1.0) and w.mean[1] == pytest.approx(3.0)
    empty = errors_by_bin(np.r_[np.zeros(5), np.ones(5) * 10], np.ones(10), n_bins=3, equal_count=False)
    assert empty.count[1] == 0 and np.isnan(empty.median[1])
    with pytest.raises(InputError):
        errors_by_bin(x, e[:5])


# --------------------------------------------------------------------------- cryoSPARC table


def _poses_ctf(n=12, d=32, apix=2.5, seed=0):
    rng = np.random.default_rng(seed)
    rots = random_rotations(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    poses = Poses(rots, rng.uniform(-0.05, 0.05, (n, 2)))
    ctf = CtfParams.from_columns(image_size=d, pixel_size_angstrom=apix,
                                 defocus_u_angstrom=rng.uniform(1e4, 2e4, n),
                                 defocus_v_angstrom=rng.uniform(1e4, 2e4, n),
                                 defocus_angle_deg=rng.uniform(0, 180, n), voltage_kv=300, cs_mm=2.7,
                                 amplitude_contrast=0.1, phase_shift_deg=0.0)
    return poses, ctf


def test_make_cs_table_round_trips_through_the_parser(out_dir):
    poses, ctf = _poses_ctf()
    table = make_cs_table("particles.mrcs", 12, 32, 2.5, poses=poses, ctf=ctf, seed=3)
    write_cs(out_dir / "p.cs", table)
    back = parse_cs_poses_ctf(out_dir / "p.cs")
    np.testing.assert_allclose(back.poses.rots, poses.rots, atol=1e-6)
    np.testing.assert_allclose(back.poses.trans_frac, poses.trans_frac, atol=1e-7)
    np.testing.assert_allclose(back.ctf.table, ctf.table, rtol=1e-6, atol=1e-4)
    t = read_cs(out_dir / "p.cs")
    assert t["blob/path"][0] == b"particles.mrcs" and list(t["blob/idx"]) == list(range(12))
    assert len(np.unique(t["uid"])) == 12
    bare = make_cs_table("s.mrcs", 3, 16, 1.0)
    assert "alignments3D/pose" not in bare.dtype.names and "ctf/df1_A" not in bare.dtype.names
    with pytest.raises(ValueError):
        make_cs_table("s.mrcs", 5, 32, 2.5, poses=poses)


# --------------------------------------------------------------------------- selections


def test_selection_saver_writes_pkl_star_and_cs(out_dir):
    n = 12
    poses, ctf = _poses_ctf(n)
    star = out_dir / "particles.star"
    write_relion31_star(star, image_names_for_stack("particles.mrcs", n), poses=poses, ctf=ctf)
    cs = out_dir / "particles.cs"
    write_cs(cs, make_cs_table("particles.mrcs", n, 32, 2.5, poses=poses, ctf=ctf))
    saver = A.SelectionSaver(out_dir / "sel", star=star, cs=cs, n_particles=n)
    assert saver([]) == [] and saver.count == 0
    paths = saver(np.array([9, 2, 2, 4]))
    assert [p.name for p in paths] == ["selected.pkl", "selected.star", "selected.cs"]
    np.testing.assert_array_equal(read_indices(paths[0]), [2, 4, 9])
    assert len(read_star(paths[1])) == 3 and len(read_cs(paths[2])) == 3
    np.testing.assert_array_equal(read_cs(paths[2])["blob/idx"], [2, 4, 9])
    saver([1])  # a new selection replaces the files
    np.testing.assert_array_equal(read_indices(out_dir / "sel" / "selected.pkl"), [1])
    assert saver.count == 2 and list(saver.last) == [1]
    with pytest.raises(InputError, match="out of range"):
        saver([n])


# --------------------------------------------------------------------------- figures


def _blob(d=16, radius=4.0, centre=(0.0, 0.0, 0.0)):
    r = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    cx, cy, cz = centre
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / (2 * radius ** 2)).astype(np.float32)


def test_isosurface_image_of_a_sphere():
    vol = _blob(16, 3.0)
    img = V.isosurface_image(vol, level=0.5, axis="z", upsample=1)
    assert img.shape == (16, 16)
    hit = np.isfinite(img)
    # the 0.5 surface of exp(-r^2 / 18) is the sphere r = 3.53 px: about pi r^2 pixels hit
    assert abs(hit.sum() - np.pi * 3.53 ** 2) < 12
    assert hit[8, 8] and not hit[0, 0]
    assert np.nanmin(img) >= 0.25 - 1e-9 and np.nanmax(img) <= 1.0
    # lit from the upper right: the upper-right rim is brighter than the lower-left one
    assert img[6, 10] > img[10, 6]
    # an off-centre blob shows up off-centre in the right axis ordering
    off = V.isosurface_image(_blob(16, 2.0, centre=(4, 0, 0)), 0.5, axis="z", upsample=1)
    cols = np.flatnonzero(np.isfinite(off).any(0))
    assert cols.min() > 8  # shifted towards +x (columns)
    with pytest.raises(ValueError):
        V.isosurface_image(vol, 0.5, axis="w")
    with pytest.raises(ValueError):
        V.volume_surfaces(vol, top_fraction=0.0)


def _figure_cases():
    rng = np.random.default_rng(0)
    rots = random_rotations(300, torch.Generator().manual_seed(1))
    err = rng.gamma(2.0, 2.0, 300)
    vols = np.stack([_blob(16, 3.0), _blob(16, 4.0), _blob(16, 3.0, (2, 0, 0))])
    return [
        ("pc1_histogram", lambda: V.pc1_histogram(rng.normal(size=100), np.repeat([0, 1], 50), thresholds=(0.1,)), 1),
        ("metric_curves", lambda: V.metric_curves({"a": ([1, 2, 3], [0.3, 0.2, 0.1]), "b": ([1, 2], [0.3, 0.25])},
                                                  hline=0.05, hline_label="target"), 1),
        ("view_error_map", lambda: V.view_error_map(rots, err), 2),
        ("binned_errors_plot", lambda: V.binned_errors_plot({"view": errors_by_bin(rng.uniform(size=300), err)},
                                                            xlabel="defocus"), 1),
        ("volume_surfaces", lambda: V.volume_surfaces(vols, titles=["a", "b", "c"], axes=("z", "y")), 6),
    ]


@pytest.mark.parametrize("name,factory,n_axes", _figure_cases(), ids=[c[0] for c in _figure_cases()])
def test_new_figures_headless(name, factory, n_axes, out_dir):
    fig = factory()
    assert isinstance(fig, Figure) and len(fig.axes) == n_axes
    V.save_figure(fig, out_dir / f"{name}.png")
    assert (out_dir / f"{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_view_error_map_values_per_cell():
    # all views in one direction (+z): only the top cells hold a value, equal to the median
    rots = torch.eye(3).repeat(10, 1, 1)
    fig = V.view_error_map(rots, np.arange(10.0), n_lon=4, n_lat=4, min_count=1)
    mesh = fig.axes[0].collections[0]
    values = np.ma.masked_invalid(mesh.get_array()).compressed()
    np.testing.assert_allclose(values, [4.5])
    with pytest.raises(ValueError):
        V.view_error_map(rots, np.arange(3.0))


def test_pc1_histogram_draws_thresholds_and_classes():
    fig = V.pc1_histogram(np.linspace(-1, 1, 40), np.repeat([0, 1], 20), thresholds=(0.0, np.inf))
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1 and ax.get_lines()[0].get_xdata()[0] == 0.0  # finite threshold only
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["true state 0 (20)", "true state 1 (20)"]


# --------------------------------------------------------------------------- training presets


@pytest.mark.parametrize("discrete", [True, False])
def test_simulated_train_config_paths_and_known_pose_run(tmp_path, discrete):
    from cryofire_nb.train import KNOWN_POSE_CPU, simulated_train_config, train
    from cryofire_nb.train.synthetic import make_synthetic_set

    data = make_synthetic_set(tmp_path / "data", n=64, d=32, n_levels=2, discrete=discrete, seed=0).folder
    cfg = simulated_train_config(data, tmp_path / "run", preset=KNOWN_POSE_CPU, max_images=64, progress=False,
                                 eval_n_images=32)
    assert cfg.poses == str(data / "poses.pkl") and cfg.gt_poses == cfg.poses
    assert cfg.march_start_px == 16.0 and cfg.zdim == 2 and cfg.decoder == "voxel"
    assert (cfg.gt_labels is not None) == discrete and (cfg.gt_conf is not None) == (not discrete)
    res = train(cfg)
    assert res.state.images_seen == 64 and (tmp_path / "run" / "z.pkl").is_file()
    assert res.history.eval and res.history.eval[-1]["images_seen"] == 64
    ab = simulated_train_config(data, tmp_path / "ab", known_poses=False, truth=False)
    assert ab.poses is None and ab.gt_poses is None and ab.march_start_px == 3.0
    with pytest.raises(InputError, match="particles.mrcs"):
        simulated_train_config(tmp_path, tmp_path / "x")


def test_volume_radius_of_gyration_of_a_ball():
    from cryofire_nb.metrics import volume_radius_of_gyration

    d = 40
    r = np.arange(d) - d // 2
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    radius = 8.0
    ball = ((xx - 3) ** 2 + yy ** 2 + zz ** 2 <= radius ** 2).astype(np.float32)  # off-centre is fine
    frac = ball.mean()
    # uniform ball: Rg = sqrt(3/5) R (voxelised: within a few per cent)
    got = volume_radius_of_gyration(ball, pixel_size_angstrom=2.0, top_fraction=frac)
    assert got == pytest.approx(np.sqrt(0.6) * radius * 2.0, rel=0.03)
    # low background noise outside the densest voxels does not change it
    noisy = ball + 0.01 * np.random.default_rng(0).random(ball.shape).astype(np.float32)
    assert volume_radius_of_gyration(noisy, 2.0, frac) == pytest.approx(got, rel=0.02)
    # a smaller ball has a smaller Rg at the same fraction of the box
    small = ((xx ** 2 + yy ** 2 + zz ** 2) <= 5.0 ** 2).astype(np.float32)
    assert volume_radius_of_gyration(small, 2.0, small.mean()) < got
    with pytest.raises(ValueError):
        volume_radius_of_gyration(ball, 2.0, 0.0)


def test_selectable_scatter_svg_by_default_for_few_points():
    pytest.importorskip("anywidget")
    import plotly.graph_objects as go

    pts = np.random.default_rng(0).normal(size=(30, 2))
    assert isinstance(V.make_selectable_scatter(pts, print).data[0], go.Scatter)  # renders without WebGL
    assert isinstance(V.make_selectable_scatter(pts, print, webgl=True).data[0], go.Scattergl)
