"""Checks a cryoDRGN user runs on a latent space before trusting it: confounders (does z
follow the defocus, the view direction or the shift instead of the conformation?),
outliers (junk particles far from the rest), and volume series written for ChimeraX.

Dimension letters: n particles, k latent dimension, m volumes, d box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .latent import as_latents

# --------------------------------------------------------------------------- confounders


def pose_covariates(rots, shift_px=None) -> dict[str, np.ndarray]:
    """Per-particle nuisance variables from poses: the view direction's tilt from the
    z axis (``view_tilt_deg``, 0-180) and azimuth (``view_azimuth_deg``, -180-180) in the
    frame of ``rots`` (n, 3, 3) (view direction = third row), and the shift length
    (``shift_px``) when shifts (n, 2) in pixels are given."""
    r = np.asarray(rots, dtype=np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise InputError(None, f"rotations have shape {r.shape}, expected (n, 3, 3)", "pass one 3x3 matrix per particle")
    v = r[:, 2, :]  # (n, 3) view directions
    out = {"view_tilt_deg": np.degrees(np.arccos(np.clip(v[:, 2], -1.0, 1.0))),
           "view_azimuth_deg": np.degrees(np.arctan2(v[:, 1], v[:, 0]))}
    if shift_px is not None:
        s = np.asarray(shift_px, dtype=np.float64)
        if s.shape != (len(r), 2):
            raise InputError(None, f"shifts have shape {s.shape}, expected ({len(r)}, 2)", "pass (n, 2) shifts in pixels")
        out["shift_px"] = np.hypot(s[:, 0], s[:, 1])
    return out


@dataclass(frozen=True)
class Confounders:
    """Rank correlation of each latent coordinate with each nuisance variable.

    names: the variables, in order; spearman: (len(names), k) Spearman correlation of
    variable i with coordinate j (e.g. PC j+1); max_abs: {name: largest |correlation| over
    the coordinates}.
    """

    names: tuple
    spearman: np.ndarray
    max_abs: dict

    def to_dict(self) -> dict:
        return {n: [round(float(v), 4) for v in row] for n, row in zip(self.names, self.spearman)}


def confounder_correlations(coords, covariates: dict) -> Confounders:
    """Spearman correlation between each column of ``coords`` (n, k) (z, or its PCA
    coordinates) and each nuisance variable in ``covariates`` ({name: (n,)}: defocus,
    view tilt, shift length, ...). A latent coordinate that follows a nuisance variable
    closely (|rho| near 1) encodes imaging conditions, not conformation. Circular
    variables (an azimuth) should be passed as their cosine and sine."""
    from scipy.stats import spearmanr

    c = as_latents(coords, "coords")
    names, rows = [], []
    for name, values in covariates.items():
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(x) != len(c):
            raise InputError(None, f"covariate {name!r} has {len(x)} values for {len(c)} particles",
                             "pass one value per particle")
        row = []
        for j in range(c.shape[1]):
            rho = spearmanr(x, c[:, j]).statistic if np.ptp(x) > 0 and np.ptp(c[:, j]) > 0 else 0.0
            row.append(0.0 if not np.isfinite(rho) else float(rho))
        names.append(name)
        rows.append(row)
    sp = np.asarray(rows, dtype=np.float64).reshape(len(names), c.shape[1])
    return Confounders(tuple(names), sp, {n: float(np.abs(r).max()) for n, r in zip(names, sp)})


# --------------------------------------------------------------------------- outliers


@dataclass(frozen=True)
class Outliers:
    """Particles far from the bulk of z.

    score: (n,) mean distance to the ``n_neighbors`` nearest other particles in z, in
    units of the median of that distance over all particles (1 = typical); mask: (n,)
    True for flagged particles (score above ``threshold``); threshold: the cut used;
    keep: (m,) int64 indices of the particles kept (an ``--ind`` selection).
    """

    score: np.ndarray
    mask: np.ndarray
    threshold: float
    keep: np.ndarray

    @property
    def n_flagged(self) -> int:
        return int(self.mask.sum())


def latent_outliers(z, n_neighbors: int = 20, threshold: float = 4.0) -> Outliers:
    """Flag particles whose z lies far from every other particle's (junk, ice, false
    picks often land in sparse regions of z): score = mean distance to the
    ``n_neighbors`` nearest neighbours relative to the median over all particles;
    flagged above ``threshold``. Deterministic (exact neighbours, scikit-learn)."""
    from sklearn.neighbors import NearestNeighbors

    z = as_latents(z)
    k = int(max(1, min(n_neighbors, len(z) - 1)))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)  # (n, k + 1), itself first
    mean_d = dist[:, 1:].mean(1)
    scale = float(np.median(mean_d))
    score = mean_d / scale if scale > 0 else np.zeros_like(mean_d)
    mask = score > threshold
    return Outliers(score, mask, float(threshold), np.flatnonzero(~mask).astype(np.int64))


# --------------------------------------------------------------------------- volume series


def write_volume_series(volumes, out_dir, stem: str, pixel_size_angstrom: float,
                        labels=None) -> list[Path]:
    """Write volumes (m, d, d, d) as ``OUT_DIR/STEM_000.mrc`` ... (float32, voxel size
    set) and ``OUT_DIR/STEM.cxc``, a ChimeraX script that opens them as one series
    (``open STEM_*.mrc vseries true``; play it with the slider ChimeraX shows).
    ``labels`` (m strings) are written as comments in the script. Returns the paths
    (volumes first, the script last)."""
    from ..io import write_mrc

    vols = np.asarray(volumes, dtype=np.float32)
    if vols.ndim == 3:
        vols = vols[None]
    if vols.ndim != 4 or not (vols.shape[1] == vols.shape[2] == vols.shape[3]):
        raise InputError(None, f"volumes have shape {vols.shape}, expected (m, d, d, d)", "stack cubic volumes")
    if not pixel_size_angstrom > 0:
        raise InputError(None, f"pixel size {pixel_size_angstrom} must be > 0", "pass the map's A/px")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(vols):
        p = out / f"{stem}_{i:03d}.mrc"
        write_mrc(p, v, pixel_size_angstrom)
        paths.append(p)
    lines = [f"# {len(paths)} volumes, {pixel_size_angstrom:.4g} A/px; open in ChimeraX: open {stem}.cxc"]
    if labels is not None:
        lines += [f"# {p.name}: {lab}" for p, lab in zip(paths, labels)]
    lines += [f"open {stem}_*.mrc vseries true", "volume #1 style surface level auto"]
    script = out / f"{stem}.cxc"
    script.write_text("\n".join(lines) + "\n")
    return paths + [script]


# --------------------------------------------------------------------------- image screening


def centre_contrast(images, radius_fraction: float = 0.5) -> np.ndarray:
    """Per-image contrast of the centre against the background: mean inside a disc of
    radius ``radius_fraction`` of the half box minus mean outside, in units of the
    standard deviation outside. Images (n, d, d) in the stored contrast of RELION and
    cryoSPARC (particles white) give clearly positive values; empty picks (ice, carbon
    edge) give values near 0, and particles off-centre or dark ones lower values. A
    first screen of picks before any training, as a 2-D classification would be."""
    im = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float64)
    if im.ndim == 2:
        im = im[None]
    if im.ndim != 3 or im.shape[1] != im.shape[2]:
        raise InputError(None, f"images have shape {im.shape}, expected (n, d, d)", "pass a stack of square images")
    if not 0 < radius_fraction < 1:
        raise InputError(None, f"radius_fraction {radius_fraction} must be in (0, 1)", "e.g. 0.5")
    d = im.shape[-1]
    yy, xx = np.mgrid[0:d, 0:d] - d // 2
    inside = np.hypot(yy, xx) <= radius_fraction * d / 2  # (d, d)
    bg = im[:, ~inside]  # (n, outside pixels)
    sd = bg.std(1)
    return (im[:, inside].mean(1) - bg.mean(1)) / np.where(sd > 0, sd, 1.0)
