"""Losses in the Hartley domain on the odd symmetric lattice.

Image formation compared (cryoDRGN convention): the model's central slice
``V([kx, ky, 0] @ R, z)`` times the CTF is compared with the observed image translated
by ``+shift_px`` (``H'(k) = cos(2 pi k.t) H(k) + sin(2 pi k.t) H(-k)``,
:func:`cryofire_nb.fft.translate_ht`), by mean squared error over the lattice points in
the loss mask; the DC term is always excluded.

Symmetric loss: every image also goes down a mirrored path (x-flip: ``kx -> -kx``, a
column flip of the symmetric lattice, with the CTF flipped too) with the pose the
encoder predicted for the mirrored image. The loss per image is the minimum over the
two paths (and over K pose hypotheses: winner takes all); the winning pose is mapped
back to the original image with :func:`cryofire_nb.rotations.mirror_pose`.

Dimension letters: b batch, K pose hypotheses, m = d + 1, n = m * m lattice points,
n' points in the mask, k latent dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..fft import translate_ht
from ..lattice import Lattice
from ..rotations import mirror_pose
from .decoder import VolumeDecoder
from .encoder import Pose
from .preprocess import mirror_hartley

Tensor = torch.Tensor


class SliceLoss(NamedTuple):
    per_image: Tensor  # (b,) min over hypotheses
    hypothesis: Tensor  # (b,) long, index of the winning hypothesis
    per_hypothesis: Tensor  # (b, K)


class SymmetricLoss(NamedTuple):
    loss: Tensor  # () mean of per_image
    per_image: Tensor  # (b,) min over paths and hypotheses
    mirrored: Tensor  # (b,) bool, True where the mirrored path won
    hypothesis: Tensor  # (b,) long, winning hypothesis within the winning path
    rots: Tensor  # (b, 3, 3) winning rotation, original-image frame (detached)
    shift_px: Tensor  # (b, 2) winning shift, original-image frame (detached)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image (b,): ``-0.5 sum(1 + lv - mu^2 - e^lv)`` >= 0."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)


def loss_index(lattice: Lattice, mask: Tensor) -> Tensor:
    """Indices (n',) of the lattice points in ``mask`` (n,) bool, without the DC term."""
    keep = mask.clone()
    keep[lattice.center_index] = False
    return keep.nonzero()[:, 0]


def slice_loss(decoder: VolumeDecoder, rots: Tensor, shift_px: Tensor, z: Tensor | None,
               h_obs: Tensor, ctf: Tensor | None, lattice: Lattice, mask: Tensor) -> SliceLoss:
    """Masked Hartley MSE per image and hypothesis.

    rots (b, 3, 3) or (b, K, 3, 3); shift_px (b, 2); z (b, k) or None; h_obs (b, m, m)
    (or (b, n)) observed symmetric Hartley images; ctf same shape or None; mask (n,) bool.
    """
    b = h_obs.shape[0]
    rk = rots if rots.dim() == 4 else rots[:, None]  # (b, K, 3, 3)
    n_hyp = rk.shape[1]
    idx = loss_index(lattice, mask.to(lattice.coords.device))
    coords_xy = lattice.coords_xy.to(h_obs)
    obs = translate_ht(h_obs.reshape(b, -1), coords_xy, shift_px.to(h_obs))[:, idx]  # (b, n')
    zk = None if z is None else z.repeat_interleave(n_hyp, 0)  # (b K, k)
    coords = lattice.slice_coords(rk.reshape(-1, 3, 3).to(h_obs), idx)  # (b K, n', 3)
    pred = decoder(coords, zk).reshape(b, n_hyp, -1)  # (b, K, n')
    if ctf is not None:
        pred = pred * ctf.reshape(b, -1)[:, None, idx].to(pred)
    per_hyp = (pred - obs[:, None]).square().mean(-1)  # (b, K)
    best, which = per_hyp.min(-1)
    return SliceLoss(best, which, per_hyp)


def _pick(rots: Tensor, which: Tensor) -> Tensor:
    """(b, 3, 3) or (b, K, 3, 3) -> the chosen (b, 3, 3)."""
    if rots.dim() == 3:
        return rots
    return rots[torch.arange(rots.shape[0], device=rots.device), which]


def symmetric_loss(decoder: VolumeDecoder, pose: Pose, pose_mirror: Pose,
                   z: Tensor | None, z_mirror: Tensor | None, h_obs: Tensor,
                   ctf: Tensor | None, lattice: Lattice, mask: Tensor) -> SymmetricLoss:
    """Min over the original and the mirrored path of :func:`slice_loss`.

    ``pose``/``z`` are the encoder's predictions for the image, ``pose_mirror``/``z_mirror``
    those for its x-mirror (:func:`cryofire_nb.model.preprocess.mirror_real`). ``h_obs`` and
    ``ctf`` are (b, m, m) for the original image; the mirrored path flips them itself.
    """
    b, m = h_obs.shape[0], lattice.m
    h = h_obs.reshape(b, m, m)
    c = None if ctf is None else ctf.reshape(b, m, m)
    orig = slice_loss(decoder, pose.rots, pose.shift_px, z, h, c, lattice, mask)
    mirr = slice_loss(decoder, pose_mirror.rots, pose_mirror.shift_px, z_mirror,
                      mirror_hartley(h), None if c is None else mirror_hartley(c), lattice, mask)
    both = torch.stack([orig.per_image, mirr.per_image], -1)  # (b, 2)
    per_image, path = both.min(-1)
    mirrored = path == 1
    hyp = torch.where(mirrored, mirr.hypothesis, orig.hypothesis)
    r_o = _pick(pose.rots, orig.hypothesis)
    r_m, t_m = mirror_pose(_pick(pose_mirror.rots, mirr.hypothesis), pose_mirror.shift_px)
    rots = torch.where(mirrored[:, None, None], r_m, r_o)
    shift = torch.where(mirrored[:, None], t_m, pose.shift_px)
    return SymmetricLoss(per_image.mean(), per_image, mirrored, hyp, rots.detach(), shift.detach())
