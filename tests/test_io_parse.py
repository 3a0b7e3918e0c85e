"""Poses and CTF from STAR / .cs files, checked against cryoDRGN's own outputs, and the
write-STAR -> read-STAR round trip."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.io.cs import blob_paths, read_cs, write_cs
from cryofire_nb.io.parse import parse_cs_poses_ctf, parse_star_poses_ctf
from cryofire_nb.io.records import CtfParams, Poses
from cryofire_nb.io.star import image_names_for_stack, read_star, write_relion31_star
from cryofire_nb.rotations import random_rotations

TOL = 1e-4  # the acceptance tolerance asked for; the measured differences are far smaller


@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_relion30_refinement_matches_cryodrgn(fix):
    got = parse_star_poses_ctf(fix / "FinalRefinement-OriginalParticles-PfCRT.star", d=300,
                               pixel_size_angstrom=1.035, amplitude_contrast=0.1)
    rots, trans = _load(fix / "pose.star.pkl")
    ctf = _load(fix / "ctf1.pkl")
    np.testing.assert_allclose(got.poses.rots, rots, atol=TOL)
    # Same sign as cryoDRGN: trans = +_rlnOriginX/Y / D (the values are non-zero, so a flip fails).
    assert np.abs(trans).max() > 1e-4
    np.testing.assert_allclose(got.poses.trans_frac, trans, atol=TOL * 1e-2)
    np.testing.assert_allclose(got.ctf.table, ctf, atol=TOL, rtol=0)


def test_cryosparc_refinement_matches_cryodrgn(fix):
    got = parse_cs_poses_ctf(fix / "cryosparc_P12_J24_001_particles.cs", d=180)
    rots, trans = _load(fix / "pose.cs.pkl")
    ctf = _load(fix / "ctf2.pkl")
    assert len(got.poses) == 2019
    np.testing.assert_allclose(got.poses.rots, rots, atol=TOL)
    np.testing.assert_allclose(got.poses.trans_frac, trans, atol=TOL * 1e-2)
    np.testing.assert_allclose(got.ctf.table, ctf, atol=TOL, rtol=0)
    # D and Apix default to blob/shape and blob/psize_A
    default = parse_cs_poses_ctf(fix / "cryosparc_P12_J24_001_particles.cs")
    np.testing.assert_array_equal(default.ctf.table, got.ctf.table)


def test_ctf_only_files(fix):
    star = parse_star_poses_ctf(fix / "empiar_10076_7.star", d=320)
    cs = parse_cs_poses_ctf(fix / "empiar_10076_7.cs")
    assert star.poses is None and cs.poses is None
    # The .star (detector/magnification, degrees) and the .cs (psize_A, radians) agree.
    np.testing.assert_allclose(star.ctf.table, cs.ctf.table, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(star.ctf.defocus_u_angstrom[:2], [15301.1, 15303.0], rtol=1e-6)


def test_relion30_without_box_needs_d(fix):
    with pytest.raises(InputError, match="-D") as err:
        parse_star_poses_ctf(fix / "empiar_10076_7.star")
    assert "empiar_10076_7.star" in str(err.value)


def test_relion30_without_amplitude_contrast_needs_w(fix):
    with pytest.raises(InputError, match="-w"):
        parse_star_poses_ctf(fix / "FinalRefinement-OriginalParticles-PfCRT.star", d=300, pixel_size_angstrom=1.035)


def test_relion31_angstrom_shifts_use_optics_pixel_size(fix):
    table = read_star(fix / "relion31.6opticsgroups.star")
    got = parse_star_poses_ctf(table)
    df = table.merged()
    shift_px = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / df["rlnImagePixelSize"].to_numpy()[:, None]
    np.testing.assert_allclose(got.poses.trans_frac, shift_px / 196, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.ctf.pixel_size_angstrom, df["rlnImagePixelSize"], rtol=1e-6)
    for name in ("relion31.star", "relion31.v2.star", "relion5.star", "toy_projections_13.star"):
        parse_star_poses_ctf(fix / name)  # parse without failing


def test_exported_cs_strips_path_marker(fix):
    path = fix / "cryosparc_J2_particles_exported.cs"
    table = read_cs(path)
    assert table["blob/path"][0].startswith(b">")
    paths = blob_paths(path, table)
    assert len(paths) == 22 and not any(p.startswith(">") for p in paths)
    assert paths[0] == table["blob/path"][0].decode()[1:]
    got = parse_cs_poses_ctf(path)
    assert got.poses is None and len(got.ctf) == 22  # 2-D alignments only


def _random_poses_ctf(n: int, d: int, apix: float):
    rots = random_rotations(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
    rng = np.random.default_rng(3)
    poses = Poses(rots, rng.uniform(-0.05, 0.05, (n, 2)))
    ctf = CtfParams.from_columns(image_size=d, pixel_size_angstrom=apix,
                                 defocus_u_angstrom=rng.uniform(8000, 30000, n),
                                 defocus_v_angstrom=rng.uniform(8000, 30000, n),
                                 defocus_angle_deg=rng.uniform(-180, 180, n),
                                 voltage_kv=np.where(np.arange(n) % 2, 300.0, 200.0), cs_mm=2.7,
                                 amplitude_contrast=0.1, phase_shift_deg=rng.uniform(0, 90, n))
    return poses, ctf


def test_write_star_then_read_gives_same_poses_and_ctf(tmp_path):
    n, d, apix = 40, 128, 1.3
    poses, ctf = _random_poses_ctf(n, d, apix)
    names = image_names_for_stack("stack.mrcs", n)
    write_relion31_star(tmp_path / "out.star", names, poses=poses, ctf=ctf)
    table = read_star(tmp_path / "out.star")
    assert len(table.optics) == 2  # two voltages -> two optics groups
    assert table.particles["rlnImageName"].tolist() == names
    back = parse_star_poses_ctf(table)  # D and Apix from the optics block
    np.testing.assert_allclose(back.poses.rots, poses.rots, atol=1e-5)
    np.testing.assert_allclose(back.poses.trans_frac, poses.trans_frac, atol=1e-7)
    np.testing.assert_allclose(back.ctf.table, ctf.table, rtol=1e-6, atol=1e-5)


def test_fixture_poses_survive_a_relion31_round_trip(tmp_path, fix):
    ref = parse_star_poses_ctf(fix / "FinalRefinement-OriginalParticles-PfCRT.star", d=300,
                               pixel_size_angstrom=1.035, amplitude_contrast=0.1)
    write_relion31_star(tmp_path / "r31.star", image_names_for_stack("p.mrcs", 5), poses=ref.poses, ctf=ref.ctf)
    back = parse_star_poses_ctf(tmp_path / "r31.star")
    np.testing.assert_allclose(back.poses.rots, ref.poses.rots, atol=1e-5)
    np.testing.assert_allclose(back.poses.trans_frac, ref.poses.trans_frac, atol=1e-7)
    np.testing.assert_allclose(back.ctf.table, ref.ctf.table, rtol=1e-6)


def test_cs_subset_round_trip(tmp_path, fix):
    table = read_cs(fix / "cryosparc_P12_J24_001_particles.cs")
    ind = np.array([2018, 0, 7, 7, 100])
    write_cs(tmp_path / "sub.cs", table[ind])
    back = read_cs(tmp_path / "sub.cs")
    assert back.dtype == table.dtype
    np.testing.assert_array_equal(back, table[ind])
    full = parse_cs_poses_ctf(table)
    sub = parse_cs_poses_ctf(tmp_path / "sub.cs")
    np.testing.assert_array_equal(sub.poses.rots, full.poses.rots[ind])


def test_downsampled_box_needs_matching_pixel_size(fix):
    star = fix / "relion31.star"  # 256 px, 2.806 A/px, shifts in Angstrom
    native = parse_star_poses_ctf(star)
    halved = parse_star_poses_ctf(star, d=128, pixel_size_angstrom=2.806 * 2)
    # The shift as a fraction of the box does not depend on the sampling.
    np.testing.assert_allclose(halved.poses.trans_frac, native.poses.trans_frac, atol=1e-7)
    assert np.abs(native.poses.trans_frac).max() > 1e-4  # non-zero shifts, so the check bites
    with pytest.warns(UserWarning, match="--Apix"):
        parse_star_poses_ctf(star, d=128)
