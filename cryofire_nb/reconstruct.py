"""Known-pose voxel reconstruction by Fourier-slice backprojection, with half-maps, FSC
and Wiener / phase-flip CTF correction.

Image model (see ``docs/conventions.md``): a stored particle is
``sign * (CTF * projection)`` translated by **minus** its shift, where ``sign = -1`` for the
usual inverted stacks (particles white). So each image is

1. multiplied by -1 unless ``invert_contrast=False`` (cryoDRGN's ``--uninvert-data``);
2. Fourier transformed (centred 2-D DFT) and recentred by ``+shift_px``
   (:func:`cryofire_nb.fft.translate_fourier`, i.e. ``translate_images(img, +shift)``);
3. spread onto its central slice ``[kx, ky, 0] @ R`` of a centred Fourier grid of size
   ``oversample * d`` with :func:`cryofire_nb.projection.scatter_trilinear`, the exact
   adjoint of the trilinear slice operator used by ``project_fourier``. Only frequencies
   with ``|k| d <= radius_px`` (default Nyquist, d/2) in the half plane ``ky > 0`` (and
   ``ky = 0, kx >= 0``) are spread; Friedel symmetry below supplies the other half.

Per grid voxel we accumulate ``num = sum c_i F_i`` and ``den = sum c_i^2`` (Wiener; ``c`` the
CTF, 1 without CTF) or ``num = sum sign(c_i) F_i``, ``den = sum |c_i|`` (phase flip),
separately for the even- and odd-numbered particles (half-maps A and B). Friedel
symmetry (``F(-k) = conj F(k)`` for real images) completes the sums:
``num(k) += conj num(-k)``, ``den(k) += den(-k)``; then

``V(k) = num(k) / (den(k) + 1/snr(k))``

where ``snr`` is the per-image spectral signal-to-noise ratio: a user constant, ``inf``
(plain division, zero where nothing was measured), or -- the default -- estimated per
Fourier shell from the half-map FSC: ``FSC_full = 2 FSC / (1 + FSC)``,
``SNR_map = FSC_full / (1 - FSC_full)`` and ``1/snr = mean_shell(den) / SNR_map`` (the map's
noise variance is ``sigma^2 / den`` in the Wiener case; for phase flip the same rule is a
heuristic). The padded real-space volume is cropped back to ``d^3``.

Output volumes are real space (d, d, d) indexed ``[z, y, x]`` with the centre at ``d // 2``,
in the units of the (un-inverted) images: reconstructing ``CTF * project_fourier(V)``
returns ``V``.

Dimension letters: b batch, d box, n frequencies per image (inside the disc), g grid size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .io.records import CtfParams
from .fft import fft2_center, freqs_1d, ifft3_center, translate_fourier
from .fsc import FSCResult, fsc
from .projection import dft_plane, scatter_trilinear, slice_positions

Tensor = torch.Tensor
CTF_MODES = ("wiener", "phase_flip")


@dataclass
class BackprojectConfig:
    """How to backproject. ``wiener_snr``: per-image SNR; None = estimate per shell from
    the half-maps; ``math.inf`` = no regularisation."""

    ctf_mode: str = "wiener"  # "wiener" (multiply by CTF) or "phase_flip"; unused without CTF
    wiener_snr: float | None = None
    invert_contrast: bool = True  # multiply images by -1 (cryoDRGN default)
    oversample: int = 2  # Fourier grid = oversample * d (1 or 2; 2 is accurate)
    radius_px: float | None = None  # frequencies used, pixels of frequency; None = d / 2
    batch_size: int = 256
    progress: bool = False  # tqdm bar in reconstruct()
    dtype: torch.dtype = torch.float32
    device: str | torch.device | None = None

    def __post_init__(self):
        if self.ctf_mode not in CTF_MODES:
            raise ValueError(f"ctf_mode must be one of {CTF_MODES}, got {self.ctf_mode!r}")
        if self.wiener_snr is not None and not self.wiener_snr > 0:
            raise ValueError(f"wiener_snr must be > 0 (or None to estimate it), got {self.wiener_snr}")
        if self.oversample not in (1, 2):
            raise ValueError(f"oversample must be 1 or 2, got {self.oversample}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError("dtype must be torch.float32 or torch.float64")


@dataclass
class ReconstructionResult:
    """Volumes (real space, (d, d, d) [z, y, x]) and the half-map FSC."""

    volume: Tensor  # all particles
    half_a: Tensor  # even-numbered particles (0, 2, 4, ...)
    half_b: Tensor  # odd-numbered particles
    fsc: FSCResult  # between half_a and half_b, unmasked
    inv_snr_per_shell: Tensor  # (d//2 + 1,) the 1/snr added to den per shell (float64)
    n_images: int
    pixel_size_angstrom: float | None


def soft_sphere_mask(d: int, radius_px: float, edge_px: float = 3.0, dtype=torch.float32,
                     device=None) -> Tensor:
    """Real-space mask (d, d, d): 1 within ``radius_px`` of the centre ``d // 2``, a raised
    cosine down to 0 over the next ``edge_px`` voxels."""
    r1 = torch.arange(d, dtype=torch.float64, device=device) - d // 2
    z, y, x = torch.meshgrid(r1, r1, r1, indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    if edge_px <= 0:
        return (r <= radius_px).to(dtype)
    t = ((r - radius_px) / edge_px).clamp(0, 1)
    return (0.5 * (1 + torch.cos(math.pi * t))).to(dtype)


def _friedel(x: Tensor, conj: bool) -> Tensor:
    """``x(-k)`` on a centred grid (g, g, g) (conjugated if ``conj``)."""
    g = x.shape[-1]
    y = torch.flip(x, dims=(-3, -2, -1))
    if g % 2 == 0:  # centred index i <-> g - i (mod g): flip gives g - 1 - i, roll by one
        y = torch.roll(y, shifts=(1, 1, 1), dims=(-3, -2, -1))
    return y.conj() if conj else y


class FourierAccumulator:
    """Running backprojection sums for half-maps A (even particles) and B (odd)."""

    def __init__(self, d: int, config: BackprojectConfig | None = None):
        self.d = d
        self.config = cfg = config or BackprojectConfig()
        self.grid = cfg.oversample * d
        ctype = torch.complex64 if cfg.dtype == torch.float32 else torch.complex128
        g3 = (2, self.grid, self.grid, self.grid)
        self.num = torch.zeros(g3, dtype=ctype, device=cfg.device)  # (2, g, g, g) Fourier
        self.den = torch.zeros(g3, dtype=cfg.dtype, device=cfg.device)  # (2, g, g, g)
        self.plane = dft_plane(d, dtype=cfg.dtype, device=cfg.device)  # (d*d, 3) cycles/pixel
        freqs = self.plane[:, :2]
        radius = d / 2 if cfg.radius_px is None else cfg.radius_px
        # Half of the disc (ky > 0, or ky == 0 and kx >= 0): Friedel symmetry in finish()
        # supplies the other half, at half the cost.
        half_plane = (freqs[:, 1] > 0) | ((freqs[:, 1] == 0) & (freqs[:, 0] >= 0))
        in_disc = freqs.norm(dim=-1) * d <= radius + 1e-6
        self.keep = torch.nonzero(in_disc & half_plane).squeeze(-1)  # (n,)
        self.freqs = freqs[self.keep]  # (n, 2)
        self.n_images = 0

    def add(self, images: Tensor, rots: Tensor, shift_px: Tensor | None = None,
            ctf: CtfParams | None = None, particle_index: Tensor | None = None) -> None:
        """Backproject real-space ``images`` (b, d, d) with rotations (b, 3, 3), shifts
        (b, 2) in pixels (x, y) and per-particle CTF parameters. ``particle_index`` (b,)
        decides the half-map (parity); default: running count of images added."""
        cfg, d = self.config, self.d
        b = images.shape[0]
        if images.shape[-2:] != (d, d):
            raise ValueError(f"images must be (b, {d}, {d}), got {tuple(images.shape)}")
        x = torch.as_tensor(images).to(device=self.num.device, dtype=cfg.dtype)
        if cfg.invert_contrast:
            x = -x
        f = fft2_center(x)  # (b, d, d) Fourier
        if shift_px is not None:
            f = translate_fourier(f, torch.as_tensor(shift_px).to(device=f.device, dtype=cfg.dtype))
        f = f.reshape(b, -1)[:, self.keep]  # (b, n)
        if ctf is not None:
            c = ctf.evaluate(self.freqs, d).to(dtype=cfg.dtype)  # (b, n)
            if cfg.ctf_mode == "wiener":
                f, w = f * c, c * c
            else:
                f, w = f * torch.sign(c), c.abs()
        else:
            w = torch.ones(f.shape, dtype=cfg.dtype, device=f.device)
        rots = torch.as_tensor(rots).to(device=f.device, dtype=cfg.dtype)
        pos = slice_positions(self.plane, rots, self.grid)[:, self.keep]  # (b, n, 3) grid voxels
        if particle_index is None:
            particle_index = torch.arange(self.n_images, self.n_images + b)
        half = torch.as_tensor(particle_index).to(f.device) % 2  # (b,)
        for h in (0, 1):
            sel = half == h
            if sel.any():
                p = pos[sel].reshape(1, -1, 3)
                self.num[h] += scatter_trilinear(f[sel].reshape(1, 1, -1), p, self.grid)[0, 0]
                self.den[h] += scatter_trilinear(w[sel].reshape(1, 1, -1), p, self.grid)[0, 0]
        self.n_images += b

    # ------------------------------------------------------------------ solve

    def _volume(self, num: Tensor, den: Tensor, inv_snr_grid: Tensor) -> Tensor:
        denom = den + inv_snr_grid
        spec = torch.where(denom > 0, num / denom.clamp_min(1e-30), torch.zeros_like(num))
        vol = ifft3_center(spec).real  # (g, g, g) real, padded
        lo = self.grid // 2 - self.d // 2
        return vol[lo:lo + self.d, lo:lo + self.d, lo:lo + self.d].contiguous()

    def _grid_shells(self) -> Tensor:
        """Shell (pixels of frequency of the d-box) of every grid voxel, clamped to d//2."""
        k = freqs_1d(self.grid, dtype=torch.float64, device=self.num.device) * self.d
        kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
        r = torch.sqrt(kx * kx + ky * ky + kz * kz)
        return torch.round(r).long().clamp_max(self.d // 2)

    def _inv_snr_from_fsc(self, fsc_a_b: Tensor, den_full: Tensor, shells: Tensor) -> Tensor:
        n = self.d // 2 + 1
        f = fsc_a_b.to(device=den_full.device, dtype=torch.float64).clamp(-1, 1)
        f_full = (2 * f / (1 + f).clamp_min(1e-6)).clamp(1e-3, 0.999)
        snr_map = f_full / (1 - f_full)
        lab = shells.reshape(-1)
        dv = den_full.reshape(-1).to(torch.float64)
        sampled = dv > 0
        zeros = torch.zeros(n, dtype=torch.float64, device=dv.device)
        tot = zeros.index_add(0, lab[sampled], dv[sampled])
        cnt = zeros.index_add(0, lab[sampled], torch.ones_like(dv[sampled]))
        mean_den = tot / cnt.clamp_min(1)
        return mean_den / snr_map  # (n,)

    def finish(self, pixel_size_angstrom: float | None = None,
               wiener_snr: float | None = ...) -> ReconstructionResult:
        """Solve for the full map and the two half-maps; does not change the sums, so it
        can be called again with another ``wiener_snr`` (default: the config's)."""
        snr = self.config.wiener_snr if wiener_snr is ... else wiener_snr
        if snr is not None and not snr > 0:
            raise ValueError(f"wiener_snr must be > 0 (or None to estimate it), got {snr}")
        num = self.num + _friedel(self.num, conj=True)  # (2, g, g, g)
        den = self.den + _friedel(self.den, conj=False)
        shells = self._grid_shells()
        n = self.d // 2 + 1
        if snr is None:
            # Provisional maps assuming a map SNR of 1000, then one FSC-based refinement.
            inv = self._inv_snr_from_fsc(torch.ones(n, dtype=torch.float64), den.sum(0), shells)
            for _ in range(2):
                inv_grid = inv.to(device=den.device, dtype=den.dtype)[shells]
                a, b = self._volume(num[0], den[0], inv_grid), self._volume(num[1], den[1], inv_grid)
                inv = self._inv_snr_from_fsc(fsc(a, b).fsc.to(den.device), den.sum(0), shells)
        else:
            value = 0.0 if math.isinf(snr) else 1.0 / snr
            inv = torch.full((n,), value, dtype=torch.float64, device=den.device)
        inv_grid = inv.to(device=den.device, dtype=den.dtype)[shells]
        half_a = self._volume(num[0], den[0], inv_grid)
        half_b = self._volume(num[1], den[1], inv_grid)
        volume = self._volume(num.sum(0), den.sum(0), inv_grid)
        return ReconstructionResult(
            volume=volume, half_a=half_a, half_b=half_b,
            fsc=fsc(half_a, half_b, pixel_size_angstrom), inv_snr_per_shell=inv.cpu(),
            n_images=self.n_images, pixel_size_angstrom=pixel_size_angstrom,
        )


def reconstruct(images: Tensor, rots: Tensor, shift_px: Tensor | None = None,
                ctf: CtfParams | None = None, config: BackprojectConfig | None = None,
                pixel_size_angstrom: float | None = None) -> ReconstructionResult:
    """Reconstruct a volume from real-space particle images (N, d, d) with known poses.

    ``rots`` (N, 3, 3) in the cryoDRGN convention, ``shift_px`` (N, 2) pixels (x, y) as
    stored (the particle is the projection translated by ``-shift_px``), ``ctf`` one row
    per particle. Half-maps split particles by even/odd index. See the module docstring.
    """
    cfg = config or BackprojectConfig()
    n, d = images.shape[0], images.shape[-1]
    if rots.shape[0] != n or (shift_px is not None and shift_px.shape[0] != n):
        raise ValueError(f"{n} images but {rots.shape[0]} rotations / "
                         f"{None if shift_px is None else shift_px.shape[0]} shifts")
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{n} images but {len(ctf)} CTF rows")
    acc = FourierAccumulator(d, cfg)
    starts = range(0, n, cfg.batch_size)
    for i in tqdm(starts, desc="backproject", unit="batch", disable=not cfg.progress):
        sl = slice(i, min(i + cfg.batch_size, n))
        acc.add(images[sl], rots[sl], None if shift_px is None else shift_px[sl],
                None if ctf is None else ctf.subset(sl), torch.arange(sl.start, sl.stop))
    return acc.finish(pixel_size_angstrom)
