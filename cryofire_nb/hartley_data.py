"""Particle images prepared for comparison on the symmetric Hartley lattice.

Preprocessing as in cryoDRGN/cryoFIRE: optional contrast inversion (default on: typical
RELION/cryoSPARC stacks have white particles), a soft circular real-space window
(1 inside 0.85 of the half box, linear ramp to 0 at 0.99), centred Hartley transform,
symmetrised to the (d+1)^2 lattice, divided by one global standard deviation.

Dimension letters: N particles, b batch, d box, n = (d+1)^2 lattice points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ctf import CTFParams
from .fft import ht2_center, symmetrize_ht
from .lattice import Lattice
from .validate import check_ctf_table

Tensor = torch.Tensor


def soft_window(d: int, inner: float = 0.85, outer: float = 0.99, dtype=torch.float32) -> Tensor:
    """Real-space circular window (d, d): 1 within ``inner`` of the half box, linear to 0 at ``outer``."""
    r = (torch.arange(d, dtype=torch.float64) - d // 2) / (d / 2)
    rr = torch.sqrt(r[None, :] ** 2 + r[:, None] ** 2)
    return ((outer - rr) / (outer - inner)).clamp(0, 1).to(dtype)


def images_to_hartley(images: Tensor, invert: bool = True, window: bool = True) -> Tensor:
    """Real images (b, d, d) -> flattened symmetric Hartley (b, (d+1)^2), not normalised."""
    x = images.to(torch.float32)
    if invert:
        x = -x
    if window:
        x = x * soft_window(x.shape[-1], dtype=x.dtype).to(x.device)
    return symmetrize_ht(ht2_center(x)).reshape(x.shape[0], -1)


@dataclass
class HartleyData:
    """All particles on the Hartley lattice, normalised, with their CTF on the lattice."""

    x: Tensor  # (N, n) Hartley, divided by ``norm_std``
    ctf: Tensor  # (N, n) CTF on the lattice (ones if no CTF)
    lattice: Lattice
    norm_std: float
    pixel_size_angstrom: float | None

    @property
    def n_particles(self) -> int:
        return self.x.shape[0]

    @classmethod
    def from_images(cls, images, ctf_table=None, invert: bool = True, chunk: int = 2048,
                    device=None, progress=None) -> "HartleyData":
        """``images``: array-like (N, d, d) or an object with ``images(indices)``; ``ctf_table``
        (N, 9) as in cryoDRGN's ctf.pkl or None."""
        get = images.images if hasattr(images, "images") else (lambda idx: images[idx])
        n = len(images)
        first = np.asarray(get(np.arange(min(1, n))))
        d = first.shape[-1]
        lat = Lattice(d, device=device)
        xs = []
        it = range(0, n, chunk)
        for i in (progress(it) if progress else it):
            idx = np.arange(i, min(n, i + chunk))
            xs.append(images_to_hartley(torch.as_tensor(np.asarray(get(idx))), invert=invert).to(device))
        x = torch.cat(xs)
        std = float(x[: min(n, 10000)].std())
        x /= std
        if ctf_table is not None:
            check_ctf_table(ctf_table, None)  # a zero pixel size or voltage would give NaN or zero CTFs
            params = CTFParams.from_table(torch.as_tensor(np.asarray(ctf_table), dtype=torch.float64,
                                                          device=lat.coords.device))
            ctf = torch.cat([params_slice(params, j, j + chunk).evaluate(lat.coords_xy.double(), d).float()
                             for j in range(0, n, chunk)])
            apix = float(params.pixel_size_angstrom[0] * params.d[0] / d)
        else:
            ctf = torch.ones_like(x)
            apix = None
        return cls(x, ctf, lat, std, apix)


def params_slice(p: CTFParams, i: int, j: int) -> CTFParams:
    return CTFParams(*(getattr(p, f)[i:j] for f in p.__dataclass_fields__))
