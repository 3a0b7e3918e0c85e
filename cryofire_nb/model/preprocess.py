"""Data preprocessing: soft real-space window, contrast inversion, symmetric Hartley
images, global normalisation, and the x-mirror used by the symmetric loss.

Domains: ``x`` real-space images indexed [y, x] with the centre at ``d // 2``; ``h``
centred Hartley images on the odd symmetric lattice (b, d+1, d+1) spanning
[-0.5, 0.5] cycles/pixel (see :mod:`cryofire_nb.lattice`).

Normalisation: Hartley values are divided by a global standard deviation ``std``
(:class:`Normalization`, saved with a run). Real-space encoder inputs are divided by
``std / d``: by Parseval (``sum H^2 = d^2 sum x^2``) this gives them unit RMS whenever
the Hartley values have unit RMS, so both domains stay on one scale.

Contrast: ``invert_contrast=True`` (the default, like cryoDRGN) multiplies images by -1;
RELION/cryoSPARC stacks usually show particles white and need it. A wrong sign gives
hollow or inverted maps.

Dimension letters: b batch, d box (even), m = d + 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from ..errors import InputError
from ..fft import ht2_center, symmetrize_ht

Tensor = torch.Tensor


@dataclass
class PreprocessConfig:
    """Window radii as fractions of the half box; ``invert_contrast`` flips the sign."""

    invert_contrast: bool = True
    window: bool = True
    window_inner: float = 0.85
    window_outer: float = 0.99

    def __post_init__(self):
        if not 0 < self.window_inner < self.window_outer:
            raise InputError(None, f"window radii must satisfy 0 < inner < outer, got "
                             f"{self.window_inner}, {self.window_outer}",
                             "use e.g. window_inner=0.85, window_outer=0.99")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        return cls(**data)


@dataclass
class Normalization:
    """Global standard deviation of the (windowed, sign-corrected) Hartley values."""

    std: float

    def __post_init__(self):
        if not self.std > 0:
            raise InputError(None, f"normalisation std must be positive, got {self.std}",
                             "compute it with compute_normalization on non-empty images")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return cls(**data)


class Preprocessed(NamedTuple):
    """One batch ready for the model."""

    real: Tensor  # (b, d, d) real space, windowed, normalised: encoder input
    hartley: Tensor  # (b, d+1, d+1) symmetric Hartley, normalised: loss target


def real_space_window(d: int, inner: float = 0.85, outer: float = 0.99,
                      dtype=torch.float32, device=None) -> Tensor:
    """Soft circular mask (d, d): 1 for ``r <= inner``, linear to 0 at ``r = outer``,
    with ``r`` the distance from pixel ``d // 2`` in units of the half box ``d / 2``."""
    c = (torch.arange(d, dtype=torch.float64) - d // 2) / (d / 2)
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)  # (d, d)
    w = (1 - (r - inner) / (outer - inner)).clamp(0.0, 1.0)
    return w.to(dtype=dtype, device=device)


def to_hartley(x: Tensor) -> Tensor:
    """Real images (b, d, d) -> symmetric Hartley images (b, d+1, d+1)."""
    return symmetrize_ht(ht2_center(x))


def mirror_real(x: Tensor) -> Tensor:
    """x-mirror of real images (b, d, d) about the centre column ``d // 2``:
    ``out[.., j] = x[.., (d - j) % d]``; its DFT maps ``kx -> -kx`` exactly."""
    return torch.roll(x.flip(-1), 1, dims=-1)


def quarter_turn_real(x: Tensor, k: Tensor) -> Tensor:
    """Real images (b, d, d) turned by ``k`` (b,) quarter turns about the centre pixel
    ``(d // 2, d // 2)``: one turn is ``I'(x, y) = I(-y, x)``, ``out[i, j] = x[j, (d - i) % d]``
    (exact, no interpolation); the pose that goes with it is
    :func:`cryofire_nb.rotations.quarter_turn_pose`."""
    turned = [x]
    for _ in range(3):
        t = turned[-1].transpose(-1, -2)
        turned.append(torch.roll(t.flip(-2), 1, dims=-2))
    stack = torch.stack(turned, 1)  # (b, 4, d, d)
    return stack[torch.arange(x.shape[0], device=x.device), k.to(x.device).long() % 4]


def quarter_turn_hartley(h: Tensor, k: Tensor) -> Tensor:
    """Symmetric Hartley (or CTF) images (b, m, m) of the images turned by
    :func:`quarter_turn_real`: the odd grid is centred, so a quarter turn is ``rot90``."""
    stack = torch.stack([torch.rot90(h, j, dims=(-2, -1)) for j in range(4)], 1)  # (b, 4, m, m)
    return stack[torch.arange(h.shape[0], device=h.device), k.to(h.device).long() % 4]


def mirror_hartley(h: Tensor) -> Tensor:
    """x-mirror of symmetric Hartley images (b, m, m): ``kx -> -kx`` is a column flip."""
    return h.flip(-1)


def _signed_windowed(images: Tensor, config: PreprocessConfig) -> Tensor:
    x = images
    if config.window:
        d = images.shape[-1]
        x = x * real_space_window(d, config.window_inner, config.window_outer, x.dtype, x.device)
    return -x if config.invert_contrast else x


def _check_images(images: Tensor) -> None:
    if images.dim() != 3 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 2:
        raise InputError(None, f"images must be (b, d, d) with d even, got {tuple(images.shape)}",
                         "downsample or crop the stack to an even box")


def compute_normalization(images: Tensor, config: PreprocessConfig) -> Normalization:
    """Global Hartley std from a subset of raw images (b, d, d) (a few thousand suffice).

    The mean is taken as 0 (as cryoDRGN does) so the std is the RMS of all lattice values.
    """
    _check_images(images)
    h = to_hartley(_signed_windowed(images.to(torch.float64), config))  # (b, m, m)
    if not torch.isfinite(h).all():
        raise InputError(None, "images contain NaN or infinite values",
                         "check the particle stack")
    return Normalization(std=float(h.square().mean().sqrt()))


def preprocess(images: Tensor, config: PreprocessConfig, norm: Normalization) -> Preprocessed:
    """Raw images (b, d, d) -> windowed, sign-corrected, normalised real and Hartley images."""
    _check_images(images)
    d = images.shape[-1]
    x = _signed_windowed(images, config)
    h = to_hartley(x) / norm.std  # (b, m, m)
    return Preprocessed(real=x * (d / norm.std), hartley=h)
