"""Fourier shell correlation (FSC) between two volumes, its 0.5 / 0.143 crossings and
the CryoBench area under the curve.

Domains: inputs are real-space volumes (d, d, d) indexed ``[z, y, x]`` with the centre at
index ``d // 2`` (even or odd d); the correlation is computed on their centred 3-D DFTs.

Shells: shell ``j`` (j = 0 .. d // 2) holds the Fourier voxels whose radius ``r = |k| d``
(pixels of frequency, k in cycles/pixel) rounds to ``j``, i.e. ``j - 0.5 <= r < j + 0.5``.
Shell ``j`` is at ``j / d`` cycles/pixel, ``j / (d * apix)`` 1/Angstrom, a resolution of
``d * apix / j`` Angstrom; shell ``d // 2`` is Nyquist. Voxels beyond Nyquist (the cube's
corners) are ignored.

``FSC_j = Re sum(F1 conj(F2)) / sqrt(sum |F1|^2 sum |F2|^2)`` over the shell.

Crossings: the first shell ``j >= 1`` with ``FSC_j < t``, linearly interpolated between
shells ``j - 1`` and ``j``. When the curve never drops below ``t`` up to Nyquist the
crossing is reported as NaN (the data support a resolution at least as good as Nyquist).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .fft import fft3_center, freqs_1d

Tensor = torch.Tensor


@dataclass(frozen=True)
class FSCCrossing:
    """Where an FSC curve first falls below ``threshold``; NaN fields when it never does."""

    threshold: float
    frequency_px: float  # pixels of frequency (shell units, d-box); nan if no crossing
    frequency_per_angstrom: float  # 1/A; nan if no crossing or no pixel size
    resolution_angstrom: float  # A; nan if no crossing or no pixel size

    @property
    def crossed(self) -> bool:
        return math.isfinite(self.frequency_px)


@dataclass(frozen=True)
class FSCResult:
    """FSC curve of two volumes with box ``d``, per shell ``j = 0 .. d // 2``."""

    d: int
    shell_px: Tensor  # (s,) shell radius in pixels of frequency, 0 .. d // 2 (float64)
    fsc: Tensor  # (s,) correlation per shell (float64)
    n_voxels: Tensor  # (s,) Fourier voxels per shell
    pixel_size_angstrom: float | None
    at_0_5: FSCCrossing
    at_0_143: FSCCrossing
    auc: float  # CryoBench area under the FSC curve, see :func:`cryobench_auc`

    @property
    def frequency_per_px(self) -> Tensor:
        """Shell frequencies in cycles/pixel, (s,)."""
        return self.shell_px / self.d

    @property
    def frequency_per_angstrom(self) -> Tensor | None:
        """Shell frequencies in 1/Angstrom, (s,), or None without a pixel size."""
        if not self.pixel_size_angstrom:
            return None
        return self.shell_px / (self.d * self.pixel_size_angstrom)


def _radius_px(d: int, device=None) -> Tensor:
    """Radius |k| * d (pixels of frequency) of every voxel of a centred d^3 DFT, (d, d, d)."""
    k = freqs_1d(d, dtype=torch.float64, device=device) * d
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.sqrt(kx * kx + ky * ky + kz * kz)


def shell_index(d: int, device=None) -> Tensor:
    """Shell ``round(|k| d)`` of every voxel of a centred d^3 DFT, (d, d, d) int64."""
    return torch.round(_radius_px(d, device)).long()


def fsc_curve(f1: Tensor, f2: Tensor, shells: Tensor, n_shells: int) -> tuple[Tensor, Tensor]:
    """Per-shell correlation of two centred spectra ``f1``, ``f2`` (any shape) with integer
    labels ``shells`` (same shape; labels >= n_shells ignored). Returns (fsc, n_voxels)."""
    lab = shells.reshape(-1)
    keep = lab < n_shells
    lab = lab[keep]
    a = f1.reshape(-1)[keep].to(torch.complex128)
    b = f2.reshape(-1)[keep].to(torch.complex128)
    zeros = torch.zeros(n_shells, dtype=torch.float64, device=a.device)
    cross = zeros.index_add(0, lab, (a * b.conj()).real)
    p1 = zeros.index_add(0, lab, a.abs() ** 2)
    p2 = zeros.index_add(0, lab, b.abs() ** 2)
    count = zeros.index_add(0, lab, torch.ones_like(p1[lab]))
    denom = torch.sqrt(p1 * p2)
    fsc = torch.where(denom > 0, cross / denom.clamp_min(1e-300), torch.zeros_like(cross))
    return fsc, count


def crossing(shell_px: Tensor, fsc: Tensor, threshold: float, d: int,
             pixel_size_angstrom: float | None) -> FSCCrossing:
    """First crossing of ``threshold`` below, interpolated linearly between shells."""
    f = fsc.detach().cpu().double().numpy()
    s = shell_px.detach().cpu().double().numpy()
    below = np.flatnonzero(f[1:] < threshold) + 1
    if below.size == 0:
        nan = float("nan")
        return FSCCrossing(threshold, nan, nan, nan)
    j = int(below[0])
    # f[j - 1] >= threshold except when j = 1 and the zero shell is already below.
    frac = (f[j - 1] - threshold) / (f[j - 1] - f[j]) if f[j - 1] >= threshold else 0.0
    freq_px = float(s[j - 1] + frac * (s[j] - s[j - 1]))
    if pixel_size_angstrom:
        per_a = freq_px / (d * pixel_size_angstrom)
        res = 1.0 / per_a if per_a > 0 else float("inf")
    else:
        per_a = res = float("nan")
    return FSCCrossing(threshold, freq_px, per_a, res)


def cryobench_auc(f1: Tensor, f2: Tensor) -> float:
    """Area under the FSC curve exactly as CryoBench computes it, from centred spectra.

    CryoBench (``metrics/fsc/per_conf_plot.py``) calls ``sklearn.metrics.auc`` -- the
    trapezoid rule -- on the **signed** FSC against ``pixres = i / D``, i = 0 .. D/2 - 1,
    from cryoDRGN 3.4's ``get_fsc_curve`` (``metrics/fsc/utils/volumes.py``): shell ``i``
    holds voxels with ``i - 1 <= r < i`` and ``FSC(0)`` is set to 1. A perfect match gives
    ``0.5 - 1/D`` (not quite 0.5); values are comparable across box sizes only roughly.
    CryoBench's grid assumes an even box; for odd boxes we use our centre ``d // 2``.
    """
    d = f1.shape[-1]
    r = _radius_px(d, f1.device)
    lab = torch.floor(r).long() + 1  # r in [i - 1, i) -> shell i
    n = d // 2
    fsc, _ = fsc_curve(f1, f2, lab, n)
    fsc[0] = 1.0
    pixres = torch.arange(n, dtype=torch.float64, device=fsc.device) / d
    return float(torch.trapezoid(fsc, pixres))


def fsc(vol1: Tensor, vol2: Tensor, pixel_size_angstrom: float | None = None,
        mask: Tensor | None = None) -> FSCResult:
    """FSC between two real-space volumes (d, d, d) [z, y, x], optionally both multiplied
    by a real-space ``mask`` (d, d, d) first (e.g. :func:`reconstruct.soft_sphere_mask`)."""
    if vol1.shape != vol2.shape or vol1.dim() != 3 or len(set(vol1.shape)) != 1:
        raise ValueError(f"fsc needs two cubic volumes of the same size, got {tuple(vol1.shape)} and {tuple(vol2.shape)}")
    d = vol1.shape[-1]
    v1, v2 = vol1.double(), vol2.to(vol1.device).double()
    if mask is not None:
        m = mask.to(v1.device).double()
        v1, v2 = v1 * m, v2 * m
    f1, f2 = fft3_center(v1), fft3_center(v2)
    n_shells = d // 2 + 1
    curve, count = fsc_curve(f1, f2, shell_index(d, f1.device), n_shells)
    shells = torch.arange(n_shells, dtype=torch.float64, device=curve.device)
    curve, count, shells = curve.cpu(), count.cpu(), shells.cpu()
    return FSCResult(
        d=d, shell_px=shells, fsc=curve, n_voxels=count, pixel_size_angstrom=pixel_size_angstrom,
        at_0_5=crossing(shells, curve, 0.5, d, pixel_size_angstrom),
        at_0_143=crossing(shells, curve, 0.143, d, pixel_size_angstrom),
        auc=cryobench_auc(f1, f2),
    )
