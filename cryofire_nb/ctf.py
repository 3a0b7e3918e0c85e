"""Contrast transfer function (the cryoDRGN/RELION formula) and the CTF table.

``ctf = sqrt(1 - w^2) sin(gamma) - w cos(gamma)`` with
``gamma = 2 pi (-0.5 df lambda s^2 + 0.25 Cs lambda^3 s^4) - phase_shift``,
``df = 0.5 (dfU + dfV + (dfU - dfV) cos(2 (theta - dfang)))`` and the relativistic
electron wavelength ``lambda = 12.2639 / sqrt(V + 0.97845e-6 V^2)`` Angstrom (V in volts).
At zero frequency ``ctf = -w``: an un-inverted image of positive density is
``CTF * projection``, dark at low frequency. An optional B-factor envelope
``exp(-B s^2 / 4)`` multiplies the result.

CTF table (cryoDRGN ``ctf.pkl``): float32 (N, 9) columns
``[D, Apix, DefocusU (A), DefocusV (A), DefocusAngle (deg), Voltage (kV), Cs (mm), w,
PhaseShift (deg)]`` with D and Apix of the original stack; when images are downsampled
to box ``d`` the effective pixel size is ``Apix * D / d``. The table with its named
columns, and its CTF on a box of ``d`` pixels, is :class:`cryofire_nb.io.CtfParams`.

Dimension letters: b batch, n frequency points.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def electron_wavelength_angstrom(voltage_kv: Tensor | float) -> Tensor:
    """Relativistic electron wavelength (Angstrom) at an accelerating voltage in kV."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)


def _col(p, like: Tensor) -> Tensor:
    """Per-particle parameter -> (b, 1) (or scalar) tensor broadcastable against (b, n)."""
    t = torch.as_tensor(p, dtype=like.dtype, device=like.device)
    return t[..., None] if t.dim() >= 1 else t


def compute_ctf(freqs_per_angstrom: Tensor, defocus_u_angstrom, defocus_v_angstrom,
                defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast,
                phase_shift_deg=0.0, bfactor_angstrom2=0.0) -> Tensor:
    """CTF at frequencies ``(n, 2)`` or ``(b, n, 2)`` as (kx, ky) in 1/Angstrom.

    Per-particle parameters are scalars or shaped (b,). Returns (b, n) (or (n,)).
    """
    k = freqs_per_angstrom
    kx, ky = k[..., 0], k[..., 1]  # (.., n)
    s2 = kx * kx + ky * ky
    theta = torch.atan2(ky, kx)
    dfu, dfv = _col(defocus_u_angstrom, k), _col(defocus_v_angstrom, k)
    dfang = torch.deg2rad(_col(defocus_angle_deg, k))
    lam = _col(electron_wavelength_angstrom(torch.as_tensor(voltage_kv)), k)
    cs = _col(cs_mm, k) * 1e7
    w = _col(amplitude_contrast, k)
    phase = torch.deg2rad(_col(phase_shift_deg, k))
    df = 0.5 * (dfu + dfv + (dfu - dfv) * torch.cos(2 * (theta - dfang)))
    gamma = 2 * math.pi * (-0.5 * df * lam * s2 + 0.25 * cs * lam ** 3 * s2 * s2) - phase
    ctf = torch.sqrt(1 - w * w) * torch.sin(gamma) - w * torch.cos(gamma)
    bfac = _col(bfactor_angstrom2, k)
    if torch.any(torch.as_tensor(bfac) != 0):
        ctf = ctf * torch.exp(-bfac * s2 / 4)
    return ctf


def ctf_zero_frequencies(defocus_angstrom: float, voltage_kv: float, cs_mm: float,
                         amplitude_contrast: float, n_zeros: int = 5) -> Tensor:
    """First ``n_zeros`` zero-crossing spatial frequencies (1/A) of a non-astigmatic CTF
    with no phase plate, solved from ``gamma = n pi + atan(w / sqrt(1 - w^2))``.

    Used by the tests to check the CTF against theory.
    """
    lam = float(electron_wavelength_angstrom(voltage_kv))
    cs = cs_mm * 1e7
    w = amplitude_contrast
    offset = math.atan2(w, math.sqrt(1 - w * w))
    out = []
    n = 0
    while len(out) < n_zeros:
        # gamma(s) = -pi df lam s^2 + pi/2 cs lam^3 s^4, decreasing near 0; solve gamma = offset - n pi.
        target = offset - n * math.pi
        a, b, c = 0.5 * math.pi * cs * lam ** 3, -math.pi * defocus_angstrom * lam, -target
        disc = b * b - 4 * a * c
        if disc >= 0:
            u = (-b - math.sqrt(disc)) / (2 * a) if a else -c / b
            if u > 0:
                out.append(math.sqrt(u))
        n += 1
    return torch.tensor(out, dtype=torch.float64)
