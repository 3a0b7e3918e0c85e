"""Centred Fourier/Hartley transforms, translations and Fourier cropping (cryofire_nb.fft)
on tiny grids, even and odd sizes, float32 and float64."""

from __future__ import annotations

import math

import pytest
import torch

from cryofire_nb.fft import (fft2_center, fourier_crop, ht2_center, ht3_center, ifft2_center, iht2_center,
                             iht3_center, symmetrize_ht, translate_ht, translate_images, unsymmetrize_ht)
from cryofire_nb.lattice import Lattice
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import random_rotations

SIZES = [8, 9]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _images(b: int, d: int, dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _smooth_volume(d: int, seed: int = 0) -> torch.Tensor:
    """A few Gaussian blobs, band-limited well inside Nyquist, (d, d, d) float64."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    v = torch.zeros(d, d, d, dtype=torch.float64)
    for _ in range(6):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * d / 2
        v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * (d / 10) ** 2))
    return v


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fft_and_hartley_inverses(d, dtype):
    x = _images(3, d, dtype)
    torch.testing.assert_close(ifft2_center(fft2_center(x)).real, x, **TOL[dtype])
    torch.testing.assert_close(iht2_center(ht2_center(x)), x, **TOL[dtype])
    f = fft2_center(x)
    torch.testing.assert_close(ht2_center(x), f.real - f.imag, **TOL[dtype])
    v = _images(d, d, dtype, seed=1)  # a (d, d, d) volume
    torch.testing.assert_close(iht3_center(ht3_center(v)), v, **TOL[dtype])
    # Centring: a delta at index d // 2 has a flat, real spectrum.
    delta = torch.zeros(d, d, dtype=dtype)
    delta[d // 2, d // 2] = 1
    torch.testing.assert_close(fft2_center(delta), torch.ones(d, d, dtype=f.dtype), **TOL[dtype])


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_translate_images_direction_and_round_trip(d, dtype):
    c = d // 2
    delta = torch.zeros(1, d, d, dtype=dtype)
    delta[0, c, c] = 1
    moved = translate_images(delta, torch.tensor([[2.0, 1.0]], dtype=dtype))  # +x by 2, +y by 1
    expected = torch.zeros_like(delta)
    expected[0, c + 1, c + 2] = 1  # y -> row, x -> column
    torch.testing.assert_close(moved, expected, **TOL[dtype])
    x = _images(4, d, dtype)
    if d % 2 == 0:
        # A sub-pixel shift of the unpaired Nyquist frequency (-1/2) is not a real image;
        # translate_images keeps the real part, so round trips need band-limited images.
        f = fft2_center(x)
        f[:, 0, :] = 0
        f[:, :, 0] = 0
        x = ifft2_center(f).real
    t = torch.tensor([[0.3, -1.7], [2.5, 0.0], [-3.2, 1.1], [0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(translate_images(translate_images(x, t), -t), x, **TOL[dtype])
    # Integer shifts are exact permutations for any image (periodic boundary).
    y = _images(2, d, dtype, seed=7)
    torch.testing.assert_close(translate_images(y, torch.tensor([[3.0, -2.0]] * 2, dtype=dtype)),
                               torch.roll(y, shifts=(-2, 3), dims=(-2, -1)), **TOL[dtype])


def test_translate_images_subpixel_moves_the_centroid():
    d = 32
    r = torch.arange(d, dtype=torch.float64) - d // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    blob = torch.exp(-(xx ** 2 + yy ** 2) / (2 * 2.0 ** 2))[None]
    t = torch.tensor([[1.3, -0.6]], dtype=torch.float64)
    moved = translate_images(blob, t)[0]
    centroid = torch.stack([(moved * xx).sum(), (moved * yy).sum()]) / moved.sum()
    torch.testing.assert_close(centroid, t[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_translate_ht_agrees_with_translate_images(dtype):
    d = 16
    x = torch.as_tensor(_smooth_volume(d, seed=2)[::2].sum(0), dtype=dtype)[None].repeat(3, 1, 1)
    x = x + 0.1 * _images(3, d, dtype, seed=3)  # not band-limited: checks every lattice point
    t = torch.tensor([[1.5, -2.25], [-0.4, 3.0], [0.0, 0.0]], dtype=dtype)
    lat = Lattice(d, dtype=dtype)
    h = symmetrize_ht(ht2_center(x)).reshape(3, -1)  # (b, (d+1)^2) Hartley
    got = translate_ht(h, lat.coords_xy, t).reshape(3, d + 1, d + 1)
    want = symmetrize_ht(ht2_center(translate_images(x, t)))
    # The Nyquist row/column (-1/2 copied to +1/2) has no partner inside the box: compare inside.
    inside = lat.radius_px.reshape(d + 1, d + 1) < d / 2
    torch.testing.assert_close(got[:, inside], want[:, inside], **TOL[dtype])
    torch.testing.assert_close(unsymmetrize_ht(symmetrize_ht(ht2_center(x))), ht2_center(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fourier_crop_keeps_a_constant(dtype):
    img = torch.full((2, 9, 9), 3.5, dtype=dtype)
    torch.testing.assert_close(fourier_crop(img, 6), torch.full((2, 6, 6), 3.5, dtype=dtype), **TOL[dtype])
    vol = torch.full((10, 10, 10), -1.25, dtype=dtype)
    torch.testing.assert_close(fourier_crop(vol, 4, ndim=3), torch.full((4, 4, 4), -1.25, dtype=dtype), **TOL[dtype])
    with pytest.raises(ValueError):
        fourier_crop(img, 5)


@pytest.mark.parametrize("d", [16, 17])
def test_fourier_crop_commutes_with_projection(d):
    """Projecting a cropped volume = cropping the projection (times d_new / d, since a
    projection sums d_new instead of d voxels): exactly at the identity, closely otherwise."""
    d_new = 10
    v = _smooth_volume(d, seed=4)
    eye = torch.eye(3, dtype=torch.float64)[None]
    a = project_fourier(fourier_crop(v, d_new, ndim=3), eye)
    b = fourier_crop(project_fourier(v, eye), d_new) * (d_new / d)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    rots = random_rotations(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = project_fourier(fourier_crop(v, d_new, ndim=3), rots)
    b = fourier_crop(project_fourier(v, rots), d_new) * (d_new / d)
    rel = (a - b).norm() / b.norm()
    assert rel < 0.03, float(rel)
    # ... and the crop is not the identity: the pixel size really changed.
    assert (project_fourier(v, rots)[:, :d_new, :d_new] - a).norm() > 0.5 * a.norm()


def test_fourier_crop_lowpasses_like_theory():
    """A cosine below the new Nyquist survives cropping; one above it is removed."""
    d, d_new = 32, 16
    x = torch.arange(d, dtype=torch.float64) - d // 2
    low = torch.cos(2 * math.pi * 3 * x / d)[None, None].expand(1, d, d)  # 3 cycles per box
    high = torch.cos(2 * math.pi * 12 * x / d)[None, None].expand(1, d, d)  # above 8
    xn = torch.arange(d_new, dtype=torch.float64) - d_new // 2
    torch.testing.assert_close(fourier_crop(low, d_new), torch.cos(2 * math.pi * 3 * xn / d_new)[None, None].expand(1, d_new, d_new))
    assert fourier_crop(high, d_new).abs().max() < 1e-10
