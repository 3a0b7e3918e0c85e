"""Decoders: shapes, fixed Fourier features, and eval_volume's orientation convention."""

import itertools

import pytest
import torch

from cryofire_nb.fft import ht2_center, ht3_center
from cryofire_nb.lattice import Lattice
from cryofire_nb.model.decoder import (HyperVolume, HyperVolumeConfig, VoxelVolume,
                                       VoxelVolumeConfig, lattice_3d)
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import random_rotations


def signed_permutations():
    """The 24 proper rotations that map lattice points onto lattice points."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([-1.0, 1.0], repeat=3):
            r = torch.zeros(3, 3, dtype=torch.float64)
            for i, j in enumerate(perm):
                r[i, j] = signs[i]
            if torch.linalg.det(r) > 0:
                out.append(r)
    return torch.stack(out)


@pytest.mark.parametrize("cls,cfg", [(HyperVolume, HyperVolumeConfig(16, zdim=3, hidden=32)),
                                     (VoxelVolume, VoxelVolumeConfig(16, zdim=3)),
                                     (HyperVolume, HyperVolumeConfig(16, zdim=0, hidden=32))])
def test_forward_shapes(cls, cfg):
    dec = cls(cfg)
    coords = torch.rand(4, 50, 3) - 0.5
    z = torch.randn(4, cfg.zdim) if cfg.zdim else None
    assert dec(coords, z).shape == (4, 50)
    if cfg.zdim:
        with pytest.raises(ValueError):
            dec(coords, None)
    assert dec.eval_volume(None if z is None else z[0]).shape == (16, 16, 16)


def test_fourier_features_fixed_by_seed():
    a = HyperVolume(HyperVolumeConfig(64, seed=3)).features.freqs
    b = HyperVolume(HyperVolumeConfig(64, seed=3)).features.freqs
    c = HyperVolume(HyperVolumeConfig(64, seed=4)).features.freqs
    assert a.shape == (3 * 32, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.std().item() == pytest.approx(0.5 * 32, rel=0.15)
    assert "features.freqs" in HyperVolume(HyperVolumeConfig(64)).state_dict()
    assert all(p is not a for p in HyperVolume(HyperVolumeConfig(64)).parameters())


def _proj_vs_slice(dec, vol, rots, z, d):
    """Relative error per rotation between the Hartley transform of eval_volume's
    projections and the decoder's own central slices, inside radius d/2 - 1/2."""
    lat = Lattice(d, dtype=torch.float64)
    h_proj = ht2_center(project_fourier(vol, rots)).reshape(len(rots), -1)  # (b, d*d)
    zz = None if z is None else z.expand(len(rots), -1)
    h_dec = dec(lat.slice_coords(rots), zz).reshape(len(rots), d + 1, d + 1)[:, :-1, :-1]
    h_dec = h_dec.reshape(len(rots), -1)
    keep = lat.radius_px.reshape(d + 1, d + 1)[:-1, :-1].reshape(-1) < d / 2 - 0.5
    diff = (h_proj - h_dec)[:, keep].norm(dim=1)
    return diff / h_dec[:, keep].norm(dim=1)


def test_eval_volume_projection_matches_decoder_slice():
    torch.manual_seed(0)
    d = 16
    dec = HyperVolume(HyperVolumeConfig(d, zdim=2, hidden=32, n_layers=1)).double()
    z = torch.randn(1, 2, dtype=torch.float64)
    with torch.no_grad():
        vol = dec.eval_volume(z)  # (d, d, d) [z, y, x]
        # Rotations that keep slices on lattice points: exact agreement (no interpolation).
        perms = signed_permutations()
        assert _proj_vs_slice(dec, vol, perms, z, d).max() < 1e-10
        # Negative controls: wrong axis order of the volume, or transposed rotations.
        assert _proj_vs_slice(dec, vol.permute(2, 1, 0), perms, z, d).min() > 0.2
        asym = [i for i, r in enumerate(perms) if not torch.equal(r, r.T)]  # project at R,
        lat = Lattice(d, dtype=torch.float64)
        p = ht2_center(project_fourier(vol, perms[asym])).reshape(len(asym), -1)
        s = dec(lat.slice_coords(perms[asym].transpose(-1, -2)), z.expand(len(asym), -1))  # R^T
        s = s.reshape(len(asym), d + 1, d + 1)[:, :-1, :-1].reshape(len(asym), -1)
        assert ((p - s).norm(dim=1) / s.norm(dim=1)).min() > 0.2
        # Generic rotations: agreement up to the projector's interpolation error.
        rots = random_rotations(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        assert _proj_vs_slice(dec, vol, rots, z, d).max() < 0.15
        assert _proj_vs_slice(dec, vol.permute(2, 1, 0), rots, z, d).median() > 0.3


def test_voxel_volume_is_exact_on_lattice():
    d = 8
    vol = torch.randn(d, d, d, dtype=torch.float64)
    dec = VoxelVolume(VoxelVolumeConfig(d)).double()
    with torch.no_grad():
        dec.grids[0, :d, :d, :d] = ht3_center(vol)
        dec.grids[0, d, :, :] = 7.0  # the +1/2 planes are dropped by eval_volume
        dec.grids[0, :, d, :] = 7.0
        dec.grids[0, :, :, d] = 7.0
        assert torch.allclose(dec.eval_volume(sphere=False), vol)
        pts = lattice_3d(d, torch.float64).reshape(1, -1, 3)
        assert torch.allclose(dec(pts)[0], dec.grids[0].reshape(-1))
        # halfway between two lattice points along x: the mean of the two
        mid = pts[:, :1] + torch.tensor([0.5 / d, 0.0, 0.0], dtype=torch.float64)
        assert torch.allclose(dec(mid)[0, 0], dec.grids[0, 0, 0, :2].mean())


def test_voxel_volume_low_rank_basis_is_linear_in_z():
    dec = VoxelVolume(VoxelVolumeConfig(8, zdim=2, init_std=1.0)).double()
    coords = (torch.rand(3, 20, 3, dtype=torch.float64) - 0.5)
    z1, z2 = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    v0 = dec(coords, torch.zeros(3, 2, dtype=torch.float64))
    lhs = dec(coords, z1 + z2) - v0
    rhs = (dec(coords, z1) - v0) + (dec(coords, z2) - v0)
    assert torch.allclose(lhs, rhs)
    assert not torch.allclose(dec(coords, z1), v0)
