"""Decoders: a (hyper)volume that returns Hartley values at 3-D frequencies for a
conformation z.

Coordinates are 3-D frequencies (x, y, z) in cycles/pixel in [-0.5, 0.5]; the central
slice of rotation R is ``[kx, ky, 0] @ R`` (:meth:`cryofire_nb.lattice.Lattice.slice_coords`).
Outputs are real centred Hartley values (``H = Re(F) - Im(F)``; no Hermitian constraint).
:meth:`VolumeDecoder.eval_volume` samples the field on the odd (d+1)^3 lattice, drops the
+1/2 index to get the centred (d, d, d) Hartley volume indexed [z, y, x] and inverts it to
a real-space volume with :func:`cryofire_nb.fft.iht3_center`.

- :class:`HyperVolume`: Gaussian random Fourier features of the frequency
  (``3 * pe_dim`` frequencies ~ N(0, sigma^2) * d/2, fixed from a seed; features
  ``[sin(k.B), cos(k.B)]``) concatenated with z, a residual MLP, one value out.
- :class:`VoxelVolume`: a learnable (d+1)^3 Hartley grid sampled trilinearly, optionally
  ``V0 + sum_k z_k U_k`` (low-rank conformational basis): cheap pose-only phases on CPU.

Dimension letters: b batch, n points, k latent dim, p = 3 * pe_dim frequencies,
f hidden width, d box, m = d + 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import InputError
from ..fft import iht3_center
from ..lattice import full_precision
from ..projection import sample_trilinear

Tensor = torch.Tensor


def lattice_3d(d: int, dtype=torch.float32, device=None) -> Tensor:
    """Odd symmetric 3-D lattice coordinates (m, m, m, 3) indexed [z, y, x], values (x, y, z)."""
    k = (torch.arange(d + 1, dtype=dtype, device=device) - d / 2) / d
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([kx, ky, kz], -1)


class VolumeDecoder(nn.Module):
    """Common interface: ``forward(coords (b, n, 3), z (b, k) | None) -> (b, n)`` Hartley."""

    d: int
    zdim: int

    def _check_z(self, coords: Tensor, z: Tensor | None) -> None:
        if coords.dim() != 3 or coords.shape[-1] != 3:
            raise ValueError(f"coords must be (b, n, 3), got {tuple(coords.shape)}")
        if self.zdim and (z is None or z.shape != (coords.shape[0], self.zdim)):
            raise ValueError(f"z must be (b={coords.shape[0]}, {self.zdim}), "
                             f"got {None if z is None else tuple(z.shape)}")

    @torch.no_grad()
    def eval_volume(self, z: Tensor | None = None, d: int | None = None,
                    chunk_points: int = 2 ** 16, sphere: bool = True) -> Tensor:
        """Real-space volume (d, d, d) [z, y, x] at conformation ``z`` (k,) or (1, k).

        Frequencies beyond 0.5 cycles/pixel (never in a slice's disc) are set to 0 when
        ``sphere`` is True.
        """
        d = self.d if d is None else d
        param = next(self.parameters())
        grid = lattice_3d(d, param.dtype, param.device)[:-1, :-1, :-1].reshape(1, -1, 3)  # (1, d^3, 3)
        zz = None if z is None or self.zdim == 0 else z.reshape(1, self.zdim).to(param)
        out = torch.cat([self(grid[:, i:i + chunk_points], zz)
                         for i in range(0, grid.shape[1], chunk_points)], dim=1)  # (1, d^3)
        if sphere:
            out = torch.where(grid.norm(dim=-1) <= 0.5, out, torch.zeros_like(out))
        return iht3_center(out.reshape(d, d, d))


@dataclass
class HyperVolumeConfig:
    d: int
    zdim: int = 8
    pe_dim: int | None = None  # None -> d // 2 (paper); the released config uses 6
    sigma: float = 0.5
    hidden: int = 256
    n_layers: int = 3  # residual layers
    seed: int = 0

    def __post_init__(self):
        if self.pe_dim is None:
            self.pe_dim = self.d // 2
        if self.d < 2 or self.d % 2 or self.zdim < 0 or self.pe_dim < 1 or self.hidden < 1 \
                or self.n_layers < 0 or not self.sigma > 0:
            raise InputError(None, f"HyperVolumeConfig: invalid values {asdict(self)}",
                             "need even d, zdim >= 0, pe_dim >= 1, hidden >= 1, n_layers >= 0, sigma > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HyperVolumeConfig":
        return cls(**data)


class GaussianFourierFeatures(nn.Module):
    """(..., 3) cycles/pixel -> (..., 2p) ``[sin(k.B), cos(k.B)]``, B ~ N(0, sigma^2) * d/2."""

    def __init__(self, d: int, pe_dim: int, sigma: float, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        freqs = torch.randn(3 * pe_dim, 3, generator=g, dtype=torch.float64) * sigma * (d // 2)
        self.register_buffer("freqs", freqs.float())  # (p, 3)

    def forward(self, coords: Tensor) -> Tensor:
        with full_precision(coords):
            dtype = torch.promote_types(coords.dtype, torch.float32)
            phase = coords.to(dtype) @ self.freqs.T.to(dtype)  # (..., p)
            return torch.cat([torch.sin(phase), torch.cos(phase)], -1)


class ResidualLayer(nn.Module):
    def __init__(self, f: int):
        super().__init__()
        self.fc = nn.Linear(f, f)

    def forward(self, x: Tensor) -> Tensor:  # (..., f)
        return torch.relu(x + self.fc(x))


class HyperVolume(VolumeDecoder):
    """Random-Fourier-feature residual MLP: Hartley value at (coordinate, z)."""

    def __init__(self, config: HyperVolumeConfig):
        super().__init__()
        self.config = config
        self.d, self.zdim = config.d, config.zdim
        f = config.hidden
        self.features = GaussianFourierFeatures(config.d, config.pe_dim, config.sigma, config.seed)
        layers = [nn.Linear(6 * config.pe_dim + config.zdim, f), nn.ReLU()]
        layers += [ResidualLayer(f) for _ in range(config.n_layers)]
        self.mlp = nn.Sequential(*layers, nn.Linear(f, 1))

    def forward(self, coords: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_z(coords, z)
        x = self.features(coords)  # (b, n, 2p)
        if self.zdim:
            x = torch.cat([x, z[:, None, :].to(x.dtype).expand(-1, coords.shape[1], -1)], -1)
        return self.mlp(x)[..., 0]  # (b, n)


@dataclass
class VoxelVolumeConfig:
    d: int
    zdim: int = 0  # number of basis volumes U_k
    init_std: float = 0.0  # of V0 (the U_k start at 0.01 * init_std or 1e-3)
    seed: int = 0

    def __post_init__(self):
        if self.d < 2 or self.d % 2 or self.zdim < 0 or self.init_std < 0:
            raise InputError(None, f"VoxelVolumeConfig: invalid values {asdict(self)}",
                             "need even d, zdim >= 0, init_std >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VoxelVolumeConfig":
        return cls(**data)


class VoxelVolume(VolumeDecoder):
    """Learnable Hartley grid (1 + k, m, m, m) [., z, y, x]: ``V0 + sum_k z_k U_k``,
    sampled by trilinear interpolation (exact at lattice points, 0 outside)."""

    def __init__(self, config: VoxelVolumeConfig):
        super().__init__()
        self.config = config
        self.d, self.zdim = config.d, config.zdim
        m = config.d + 1
        g = torch.Generator().manual_seed(config.seed)
        grids = torch.randn(1 + config.zdim, m, m, m, generator=g)
        scale = torch.tensor([config.init_std] + [max(0.01 * config.init_std, 1e-3)] * config.zdim)
        self.grids = nn.Parameter(grids * scale[:, None, None, None])  # (1 + k, m, m, m)

    def forward(self, coords: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_z(coords, z)
        b, n, _ = coords.shape
        # frequency k (cycles/pixel) sits at voxel k d + d/2 of the (d+1)^3 grid
        pos = (coords * self.d + self.d // 2).reshape(1, b * n, 3)
        vals = sample_trilinear(self.grids[None], pos).reshape(1 + self.zdim, b, n)  # (1 + k, b, n)
        out = vals[0]
        if self.zdim:
            out = out + torch.einsum("kbn,bk->bn", vals[1:], z.to(vals.dtype))
        return out
