"""Amortised inference over a whole dataset: one encoder pass per image and its mirror,
the mirror decision by the decoder's loss on both paths, the winning pose mapped back to
the original image (:func:`cryofire_nb.rotations.mirror_pose`).

Used for the final poses of a training run and by ``cryofire-nb infer`` on unseen
particles. Shifts are in pixels of the image box (translate the image by +shift to
centre it; pose files store shift / d).

Dimension letters: N particles, k latent dim.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import memory
from ..lattice import Lattice
from ..model.preprocess import quarter_turn_hartley, quarter_turn_real
from ..model.schedule import PoseOnlyPhase
from ..rotations import quarter_turn_pose
from .data import Batch, ParticleData
from .run_model import CryoFireModel
from .steps import amortised_step, known_pose_step


@dataclass
class Inferred:
    """Per-particle results of one pass (numpy, float32)."""

    rots: np.ndarray  # (N, 3, 3), original-image frame
    shift_px: np.ndarray  # (N, 2)
    z: np.ndarray  # (N, k) encoder mean of the winning path
    mirrored: np.ndarray  # (N,) bool
    loss: np.ndarray  # (N,) reconstruction loss of the winning path
    seconds: float

    @property
    def images_per_s(self) -> float:
        return len(self.z) / max(self.seconds, 1e-9)


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on cuda when ``amp``; a no-op otherwise (fp32 on CPU)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def infer_dataset(model: CryoFireModel, data: ParticleData, batch_size: int = 256,
                  radius_px: float | None = None, known: tuple[np.ndarray, np.ndarray] | None = None,
                  pose_only_active: bool = False, positions: np.ndarray | None = None,
                  amp: bool = False, progress: bool = False, turns: int = 1) -> Inferred:
    """Encode ``positions`` (default all particles) of ``data`` in order.

    turns: 4 -> test-time hypotheses: each image is also encoded turned by 1, 2 and 3
        quarter turns in its plane (exact pixel permutations; the Hartley image and CTF turn
        with it), each answer mapped back to the original image
        (:func:`cryofire_nb.rotations.quarter_turn_pose`), and the decoder's loss picks
        among the 4 x 2 (mirror) hypotheses. Four times the work of one pass. Measured on
        the d=32 continuous set (the encoder of a 20-min CPU run, 10,000 particles each):
        median view error 28.9 -> 19.0 deg on unseen particles, 22.6 -> 17.8 on the
        training set (the unseen/training gap 28% -> 7%).

    radius_px: loss disc for the mirror decision (default: the run's final radius, else d/2).
    known: (rots (N, 3, 3), shift_px (N, 2)) for a known-pose run (no mirror decision).
    pose_only_active: the decoder still expects noise for z (training ended in that phase):
        the mirror decision uses z = 0, the noise's mean.
    """
    if turns not in (1, 4):
        raise ValueError(f"turns must be 1 or 4, got {turns}")
    model.eval()
    lattice: Lattice = data.lattice
    spec = model.spec
    r = radius_px if radius_px is not None else (spec.final_radius_px or data.d / 2)
    mask = lattice.mask(r, exclude_dc=True)
    pose_only = PoseOnlyPhase(images=1 if pose_only_active else 0)
    pos_all = np.arange(len(data)) if positions is None else np.asarray(positions, dtype=np.int64)
    rots, shifts, zs, mirrored, losses = [], [], [], [], []
    device = lattice.coords.device
    start = time.perf_counter()
    chunks = range(0, len(pos_all), batch_size)
    for i in tqdm(chunks, desc="infer", unit="batch", disable=not progress):
        pos = pos_all[i:i + batch_size]
        batch = data.batch(pos)
        with autocast_for(device, amp):
            if known is not None:
                kr = torch.as_tensor(known[0][pos], device=device)
                ks = torch.as_tensor(known[1][pos], device=device)
                res = known_pose_step(model, batch, kr, ks, lattice, mask, 0, pose_only, 0.0, None, sample=False)
                r, sh = res.rots, res.shift_px
            else:
                res = amortised_step(model, batch, lattice, mask, 0, pose_only, 0.0, None, sample=False)
                r, sh = res.rots.float(), res.shift_px.float()
                for k in range(1, turns):
                    kk = torch.full((len(pos),), k, device=device)
                    turned = Batch(batch.index, quarter_turn_real(batch.real, kk),
                                   quarter_turn_hartley(batch.hartley, kk),
                                   None if batch.ctf is None else quarter_turn_hartley(batch.ctf, kk))
                    rk = amortised_step(model, turned, lattice, mask, 0, pose_only, 0.0, None, sample=False)
                    rr, ss = quarter_turn_pose(rk.rots.float(), rk.shift_px.float(), -kk)
                    better = rk.per_image < res.per_image
                    r = torch.where(better[:, None, None], rr, r)
                    sh = torch.where(better[:, None], ss, sh)
                    res = res._replace(per_image=torch.where(better, rk.per_image, res.per_image),
                                       mirrored=torch.where(better, rk.mirrored, res.mirrored),
                                       z_mu=torch.where(better[:, None], rk.z_mu, res.z_mu))
        rots.append(r.float().cpu())
        shifts.append(sh.float().cpu())
        zs.append(res.z_mu.float().cpu())
        mirrored.append(res.mirrored.cpu())
        losses.append(res.per_image.float().cpu())
        memory.release()  # the batch's temporaries, pinned between the small results otherwise
    seconds = time.perf_counter() - start

    def cat(xs):
        return torch.cat(xs).numpy()

    return Inferred(cat(rots).astype(np.float32), cat(shifts).astype(np.float32), cat(zs).astype(np.float32),
                    cat(mirrored).astype(bool), cat(losses).astype(np.float32), seconds)


@torch.no_grad()
def decoder_basis(model: CryoFireModel, z_ref: np.ndarray, scale: float, n_samples: int | None = None,
                  seed: int = 0):
    """The trained decoder as a linear volume model ``V(a) = sum_k a_k B_k`` over the
    principal-component scores ``a = [1, (z - mean) @ w]`` of ``z_ref`` (N, k) (the run's
    own z table), by least squares over the decoder's volumes at ``n_samples`` (default
    max(16, 4 (k + 1))) rows of ``z_ref``: exact for the voxel decoder (linear in z), the
    best linear fit over the run's conformations for the hypervolume decoder. Returns the
    Hartley basis (k + 1, m, m, m) times ``scale`` and the :class:`~cryofire_nb.hetero.PCMap`."""
    from ..hetero import pc_map
    from ..search import real_to_hartley_volume

    spec = model.spec
    device = next(model.decoder.parameters()).device
    z_ref = np.asarray(z_ref, dtype=np.float64).reshape(len(z_ref), -1)
    if spec.zdim == 0 or z_ref.shape[1] == 0:
        vol = real_to_hartley_volume(model.decoder.eval_volume(None).float()) * scale
        return vol[None], pc_map(np.zeros((1, 0)), 0)
    pcs = pc_map(z_ref, spec.zdim)
    k1 = pcs.w.shape[1] + 1
    n_samples = min(len(z_ref), n_samples or max(16, 4 * k1))
    rows = np.random.default_rng(seed).choice(len(z_ref), size=n_samples, replace=False)
    a = pcs.coefficients(z_ref[rows]).double()  # (S, K)
    vols = torch.stack([real_to_hartley_volume(model.decoder.eval_volume(
        torch.as_tensor(z_ref[r], dtype=torch.float32, device=device)).float()).double().cpu().reshape(-1)
        for r in rows])  # (S, m^3)
    basis = torch.linalg.lstsq(a, vols).solution  # (K, m^3)
    m = spec.d + 1
    return (basis * scale).float().reshape(k1, m, m, m).to(device), pcs


@torch.no_grad()
def search_poses(model: CryoFireModel, data: ParticleData, z: np.ndarray, n_bins: int = 8,
                 progress: bool = False, z_ref: np.ndarray | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Poses and z of ``data``'s particles by search against the trained decoder instead
    of the encoder, as the run's pose and latent tables were made
    (:func:`cryofire_nb.hetero.search_basis`): the decoder as a linear model over the
    principal components of the run's z table ``z_ref`` (default: ``z``) from
    :func:`decoder_basis`; a global search of each of ``n_bins`` PC1 bins of the inferred
    ``z`` (N, k) (the encoder's) against the volume at the bin's mean; local rounds in
    which each particle's z is read off its image through the basis and its pose refined
    against its own volume. Slower than the encoder pass, as accurate as the run's tables.
    ``start`` (rotations (N, 3, 3), shifts (N, 2) px, e.g. the encoder's): local rounds from
    there, no global search (:func:`refine_poses`).
    Returns rotations (N, 3, 3), shifts (N, 2) in pixels, z (N, k) and the seconds it took."""
    from ..hartley_data import HartleyData
    from ..hetero import HeteroRefineConfig, search_basis

    t0 = time.perf_counter()
    spec = model.spec
    device = data.lattice.coords.device
    hd = HartleyData.from_images(data, data.ctf_table, invert=spec.preprocess_config.invert_contrast, device=device,
                                 lazy=not data.in_memory, source=data.source_path)
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    scale = float(spec.norm.std) / hd.norm_std  # decoder (model units) -> hd units
    basis, pcs = decoder_basis(model, z if z_ref is None else z_ref, scale)
    coef = pcs.coefficients(z).to(device)
    rots, shifts, coef = search_basis(hd, basis, coef, HeteroRefineConfig.for_box(spec.d),
                                      n_bins=n_bins if spec.zdim else 1, progress=progress, start=start)
    a = coef[:, 1:].double().cpu()
    z_new = (pcs.mean + a @ torch.linalg.pinv(pcs.w)).numpy() if spec.zdim else z
    return (rots.float().cpu().numpy(), shifts.float().cpu().numpy(), z_new.astype(np.float32),
            time.perf_counter() - t0)


@torch.no_grad()
def decoder_losses(model: CryoFireModel, data: ParticleData, rots: np.ndarray, shift_px: np.ndarray,
                   z: np.ndarray | None, batch_size: int = 256, radius_px: float | None = None) -> np.ndarray:
    """The training objective (masked Hartley MSE of the decoder's slice times the CTF
    against the shifted image) of the given poses and z, per particle (N,), at the run's
    final radius (default) or ``radius_px``."""
    from ..model.losses import slice_loss

    model.eval()
    lattice = data.lattice
    device = lattice.coords.device
    r = radius_px if radius_px is not None else (model.spec.final_radius_px or data.d / 2)
    mask = lattice.mask(r, exclude_dc=True)
    out = []
    for i in range(0, len(data), batch_size):
        pos = np.arange(i, min(i + batch_size, len(data)))
        batch = data.batch(pos)
        zz = None if z is None or model.spec.zdim == 0 else torch.as_tensor(z[pos], device=device).float()
        sl = slice_loss(model.decoder, torch.as_tensor(rots[pos], device=device).float(),
                        torch.as_tensor(shift_px[pos], device=device).float(), zz, batch.hartley, batch.ctf,
                        lattice, mask)
        out.append(sl.per_image.float().cpu())
    return torch.cat(out).numpy()


def refine_poses(model: CryoFireModel, data: ParticleData, encoded: Inferred, progress: bool = False,
                 z_ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Semi-amortised inference: the encoder's poses and z (``encoded``) refined by local
    rounds against the decoder, each particle against its own volume
    (:func:`search_poses` from ``start``), then, per particle, whichever of the encoder's
    and the refined answer the decoder fits better (:func:`decoder_losses`), so a refined
    pose is never worse by the decoder's loss. Returns rotations, shifts (px), z, the
    seconds it took (encoder pass excluded) and the fraction of particles whose refined
    answer was kept."""
    start = time.perf_counter()
    rots, shifts, z_new, _ = search_poses(model, data, encoded.z, progress=progress, z_ref=z_ref,
                                          start=(encoded.rots, encoded.shift_px))
    enc_loss = decoder_losses(model, data, encoded.rots, encoded.shift_px, encoded.z)
    ref_loss = decoder_losses(model, data, rots, shifts, z_new)
    better = ref_loss <= enc_loss
    rots = np.where(better[:, None, None], rots, encoded.rots).astype(np.float32)
    shifts = np.where(better[:, None], shifts, encoded.shift_px).astype(np.float32)
    z_out = np.where(better[:, None], z_new.reshape(len(z_new), -1),
                     encoded.z.reshape(len(encoded.z), -1)).astype(np.float32)
    return rots, shifts, z_out, time.perf_counter() - start, float(better.mean())
