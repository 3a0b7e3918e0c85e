"""Training schedules driven by the number of images seen.

- :class:`FrequencyMarching`: the loss mask is a disc whose radius (pixels of frequency,
  ``|k| * d``) starts at ``start_radius_px`` and grows by ``step_px`` every
  ``images_per_step`` images, up to ``max_radius_px`` (default ``d / 2``).
- :class:`PoseOnlyPhase`: for the first ``images`` images the decoder sees Gaussian noise
  instead of the encoder's z, so it learns a consensus volume and pose is decoupled from
  conformation.

Both are dataclasses with ``to_dict`` / ``from_dict`` for saving with a run.

Dimension letters: b batch, k latent dim, n lattice points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import InputError
from ..lattice import Lattice

Tensor = torch.Tensor


@dataclass
class FrequencyMarching:
    d: int
    start_radius_px: float = 3.0
    step_px: float = 1.0
    images_per_step: int = 100_000
    max_radius_px: float | None = None  # None -> d / 2

    def __post_init__(self):
        if self.max_radius_px is None:
            self.max_radius_px = self.d / 2
        if self.d < 2 or self.d % 2 or self.start_radius_px <= 0 or self.step_px < 0 \
                or self.images_per_step < 1 or self.max_radius_px < self.start_radius_px:
            raise InputError(None, f"FrequencyMarching: invalid values {asdict(self)}",
                             "need even d, start > 0, step >= 0, images_per_step >= 1, "
                             "max >= start")

    def radius_px(self, images_seen: int) -> float:
        steps = max(images_seen, 0) // self.images_per_step
        return min(self.start_radius_px + steps * self.step_px, self.max_radius_px)

    def mask(self, lattice: Lattice, images_seen: int) -> Tensor:
        """(n,) bool: lattice points within the current radius, DC excluded."""
        if lattice.d != self.d:
            raise ValueError(f"lattice box {lattice.d} != schedule box {self.d}")
        return lattice.mask(self.radius_px(images_seen), exclude_dc=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FrequencyMarching":
        return cls(**data)


@dataclass
class PoseOnlyPhase:
    images: int = 0  # length of the phase in images seen (0: no phase)

    def __post_init__(self):
        if self.images < 0:
            raise InputError(None, f"PoseOnlyPhase: images must be >= 0, got {self.images}",
                             "use 0 to switch the phase off")

    def active(self, images_seen: int) -> bool:
        return images_seen < self.images

    def decoder_z(self, z: Tensor | None, images_seen: int,
                  generator: torch.Generator | None = None) -> Tensor | None:
        """The z (b, k) the decoder should see: Gaussian noise while the phase is active."""
        if z is None or not self.active(images_seen):
            return z
        return torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PoseOnlyPhase":
        return cls(**data)
