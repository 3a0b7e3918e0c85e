"""Mixed precision keeps the geometry exact: under bf16 autocast the slice coordinates,
the Fourier-feature phases and the shift phases are computed in fp32, so only the
networks' own arithmetic is rounded. Checked with CPU autocast (the same op lists decide
what runs in bf16 on a GPU)."""

from __future__ import annotations

import math

import torch

from cryofire_nb.fft import translate_ht
from cryofire_nb.lattice import Lattice
from cryofire_nb.model.decoder import HyperVolume, HyperVolumeConfig
from cryofire_nb.model.losses import slice_loss
from cryofire_nb.rotations import random_rotations

D = 128


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_slice_coordinates_stay_fp32_under_autocast():
    lat = Lattice(D)
    rots = random_rotations(8, generator=torch.Generator().manual_seed(0))
    ref = lat.slice_coords(rots.float())
    with bf16():
        got = lat.slice_coords(rots.float())
    assert got.dtype == torch.float32
    # in voxels of the (d+1)^3 grid: bf16 would be off by up to ~0.25 voxel at the edge
    assert (got - ref).abs().max().item() * D < 1e-4


def test_shift_phases_stay_fp32_under_autocast():
    lat = Lattice(D)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(4, lat.n, generator=g)
    shift = torch.rand(4, 2, generator=g) * 16 - 8  # up to D/16 px
    ref = translate_ht(h, lat.coords_xy, shift)
    with bf16():
        got = translate_ht(h, lat.coords_xy, shift)
    assert (got - ref).abs().max().item() < 1e-4 * h.abs().max().item()


def test_fourier_feature_phases_stay_fp32_under_autocast():
    dec = HyperVolume(HyperVolumeConfig(d=D, zdim=0, pe_dim=D // 2, hidden=32, n_layers=1, seed=0))
    lat = Lattice(D)
    rots = random_rotations(2, generator=torch.Generator().manual_seed(2))
    coords = lat.slice_coords(rots)
    ref = dec.features(coords)
    with bf16():
        got = dec.features(coords)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max().item() < 1e-4


def test_bf16_forward_matches_fp32_within_the_networks_rounding():
    """The whole loss under bf16 autocast against fp32: the relative difference is that of
    bf16 matrix products (8 bits of mantissa: ~0.4% per product, a few % through the
    residual MLP), not the tens of % that bf16 phases gave at d = 128."""
    torch.manual_seed(0)
    dec = HyperVolume(HyperVolumeConfig(d=D, zdim=2, pe_dim=16, hidden=64, n_layers=2, seed=0))
    lat = Lattice(D)
    g = torch.Generator().manual_seed(3)
    b = 4
    rots = random_rotations(b, generator=g)
    shift = torch.rand(b, 2, generator=g) * 16 - 8
    z = torch.randn(b, 2, generator=g)
    h_obs = torch.randn(b, D + 1, D + 1, generator=g)
    mask = lat.mask(D / 2)
    with torch.no_grad():
        ref = slice_loss(dec, rots, shift, z, h_obs, None, lat, mask).per_image
        with bf16():
            got = slice_loss(dec, rots, shift, z, h_obs, None, lat, mask).per_image
    rel = ((got.float() - ref) / ref).abs().max().item()
    assert rel < 0.02, rel
    assert math.isfinite(rel)
