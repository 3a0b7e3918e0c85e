"""Figures of 2-D things: image grids (particles, projections) and the CTF.

Images are arrays ``[y, x]`` drawn with row 0 at the top (as RELION's and cryoDRGN's
viewers do). The CTF uses :func:`cryofire_nb.ctf.compute_ctf` (cryoDRGN/RELION formula):
its 2-D image is indexed ``[ky, kx]`` with zero frequency at index d // 2 and is drawn
with ky increasing upwards (a frequency plane, not a picture).

Dimension letters: n images, h / w image height / width, d box, s frequency samples.
"""

from __future__ import annotations

import math

import numpy as np

from ._figure import new_figure


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def image_grid(images, titles=None, ncols: int | None = None, cmap: str = "gray",
               panel_size_in: float = 1.6, shared_scale: bool = False, suptitle: str | None = None,
               colorbar: bool = False, colorbar_label: str | None = None):
    """Images (n, h, w) in a grid of ``ncols`` columns (default min(n, 8)), one axes each.

    ``titles``: n strings (or None). ``shared_scale``: one grey scale for all images
    (compare intensities) instead of one per image (see structure). ``colorbar``: one
    colour bar for the grid (implies ``shared_scale``), labelled ``colorbar_label``.
    """
    imgs = _numpy(images).astype(np.float32)
    if imgs.ndim == 2:
        imgs = imgs[None]
    if imgs.ndim != 3 or len(imgs) == 0:
        raise ValueError(f"images must be (n, h, w) with n >= 1, got {imgs.shape}")
    n = len(imgs)
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    ncols = min(n, 8) if ncols is None else max(1, int(ncols))
    nrows = math.ceil(n / ncols)
    fig = new_figure(figsize=(panel_size_in * ncols, panel_size_in * nrows + (0.4 if suptitle else 0.0)))
    shared_scale = shared_scale or colorbar
    vmin, vmax = (float(imgs.min()), float(imgs.max())) if shared_scale else (None, None)
    axes = []
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        im = ax.imshow(imgs[i], cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
        axes.append(ax)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if colorbar:
        fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02, label=colorbar_label)
    return fig


def ctf_profiles(defoci_angstrom, pixel_size_angstrom: float = 1.0, voltage_kv: float = 300.0,
                 cs_mm: float = 2.7, amplitude_contrast: float = 0.1, phase_shift_deg: float = 0.0,
                 bfactor_angstrom2: float = 0.0, n_points: int = 500):
    """1-D radial CTF (no astigmatism) from 0 to Nyquist ``1 / (2 apix)``, one line per
    defocus (Angstrom, positive = underfocus); one axes."""
    import torch

    from ..ctf import compute_ctf

    s = torch.linspace(0.0, 0.5 / pixel_size_angstrom, n_points, dtype=torch.float64)  # (s,) 1/A
    freqs = torch.stack([s, torch.zeros_like(s)], -1)  # (s, 2) along kx
    fig = new_figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for df in np.atleast_1d(np.asarray(defoci_angstrom, dtype=np.float64)):
        ctf = compute_ctf(freqs, float(df), float(df), 0.0, voltage_kv, cs_mm, amplitude_contrast,
                          phase_shift_deg, bfactor_angstrom2)  # (s,)
        ax.plot(s.numpy(), ctf.numpy(), lw=1.0, label=f"defocus {df / 1e4:.2f} um")
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.set_xlim(0, float(s[-1]))
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("spatial frequency (1/Angstrom)")
    ax.set_ylabel("CTF")
    ax.set_title(f"{voltage_kv:g} kV, Cs {cs_mm:g} mm, w {amplitude_contrast:g}, "
                 f"pixel {pixel_size_angstrom:g} A", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def ctf_2d(d: int, pixel_size_angstrom: float, defocus_u_angstrom: float, defocus_v_angstrom: float | None = None,
           defocus_angle_deg: float = 0.0, voltage_kv: float = 300.0, cs_mm: float = 2.7,
           amplitude_contrast: float = 0.1, phase_shift_deg: float = 0.0) -> np.ndarray:
    """CTF on the centred d x d DFT grid, (d, d) float64 indexed ``[ky, kx]``."""
    import torch

    from ..ctf import compute_ctf
    from ..fft import freqs_1d

    k = freqs_1d(d, dtype=torch.float64) / pixel_size_angstrom  # (d,) 1/A, index d//2 = 0
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    freqs = torch.stack([kx, ky], -1).reshape(-1, 2)  # (d*d, 2)
    dfv = defocus_u_angstrom if defocus_v_angstrom is None else defocus_v_angstrom
    ctf = compute_ctf(freqs, defocus_u_angstrom, dfv, defocus_angle_deg, voltage_kv, cs_mm,
                      amplitude_contrast, phase_shift_deg)
    return ctf.reshape(d, d).numpy()


def ctf_image(d: int, pixel_size_angstrom: float, defocus_u_angstrom: float,
              defocus_v_angstrom: float | None = None, defocus_angle_deg: float = 0.0,
              voltage_kv: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
              phase_shift_deg: float = 0.0):
    """2-D CTF image (:func:`ctf_2d`) with axes in 1/Angstrom; the image and its colour bar.

    The parameters after ``d`` follow the CTF table's columns, so a row of ``ctf.pkl``
    draws as ``ctf_image(int(row[0]), *row[1:])``.
    """
    ctf = ctf_2d(d, pixel_size_angstrom, defocus_u_angstrom, defocus_v_angstrom, defocus_angle_deg,
                 voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg)
    half = 0.5 / pixel_size_angstrom
    step = 1.0 / (d * pixel_size_angstrom)
    lo, hi = -(d // 2) * step, (d - 1 - d // 2) * step
    fig = new_figure(figsize=(4.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(ctf, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower",
                   extent=(lo - step / 2, hi + step / 2, lo - step / 2, hi + step / 2))
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_xlabel("kx (1/Angstrom)")
    ax.set_ylabel("ky (1/Angstrom)")
    dfv = defocus_u_angstrom if defocus_v_angstrom is None else defocus_v_angstrom
    ax.set_title(f"dfU {defocus_u_angstrom:.0f} A, dfV {dfv:.0f} A, angle {defocus_angle_deg:g} deg", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.85, label="CTF")
    fig.tight_layout()
    return fig
