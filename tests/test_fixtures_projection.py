"""Our projector against projections made by other programs (``../shared/fixtures``):
cryoDRGN's toy projections and RELION's ``relion_project`` output from ASPIRE's tests.

These pin the rotation convention (incl. RELION Euler angles), the shift sign and the
box centre. Every check also tries the wrong choice and requires it to fail.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from cryofire_nb.fft import fft3_center, fourier_crop, freqs_1d, ifft3_center, translate_images
from cryofire_nb.io.mrc import read_mrc
from cryofire_nb.io.star import read_star
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import relion_euler_to_matrix


def per_image_corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each image pair, (b,)."""
    a = a.double() - a.double().mean((-1, -2), keepdim=True)
    b = b.double() - b.double().mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / (a.norm(dim=(-1, -2)) * b.norm(dim=(-1, -2)))


def translate_volume(vol: torch.Tensor, shift_voxels: float) -> torch.Tensor:
    """Move a volume's content by ``+shift_voxels`` along x, y and z (Fourier phase ramp)."""
    d = vol.shape[-1]
    k = freqs_1d(d, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    phase = -2 * math.pi * shift_voxels * (kx + ky + kz)
    return ifft3_center(fft3_center(vol) * torch.polar(torch.ones_like(phase), phase)).real


# --------------------------------------------------------------------------- cryoDRGN toy


def test_toy_projections_match_cryodrgn(fixtures_dir):
    fx = fixtures_dir / "cryodrgn"
    vol = torch.as_tensor(read_mrc(fx / "toymodel_small_nocenter.mrc").data, dtype=torch.float64)
    images = torch.as_tensor(read_mrc(fx / "toy_projections.mrcs").data, dtype=torch.float64)
    with open(fx / "toy_angles.pkl", "rb") as f:
        rots = torch.as_tensor(np.asarray(pickle.load(f)), dtype=torch.float64)
    assert vol.shape == (30, 30, 30) and images.shape == (1000, 30, 30)
    sub = slice(0, 400)  # plenty for a mean; keeps the test quick
    good = per_image_corr(project_fourier(vol, rots[sub]), images[sub])
    transposed = per_image_corr(project_fourier(vol, rots[sub].transpose(1, 2)), images[sub])
    assert float(good.mean()) >= 0.99, float(good.mean())
    assert float(good.min()) >= 0.95, float(good.min())
    assert float(transposed.mean()) < 0.7, float(transposed.mean())


# --------------------------------------------------------------------------- RELION (ASPIRE)


def _relion(fixtures_dir, name: str):
    """(images (n, d, d), rotations (n, 3, 3), shifts (n, 2) px) of an ASPIRE RELION fixture."""
    fx = fixtures_dir / "aspire"
    df = read_star(fx / f"{name}.star").particles
    images = torch.as_tensor(read_mrc(fx / f"{name}.mrcs").data, dtype=torch.float64)
    rots = relion_euler_to_matrix(torch.as_tensor(df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)))
    if "rlnOriginX" in df.columns:  # RELION 3.0 style: pixels
        shift_px = df[["rlnOriginX", "rlnOriginY"]].to_numpy(np.float64)
    else:  # Angstrom; these files were made with --angpix 5 but list no pixel size, and all are 0
        shift_px = df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64)
        assert np.all(shift_px == 0)
    return images, rots, torch.as_tensor(shift_px)


@pytest.fixture(scope="module")
def ribosome(fixtures_dir):
    return torch.as_tensor(np.load(fixtures_dir / "aspire" / "clean70SRibosome_vol.npy"), dtype=torch.float64)


# ASPIRE made the 64-px reference volume with ``Volume.downsample(64)`` from the 65^3
# ribosome. Until ASPIRE PR #1162 (issue #1155, July 2024) that method Fourier-cropped
# ``fftshift(fftn(v))`` -- a transform whose real-space origin is voxel 0, not the centre --
# and inverted with ``ifftn(ifftshift(...))``. Resampling 65 -> 64 about voxel 0 puts the
# content centred at voxel 32 of 65 at 32 * 64 / 65 = 31.51 instead of 32: the volume
# RELION projected is our centred ``fourier_crop`` moved by -32/65 voxel along x, y, z.
# (PR #1162 switched to centred FFTs; ASPIRE later renamed this data rln_proj_64_centered.)
ASPIRE_OLD_DOWNSAMPLE_SHIFT = -32 / 65


def test_relion_project_64(fixtures_dir, ribosome):
    images, rots, _ = _relion(fixtures_dir, "rln_proj_64")
    vol64 = fourier_crop(ribosome, 64, ndim=3)
    corrected = per_image_corr(project_fourier(translate_volume(vol64, ASPIRE_OLD_DOWNSAMPLE_SHIFT), rots), images)
    plain = per_image_corr(project_fourier(vol64, rots), images)
    assert float(corrected.min()) >= 0.99, corrected
    # Without the old-ASPIRE half-voxel offset the match is clearly worse (0.95-0.99).
    assert float(plain.mean()) < float(corrected.mean()) - 0.01, (plain, corrected)
    transposed = per_image_corr(project_fourier(translate_volume(vol64, ASPIRE_OLD_DOWNSAMPLE_SHIFT),
                                                rots.transpose(1, 2)), images)
    assert float(transposed.max()) < 0.8, transposed


def test_relion_project_64_shifted(fixtures_dir, ribosome):
    """A RELION particle is the centred projection translated by MINUS (_rlnOriginX, Y).
    This stack's reference was made with a centred crop (no half-voxel offset)."""
    images, rots, shift_px = _relion(fixtures_dir, "rln_proj_64_shifted")
    assert shift_px.abs().min() > 1  # the shifts are real, several pixels
    proj = project_fourier(fourier_crop(ribosome, 64, ndim=3), rots)
    minus = per_image_corr(translate_images(proj, -shift_px), images)
    plus = per_image_corr(translate_images(proj, shift_px), images)
    assert float(minus.min()) >= 0.98, minus
    assert float(plus.max()) < 0.3, plus


def test_relion_project_65_odd_box(fixtures_dir, ribosome):
    """Odd box: RELION's projections are ours moved by +1 px in x and y (its odd-box
    centre is one pixel further than d // 2 = 32); ASPIRE's interop test applies the
    same 1-px offset. With our centre alone the match is only ~0.85."""
    images, rots, _ = _relion(fixtures_dir, "rln_proj_65")
    assert images.shape[-1] == 65
    proj = project_fourier(ribosome, rots)
    one = torch.ones(len(rots), 2, dtype=torch.float64)
    offset = per_image_corr(translate_images(proj, one), images)
    centred = per_image_corr(proj, images)
    wrong_way = per_image_corr(translate_images(proj, -one), images)
    assert float(offset.min()) >= 0.99, offset
    assert float(centred.max()) < 0.95, centred
    assert float(wrong_way.max()) < float(centred.min()), (wrong_way, centred)
