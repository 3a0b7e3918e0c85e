"""Tiny synthetic datasets for tests and quick checks (seconds to make, d = 16 or 32).

The volume is a sum of Gaussian blobs placed asymmetrically (so views are
distinguishable); the conformation moves one large blob along a straight path by
``motion_px`` voxels. Images follow the simulator's image model and conventions
(:mod:`cryofire_nb.simulate.imaging`): centred projection (Fourier slice,
:func:`cryofire_nb.projection.project_fourier`) -> CTF -> translated by **minus** the
stored shift -> real space -> white noise -> contrast inverted (particles white).

Files written (cryoDRGN formats): ``particles.mrcs``, ``poses.pkl``, ``ctf.pkl`` (when
``ctf``), ``conf.pkl`` (continuous truth t in [0, 1], float32 (N,)) or ``labels.pkl``
(discrete, int64 (N,)), ``vol_state_XX.mrc`` (one per level of t).

Dimension letters: N particles, d box.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fft import fft2_center
from ..io import CtfParams, Poses, write_ctf, write_mrc, write_poses
from ..projection import project_fourier
from ..rotations import random_rotations
from ..simulate.imaging import add_noise, apply_ctf, ctf_on_grid, invert_contrast, shift_to_stored, to_real


@dataclass(frozen=True)
class SyntheticSet:
    folder: Path
    particles: Path
    poses: Path
    ctf: Path | None
    conf: Path | None  # continuous truth
    labels: Path | None  # discrete truth
    n: int
    d: int


def blob_volume(d: int, t: float, motion_px: float, seed: int = 0) -> torch.Tensor:
    """Real-space volume (d, d, d) [z, y, x]: five fixed blobs plus one moving with t."""
    r = torch.arange(d, dtype=torch.float64) - d // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)  # (d, d, d, 3) as (x, y, z)
    s = d / 32
    fixed = [((-5, -3, 1), 3.0, 1.0), ((4, -4, -2), 2.5, 0.8), ((2, 5, 3), 2.2, 0.9),
             ((-3, 4, -4), 2.0, 0.7), ((0, 0, 0), 3.5, 1.2)]
    vol = torch.zeros(d, d, d, dtype=torch.float64)
    for c, sig, a in fixed:
        vol += a * torch.exp(-((pts - torch.tensor(c, dtype=torch.float64) * s) ** 2).sum(-1) / (2 * (sig * s) ** 2))
    moving = torch.tensor([6.0 * s, 0.0, -5.0 * s], dtype=torch.float64) + \
        torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64) / 3 ** 0.5 * motion_px * (t - 0.5)
    vol += 1.1 * torch.exp(-((pts - moving) ** 2).sum(-1) / (2 * (2.5 * s) ** 2))
    return vol


def make_synthetic_set(folder: str | Path, n: int = 512, d: int = 16, n_levels: int = 5, discrete: bool = False,
                       snr: float | None = 1.0, ctf: bool = True, max_shift_px: float = 1.0,
                       motion_px: float | None = None, pixel_size_angstrom: float = 4.0,
                       defocus_range_angstrom: tuple[float, float] = (8000.0, 20000.0),
                       seed: int = 0) -> SyntheticSet:
    """Write a synthetic particle set into ``folder`` (created). ``n_levels`` values of t
    (evenly spaced in [0, 1]); ``discrete`` stores them as labels instead of t."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    motion = motion_px if motion_px is not None else d / 4
    rots = random_rotations(n, generator=g, dtype=torch.float64)  # (N, 3, 3)
    shift_px = rng.uniform(-max_shift_px, max_shift_px, size=(n, 2))
    level = rng.integers(0, n_levels, size=n)
    t_levels = np.linspace(0.0, 1.0, n_levels)
    table = None
    if ctf:
        dfu = rng.uniform(*defocus_range_angstrom, size=n)
        table = CtfParams.from_columns(image_size=d, pixel_size_angstrom=pixel_size_angstrom, defocus_u_angstrom=dfu,
                                       defocus_v_angstrom=dfu - 200, defocus_angle_deg=rng.uniform(0, 180, size=n),
                                       voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1).table
    clean = np.zeros((n, d, d), dtype=np.float32)
    vols = []
    for k, t in enumerate(t_levels):
        vol = blob_volume(d, float(t), motion, seed)
        vols.append(vol)
        sel = np.flatnonzero(level == k)
        if sel.size == 0:
            continue
        f = fft2_center(project_fourier(vol, rots[sel]))  # (b, d, d) centred Fourier
        c = None if table is None else ctf_on_grid(CtfParams(table[sel]), d)
        clean[sel] = to_real(shift_to_stored(apply_ctf(f, c), shift_px[sel]))
    noise_std = 0.0 if snr is None else float(np.sqrt(clean.reshape(n, -1).var(axis=1).mean() / snr))
    images = invert_contrast(add_noise(clean, noise_std, np.arange(n), seed), True).astype(np.float32)
    write_mrc(folder / "particles.mrcs", images, pixel_size_angstrom)
    write_poses(folder / "poses.pkl", Poses.from_shift_px(rots.float().numpy(), shift_px, d))
    ctf_path = None
    if table is not None:
        ctf_path = folder / "ctf.pkl"
        write_ctf(ctf_path, CtfParams(table))
    conf_path = labels_path = None
    if discrete:
        labels_path = folder / "labels.pkl"
        with open(labels_path, "wb") as fh:
            pickle.dump(level.astype(np.int64), fh)
    else:
        conf_path = folder / "conf.pkl"
        with open(conf_path, "wb") as fh:
            pickle.dump(t_levels[level].astype(np.float32), fh)
    for k, vol in enumerate(vols):
        write_mrc(folder / f"vol_state_{k:02d}.mrc", vol.float().numpy(), pixel_size_angstrom)
    return SyntheticSet(folder, folder / "particles.mrcs", folder / "poses.pkl", ctf_path, conf_path, labels_path, n, d)
