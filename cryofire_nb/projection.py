"""Projection of voxel volumes: trilinear interpolation and its exact adjoint, the
Fourier-slice projector, a real-space projector for checks, and slice backprojection.

Conventions: volumes indexed ``[z, y, x]`` with the centre at ``d // 2``; rotation ``R``
takes the central slice at ``[kx, ky, 0] @ R`` (Fourier) and pixel (x, y) of a projection
integrates the volume along z at ``[x, y, z] @ R`` (real space).

Dimension letters: b batch, d box, n points per image, c channels.
"""

from __future__ import annotations

import torch

from .fft import fft3_center, freqs_1d, ifft2_center

Tensor = torch.Tensor


def _corners(pos: Tensor, size: int):
    """Trilinear corners of points ``pos`` (..., 3) as (x, y, z) voxel indices.

    Returns flat indices (..., 8) into a ``size^3`` [z, y, x] grid and weights (..., 8);
    corners outside the grid get weight 0 (and a safe index 0). Corner order: z slowest,
    x fastest; weight ``w_x * w_y * w_z``. The per-axis pieces (index, weight, inside)
    are computed once and combined, which is a few times faster than per corner.
    """
    p0 = torch.floor(pos)
    frac = pos - p0  # (..., 3)
    p0 = p0.long()
    axes = []  # per axis (x, y, z): ((index, weight, inside) of the low and high corner)
    for a in range(3):
        lo, f = p0[..., a], frac[..., a]
        hi = lo + 1
        axes.append(((lo, 1 - f, (lo >= 0) & (lo < size)), (hi, f, (hi >= 0) & (hi < size))))
    idx, wts = [], []
    for cz, wz, vz in axes[2]:
        for cy, wy, vy in axes[1]:
            zy = cz * size + cy
            vzy = vz & vy
            for cx, wx, vx in axes[0]:
                inside = vx & vzy
                flat = zy * size + cx
                w = wx * wy * wz
                idx.append(torch.where(inside, flat, torch.zeros_like(flat)))
                wts.append(torch.where(inside, w, torch.zeros_like(w)))
    return torch.stack(idx, -1), torch.stack(wts, -1)


def interp_trilinear(volume: Tensor, pos: Tensor) -> Tensor:
    """Sample ``volume`` (size, size, size) [z, y, x] (real or complex) at voxel
    positions ``pos`` (..., 3) given as (x, y, z) indices; zero outside the grid."""
    size = volume.shape[-1]
    idx, w = _corners(pos, size)
    vals = volume.reshape(-1)[idx]  # (..., 8)
    return (vals * w.to(vals.dtype if not vals.is_complex() else w.dtype)).sum(-1)


def scatter_trilinear(values: Tensor, pos: Tensor, size: int) -> Tensor:
    """Adjoint of :func:`interp_trilinear`: spread ``values`` (...) at ``pos`` (..., 3)
    onto a (size, size, size) grid. ``<interp(V, p), u> == <V, scatter(u, p)>``."""
    idx, w = _corners(pos, size)
    out = torch.zeros(size ** 3, dtype=values.dtype, device=values.device)
    out.index_add_(0, idx.reshape(-1), (values[..., None] * w.to(values.dtype if not values.is_complex() else w.dtype)).reshape(-1))
    return out.reshape(size, size, size)


def _pad_center(volume: Tensor, size: int) -> Tensor:
    d = volume.shape[-1]
    lo = size // 2 - d // 2
    out = volume.new_zeros(size, size, size)
    out[lo:lo + d, lo:lo + d, lo:lo + d] = volume
    return out


def slice_positions(rots: Tensor, d: int, size: int) -> Tensor:
    """Voxel positions (b, d*d, 3) in a centred ``size^3`` Fourier grid of the central
    slices of a ``d x d`` image (DFT frequencies ``(j - d//2)/d``) for rotations ``rots``."""
    k = freqs_1d(d, dtype=rots.dtype, device=rots.device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack([kx.flatten(), ky.flatten(), torch.zeros_like(kx).flatten()], -1)  # (n, 3)
    return plane @ rots * size + size // 2  # (b, n, 3)


def volume_spectrum(volume: Tensor, oversample: int = 2) -> Tensor:
    """Zero-padded centred 3-D DFT of a real volume, ready for :func:`slice_spectrum`."""
    d = volume.shape[-1]
    return fft3_center(_pad_center(volume, oversample * d))


def slice_spectrum(spectrum: Tensor, rots: Tensor, d: int) -> Tensor:
    """Central slices (b, d, d) (centred 2-D DFT of the projections) of a padded spectrum."""
    size = spectrum.shape[-1]
    pos = slice_positions(rots, d, size)
    re = interp_trilinear(spectrum.real.contiguous(), pos)
    im = interp_trilinear(spectrum.imag.contiguous(), pos)
    return torch.complex(re, im).reshape(-1, d, d)


def project_fourier(volume: Tensor, rots: Tensor, oversample: int = 2, batch_size: int = 256) -> Tensor:
    """Projections (b, d, d) of a real volume (d, d, d) by the Fourier-slice theorem.

    The volume is zero-padded ``oversample`` times before the 3-D DFT so trilinear
    interpolation of the spectrum is accurate.
    """
    d = volume.shape[-1]
    spec = volume_spectrum(volume, oversample)
    out = []
    for i in range(0, rots.shape[0], batch_size):
        out.append(ifft2_center(slice_spectrum(spec, rots[i:i + batch_size].to(volume.dtype), d)).real)
    return torch.cat(out) if out else volume.new_zeros(0, d, d)


def project_real(volume: Tensor, rots: Tensor, batch_size: int = 16) -> Tensor:
    """Projections (b, d, d) by line integrals in real space (trilinear sampling).

    Pixel (x, y) integrates the volume along z at points ``[x, y, z] @ R`` (coordinates
    in pixels relative to the centre ``d // 2``). Slow; for checks.
    """
    d = volume.shape[-1]
    r = torch.arange(d, dtype=volume.dtype, device=volume.device) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)  # (d^3, 3) ordered [z][y][x]
    out = []
    for i in range(0, rots.shape[0], batch_size):
        pos = pts @ rots[i:i + batch_size].to(volume.dtype) + d // 2  # (b, d^3, 3)
        vals = interp_trilinear(volume, pos).reshape(-1, d, d, d)
        out.append(vals.sum(1))  # sum over z -> (b, y, x)
    return torch.cat(out) if out else volume.new_zeros(0, d, d)
