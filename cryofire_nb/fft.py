"""Centred Fourier and Hartley transforms, the odd symmetric Hartley lattice, Fourier
cropping and Hartley-domain translations.

Domains: ``x`` real space; ``F`` complex centred Fourier; ``H`` real centred Hartley,
``H = Re(F) - Im(F)``. "Centred" means the zero frequency sits at index ``d // 2`` and the
real-space origin at index ``d // 2`` (``fftshift(fft(ifftshift(x)))``). Frequency index
``j`` along an axis of length ``d`` is ``(j - d // 2) / d`` cycles per pixel.

Dimension letters: b batch, d box, m = d + 1 (odd symmetric lattice).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor
_D2 = (-2, -1)
_D3 = (-3, -2, -1)


def fft2_center(x: Tensor) -> Tensor:
    """Real/complex images (..., d, d) -> centred 2-D DFT (complex)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_D2)), dim=_D2)


def ifft2_center(f: Tensor) -> Tensor:
    """Inverse of :func:`fft2_center` (complex output; take ``.real`` for real signals)."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(f, dim=_D2)), dim=_D2)


def fft3_center(x: Tensor) -> Tensor:
    """Volume (..., d, d, d) indexed [z, y, x] -> centred 3-D DFT (complex)."""
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=_D3), dim=_D3), dim=_D3)


def ifft3_center(f: Tensor) -> Tensor:
    """Inverse of :func:`fft3_center` (complex output)."""
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(f, dim=_D3), dim=_D3), dim=_D3)


def ht2_center(x: Tensor) -> Tensor:
    """Real images (..., d, d) -> centred Hartley transform (real)."""
    f = fft2_center(x)
    return f.real - f.imag


def iht2_center(h: Tensor) -> Tensor:
    """Inverse of :func:`ht2_center`: the Hartley transform is its own inverse up to 1/N."""
    return ht2_center(h) / (h.shape[-1] * h.shape[-2])


def ht3_center(x: Tensor) -> Tensor:
    """Real volume (..., d, d, d) -> centred 3-D Hartley transform."""
    f = fft3_center(x)
    return f.real - f.imag


def iht3_center(h: Tensor) -> Tensor:
    """Inverse of :func:`ht3_center`."""
    return ht3_center(h) / (h.shape[-1] * h.shape[-2] * h.shape[-3])


def symmetrize_ht(h: Tensor) -> Tensor:
    """Centred Hartley images (..., d, d), d even -> odd symmetric lattice (..., d+1, d+1).

    Index 0 (frequency -1/2) is copied to index d (frequency +1/2), so the lattice spans
    [-0.5, 0.5] and ``H(-k)`` is the array reversed along both axes.
    """
    d = h.shape[-1]
    if d % 2:
        raise ValueError(f"symmetrize_ht needs an even box, got {d}")
    out = torch.nn.functional.pad(h, (0, 1, 0, 1))
    out[..., d, :d] = h[..., 0, :]
    out[..., :d, d] = h[..., :, 0]
    out[..., d, d] = h[..., 0, 0]
    return out


def unsymmetrize_ht(h_sym: Tensor) -> Tensor:
    """Odd symmetric lattice (..., d+1, d+1) -> centred Hartley images (..., d, d)."""
    return h_sym[..., :-1, :-1]


def freqs_1d(d: int, dtype=torch.float32, device=None) -> Tensor:
    """Centred DFT frequencies (cycles/pixel) of an axis of length d, index d//2 = 0."""
    return (torch.arange(d, dtype=dtype, device=device) - d // 2) / d


def fourier_crop(x: Tensor, d_new: int, ndim: int = 2) -> Tensor:
    """Downsample real images (..., d, d) (``ndim=2``) or volumes (..., d, d, d)
    (``ndim=3``) by Fourier cropping.

    Keeps the centred frequencies ``[-d_new/2, d_new/2)`` and preserves values (a
    constant stays the same constant), so projections and densities keep their units.
    The new pixel size is ``pixel_size * d / d_new``. ``d_new`` must be even and not
    larger than ``d``.
    """
    d = x.shape[-1]
    if d_new > d or d_new % 2:
        raise ValueError(f"fourier_crop: new box {d_new} must be even and <= {d}")
    if ndim not in (2, 3):
        raise ValueError("fourier_crop: ndim must be 2 (images) or 3 (volumes)")
    lo = d // 2 - d_new // 2
    sl = (slice(lo, lo + d_new),) * ndim
    if ndim == 3:
        return ifft3_center(fft3_center(x)[(..., *sl)]).real * (d_new / d) ** 3
    return ifft2_center(fft2_center(x)[(..., *sl)]).real * (d_new / d) ** 2


def translate_ht(h_sym: Tensor, coords_xy: Tensor, shift_px: Tensor) -> Tensor:
    """Translate images given on the odd symmetric Hartley lattice by ``+shift_px``.

    ``h_sym`` (b, n) Hartley values at lattice points ``coords_xy`` (n, 2) in cycles/pixel,
    where the lattice is point-symmetric so ``H(-k)`` is ``h_sym.flip(-1)`` (the flattened
    (d+1)^2 lattice reversed). ``shift_px`` (b, 2) as (x, y) pixels. Content moves by +t:
    ``H'(k) = cos(2 pi k.t) H(k) + sin(2 pi k.t) H(-k)``.
    """
    with torch.autocast(h_sym.device.type, enabled=False):  # phases in fp32 at least (bf16: 21% errors at d=128)
        dtype = torch.promote_types(h_sym.dtype, torch.float32)
        phase = 2 * math.pi * (shift_px.to(dtype) @ coords_xy.to(dtype).T)  # (b, n)
        h = h_sym.to(dtype)
        return torch.cos(phase) * h + torch.sin(phase) * h.flip(-1)


def translate_fourier(f: Tensor, shift_px: Tensor) -> Tensor:
    """Translate centred Fourier images (b, d, d) by ``+shift_px`` (b, 2) as (x, y)."""
    d = f.shape[-1]
    k = freqs_1d(d, dtype=shift_px.dtype, device=f.device)
    phase = -2 * math.pi * (shift_px[:, 0, None, None] * k[None, None, :]
                            + shift_px[:, 1, None, None] * k[None, :, None])  # (b, d, d)
    return f * torch.polar(torch.ones_like(phase), phase)


def translate_images(x: Tensor, shift_px: Tensor) -> Tensor:
    """Translate real images (b, d, d) by ``+shift_px`` (b, 2) (x -> column, y -> row).

    Sub-pixel, periodic (Fourier phase shift); ``out(r) = x(r - t)``.
    """
    return ifft2_center(translate_fourier(fft2_center(x), shift_px.to(x.dtype))).real
