"""Workflows on files made by other programs (cryoDRGN's test data, RELION, cryoSPARC):
downsampling a real stack read through its STAR file, a cryoSPARC refinement through a
RELION 3.1 STAR file and back, a pose set in another frame aligned back, and the voxel
pose search on cryoDRGN's toy projections against the poses that made them.

Read-only use of ``../shared/fixtures`` (see its README); every test skips without it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def test_downsampled_real_stack_keeps_ctf_table_consistent(fix, out_dir):
    from cryofire_nb.ctf import compute_ctf
    from cryofire_nb.io import CtfParams, ImageSource, parse_star_poses_ctf, read_mrc
    from cryofire_nb.io.downsample import downsample_source
    from cryofire_nb.lattice import Lattice

    star = fix / "empiar_10076_7.star"
    src = ImageSource(star, lazy=True)
    ctf = parse_star_poses_ctf(star, d=320).ctf
    apix_new = downsample_source(src, 64, out_dir / "small.mrcs", progress=False)
    small = read_mrc(out_dir / "small.mrcs")
    assert small.data.shape == (7, 64, 64)
    assert abs(apix_new - src.pixel_size_angstrom * 320 / 64) < 1e-6
    assert abs(small.pixel_size_angstrom / apix_new - 1) < 1e-5
    coords = Lattice(64, dtype=torch.float64).coords_xy
    p = CtfParams(torch.as_tensor(ctf.table, dtype=torch.float64))
    direct = compute_ctf(coords / (float(ctf.pixel_size_angstrom[0]) * 320 / 64), p.defocus_u_angstrom,
                         p.defocus_v_angstrom, p.defocus_angle_deg, p.voltage_kv, p.cs_mm, p.amplitude_contrast,
                         p.phase_shift_deg)
    assert float((p.evaluate(coords, 64) - direct).abs().max()) < 1e-12


def test_cryosparc_refinement_through_relion31_star_and_back(fix, out_dir):
    from cryofire_nb.io import image_names_for_stack, parse_cs_poses_ctf, parse_star_poses_ctf, write_relion31_star
    from cryofire_nb.metrics import rotation_errors

    cs = parse_cs_poses_ctf(fix / "cryosparc_P12_J24_001_particles.cs")
    write_relion31_star(out_dir / "as_relion.star", image_names_for_stack("particles.mrcs", len(cs.poses)),
                        poses=cs.poses, ctf=cs.ctf)
    back = parse_star_poses_ctf(out_dir / "as_relion.star")
    assert rotation_errors(back.poses.rots, cs.poses.rots).geodesic_deg.max() < 1e-2
    assert np.abs(back.poses.trans_frac - cs.poses.trans_frac).max() * 180 < 1e-3
    assert np.allclose(back.ctf.table, cs.ctf.table, rtol=1e-5, atol=1e-3)


def test_refinement_in_another_frame_is_aligned_back(fix):
    from cryofire_nb.io import parse_cs_poses_ctf
    from cryofire_nb.metrics import align_poses, mirror_rotations, rotation_errors
    from cryofire_nb.rotations import random_rotations

    rots = parse_cs_poses_ctf(fix / "cryosparc_P12_J24_001_particles.cs").poses.rots
    g = random_rotations(1, torch.Generator().manual_seed(0), dtype=torch.float64)[0]
    other = (mirror_rotations(torch.as_tensor(rots, dtype=torch.float64)) @ g).numpy()
    back = align_poses(other, rots)
    assert back.mirrored
    assert np.median(rotation_errors(back.aligned_rots, rots).geodesic_deg) < 1e-3


@pytest.mark.slow
def test_voxel_search_on_the_toy_stack_finds_the_published_poses(fix):
    """cryoDRGN's 1000 clean toy projections (30 px) read through their STAR file: the
    voxel search, from a random start, agrees with the rotations that made them."""
    from cryofire_nb.abinit import AbinitConfig, run_abinit
    from cryofire_nb.hartley_data import HartleyData
    from cryofire_nb.io import ImageSource, read_mrc, read_poses
    from cryofire_nb.metrics import evaluate_run

    toy = ImageSource(fix / "toy_projections.star", lazy=True)
    hd = HartleyData.from_images(toy, None, invert=False)
    res = run_abinit(hd, AbinitConfig(n_iterations=80, batch_size=100, grid_coarse=(100, 12), grid_fine=(300, 24),
                                      shift_step_fine_px=1.0, refine_rounds=0, seed=0), progress=False)
    published = read_poses(fix / "toy_angles.pkl").rots
    m = evaluate_run(res.rots.float().numpy(), None, published, None, toy.d,
                     pred_volumes=[res.volume.float()], gt_volumes=[read_mrc(fix / "toymodel_small_nocenter.mrc").data])
    assert m.rotations.view.median_deg < 20
    assert m.volumes[0].correlation > 0.8
