"""Density of an atomic model, evaluated band-limited in Fourier space.

Each atom is a sum of isotropic Gaussians: its form factor is
``f(q) = sum_g a_g exp(-(b_g + B) q^2 / 4)`` (q = |k| in 1/Angstrom, B a global B-factor in
Angstrom^2), whose real-space Gaussians have variance ``(b_g + B) / (8 pi^2)`` per axis.
Two scattering models:

* ``"electron"`` (default): the 5-Gaussian electron scattering factors of Peng et al.
  (1996), International Tables for Crystallography vol. C table 4.3.2.2, as tabulated
  in gemmi (``Element.c4322``); ``a_g`` in Angstrom. This is the weak-phase potential
  the electrons see, the right weighting for cryo-EM.
* ``"atomic_number"``: one Gaussian of weight Z per atom whose width comes from ``B`` only.

Domains and units. Nothing is sampled in real space: the centred DFT of the voxel
samples is ``V[k] = rho_hat(k / (d * apix)) / apix^3`` with
``rho_hat(q) = sum_atoms f(|q|) exp(-2 pi i q . a)``; the real volume is its inverse DFT,
i.e. the density low-passed at Nyquist (no aliasing). The centre of the box is index
``d // 2``; volumes are indexed ``[z, y, x]``. A projection is the sum of the voxel values
along z (what :func:`cryofire_nb.projection.project_fourier` returns); the direct atom
projection :func:`project_atoms` gives it analytically: an atom at ``a`` lands at image
position ``(R @ a)[:2] / apix`` pixels from the centre (x -> column, y -> row), because
the slice ``[kx, ky, 0] @ R`` of ``exp(-2 pi i q . a)`` is ``exp(-2 pi i k . (R a)[:2])``.

The sum over atoms is separable per axis: for one group of atoms sharing a form factor,
``sum_n px[n, kx] py[n, ky] pz[n, kz]`` with 1-D phase factors ``p[n, k] = exp(-2 pi i q_k a_n)``,
evaluated as matrix products (cost ``n d^3`` for a volume, ``n d^2`` per image).

Dimension letters: b batch (particles), n atoms, s species (atoms sharing a form
factor), g Gaussians per form factor, d box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np
import torch

from ..fft import freqs_1d, ifft3_center

Tensor = torch.Tensor
SCATTERING_KINDS = ("electron", "atomic_number")


@dataclass(frozen=True)
class Scattering:
    """Form factors of n atoms grouped into s species of identical Gaussian sums."""

    species_of_atom: np.ndarray  # (n,) int64 index into the species
    amplitude: np.ndarray  # (s, g) a_g (Angstrom for electron factors, electrons for Z)
    width_b_angstrom2: np.ndarray  # (s, g) b_g
    atom_weight: np.ndarray  # (n,) float64 multiplier per atom (1 for element form factors)
    kind: str = "electron"

    @property
    def n_species(self) -> int:
        return self.amplitude.shape[0]

    def form_factor(self, q2_per_angstrom2: Tensor, species: int, bfactor_angstrom2: float = 0.0) -> Tensor:
        """``f(q)`` of one species at squared frequencies ``q^2`` (any shape), 1/Angstrom^2."""
        a = torch.as_tensor(self.amplitude[species], dtype=q2_per_angstrom2.dtype)
        b = torch.as_tensor(self.width_b_angstrom2[species], dtype=q2_per_angstrom2.dtype) + bfactor_angstrom2
        return (a * torch.exp(-b * q2_per_angstrom2[..., None] / 4)).sum(-1)


def scattering_from_elements(elements, kind: str = "electron") -> Scattering:
    """Form factors for element symbols (n,), one species per distinct element."""
    if kind not in SCATTERING_KINDS:
        raise ValueError(f"scattering kind must be one of {SCATTERING_KINDS}, got {kind!r}")
    names = sorted(set(elements))
    index = {e: i for i, e in enumerate(names)}
    species = np.array([index[e] for e in elements], dtype=np.int64)
    if kind == "electron":
        coef = [gemmi.Element(e).c4322 for e in names]
        amp = np.array([c.a for c in coef], dtype=np.float64)
        width = np.array([c.b for c in coef], dtype=np.float64)
    else:
        amp = np.array([[gemmi.Element(e).atomic_number] for e in names], dtype=np.float64)
        width = np.zeros_like(amp)
    return Scattering(species, amp, width, np.ones(len(species)), kind)


def scattering_from_weights(weights) -> Scattering:
    """One species of point atoms with per-atom weights (n,); blur comes from ``B`` only."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    return Scattering(np.zeros(w.size, dtype=np.int64), np.ones((1, 1)), np.zeros((1, 1)), w, "weights")


def bfactor_from_resolution(resolution_angstrom: float) -> float:
    """B-factor (Angstrom^2) of a Gaussian blur with Chimera molmap's default width
    ``sigma = resolution / (pi sqrt 2)``: ``B = 8 pi^2 sigma^2 = 4 resolution^2``."""
    return 4.0 * float(resolution_angstrom) ** 2


def _as_scattering(weights, n: int) -> Scattering:
    s = weights if isinstance(weights, Scattering) else scattering_from_weights(weights)
    if s.species_of_atom.shape[0] != n:
        raise ValueError(f"scattering describes {s.species_of_atom.shape[0]} atoms, coordinates have {n}")
    return s


def _phase_powers(x_angstrom: Tensor, d: int, pixel_size_angstrom: float, dtype) -> Tensor:
    """``exp(-2 pi i m x / (d apix))`` for m = 0 .. d//2, shape (..., d//2 + 1, n).

    Built by doubling (block ``[f, 2f)`` is block ``[0, f)`` times the phase of ``m = f``,
    that phase computed from the float64 angle reduced to one cycle), so only
    ``log2 d`` trigonometric evaluations per atom are needed instead of d. The frequency
    axis comes before the atom axis so each block is contiguous.
    """
    m_max = d // 2
    cycles = x_angstrom.to(torch.float64) / (d * pixel_size_angstrom)  # (..., n) cycles per unit m
    out = torch.empty(*x_angstrom.shape[:-1], m_max + 1, x_angstrom.shape[-1], dtype=dtype,
                      device=x_angstrom.device)
    out[..., 0, :] = 1
    filled = 1
    while filled <= m_max:
        k = min(filled, m_max + 1 - filled)
        angle = (-2 * math.pi) * torch.frac(cycles * filled)  # (..., n) float64
        base = torch.complex(torch.cos(angle), torch.sin(angle)).to(dtype)  # (..., n)
        torch.mul(out[..., :k, :], base[..., None, :], out=out[..., filled:filled + k, :])
        filled += k
    return out


def _phases(x_angstrom: Tensor, d: int, pixel_size_angstrom: float, dtype) -> Tensor:
    """1-D phase factors ``exp(-2 pi i q_k x)`` (..., d, n) at the centred DFT frequencies
    ``q_k = (k - d//2) / (d apix)``; negative frequencies are conjugates of positive ones."""
    pos = _phase_powers(x_angstrom, d, pixel_size_angstrom, dtype)  # (..., d//2 + 1, n)
    return torch.cat([pos[..., 1:d // 2 + 1, :].flip(-2).conj(), pos[..., :d - d // 2, :]], -2)


def _q2_grid(d: int, pixel_size_angstrom: float, ndim: int) -> Tensor:
    q = freqs_1d(d, dtype=torch.float64) / pixel_size_angstrom
    grids = torch.meshgrid(*([q] * ndim), indexing="ij")
    return sum(g * g for g in grids)  # (d,)*ndim, 1/A^2


def fourier_volume_from_atoms(coords_angstrom, weights, d: int, pixel_size_angstrom: float,
                              bfactor_angstrom2: float = 0.0, atoms_per_chunk: int = 512,
                              dtype=torch.complex128) -> Tensor:
    """Centred 3-D DFT (d, d, d) [kz, ky, kx] of the band-limited density of the atoms."""
    xyz = torch.as_tensor(np.asarray(coords_angstrom), dtype=torch.float64).reshape(-1, 3)  # (n, 3)
    scat = _as_scattering(weights, xyz.shape[0])
    q2 = _q2_grid(d, pixel_size_angstrom, 3)  # (d, d, d)
    out = torch.zeros(d, d, d, dtype=dtype)
    for s in range(scat.n_species):
        idx = np.flatnonzero(scat.species_of_atom == s)
        sf = torch.zeros(d, d * d, dtype=dtype)  # structure factor, (kz, ky*kx)
        for lo in range(0, idx.size, atoms_per_chunk):
            sel = torch.as_tensor(idx[lo:lo + atoms_per_chunk])
            a = xyz[sel]  # (n', 3)
            w = torch.as_tensor(scat.atom_weight[sel.numpy()], dtype=torch.float64).to(dtype)
            px, py, pz = (_phases(a[:, i], d, pixel_size_angstrom, dtype) for i in range(3))  # (d, n')
            pyx = (py[:, None, :] * px[None, :, :]).reshape(d * d, -1)  # (d*d, n')
            sf += (pz * w[None, :]) @ pyx.T  # (d, d*d)
        out += scat.form_factor(q2, s, bfactor_angstrom2).to(dtype) * sf.reshape(d, d, d)
    return out / pixel_size_angstrom ** 3


def volume_from_atoms(coords_angstrom, weights, d: int, pixel_size_angstrom: float,
                      bfactor_angstrom2: float = 0.0, dtype=torch.float32) -> Tensor:
    """Real volume (d, d, d) [z, y, x] of the atoms (Angstrom, origin at voxel d//2).

    ``weights``: a :class:`Scattering` (element form factors) or per-atom weights (n,)
    for point atoms blurred by ``bfactor_angstrom2`` only.
    """
    f = fourier_volume_from_atoms(coords_angstrom, weights, d, pixel_size_angstrom, bfactor_angstrom2)
    return ifft3_center(f).real.to(dtype)


def project_atoms(coords_angstrom, weights, rots, d: int, pixel_size_angstrom: float,
                  bfactor_angstrom2: float = 0.0, dtype=torch.complex64,
                  max_elements: int = 1_000_000) -> Tensor:
    """Direct projections of atoms: centred 2-D DFTs (b, d, d) [ky, kx] of the images.

    ``coords_angstrom`` (n, 3) shared by all particles or (b, n, 3) one conformation per
    particle; ``rots`` (b, 3, 3). Atoms are rotated first (``a' = R a``) and only
    ``a'[:2]`` matters. The inverse DFT (``ifft2_center(...).real``) equals
    ``project_fourier(volume_from_atoms(...), rots)`` up to interpolation error.
    Only ``kx >= 0`` is summed over atoms; ``kx < 0`` follows from ``F(-k) = conj F(k)``.
    Particles are processed in groups of ``max_elements / (n (d/2 + 1))`` (phase arrays stay
    small), padded to full size so results do not depend on the caller's batching.
    """
    rots = torch.as_tensor(rots.numpy() if torch.is_tensor(rots) else np.asarray(rots), dtype=torch.float64)
    xyz = torch.as_tensor(coords_angstrom.numpy() if torch.is_tensor(coords_angstrom) else np.asarray(coords_angstrom),
                          dtype=torch.float64)
    b, n, h = rots.shape[0], xyz.shape[-2], d // 2
    scat = _as_scattering(weights, n)
    order = np.argsort(scat.species_of_atom, kind="stable")  # atoms grouped by species
    bounds = np.searchsorted(scat.species_of_atom[order], np.arange(scat.n_species + 1))
    xyz = xyz[..., torch.as_tensor(order), :]
    m = torch.arange(-h, h + 1, dtype=torch.float64) / (d * pixel_size_angstrom)  # (2h+1,) 1/A
    q2 = m[:, None] ** 2 + m[None, h:] ** 2  # (2h+1, h+1): rows ky = -h..h, cols kx = 0..h
    envelopes = [scat.form_factor(q2, s, bfactor_angstrom2).to(dtype) for s in range(scat.n_species)]
    weight = None if np.all(scat.atom_weight == 1.0) else torch.as_tensor(scat.atom_weight[order]).to(dtype)
    chunk = max(1, max_elements // max(1, n * (h + 1)))
    out = torch.empty(b, d, d, dtype=dtype)
    for lo in range(0, b, chunk):
        # Every group has exactly `chunk` particles (the last one padded by repeating its
        # last particle): batched matrix products then take the same code path for every
        # particle, so a particle's image does not depend on how the caller batched it.
        take = torch.arange(lo, lo + chunk).clamp(max=b - 1)
        r = rots[take]  # (chunk, 3, 3)
        a = xyz if xyz.dim() == 2 else xyz[take]
        xy = r[:, :2] @ a.transpose(-1, -2)  # (b', 2, n): x' and y' of R a
        px = _phase_powers(xy[:, 0], d, pixel_size_angstrom, dtype)  # (b', h+1, n) kx = 0..h
        py = _phase_powers(xy[:, 1], d, pixel_size_angstrom, dtype)  # (b', h+1, n) ky = 0..h
        if weight is not None:
            py = py * weight
        py = torch.cat([py[:, 1:].flip(1).conj(), py], 1)  # (b', 2h+1, n) ky = -h..h
        half = torch.zeros(r.shape[0], 2 * h + 1, h + 1, dtype=dtype)  # rows ky = -h..h, cols kx = 0..h
        for s, env in enumerate(envelopes):
            sl = slice(int(bounds[s]), int(bounds[s + 1]))
            half += env * (py[..., sl] @ px[..., sl].transpose(1, 2))  # (b', 2h+1, h+1)
        # kx >= 0 straight from the half plane; kx < 0 from F(ky, kx) = conj F(-ky, -kx).
        keep = min(chunk, b - lo)
        out[lo:lo + keep, :, h:] = half[:keep, :d, :d - h]
        out[lo:lo + keep, :, :h] = half[:keep].flip(-2)[:, :d, 1:].flip(-1).conj()
    return out / pixel_size_angstrom ** 3
