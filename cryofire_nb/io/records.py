"""Typed containers for per-particle metadata: poses, CTF parameters, latents.

Dimension letters: n particles, k latent dimension, f frequency points.

Conventions (cryoDRGN-compatible):

* Rotation ``R`` maps the volume to the image by the Fourier slice ``[kx, ky, 0] @ R``
  (row vectors); see :mod:`cryofire_nb.rotations`.
* ``trans_frac`` is the in-plane translation in **fractions of the box** (pixels / d).
  A stored particle equals the centred projection translated by **minus** this shift
  (RELION ``_rlnOriginX/Y``, cryoSPARC ``alignments3D/shift``). Multiply by the box
  size of the images at hand to get pixels (:meth:`Poses.shift_px`); the fraction does
  not change when the images are downsampled.
* The CTF table is float32 ``(n, 9)``: ``[D, Apix, DefocusU (A), DefocusV (A),
  DefocusAngle (deg), Voltage (kV), Cs (mm), amplitude contrast w, PhaseShift (deg)]``
  where D and Apix describe the **original** stack (rescale when images are downsampled).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

CTF_COLUMNS = (
    "image_size", "pixel_size_angstrom", "defocus_u_angstrom", "defocus_v_angstrom",
    "defocus_angle_deg", "voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_deg",
)


def _as_index(ind) -> np.ndarray:
    return np.asarray(ind, dtype=np.int64).reshape(-1)


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (not loaded: no tensor exists)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class Poses:
    """Rotations and translations of n particles."""

    rots: np.ndarray  # (n, 3, 3) float32, cryoDRGN convention
    trans_frac: np.ndarray | None = None  # (n, 2) float32, fraction of the box; None = no shifts

    def __post_init__(self):
        rots = np.asarray(self.rots, dtype=np.float32)
        if rots.ndim != 3 or rots.shape[1:] != (3, 3):
            raise ValueError(f"rots must be (n, 3, 3), got {rots.shape}")
        object.__setattr__(self, "rots", rots)
        if self.trans_frac is not None:
            trans = np.asarray(self.trans_frac, dtype=np.float32)
            if trans.shape != (rots.shape[0], 2):
                raise ValueError(f"trans_frac must be ({rots.shape[0]}, 2), got {trans.shape}")
            object.__setattr__(self, "trans_frac", trans)

    def __len__(self) -> int:
        return self.rots.shape[0]

    @classmethod
    def from_shift_px(cls, rots: np.ndarray, shift_px: np.ndarray, d: int) -> "Poses":
        """Poses from shifts in pixels of a box of size ``d``."""
        return cls(rots, np.asarray(shift_px, dtype=np.float64) / d)

    def shift_px(self, d: int) -> np.ndarray:
        """Shifts in pixels for a box of ``d`` pixels, (n, 2) float32 (zeros if none)."""
        if self.trans_frac is None:
            return np.zeros((len(self), 2), dtype=np.float32)
        return (self.trans_frac * np.float32(d)).astype(np.float32)

    def subset(self, ind) -> "Poses":
        ind = _as_index(ind)
        return Poses(self.rots[ind], None if self.trans_frac is None else self.trans_frac[ind])


@dataclass(frozen=True)
class CtfParams:
    """Per-particle CTF parameters: the cryoDRGN ``(n, 9)`` table with named columns
    (``CTF_COLUMNS``), and the CTF they give (:meth:`evaluate`).

    The table is float32 numpy as files hold it, or a torch tensor of any float dtype on
    any device, kept as it is: a training loop moves the whole table to its device once
    and takes each batch's rows there (``CtfParams(table[rows])`` or :meth:`subset`), so
    evaluating a batch copies no more than its rows; a float64 table evaluates in float64.
    """

    table: np.ndarray  # (n, 9) float32, columns CTF_COLUMNS; or a torch tensor (n, 9)

    def __post_init__(self):
        table = self.table if _is_tensor(self.table) else np.asarray(self.table, dtype=np.float32)
        if table.ndim != 2 or table.shape[1] != 9:
            raise ValueError(f"CTF table must be (n, 9), got {tuple(table.shape)}")
        object.__setattr__(self, "table", table)

    def __len__(self) -> int:
        return self.table.shape[0]

    @classmethod
    def from_columns(cls, *, image_size, pixel_size_angstrom, defocus_u_angstrom, defocus_v_angstrom,
                     defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast,
                     phase_shift_deg=0.0) -> "CtfParams":
        """Build the float32 table from per-particle arrays (n,) or scalars (broadcast)."""
        cols = [image_size, pixel_size_angstrom, defocus_u_angstrom, defocus_v_angstrom,
                defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg]
        n = max(np.size(c) for c in cols)
        table = np.empty((n, 9), dtype=np.float32)
        for j, c in enumerate(cols):
            table[:, j] = np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1), (n,))
        return cls(table)

    def subset(self, ind) -> "CtfParams":
        """The rows ``ind`` (a slice, or indices as a sequence, array or tensor), on the
        table's side: a tensor table is indexed on its own device."""
        if isinstance(ind, slice):
            return CtfParams(self.table[ind])
        if _is_tensor(self.table):
            import torch

            return CtfParams(self.table[torch.as_tensor(ind, device=self.table.device).long().reshape(-1)])
        return CtfParams(self.table[_as_index(ind.cpu().numpy() if _is_tensor(ind) else ind)])

    def to(self, device=None, dtype=None) -> "CtfParams":
        """The same rows with a torch table on ``device`` in ``dtype`` (no copy where the
        table already is one there)."""
        import torch

        table = self.table if _is_tensor(self.table) else torch.from_numpy(self.table)
        return CtfParams(table.to(device=device, dtype=dtype))

    def numpy(self) -> np.ndarray:
        """The table as float32 numpy (n, 9), as cryoDRGN's ``ctf.pkl`` holds it."""
        if _is_tensor(self.table):
            return self.table.detach().cpu().numpy().astype(np.float32)
        return self.table

    def evaluate(self, freqs_cycles_per_px, d: int, bfactor_angstrom2=0.0):
        """CTF (n, f) of every row at frequencies ``freqs_cycles_per_px`` (f, 2) as (kx, ky)
        in cycles/pixel of a box of ``d`` pixels: a torch tensor on the frequencies'
        device and in their dtype (only the rows move there).

        The table's pixel size refers to the original box D; after downsampling to ``d``
        the effective pixel size is ``Apix * D / d``.
        """
        from ..ctf import compute_ctf

        freqs = freqs_cycles_per_px
        image_size, apix, dfu, dfv, dfang, kv, cs, w, phase = self.to(device=freqs.device).table.unbind(-1)
        apix = (apix * image_size / d).to(freqs.dtype)
        k = freqs[None] / apix[:, None, None]  # (n, f, 2) in 1/Angstrom
        return compute_ctf(k, dfu, dfv, dfang, kv, cs, w, phase, bfactor_angstrom2)

    # Named views of the columns, each (n,): numpy or torch, as the table.
    image_size = property(lambda self: self.table[:, 0], doc="D of the original stack (pixels)")
    pixel_size_angstrom = property(lambda self: self.table[:, 1], doc="Apix of the original stack")
    defocus_u_angstrom = property(lambda self: self.table[:, 2])
    defocus_v_angstrom = property(lambda self: self.table[:, 3])
    defocus_angle_deg = property(lambda self: self.table[:, 4])
    voltage_kv = property(lambda self: self.table[:, 5])
    cs_mm = property(lambda self: self.table[:, 6])
    amplitude_contrast = property(lambda self: self.table[:, 7])
    phase_shift_deg = property(lambda self: self.table[:, 8])


@dataclass(frozen=True)
class Latents:
    """Latent coordinates: means and (optionally) log-variances, each (n, k) float32."""

    mu: np.ndarray  # (n, k)
    logvar: np.ndarray | None = None  # (n, k)

    def __post_init__(self):
        mu = np.asarray(self.mu, dtype=np.float32)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2:
            raise ValueError(f"latents must be (n, k), got {mu.shape}")
        object.__setattr__(self, "mu", mu)
        if self.logvar is not None:
            logvar = np.asarray(self.logvar, dtype=np.float32).reshape(mu.shape)
            object.__setattr__(self, "logvar", logvar)

    def __len__(self) -> int:
        return self.mu.shape[0]

    @property
    def zdim(self) -> int:
        return self.mu.shape[1]
