"""The odd symmetric 2-D frequency lattice on which images are compared.

For an even box ``d`` the lattice has ``m = d + 1`` points per axis spanning
[-0.5, 0.5] cycles/pixel; point ``(i, j)`` (row i, column j) has frequency
``kx = (j - d/2)/d``, ``ky = (i - d/2)/d``. Flattened row-major, the point-reflected
lattice ``-k`` is the flattened array reversed. 3-D slice coordinates are
``[kx, ky, 0] @ R``.

Dimension letters: n lattice points (m*m), b batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def full_precision(t: Tensor):
    """A context in which autocast is off on ``t``'s device: geometry (slice coordinates,
    Fourier-feature and shift phases) stays in fp32 while the networks run in bf16; a
    phase of 2 pi k.t in bf16 is off by up to ~0.4 rad."""
    return torch.autocast(t.device.type, enabled=False)


@dataclass
class Lattice:
    """Symmetric lattice of an even box ``d``; coordinates in cycles/pixel."""

    d: int
    device: torch.device | str | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.d % 2:
            raise ValueError(f"Lattice needs an even box size, got {self.d}")
        m = self.d + 1
        k = (torch.arange(m, dtype=self.dtype, device=self.device) - self.d / 2) / self.d
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        self.coords = torch.stack([kx.flatten(), ky.flatten(), torch.zeros_like(kx).flatten()], -1)  # (n, 3)
        self.radius_px = self.coords[:, :2].norm(dim=-1) * self.d  # (n,)
        self.center_index = (m * m) // 2

    @property
    def m(self) -> int:
        return self.d + 1

    @property
    def n(self) -> int:
        return self.m * self.m

    @property
    def coords_xy(self) -> Tensor:
        return self.coords[:, :2]

    def mask(self, radius_px: float, exclude_dc: bool = False) -> Tensor:
        """Boolean (n,) of points with ``|k| * d <= radius_px`` (a disc in pixels of frequency)."""
        keep = self.radius_px <= radius_px + 1e-6
        if exclude_dc:
            keep = keep & (self.radius_px > 0)
        return keep

    def slice_coords(self, rots: Tensor, index: Tensor | None = None) -> Tensor:
        """3-D frequencies of the central slices, (b, n', 3): ``[kx, ky, 0] @ R``."""
        return central_slice(self.coords if index is None else self.coords[index], rots)


def central_slice(plane: Tensor, rots: Tensor) -> Tensor:
    """3-D frequencies ``plane @ R`` (b, n, 3) of in-plane points ``plane`` (n, 3)
    ``[kx, ky, 0]`` for rotations ``rots`` (b, 3, 3), in fp32 or wider whatever the
    autocast state: bf16 would misplace Nyquist points by ~0.25 voxel at d = 128."""
    with full_precision(rots):
        dtype = torch.promote_types(rots.dtype, torch.float32)
        return plane.to(dtype) @ rots.to(dtype)
