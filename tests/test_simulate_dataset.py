"""Simulated datasets: config validation, determinism, SNR, contrast, shifts, ground truth, files."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.spatial import ConvexHull

from cryofire_nb import cli
from cryofire_nb.ctf import ctf_zero_frequencies
from cryofire_nb.errors import InputError
from cryofire_nb.fft import fft2_center, freqs_1d, ifft2_center, translate_images
from cryofire_nb.io import CtfParams, read_ctf, read_mrc, read_poses, read_star
from cryofire_nb.io.parse import parse_star_poses_ctf
from cryofire_nb.simulate import (CtfConfig, HeterogeneityConfig, SimConfig, ViewConfig, particles, plan_dataset,
                                  project_atoms, render, render_clean, sample_params, signal_variance, simulate_dataset)
from cryofire_nb.simulate import dataset as dataset_module

DEMO = Path(__file__).resolve().parents[1] / "data_demo"
STATES = (str(DEMO / "adk_open.pdb.gz"), str(DEMO / "adk_closed.pdb.gz"))


def small_config(**changes) -> SimConfig:
    base = SimConfig(structures=STATES, n_particles=24, d=32, pixel_size_angstrom=2.9, seed=5, max_shift_px=1.5,
                     snr=0.5, heterogeneity=HeterogeneityConfig(n_path_volumes=3))
    return base.replace(**changes)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("yaml_name", ["demo_sim.yaml", "adk_continuous_d32.yaml", "adk_twostate_d32.yaml",
                                       "adk_roundtrip_d64.yaml", "tcr_continuous_d32.yaml", "tcr_twostate_d32.yaml"])
def test_demo_configs_load_and_fill_the_box(yaml_name):
    cfg = SimConfig.from_yaml(DEMO / yaml_name)
    assert all(Path(p).is_file() for p in cfg.structures)
    plan_states = dataset_module.read_conformations(cfg.structures).states_angstrom  # (k, n, 3)
    hulls = [s[ConvexHull(s).vertices] for s in plan_states]  # the farthest atoms are hull vertices
    extent = max(np.linalg.norm(h[:, None] - h[None], axis=-1).max() for h in hulls)
    assert 0.6 <= extent / (cfg.d * cfg.pixel_size_angstrom) <= 0.7


def test_tcr_states_differ_by_one_rigid_tilt_of_the_receptor():
    """The second benchmark molecule: the peptide-MHC (chains A-C) is the same in the three
    states, and the TCR (chains D, E) is one rigid body rotated by -15, 0 and +15 deg."""
    conf = dataset_module.read_conformations([DEMO / f"tcr_tilt_{k}.pdb.gz" for k in ("m15", "0", "p15")])
    states = conf.states_angstrom  # (3, n, 3)
    on_tcr = np.array([a.split("/")[0] in ("D", "E") for a in conf.atom_ids])
    assert 3000 < on_tcr.sum() < len(on_tcr) - 3000
    assert np.abs(states[:, ~on_tcr] - states[0, ~on_tcr]).max() < 2e-3  # PDB files keep 3 decimals

    def fit(mobile, target):
        mc, tc = mobile.mean(0), target.mean(0)
        u, _, vt = np.linalg.svd((mobile - mc).T @ (target - tc))
        rot = (u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt).T
        rmsd = np.sqrt((((mobile - mc) @ rot.T + tc - target) ** 2).sum(1).mean())
        return np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))), rmsd

    for (a, b), angle in (((0, 1), 15.0), ((1, 2), 15.0), ((0, 2), 30.0)):
        got, rmsd = fit(states[a, on_tcr], states[b, on_tcr])
        assert rmsd < 2e-3 and abs(got - angle) < 0.01


BAD = [
    ("d: 33", "d must be even"),
    ("snr: -1", "snr must be > 0"),
    ("pixel_size_angstrom: zero", "pixel_size_angstrom must be a finite number"),
    ("heterogeneity: {kind: discrete, weights: [1, 2, 3]}", "3 heterogeneity.weights for 2 structures"),
    ("heterogeneity: {kind: blobs}", "heterogeneity.kind"),
    ("ctf: {defocus_u_angstrom: [20000, 10000]}", "reversed"),
    ("ctf: {amplitude_contrast: 1.5}", "amplitude_contrast"),
    ("views: {distribution: sideways}", "views.distribution"),
    ("max_shift_px: 20", "quarter of the box"),
    ("colour: blue", "unknown settings"),
    ("structures: [/nowhere/missing.pdb, /nowhere/missing2.pdb]", "missing.pdb not found"),
]


@pytest.mark.parametrize("line,message", BAD)
def test_bad_config_values_raise_input_error_and_write_nothing(tmp_path, line, message, capsys):
    raw = yaml.safe_load((DEMO / "demo_sim.yaml").read_text())
    raw["structures"] = [str(DEMO / p) for p in raw["structures"]]
    raw.update(yaml.safe_load(line))
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=message) as err:
        SimConfig.from_yaml(cfg_path)
    assert "bad.yaml" in str(err.value)
    out = tmp_path / "out"
    assert cli.main(["simulate", str(cfg_path), "-o", str(out)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert _leftovers(tmp_path) == ["bad.yaml"]


def test_config_yaml_round_trip(tmp_path):
    cfg = small_config(heterogeneity=HeterogeneityConfig(kind="discrete", weights=(0.7, 0.3)),
                       views=ViewConfig(distribution="preferred", spread_deg=10, fraction=0.5),
                       ctf=CtfConfig(cs_mm=0.01))
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml("9.9"))
    assert yaml.safe_load(path.read_text())["cryofire_nb_version"] == "9.9"
    assert SimConfig.from_yaml(path) == cfg


# --------------------------------------------------------------------------- determinism


def test_same_data_for_any_chunking_and_order(tmp_path):
    cfg = small_config(n_particles=21)
    simulate_dataset(cfg, tmp_path / "a", chunk_size=4, progress=False)
    simulate_dataset(cfg, tmp_path / "b", chunk_size=64, progress=False)
    x, y = read_mrc(tmp_path / "a" / "particles.mrcs").data, read_mrc(tmp_path / "b" / "particles.mrcs").data
    np.testing.assert_array_equal(x, y)
    plan = plan_dataset(cfg)
    order = np.random.default_rng(0).permutation(21)
    np.testing.assert_array_equal(render(plan, order[:9]), x[order[:9]])
    np.testing.assert_array_equal(render(plan, [20]), x[[20]])
    # the library's one-call image model gives the same particles
    idx = order[:5]
    p = plan.params
    direct = particles(dataset_module.particle_coords(plan, idx), plan.scattering, p.rots[idx], p.shift_px[idx],
                       CtfParams(p.ctf_table[idx]), 32, 2.9, indices=idx, seed=5,
                       noise_std=plan.noise_std, invert=True, density_bfactor_angstrom2=50.0)
    np.testing.assert_allclose(direct, x[idx], rtol=0, atol=1e-5)
    other_seed = read_mrc(simulate_dataset(cfg.replace(seed=6), tmp_path / "c", progress=False).out_dir
                          / "particles.mrcs").data
    assert not np.allclose(other_seed, x)


# --------------------------------------------------------------------------- physics


def test_snr_of_output_matches_config(tmp_path):
    cfg = small_config(n_particles=40, snr=0.3)
    res = simulate_dataset(cfg, tmp_path / "out", progress=False)
    stored = read_mrc(tmp_path / "out" / "particles.mrcs").data.astype(np.float64)
    clean = -render_clean(plan_dataset(cfg), np.arange(40)).astype(np.float64)  # stored contrast is inverted
    noise = stored - clean
    measured = signal_variance(clean) / noise.var()
    assert measured == pytest.approx(0.3, rel=0.03)
    assert abs(noise.mean()) < 3 * res.noise_std / np.sqrt(noise.size)
    info = yaml.safe_load((tmp_path / "out" / "sim_info.yaml").read_text())
    assert info["noise_std"] == pytest.approx(res.noise_std) and info["seed"] == 5


def test_inverted_contrast_makes_particles_white(tmp_path):
    for invert in (True, False):
        cfg = small_config(n_particles=12, snr=None, invert_contrast=invert)
        plan = plan_dataset(cfg)
        images = render(plan, np.arange(12)).astype(np.float64)
        sign = 1 if invert else -1
        # DC: CTF(0) = -w, so the un-inverted image mean is -w * (total density) / d^2.
        f0 = project_atoms(plan.conformations.states_angstrom[0], plan.scattering, np.eye(3)[None], 32, 2.9)[0, 16, 16]
        np.testing.assert_allclose(images.mean((1, 2)), sign * 0.1 * f0.real.item() / 32 ** 2, rtol=1e-3)
        # Within the first CTF lobe the stored particle correlates with the density projection.
        for i in range(3):
            proj = ifft2_center(project_atoms(dataset_module.particle_coords(plan, [i]), plan.scattering,
                                              plan.params.rots[[i]], 32, 2.9, 50.0)).real[0]
            shift_i = torch.from_numpy(plan.params.shift_px[[i]]).double()
            centred = translate_images(torch.from_numpy(images[[i]]), shift_i)[0]
            dfu, dfv = plan.params.ctf_table[i, 2:4]
            s0 = ctf_zero_frequencies(float(max(dfu, dfv)), 300.0, 2.7, 0.1, 1)[0].item() * 2.9  # cycles/px
            k = freqs_1d(32, dtype=torch.float64)
            lowpass = ((k[None, :] ** 2 + k[:, None] ** 2).sqrt() < 0.8 * s0).to(torch.complex128)
            a = ifft2_center(fft2_center(centred) * lowpass).real.flatten()
            b = ifft2_center(fft2_center(proj.double()) * lowpass).real.flatten()
            corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
            assert corr * sign > 0.7  # -CTF > 0 on the first lobe but not flat: not 1


def test_recentring_by_plus_shift_recovers_the_centred_particle():
    cfg = small_config(n_particles=10, snr=None, invert_contrast=False, ctf=None, max_shift_px=3.0)
    plan = plan_dataset(cfg)
    stored = torch.from_numpy(render(plan, np.arange(10))).double()
    shift = plan.params.shift_px.astype(np.float64)
    assert np.abs(shift).max() > 1.0
    no_shift = dataclasses.replace(plan.params, shift_px=np.zeros_like(plan.params.shift_px))
    unshifted_plan = dataclasses.replace(plan, params=no_shift)
    centred = torch.from_numpy(render(unshifted_plan, np.arange(10))).double()
    recentred = translate_images(stored, torch.from_numpy(shift))

    def no_nyquist(x):  # a real image cannot carry a sub-pixel shift of its Nyquist row/column
        f = fft2_center(x)
        f[:, 0, :] = 0
        f[:, :, 0] = 0
        return ifft2_center(f).real
    tol = 1e-5 * centred.abs().max().item()
    torch.testing.assert_close(no_nyquist(recentred), no_nyquist(centred), rtol=0, atol=tol)
    # Independent of the phase-shift code: the centroid moves by minus the stored shift.
    r = torch.arange(32, dtype=torch.float64) - 16

    def centroid(x):
        return torch.stack([(x.sum(1) * r).sum(-1), (x.sum(2) * r).sum(-1)], -1) / x.sum((1, 2))[:, None]
    np.testing.assert_allclose((centroid(stored) - centroid(centred)).numpy(), -shift, atol=0.05)


def test_discrete_labels_follow_weights_and_pick_the_state():
    cfg = small_config(n_particles=4000, heterogeneity=HeterogeneityConfig(kind="discrete", weights=(0.7, 0.3)))
    p = sample_params(cfg, 2)
    assert p.conf_t is None and p.labels.dtype == np.int64
    assert np.mean(p.labels == 0) == pytest.approx(0.7, abs=0.025)
    plan = plan_dataset(cfg.replace(n_particles=30, snr=None))
    i = int(np.flatnonzero(plan.params.labels == 1)[0])
    coords = dataset_module.particle_coords(plan, [i])[0]
    np.testing.assert_array_equal(coords, plan.conformations.states_angstrom[1])


def test_continuous_t_uniform_and_preferred_views():
    p = sample_params(small_config(n_particles=4000), 2)
    assert p.labels is None and p.conf_t.dtype == np.float32
    assert 0 <= p.conf_t.min() and p.conf_t.max() <= 1 and np.mean(p.conf_t < 0.25) == pytest.approx(0.25, abs=0.025)
    assert np.abs(p.shift_px).max() <= 1.5
    np.testing.assert_allclose(p.rots @ p.rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (4000, 3, 3)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(p.rots), 1, atol=1e-5)
    uniform_cos = p.rots[:, 2, 2]
    views = ViewConfig(distribution="preferred", direction=(0, 1, 1), spread_deg=10, fraction=0.6)
    pref = sample_params(small_config(n_particles=4000, views=views), 2)
    cos = pref.rots[:, 2] @ (np.array([0, 1, 1]) / np.sqrt(2))
    cap = np.cos(np.deg2rad(30))  # 3 sigma
    expected = 0.6 + 0.4 * (1 - cap) / 2  # preferred ones + uniform ones that fall in the cap
    assert np.mean(cos > cap) == pytest.approx(expected, abs=0.03)
    assert np.mean(uniform_cos > cap) == pytest.approx((1 - cap) / 2, abs=0.02)
    np.testing.assert_allclose(np.linalg.det(pref.rots), 1, atol=1e-5)


# --------------------------------------------------------------------------- files


def test_cli_writes_consistent_files(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = cli.main(["simulate", str(DEMO / "demo_sim.yaml"), "-o", str(out), "--n-particles", "20", "--seed", "3"])
    assert rc == 0 and "wrote 20 particles" in capsys.readouterr().out
    stack = read_mrc(out / "particles.mrcs")
    assert stack.data.shape == (20, 32, 32) and stack.pixel_size_angstrom == pytest.approx(2.9)
    poses, ctf = read_poses(out / "poses.pkl", 20), read_ctf(out / "ctf.pkl", 20)
    from_star = parse_star_poses_ctf(read_star(out / "particles.star"))
    np.testing.assert_allclose(from_star.poses.rots, poses.rots, atol=1e-5)
    np.testing.assert_allclose(from_star.poses.trans_frac, poses.trans_frac, atol=1e-6)
    np.testing.assert_allclose(from_star.ctf.table, ctf.table, rtol=1e-6)
    assert np.abs(poses.trans_frac * 32).max() <= 1.5
    with open(out / "conf.pkl", "rb") as f:
        conf = pickle.load(f)
    assert conf.dtype == np.float32 and conf.shape == (20,) and not (out / "labels.pkl").exists()
    saved = SimConfig.from_yaml(out / "sim_config.yaml")
    assert saved.n_particles == 20 and saved.seed == 3
    info = yaml.safe_load((out / "sim_info.yaml").read_text())
    path_vols = [v for v in info["volumes"] if "t" in v]
    assert [v["t"] for v in path_vols] == [0.0, 0.25, 0.5, 0.75, 1.0]
    vol0, path0 = read_mrc(out / "vol_state_00.mrc"), read_mrc(out / path_vols[0]["file"])
    assert vol0.pixel_size_angstrom == pytest.approx(2.9)
    np.testing.assert_array_equal(vol0.data, path0.data)  # t = 0 is the first state
    assert not np.allclose(vol0.data, read_mrc(out / "vol_state_01.mrc").data)
    assert (out / "particles.mrcs").stat().st_mode & 0o044  # readable like any output, not private
    # a second run into the same folder is refused, --overwrite replaces it
    assert cli.main(["simulate", str(DEMO / "demo_sim.yaml"), "-o", str(out), "--n-particles", "5"]) == 2
    assert cli.main(["simulate", str(DEMO / "demo_sim.yaml"), "-o", str(out), "--n-particles", "5", "--overwrite"]) == 0
    assert read_mrc(out / "particles.mrcs").data.shape[0] == 5
    assert _leftovers(tmp_path) == ["sim"]


def test_cli_box_keeps_the_physical_box(tmp_path, capsys):
    out = tmp_path / "sim64"
    assert cli.main(["simulate", str(DEMO / "adk_continuous_d32.yaml"), "-o", str(out), "--n-particles", "6",
                     "--box", "64"]) == 0
    stack = read_mrc(out / "particles.mrcs")
    assert stack.data.shape == (6, 64, 64) and stack.pixel_size_angstrom == pytest.approx(1.45)
    saved = SimConfig.from_yaml(out / "sim_config.yaml")
    assert saved.d == 64 and saved.max_shift_px == pytest.approx(3.0)  # 1.5 px at 2.9 A = 3 px at 1.45 A
    assert read_ctf(out / "ctf.pkl", 6).table[:, 0] == pytest.approx(64)
    assert cli.main(["simulate", str(DEMO / "adk_continuous_d32.yaml"), "-o", str(tmp_path / "odd"), "--box", "63"]) == 2
    assert "--box must be even" in capsys.readouterr().err
    assert not (tmp_path / "odd").exists()


def test_failures_leave_nothing_behind(tmp_path, monkeypatch):
    bad_state = tmp_path / "short.pdb"
    text = [ln for ln in __import__("gzip").open(STATES[1], "rt") if ln.startswith("ATOM")][:-1]
    bad_state.write_text("".join(text) + "END\n")
    with pytest.raises(InputError, match="short.pdb"):
        simulate_dataset(small_config(structures=(STATES[0], str(bad_state))), tmp_path / "out", progress=False)
    assert _leftovers(tmp_path) == ["short.pdb"]

    calls = []

    def failing_render(plan, indices):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk full")
        return np.zeros((len(indices), plan.config.d, plan.config.d), np.float32)
    monkeypatch.setattr(dataset_module, "render", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_dataset(small_config(snr=None), tmp_path / "out", chunk_size=8, progress=False)
    assert _leftovers(tmp_path) == ["short.pdb"]
