"""Amortised inference: a CNN on a real-space image predicts its rotation, in-plane
shift and conformation z.

Two variants (record which one a run used: ``EncoderConfig.variant``):

- ``'paper'`` (Levy et al. 2022): VGG-like stack of (conv, conv, max-pool) blocks down
  to 1-2 px, a shared 2-layer MLP to ``hidden`` features, a z head, and pose heads fed
  ``concat(features, z_mu)`` (the mean, not a sample: poses are deterministic).
- ``'released'`` (the authors' code): blocks of (conv, conv, avg-pool, group-norm),
  16 -> up to 1024 channels, convolutional heads; pose does not see z.

Rotation heads output 6 numbers per hypothesis, mapped to a rotation by
:func:`cryofire_nb.rotations.s2s2_to_matrix` (Gram-Schmidt; convention: slice
``[kx, ky, 0] @ R``). The shift head outputs ``max_shift_px * tanh(.)`` in pixels (x, y),
meaning "translate the observed image by +shift to centre it" (cryoDRGN convention).
With ``n_pose_hypotheses = K > 1`` the encoder returns K rotations per image; the loss
keeps the best one (winner takes all).

Input: windowed, normalised real-space images (b, d, d) indexed [y, x]
(:func:`cryofire_nb.model.preprocess.preprocess`).

Dimension letters: b batch, d box, c channels, s spatial size, f features (hidden),
k latent dim (zdim), K pose hypotheses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InputError
from ..rotations import s2s2_to_matrix

Tensor = torch.Tensor
VARIANTS = ("paper", "released")


def n_blocks_for(d: int) -> int:
    """Number of halving blocks that take a d-px image down to 1-2 px."""
    n, s = 0, d
    while s > 2:
        s //= 2
        n += 1
    return n


def final_size_for(d: int) -> int:
    s = d
    for _ in range(n_blocks_for(d)):
        s //= 2
    return s


@dataclass
class EncoderConfig:
    """Encoder hyper-parameters; ``None`` fields are resolved per variant on construction
    (the resolved values are what a run saves)."""

    d: int
    zdim: int = 8
    variant: str = "paper"
    variational: bool = False
    conv_channels: tuple[int, ...] | None = None  # one width per block
    hidden: int = 256
    pose_conditioned_on_z: bool | None = None  # paper: True; released: False
    n_pose_hypotheses: int = 1
    max_shift_px: float | None = None  # None -> d / 8
    group_norm_groups: int = 8  # released variant only

    def __post_init__(self):
        def bad(problem, fix):
            raise InputError(None, f"EncoderConfig: {problem}", fix)

        if self.variant not in VARIANTS:
            bad(f"unknown variant {self.variant!r}", f"use one of {VARIANTS}")
        if self.d < 8 or self.d % 2:
            bad(f"box d must be even and >= 8, got {self.d}", "downsample to an even box")
        if self.zdim < 0 or self.hidden < 1 or self.n_pose_hypotheses < 1:
            bad("zdim >= 0, hidden >= 1 and n_pose_hypotheses >= 1 are required",
                "fix the values")
        n = n_blocks_for(self.d)
        if self.conv_channels is None:
            base, cap = (32, 256) if self.variant == "paper" else (16, 1024)
            self.conv_channels = tuple(min(base * 2 ** i, cap) for i in range(n))
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if len(self.conv_channels) != n or min(self.conv_channels) < 1:
            bad(f"conv_channels needs {n} positive widths for d={self.d}, "
                f"got {self.conv_channels}", "leave it None for the default")
        if self.pose_conditioned_on_z is None:
            self.pose_conditioned_on_z = self.variant == "paper"
        if self.pose_conditioned_on_z and self.variant == "released":
            bad("the released variant's conv heads do not see z",
                "use variant='paper' or pose_conditioned_on_z=False")
        if self.variant == "released" and any(c % self.group_norm_groups for c in self.conv_channels):
            bad(f"channels {self.conv_channels} not divisible by group_norm_groups="
                f"{self.group_norm_groups}", "choose widths that are multiples of it")
        if self.max_shift_px is None:
            self.max_shift_px = self.d / 8
        if not self.max_shift_px > 0:
            bad(f"max_shift_px must be positive, got {self.max_shift_px}", "e.g. d / 8")
        if self.variational and self.zdim == 0:
            bad("variational encoder needs zdim > 0", "set zdim or variational=False")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["conv_channels"] = list(self.conv_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        return cls(**data)


class Pose(NamedTuple):
    rots: Tensor  # (b, 3, 3) or (b, K, 3, 3)
    shift_px: Tensor  # (b, 2) as (x, y) pixels


class EncoderOutput(NamedTuple):
    rots: Tensor  # (b, 3, 3), or (b, K, 3, 3) when K > 1
    shift_px: Tensor  # (b, 2)
    z_mu: Tensor  # (b, k)
    z_logvar: Tensor | None  # (b, k) when variational

    @property
    def pose(self) -> Pose:
        return Pose(self.rots, self.shift_px)


def sample_z(mu: Tensor, logvar: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """Reparameterisation ``mu + exp(logvar / 2) * eps``; returns ``mu`` when ``logvar`` is None."""
    if logvar is None:
        return mu
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


# --------------------------------------------------------------------------- trunks


class ConvBlock(nn.Module):
    """(conv3x3, ReLU) x 2, then halve: max-pool (paper) or avg-pool + group-norm (released)."""

    def __init__(self, c_in: int, c_out: int, released: bool, groups: int):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())
        self.pool = nn.AvgPool2d(2) if released else nn.MaxPool2d(2)
        self.norm = nn.GroupNorm(groups, c_out) if released else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (b, c_in, s, s) -> (b, c_out, s/2, s/2)
        return self.norm(self.pool(self.convs(x)))


class ConvTrunk(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        widths = (1, *cfg.conv_channels)
        released = cfg.variant == "released"
        self.blocks = nn.Sequential(*[ConvBlock(a, b, released, cfg.group_norm_groups)
                                      for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, x: Tensor) -> Tensor:  # (b, d, d) -> (b, c, s, s)
        return self.blocks(x[:, None])


# --------------------------------------------------------------------------- heads


class RawHeads(NamedTuple):
    rot6: Tensor  # (b, K, 6)
    shift_raw: Tensor  # (b, 2), before tanh
    z_mu: Tensor  # (b, k)
    z_logvar: Tensor | None  # (b, k)


def mlp2(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class MLPHeads(nn.Module):
    """Paper: flatten -> shared 2-layer MLP -> z head; pose heads on [features, z_mu]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        s = final_size_for(cfg.d)
        f, k = cfg.hidden, cfg.zdim
        self.shared = nn.Sequential(nn.Flatten(), nn.Linear(cfg.conv_channels[-1] * s * s, f),
                                    nn.ReLU(), nn.Linear(f, f), nn.ReLU())
        self.z_mu = nn.Linear(f, k) if k else None
        self.z_logvar = nn.Linear(f, k) if cfg.variational else None
        n_pose_in = f + (k if cfg.pose_conditioned_on_z else 0)
        self.rot = mlp2(n_pose_in, f, 6 * cfg.n_pose_hypotheses)
        self.shift = mlp2(n_pose_in, f, 2)
        self.conditioned = cfg.pose_conditioned_on_z

    def forward(self, fmap: Tensor) -> RawHeads:
        feats = self.shared(fmap)  # (b, f)
        z_mu = self.z_mu(feats) if self.z_mu is not None else feats.new_zeros(feats.shape[0], 0)
        z_logvar = self.z_logvar(feats) if self.z_logvar is not None else None
        pose_in = torch.cat([feats, z_mu], -1) if self.conditioned else feats  # (b, f + k)
        rot6 = self.rot(pose_in).reshape(feats.shape[0], -1, 6)  # (b, K, 6)
        return RawHeads(rot6, self.shift(pose_in), z_mu, z_logvar)


class ConvHead(nn.Module):
    """Released: conv over the whole s x s map (a dense layer as a conv), ReLU, 1x1 conv."""

    def __init__(self, c: int, s: int, hidden: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, hidden, s), nn.ReLU(), nn.Conv2d(hidden, n_out, 1))

    def forward(self, fmap: Tensor) -> Tensor:  # (b, c, s, s) -> (b, n_out)
        return self.net(fmap).flatten(1)


class ConvHeads(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        c, s, f, k = cfg.conv_channels[-1], final_size_for(cfg.d), cfg.hidden, cfg.zdim
        self.z_mu = ConvHead(c, s, f, k) if k else None
        self.z_logvar = ConvHead(c, s, f, k) if cfg.variational else None
        self.rot = ConvHead(c, s, f, 6 * cfg.n_pose_hypotheses)
        self.shift = ConvHead(c, s, f, 2)

    def forward(self, fmap: Tensor) -> RawHeads:
        b = fmap.shape[0]
        z_mu = self.z_mu(fmap) if self.z_mu is not None else fmap.new_zeros(b, 0)
        z_logvar = self.z_logvar(fmap) if self.z_logvar is not None else None
        return RawHeads(self.rot(fmap).reshape(b, -1, 6), self.shift(fmap), z_mu, z_logvar)


# --------------------------------------------------------------------------- encoder


class Encoder(nn.Module):
    """Real-space images (b, d, d) -> :class:`EncoderOutput`."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.trunk = ConvTrunk(config)
        self.heads = MLPHeads(config) if config.variant == "paper" else ConvHeads(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Start near zero shift, with a small but non-zero gradient path.
        last = self.heads.shift.net[-1] if isinstance(self.heads, ConvHeads) else self.heads.shift[-1]
        last.weight.data.mul_(0.01)

    def forward(self, images: Tensor) -> EncoderOutput:
        cfg = self.config
        if images.dim() != 3 or images.shape[-2:] != (cfg.d, cfg.d):
            raise ValueError(f"Encoder expects (b, {cfg.d}, {cfg.d}) images, got {tuple(images.shape)}")
        raw = self.heads(self.trunk(images))
        rot6 = raw.rot6.float() if raw.rot6.dtype in (torch.float16, torch.bfloat16) else raw.rot6
        rots = s2s2_to_matrix(rot6)  # (b, K, 3, 3); Gram-Schmidt in fp32 (or fp64) under AMP
        if cfg.n_pose_hypotheses == 1:
            rots = rots[:, 0]  # (b, 3, 3)
        shift_px = cfg.max_shift_px * torch.tanh(raw.shift_raw)  # (b, 2)
        return EncoderOutput(rots, shift_px, raw.z_mu, raw.z_logvar)
