"""One forward pass of the cryoFIRE objective on a batch, in three modes.

* amortised (ab initio): the encoder predicts pose and z for the image and for its
  x-mirror; the decoder's central slice times the CTF is compared with the observed
  Hartley image translated by the predicted shift; the loss per image is the minimum
  over the two paths (:func:`cryofire_nb.model.losses.symmetric_loss`), and the winning
  pose is mapped back to the original image.
* known poses (``--poses``): poses from the file, the encoder predicts z only (as
  cryoDRGN's ``train_vae``); no mirrored path.
* distillation (the table method): the reconstruction uses the target poses while the
  encoder's pose heads are pulled towards them, on both paths (the mirrored image's
  target is ``mirror_pose`` of the original's): squared chordal distance
  ``||R - R*||_F^2`` (min over hypotheses) plus the shift MSE in pixels^2; with a latent
  table the decoder uses the table's z and the encoder's z is regressed onto it.

During the pose-only phase the decoder sees Gaussian noise instead of z. With a
variational encoder, the KL term ``-0.5 sum(1 + logvar - mu^2 - exp(logvar))`` (>= 0)
is added with weight ``kl_weight``.

Dimension letters: b batch, K pose hypotheses, k latent dim, d box, m = d + 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..lattice import Lattice
from ..model.encoder import EncoderOutput, sample_z
from ..model.losses import kl_divergence, slice_loss, symmetric_loss
from ..model.preprocess import mirror_real, quarter_turn_real
from ..model.schedule import PoseOnlyPhase
from ..rotations import mirror_pose, quarter_turn_pose
from .data import Batch
from .run_model import CryoFireModel

Tensor = torch.Tensor


class PoseTargets(NamedTuple):
    rots: Tensor  # (b, 3, 3)
    shift_px: Tensor  # (b, 2)


class StepResult(NamedTuple):
    loss: Tensor  # () total, to back-propagate
    recon: Tensor  # () reconstruction (masked Hartley MSE)
    kl: Tensor | None  # () mean KL per image
    pose_loss: Tensor | None  # () distillation loss
    per_image: Tensor  # (b,) reconstruction loss per image
    rots: Tensor  # (b, 3, 3) pose of the original image (winner / given / predicted), detached
    shift_px: Tensor  # (b, 2) detached
    mirrored: Tensor  # (b,) bool, mirrored path won
    z_mu: Tensor  # (b, k) of the path that was used, detached


def encode_both(model: CryoFireModel, real: Tensor) -> tuple[EncoderOutput, EncoderOutput]:
    """Encoder outputs for the images (b, d, d) and their x-mirrors, in one call."""
    b = real.shape[0]
    out = model.encoder(torch.cat([real, mirror_real(real)], 0))
    first = EncoderOutput(*(None if t is None else t[:b] for t in out))
    second = EncoderOutput(*(None if t is None else t[b:] for t in out))
    return first, second


def _kl(outs: list[EncoderOutput]) -> Tensor | None:
    kls = [kl_divergence(o.z_mu, o.z_logvar).mean() for o in outs if o.z_logvar is not None]
    return torch.stack(kls).mean() if kls else None


def _best_hypothesis(rots: Tensor) -> Tensor:
    return rots if rots.dim() == 4 else rots[:, None]  # (b, K, 3, 3)


def pose_distance(pred_rots: Tensor, pred_shift: Tensor, target: PoseTargets,
                  shift_weight: float) -> tuple[Tensor, Tensor]:
    """Squared chordal distance (min over hypotheses) and shift MSE (px^2), each (b,)."""
    rk = _best_hypothesis(pred_rots)
    chord = (rk - target.rots[:, None]).square().sum((-1, -2)).min(-1).values  # (b,)
    shift = (pred_shift - target.shift_px).square().sum(-1)  # (b,)
    return chord, shift_weight * shift


def _first_hypothesis(rots: Tensor) -> Tensor:
    return rots if rots.dim() == 3 else rots[:, 0]


def amortised_step(model: CryoFireModel, batch: Batch, lattice: Lattice, mask: Tensor, images_seen: int,
                   pose_only: PoseOnlyPhase, kl_weight: float, generator: torch.Generator | None,
                   sample: bool = True) -> StepResult:
    out, outm = encode_both(model, batch.real)
    z = sample_z(out.z_mu, out.z_logvar, generator) if sample else out.z_mu
    zm = sample_z(outm.z_mu, outm.z_logvar, generator) if sample else outm.z_mu
    if sample:
        zd, zdm = pose_only.decoder_z(z, images_seen, generator), pose_only.decoder_z(zm, images_seen, generator)
    elif pose_only.active(images_seen):  # evaluation during the pose-only phase: the noise's mean
        zd, zdm = torch.zeros_like(z), torch.zeros_like(zm)
    else:
        zd, zdm = z, zm
    sym = symmetric_loss(model.decoder, out.pose, outm.pose, zd, zdm, batch.hartley, batch.ctf, lattice, mask)
    kl = _kl([out, outm])
    loss = sym.loss + (kl_weight * kl if kl is not None else 0.0)
    z_used = torch.where(sym.mirrored[:, None], outm.z_mu, out.z_mu).detach()
    return StepResult(loss, sym.loss, kl, None, sym.per_image.detach(), sym.rots, sym.shift_px,
                      sym.mirrored, z_used)


def known_pose_step(model: CryoFireModel, batch: Batch, rots: Tensor, shift_px: Tensor, lattice: Lattice,
                    mask: Tensor, images_seen: int, pose_only: PoseOnlyPhase, kl_weight: float,
                    generator: torch.Generator | None, sample: bool = True) -> StepResult:
    out = model.encoder(batch.real)
    z = sample_z(out.z_mu, out.z_logvar, generator) if sample else out.z_mu
    zd = pose_only.decoder_z(z, images_seen, generator) if sample else z
    sl = slice_loss(model.decoder, rots, shift_px, zd, batch.hartley, batch.ctf, lattice, mask)
    recon = sl.per_image.mean()
    kl = _kl([out])
    loss = recon + (kl_weight * kl if kl is not None else 0.0)
    no_mirror = torch.zeros(rots.shape[0], dtype=torch.bool, device=rots.device)
    return StepResult(loss, recon, kl, None, sl.per_image.detach(), rots, shift_px, no_mirror,
                      out.z_mu.detach())


def distill_step(model: CryoFireModel, batch: Batch, target: PoseTargets, lattice: Lattice, mask: Tensor,
                 images_seen: int, pose_only: PoseOnlyPhase, kl_weight: float, pose_weight: float,
                 shift_weight: float, generator: torch.Generator | None, z_target: Tensor | None = None,
                 z_weight: float = 1.0, quarter_turns: bool = False, rendered=None) -> StepResult:
    """With ``z_target`` (b, k) (the run's latent table) the decoder sees the table's z and
    the encoder's z is pulled towards it (squared error, on both paths: a mirror image
    shows the same conformation).

    ``quarter_turns``: the encoder sees each image turned by a random number of quarter
    turns in its plane, with the pose target turned to match (exact: a pixel permutation,
    :func:`cryofire_nb.rotations.quarter_turn_pose`; the decoder's loss uses the original
    image and target). Four exact copies of each image for the encoder, against
    memorising the training set (its poses are returned turned back).

    ``rendered`` (:class:`cryofire_nb.train.rendered.Rendered`, b' images): images with
    exact labels that join the particles in the encoder's loss only (the decoder learns
    from particles alone, never from its own renderings)."""
    k = None
    real = batch.real
    if quarter_turns:
        dev = generator.device if generator is not None else real.device
        k = torch.randint(0, 4, (real.shape[0],), generator=generator, device=dev).to(real.device)
        real = quarter_turn_real(real, k)
        target_enc = PoseTargets(*quarter_turn_pose(target.rots, target.shift_px, k))
    else:
        target_enc = target
    b = real.shape[0]
    zt_enc = z_target
    if rendered is not None:
        real = torch.cat([real, rendered.real.to(real)], 0)
        target_enc = PoseTargets(torch.cat([target_enc.rots, rendered.rots.to(target_enc.rots)], 0),
                                 torch.cat([target_enc.shift_px, rendered.shift_px.to(target_enc.shift_px)], 0))
        if z_target is not None:
            if rendered.z is None:
                raise ValueError("rendered images need z labels when the particles have a latent table")
            zt_enc = torch.cat([z_target, rendered.z.to(z_target)], 0)
    both, bothm = encode_both(model, real)
    out = EncoderOutput(*(None if t is None else t[:b] for t in both))  # the particles' outputs
    z = sample_z(out.z_mu, out.z_logvar, generator)
    zd = pose_only.decoder_z(z, images_seen, generator) if z_target is None else z_target
    sl = slice_loss(model.decoder, target.rots, target.shift_px, zd, batch.hartley, batch.ctf, lattice, mask)
    recon = sl.per_image.mean()
    rm, tm = mirror_pose(target_enc.rots, target_enc.shift_px)
    c1, s1 = pose_distance(both.rots, both.shift_px, target_enc, shift_weight)
    c2, s2 = pose_distance(bothm.rots, bothm.shift_px, PoseTargets(rm, tm), shift_weight)
    pose_loss = 0.5 * (pose_weight * (c1 + c2) + s1 + s2).mean()
    if zt_enc is not None:
        pose_loss = pose_loss + 0.5 * z_weight * ((both.z_mu - zt_enc).square().sum(-1)
                                                  + (bothm.z_mu - zt_enc).square().sum(-1)).mean()
    kl = _kl([both, bothm])
    loss = recon + pose_loss + (kl_weight * kl if kl is not None else 0.0)
    no_mirror = torch.zeros(target.rots.shape[0], dtype=torch.bool, device=target.rots.device)
    rots_out, shift_out = _first_hypothesis(out.rots).detach(), out.shift_px.detach()
    if k is not None:
        rots_out, shift_out = quarter_turn_pose(rots_out, shift_out.to(rots_out.dtype), -k)
    return StepResult(loss, recon, kl, pose_loss.detach(), sl.per_image.detach(), rots_out, shift_out, no_mirror,
                      out.z_mu.detach())


def view_planarity(rots: Tensor) -> float:
    """3 x the smallest eigenvalue of the second moment of the view directions (third
    rows) of rotations (n, 3, 3): 1 for views spread over the sphere, 0 when they all lie
    on a great circle (the spurious planar-symmetry minimum) or collapse to one axis."""
    v = rots[:, 2, :].double()  # (n, 3)
    moment = v.T @ v / max(v.shape[0], 1)
    return float(3 * torch.linalg.eigvalsh(moment)[0].clamp_min(0))
