"""Projection physics on tiny grids (even and odd boxes, float32 and float64): the Fourier
slice theorem at the identity, the rotation convention, trilinear interpolation and its
adjoint, slice/backprojection adjointness, and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from cryofire_nb.fft import fft2_center, ifft3_center
from cryofire_nb.projection import (dft_plane, project_fourier, project_real, sample_trilinear,
                                    scatter_trilinear, slice_positions)
from cryofire_nb.rotations import random_rotations, rot_z

TOL = {torch.float32: dict(rtol=2e-4, atol=2e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}
SIZES = [8, 9]
DTYPES = [torch.float32, torch.float64]


def _vol(d: int, dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product Re sum(conj(a) b) in float64/complex128."""
    a = a.to(torch.complex128) if a.is_complex() else a.double()
    b = b.to(torch.complex128) if b.is_complex() else b.double()
    return float((a.conj() * b).real.sum()) if (a.is_complex() or b.is_complex()) else float((a * b).sum())


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fourier_slice_at_identity_is_sum_along_z(d, dtype):
    v = _vol(d, dtype)
    eye = torch.eye(3, dtype=dtype)[None]
    expected = v.sum(0)[None]  # volume [z, y, x]: integrate along z -> image [y, x]
    torch.testing.assert_close(project_fourier(v, eye), expected, **TOL[dtype])
    torch.testing.assert_close(project_real(v, eye), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_quarter_turn_about_z_rotates_the_image(dtype):
    """Pixel (x, y) integrates the volume at ``[x, y, z] @ R``; for R = Rz(90 deg),
    ``[x, y, 0] @ R = [y, -x, 0]``, so ``P_R[c + y, c + x] = P_I[c - x, c + y]``."""
    d, c = 9, 4
    v = _vol(d, dtype, seed=1)
    r = rot_z(torch.tensor(math.pi / 2, dtype=torch.float64)).to(dtype)
    p_id = v.sum(0)
    idx = torch.arange(d) - c
    yy, xx = torch.meshgrid(idx, idx, indexing="ij")
    expected = p_id[c - xx, c + yy]
    for proj in (project_fourier(v, r[None])[0], project_real(v, r[None])[0]):
        torch.testing.assert_close(proj, expected, **TOL[dtype])


def test_atom_lands_at_R_times_a():
    """A blob at a = (x, y, z) voxels from the centre appears at image position (R @ a)[:2]."""
    d = 24
    a = torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)
    r1 = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r1, r1, r1, indexing="ij")
    v = torch.exp(-((x - a[0]) ** 2 + (y - a[1]) ** 2 + (z - a[2]) ** 2) / (2 * 1.3 ** 2))
    rots = random_rotations(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    yy, xx = torch.meshgrid(r1, r1, indexing="ij")
    for project, atol in ((project_real, 0.06), (project_fourier, 0.1)):
        for img, r in zip(project(v, rots), rots):
            # Centroid within 4 px of the brightest pixel (the Fourier projector leaves a
            # faint background that would pull a global centroid toward the box centre).
            peak = torch.nonzero(img == img.max())[0]
            w = img * (((yy - r1[peak[0]]) ** 2 + (xx - r1[peak[1]]) ** 2) <= 16)
            centroid = torch.stack([(w * xx).sum(), (w * yy).sum()]) / w.sum()  # (x, y)
            torch.testing.assert_close(centroid, (r @ a)[:2], atol=atol, rtol=0)
    assert (rots[0] @ a)[:2].sub(a[:2]).abs().max() > 1  # a real test: the atom moved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("complex_values", [False, True])
def test_sample_and_scatter_trilinear_are_adjoint(dtype, complex_values):
    g = torch.Generator().manual_seed(3)
    size = 7
    vol = torch.randn(size, size, size, generator=g, dtype=torch.float64).to(dtype)
    pos = (torch.rand(50, 3, generator=g, dtype=torch.float64) * (size + 2) - 1).to(dtype)  # some outside
    u = torch.randn(50, generator=g, dtype=torch.float64).to(dtype)
    if complex_values:
        vol = torch.complex(vol, torch.randn(vol.shape, generator=g, dtype=torch.float64).to(dtype))
        u = torch.complex(u, torch.randn(u.shape, generator=g, dtype=torch.float64).to(dtype))
    lhs = _dot(sample_trilinear(vol[None, None], pos[None]), u)
    rhs = _dot(vol, scatter_trilinear(u[None, None], pos[None], size))
    assert lhs == pytest.approx(rhs, rel=1e-5 if dtype == torch.float32 else 1e-12)
    # Trilinear weights sum to one inside the grid: a constant volume interpolates exactly.
    inside = ((pos >= 0) & (pos <= size - 1)).all(-1)
    ones = torch.ones(size, size, size, dtype=dtype)
    torch.testing.assert_close(sample_trilinear(ones[None, None], pos[inside][None])[0, 0],
                               torch.ones(int(inside.sum()), dtype=dtype))


def _backproject_real(images: torch.Tensor, rots: torch.Tensor, d: int, oversample: int = 2) -> torch.Tensor:
    """Exact adjoint of ``project_fourier`` (real inner products): crop o Re o
    (G^3 ifft3_center) o scatter o (fft2_center / d^2)."""
    size = oversample * d
    pos = slice_positions(dft_plane(d, rots.dtype), rots, size).reshape(1, -1, 3)
    spec = scatter_trilinear(fft2_center(images).reshape(1, 1, -1) / d ** 2, pos, size)[0, 0]
    vol = (ifft3_center(spec) * size ** 3).real
    lo = size // 2 - d // 2
    return vol[lo:lo + d, lo:lo + d, lo:lo + d]


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_projection_and_backprojection_are_adjoint(d, dtype):
    g = torch.Generator().manual_seed(d)
    v = _vol(d, dtype, seed=4)
    rots = random_rotations(3, generator=g, dtype=dtype)
    u = torch.randn(3, d, d, generator=g, dtype=torch.float64).to(dtype)
    lhs = _dot(project_fourier(v, rots), u)
    rhs = _dot(v, _backproject_real(u, rots, d))
    assert lhs == pytest.approx(rhs, rel=1e-4 if dtype == torch.float32 else 1e-11)
    # The adjoint of a *different* set of poses does not satisfy it.
    other = random_rotations(3, generator=g, dtype=dtype)
    assert abs(_dot(v, _backproject_real(u, other, d)) - lhs) > 1e-3 * abs(lhs)


def test_gradcheck_sample_trilinear():
    g = torch.Generator().manual_seed(5)
    vol = torch.randn(5, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    pos = (torch.rand(12, 3, generator=g, dtype=torch.float64) * 3.6 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: sample_trilinear(v[None, None], pos.detach()[None]), (vol,))
    # Away from cell faces the sample is smooth in the positions too.
    assert torch.autograd.gradcheck(lambda p: sample_trilinear(vol.detach()[None, None], p[None]), (pos,), eps=1e-7)


@pytest.mark.parametrize("complex_values", [False, True])
def test_sample_and_scatter_trilinear_are_adjoint_per_batch_and_channel(complex_values):
    """Several volumes (b) of several channels (c), each sampled at its own points."""
    g = torch.Generator().manual_seed(6)
    b, c, size, r = 2, 3, 6, 40
    vol = torch.randn(b, c, size, size, size, generator=g, dtype=torch.float64)
    u = torch.randn(b, c, r, generator=g, dtype=torch.float64)
    if complex_values:
        vol = torch.complex(vol, torch.randn(vol.shape, generator=g, dtype=torch.float64))
        u = torch.complex(u, torch.randn(u.shape, generator=g, dtype=torch.float64))
    pos = torch.rand(b, r, 3, generator=g, dtype=torch.float64) * (size + 2) - 1
    sampled = sample_trilinear(vol, pos)
    assert _dot(sampled, u) == pytest.approx(_dot(vol, scatter_trilinear(u, pos, size)), rel=1e-12)
    for i in range(b):  # each volume at its own points, each channel on its own
        for j in range(c):
            torch.testing.assert_close(sampled[i, j], sample_trilinear(vol[i:i + 1, j:j + 1], pos[i:i + 1])[0, 0])
