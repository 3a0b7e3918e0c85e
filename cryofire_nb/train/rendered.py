"""Exactly labelled images rendered from the run's own volumes, for the encoder.

A pose-table run knows, for the particles it searched, a pose, a shift and a z; an
encoder trained on those particles alone sees each of them many times and learns them
by heart (its poses on particles it never trained on stay far from the table's). The
decoder, once the table is refined, is a model of the data set: its central slice at
any pose and z, times a CTF of the data set, translated by a shift, plus noise with the
data's own power in every frequency shell, is an image whose labels are known exactly.
:class:`Renderer` draws such images without end: uniform rotations over the sphere and
the plane, z and shift of a randomly chosen table particle (the data's own distribution
of conformations and centring), the CTF of another randomly chosen particle.

The noise model is measured, not assumed: :func:`shell_noise_power` averages the
squared residual ``translate(h_obs, t) - CTF * slice(R, z)`` of table particles over
each ring of the Hartley lattice. Residuals contain the model's own error as well, so
the rendered images are, if anything, a little noisier than the data. The Hartley
transform is orthogonal up to scale, so independent Gaussian values per lattice point
with a ring's variance are stationary Gaussian noise in real space with that spectrum.

Rendered images go through the same window and scaling as the data
(:func:`cryofire_nb.model.preprocess.preprocess`): real space is
``iht(H) * d`` of the normalised Hartley image ``H``, and the window is applied to signal
and noise alike, as it is to a recorded particle (the noise is drawn with the power the
window will remove added back).

Dimension letters: b batch, d box, m = d + 1, n = m^2 lattice points, k latent dim,
s rings.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..fft import iht2_center, translate_ht, unsymmetrize_ht
from ..lattice import Lattice
from ..model.preprocess import real_space_window
from ..rotations import quaternion_to_matrix
from .data import ParticleData
from .run_model import CryoFireModel

Tensor = torch.Tensor


class Rendered(NamedTuple):
    real: Tensor  # (b, d, d) encoder input, windowed and scaled as the data
    rots: Tensor  # (b, 3, 3)
    shift_px: Tensor  # (b, 2)
    z: Tensor | None  # (b, k)
    ctf_from: Tensor  # (b,) positions of the particles whose CTF each image went through


def ring_index(lattice: Lattice) -> Tensor:
    """Ring (rounded radius in frequency pixels) of each lattice point, (n,) long."""
    return lattice.radius_px.round().long()


def signal_disc(lattice: Lattice) -> Tensor:
    """Lattice points (n,) bool where a rendered image has signal: inside the loss disc of
    radius d / 2, without the DC term and the Nyquist points (+-1/2 share one value in a
    d-px image). Outside the disc the decoder's values are unconstrained (a voxel grid
    keeps its random start there), and the window would smear them into the disc."""
    keep = lattice.radius_px < lattice.d / 2 - 1e-6
    keep[lattice.center_index] = False
    return keep


@torch.no_grad()
def shell_noise_power(model: CryoFireModel, data: ParticleData, positions: np.ndarray, rots: np.ndarray,
                      shift_px: np.ndarray, z: np.ndarray | None, batch_size: int = 256) -> Tensor:
    """Mean squared residual of the particles at ``positions`` (their table's rotations
    (b, 3, 3), shifts (b, 2) and z (b, k)) in each ring of the lattice: (s,) float64 on the
    data's device, in the normalised units of the loss."""
    lattice = data.lattice
    ring = ring_index(lattice).to(data.device)
    n_rings = int(ring.max()) + 1
    total = torch.zeros(n_rings, dtype=torch.float64, device=data.device)
    count = torch.zeros(n_rings, dtype=torch.float64, device=data.device)
    coords_xy = lattice.coords_xy.to(data.device)
    disc = signal_disc(lattice).to(data.device)
    for start in range(0, len(positions), batch_size):
        sel = slice(start, start + batch_size)
        batch = data.batch(positions[sel])
        b = batch.hartley.shape[0]
        r = torch.as_tensor(rots[sel], dtype=torch.float32, device=data.device)
        t = torch.as_tensor(shift_px[sel], dtype=torch.float32, device=data.device)
        zz = None if z is None else torch.as_tensor(z[sel], dtype=torch.float32, device=data.device)
        obs = translate_ht(batch.hartley.reshape(b, -1), coords_xy, t)  # (b, n)
        pred = model.decoder(lattice.slice_coords(r.to(lattice.coords.device)).to(data.device), zz).float() * disc
        if batch.ctf is not None:
            pred = pred * batch.ctf.reshape(b, -1)
        res2 = (obs - pred).double().square()  # (b, n)
        total.index_add_(0, ring, res2.sum(0))
        count.index_add_(0, ring, torch.full_like(res2[0], b))
    return total / count.clamp_min(1)


class Renderer:
    """Images of the run's decoder at random labels (see the module's text).

    ``shifts`` (N, 2) and ``z`` (N, k) are the table's; ``pool`` (p,) the positions whose
    shift, z and CTF are drawn; ``noise_power`` (s,) from :func:`shell_noise_power`."""

    def __init__(self, data: ParticleData, pool: np.ndarray, shifts: np.ndarray, z: np.ndarray | None,
                 noise_power: Tensor):
        self.data, self.lattice, self.d = data, data.lattice, data.d
        dev = data.device
        self.pool = torch.as_tensor(np.asarray(pool, dtype=np.int64), device=dev)
        self.shifts = torch.as_tensor(np.asarray(shifts, dtype=np.float32), device=dev)
        self.z = None if z is None else torch.as_tensor(np.asarray(z, dtype=np.float32), device=dev)
        cfg = data.preprocess_config
        self.window = (real_space_window(self.d, cfg.window_inner, cfg.window_outer, device=dev) if cfg.window
                       else torch.ones(self.d, self.d, device=dev))
        # noise drawn before the window keeps, after it, the power measured on windowed data
        kept = float(self.window.square().mean())
        ring = ring_index(self.lattice).to(dev).reshape(self.d + 1, self.d + 1)
        self.noise_std = unsymmetrize_ht((noise_power.to(dev)[ring] / kept).sqrt().float())  # (d, d)
        self.disc = signal_disc(self.lattice).to(dev)

    @torch.no_grad()
    def draw(self, model: CryoFireModel, b: int, generator: torch.Generator) -> Rendered:
        dev, d = self.data.device, self.d
        gdev = generator.device
        q = torch.randn(b, 4, generator=generator, device=gdev, dtype=torch.float64)
        rots = quaternion_to_matrix(q / q.norm(dim=-1, keepdim=True)).to(dev, torch.float32)  # Haar measure
        pick = torch.randint(0, len(self.pool), (3, b), generator=generator, device=gdev).to(dev)
        src, ctf_src = self.pool[pick[0]], self.pool[pick[1]]
        shift = self.shifts[src]
        z = None if self.z is None else self.z[src]
        coords = self.lattice.slice_coords(rots.to(self.lattice.coords.device)).to(dev)
        slc = model.decoder(coords, z).float() * self.disc
        ctf = self.data.ctf_on_lattice(ctf_src.cpu().numpy())
        if ctf is not None:
            slc = slc * ctf.reshape(b, -1)
        # the observation is the projection moved by -t: translate(h_obs, t) is the centred slice
        h = translate_ht(slc, self.lattice.coords_xy.to(dev), -shift).reshape(b, d + 1, d + 1)
        noise = torch.randn(b, d, d, generator=generator, device=gdev).to(dev) * self.noise_std
        real = iht2_center(unsymmetrize_ht(h) + noise) * d * self.window
        return Rendered(real, rots, shift, z, ctf_src)
