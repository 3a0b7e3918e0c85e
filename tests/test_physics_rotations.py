"""Rotation parametrisations (cryofire_nb.rotations): S2S2, RELION Euler angles (poles
included), cryoSPARC axis-angle poses, quaternions, and the mirror map, including that the
mirror image of a projection is the projection at the mirrored pose."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryofire_nb.fft import translate_images
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import (cryosparc_pose_to_matrix, matrix_to_cryosparc_pose, matrix_to_quaternion,
                                   matrix_to_relion_euler, matrix_to_s2s2, mirror_pose, quaternion_to_matrix,
                                   random_rotations, relion_euler_to_matrix, s2s2_to_matrix)

DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _is_rotation(r: torch.Tensor, atol: float) -> None:
    eye = torch.eye(3, dtype=r.dtype).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_s2s2_gives_proper_rotations_and_round_trips(dtype):
    v = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    r = s2s2_to_matrix(v)
    _is_rotation(r, ATOL[dtype] * 10)
    torch.testing.assert_close(s2s2_to_matrix(matrix_to_s2s2(r)), r, atol=ATOL[dtype] * 10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relion_euler_round_trip_including_poles(dtype):
    g = torch.Generator().manual_seed(1)
    e = torch.rand(40, 3, generator=g, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0]) - torch.tensor([180.0, 0.0, 180.0])
    poles = torch.tensor([[30.0, 0.0, 40.0], [-75.0, 180.0, 10.0], [0.0, 0.0, 0.0], [120.0, 180.0, -60.0]])
    e = torch.cat([e, poles.double()]).to(dtype)
    r = relion_euler_to_matrix(e).to(dtype)
    _is_rotation(r, ATOL[dtype] * 10)
    back = relion_euler_to_matrix(matrix_to_relion_euler(r))
    torch.testing.assert_close(back.to(dtype), r, atol=ATOL[dtype] * 100, rtol=0)
    # Away from the poles the angles themselves come back (mod 360).
    e2 = matrix_to_relion_euler(r[:40]).double()
    diff = (e2 - e[:40].double() + 180) % 360 - 180
    assert diff.abs().max() < (1e-3 if dtype == torch.float32 else 1e-7)


def test_relion_euler_matches_the_cryodrgn_fixture(fixtures_dir):
    """``pose.star.pkl`` holds cryoDRGN's rotations for the STAR file's (rot, tilt, psi)."""
    from cryofire_nb.io.star import read_star

    df = read_star(fixtures_dir / "cryodrgn" / "FinalRefinement-OriginalParticles-PfCRT.star").particles
    euler = torch.tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64))
    with open(fixtures_dir / "cryodrgn" / "pose.star.pkl", "rb") as f:
        rots, _ = pickle.load(f)
    torch.testing.assert_close(relion_euler_to_matrix(euler), torch.as_tensor(rots, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (relion_euler_to_matrix(euler).transpose(1, 2) - torch.as_tensor(rots, dtype=torch.float64)).abs().max() > 0.1


@pytest.mark.parametrize("dtype", DTYPES)
def test_cryosparc_pose_round_trip(dtype):
    r = random_rotations(60, generator=torch.Generator().manual_seed(2), dtype=dtype)
    pose = matrix_to_cryosparc_pose(r)
    torch.testing.assert_close(cryosparc_pose_to_matrix(pose).to(dtype), r, atol=ATOL[dtype] * 100, rtol=0)
    # Small and near-pi angles too.
    v = torch.tensor([[1e-9, 0, 0], [0, 3.14159, 0], [0.5, -0.2, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(cryosparc_pose_to_matrix(matrix_to_cryosparc_pose(cryosparc_pose_to_matrix(v))),
                               cryosparc_pose_to_matrix(v), atol=1e-8, rtol=0)


def test_cryosparc_pose_matches_the_cryodrgn_fixture(fixtures_dir):
    from cryofire_nb.io.cs import read_cs

    cs = read_cs(fixtures_dir / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs")
    pose = torch.as_tensor(np.asarray(cs["alignments3D/pose"], dtype=np.float64))
    with open(fixtures_dir / "cryodrgn" / "pose.cs.pkl", "rb") as f:
        rots, _ = pickle.load(f)
    torch.testing.assert_close(cryosparc_pose_to_matrix(pose), torch.as_tensor(rots, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quaternion_round_trip(dtype):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(80, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q).to(dtype)  # canonical sign: w >= 0
    r = quaternion_to_matrix(q)
    _is_rotation(r, ATOL[dtype] * 10)
    torch.testing.assert_close(matrix_to_quaternion(r), q, atol=ATOL[dtype] * 100, rtol=0)
    # Rotation by 90 degrees about z (w = cos 45, z = sin 45) maps x to y.
    qz = torch.tensor([2 ** -0.5, 0, 0, 2 ** -0.5], dtype=torch.float64)
    torch.testing.assert_close(quaternion_to_matrix(qz) @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mirror_pose_is_an_involution(dtype):
    r = random_rotations(20, generator=torch.Generator().manual_seed(4), dtype=dtype)
    t = torch.randn(20, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    rm, tm = mirror_pose(r, t)
    _is_rotation(rm, ATOL[dtype] * 10)
    assert (rm - r).abs().max() > 0.1
    r2, t2 = mirror_pose(rm, tm)
    torch.testing.assert_close(r2, r)
    torch.testing.assert_close(t2, t)


def _mirror_x(img: torch.Tensor) -> torch.Tensor:
    """I'(x, y) = I(-x, y) about the centre column d // 2 (periodic for even d)."""
    d = img.shape[-1]
    out = img.flip(-1)
    return torch.roll(out, 1, dims=-1) if d % 2 == 0 else out


@pytest.mark.parametrize("d", [16, 17])
def test_mirrored_projection_is_projection_at_mirrored_pose(d):
    g = torch.Generator().manual_seed(6)
    r1 = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r1, r1, r1, indexing="ij")
    vol = torch.zeros(d, d, d, dtype=torch.float64)
    for _ in range(5):  # asymmetric blobs
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * d / 2
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 1.6 ** 2))
    rots = random_rotations(5, generator=g, dtype=torch.float64)
    shift_px = (torch.rand(5, 2, generator=g, dtype=torch.float64) - 0.5) * 4
    particles = translate_images(project_fourier(vol, rots), -shift_px)
    rots_m, shift_m = mirror_pose(rots, shift_px)
    mirrored = translate_images(project_fourier(vol, rots_m), -shift_m)
    tol = 1e-9 if d % 2 else 1e-3  # even boxes: the unpaired Nyquist column differs slightly
    torch.testing.assert_close(_mirror_x(particles), mirrored, atol=tol * particles.abs().max(), rtol=0)
    # The unmirrored pose does not explain the mirrored image.
    assert (_mirror_x(particles) - particles).abs().max() > 0.1 * particles.abs().max()
