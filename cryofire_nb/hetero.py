"""Heterogeneous pose refinement: every particle's pose is refined against the volume
of its own conformation, ``V(a_i) = V_0 + sum_j a_ij V_j``, and its conformation scores
``a_i`` are read off its image through the same volume model.

Why: a single consensus volume cannot fit every conformation of a heterogeneous set.
Measured on the d=32 adenylate-kinase set (continuous open -> closed, SNR 0.3, 10,000
images): the consensus search put 43 % of the most-closed quarter of the particles more
than 20 deg off (15 % overall) and ended at a 6.7 deg median view error, while
refinement from the TRUE poses against the TRUE volume of each particle's conformation
ends at 3.0-3.3 deg. Given poses and a first z (the encoder's), this module

1. fits the basis volumes ``V_0..V_q`` in closed form (least squares per voxel over the
   backprojected images, Wiener-regularised, real-space support), separately from each
   half of the particles: a particle is always scored against volumes reconstructed
   from the *other* half (its own noise is never in its reference), otherwise a volume
   reconstructed from few images per conformation keeps every particle at its current
   pose. Unlike a gold-standard refinement the halves are aligned to each other, so
   they are not independent: their FSC is no independent check (measured on a 16-px,
   600-image set: it rose round after round while the true pose error grew);
2. re-estimates every particle's scores by least squares against the other half's basis
   at its pose (:func:`estimate_latents`, a (q x q) solve per image with a unit Gaussian
   prior), then re-centres and rotates them onto their principal axes. Measured on the
   same set: the encoder's z after 40,000 images had |Spearman(PC1, t)| = 0.66, the
   scores read off through the basis 0.85-0.87 after one or two passes;
3. optionally repeats the global search of each particle (``global_search``), grouped in
   bins of PC1 with the volume at the bin's mean scores: this removes the gross errors
   that consensus search makes on conformations far from the consensus;
4. runs local refinement rounds with shrinking steps at a higher resolution, each
   particle against its own ``V(a_i)`` (scores and basis updated before every round),
   until a repeated step no longer lets the poses settle (``settle_fraction``: on a small
   16-px set nearly every particle moves one step every round and the error grows round
   after round, while the half-set FSC and the held-out residual keep *improving*, so
   neither can stop it; the fraction of particles that still move can);
5. fixes the relative frame of the conformations (``gauge``, before the rounds and at the
   end): rotating the volume of conformation ``a`` by ``Q(a)`` and the poses of its
   particles by ``Q(a)^T`` explains the images equally well, so the frames come out as the
   first poses had them. Measured on the same set: the consensus search's frames turn
   with the conformation (about 19 deg between the open and the closed end, about a
   fixed axis), which cost ~1.5 deg of median view error after one global alignment
   (per-bin alignment: 4.5 deg where the global one gave 6.0). Superposing each PC1 bin's
   volume on the mean volume on the three quarters of its density that fit best (the part
   that moves least) removes most of it.
6. under a time limit, spends what is left after the schedule on further cycles
   (``max_cycles``): the global stage again, against the volumes that the rounds have
   sharpened, each particle now also against the bins next to its own (``cycle_bins``),
   then the schedule again; they end when a global stage moves fewer than
   ``settle_global`` of the particles. Time that cannot hold a further cycle can go to
   rounds at the finest step (``tail_rounds``, off by default).

The volume is linear in the scores, so a local round combines each particle's volume
``sum_k a_ik V_k`` once and interpolates its candidate slices from it
(:func:`~cryofire_nb.projection.sample_trilinear`; a round over 10,000 images at d=32,
radius 16, 27 rotations x 9 shifts: ~15 s on 2 CPU cores, where gathering the corners of
every basis volume took ~60 s at radius 12, so twice the rounds at a higher radius now fit
the same budget); for the voxel decoder (``V_0 + sum_k z_k U_k``) the fitted basis *is*
the decoder, with z = the scores.

Dimension letters: N particles, b batch, K = q + 1 basis volumes, p perturbations,
s shifts, n lattice points, m = d + 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import stopping
from .hartley_data import HartleyData
from .lattice import Lattice
from .parallel import Alone, join_rows, own_positions, stop_together
from .projection import sample_trilinear, slice_positions
from .rotations import axis_angle_to_matrix, matrix_to_axis_angle, so3_grid
from .search import (SearchResult, VolumeAccumulator, global_search, hartley_volume_to_real, perturbation_grid,
                     shift_grid, shifted_images, spherical_support)

Tensor = torch.Tensor


def default_search_shift_px(d: int) -> float:
    """Shift range of the pose search, +-pixels: 3/64 of the box and at least 1.5 px (1.5 px
    at d <= 32, 3 at 64, 6 at 128; the simulator's configs at those sizes make shifts up to
    these). The
    exhaustive search costs in proportion to the number of shifts, (2 r / step + 1)^2:
    D/8 (4 px) at d = 32 would make the global search nine times slower; pass
    ``--max-shift`` for data whose particles are further off centre."""
    return max(1.5, 3.0 * d / 64)


@dataclass
class HeteroRefineConfig:
    """Settings of :func:`hetero_refine` (defaults sized for d=32 on 2 CPU cores)."""

    n_components: int = 2  # principal components of z used as basis coefficients
    global_search: bool = True  # repeat the global search per PC1 bin first
    n_bins: int = 6
    global_radius_px: float = 8.0
    grid: tuple[int, int] = (600, 30)  # view directions x in-plane angles of the global search
    max_shift_px: float = 1.5
    shift_step_px: float = 1.0
    # local rounds: radius None -> d / 2. Measured
    # on the d=32 set from the same post-global poses (4 rounds 4/2/1/0.5 deg): radius 12 ->
    # 6.04 deg, 14 -> 5.92, 16 -> 5.85; more rounds at 2 and 1 deg keep helping (12 rounds at
    # radius 16: 5.46), rounds at 0.5 deg after those did not (< 0.02 deg each)
    refine_radius_px: float | None = None
    refine_steps_deg: tuple[float, ...] = (4.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0)
    shift_step_ratio: float = 0.125  # local shift offsets: this x the rotation step (deg -> px)
    estimate_latents: bool = True  # re-estimate each particle's scores by least squares against the basis
    latent_prior: float = 1.0  # weight of the N(0, I) prior on the scores (data in units of the noise)
    # the principal components of the scores (the latent table, its PC1 bins and the
    # gauge's bins): "volume" measures the scores' variation by the change of the volumes
    # they weight, "scores" by the scores themselves (see pc_map)
    latent_metric: str = "volume"
    reg_fraction: float = 0.01  # Wiener-like regulariser, fraction of the mean CTF^2 weight (0.1: +0.05-0.07 deg)
    support_radius: float = 0.4  # real-space support, fraction of the box
    # the relative frame of the conformations (see gauge_rotations): each PC1 bin's volume is
    # superposed on the mean volume, "trimmed" on the gauge_keep of the density voxels that
    # fit best (the part that moves least: a rigid core decides), "robust" by reweighted least
    # squares started from the least-squares fit, "ls" by least squares (the compromise
    # with the moving domains); "none" keeps the frames the input poses came with. The
    # ground truth of the project's sets superposes the conformations on their rigid core,
    # which "trimmed" approximates: a convention, not data. Compared on the finished tables
    # of the four d=32 sets by bench/gauge_offline.py (bench/results/gauge_offline_*.json)
    gauge: str = "trimmed"
    # the fraction of the density voxels that "trimmed" fits: a smaller part can be nearly
    # round (a single domain), which leaves its rotation open (bin rotations of 13 deg on
    # the 16-px test set at 0.5); on the d=32 sets 0.5-0.75 gave the same tables, 0.85 less
    gauge_keep: float = 0.75
    # how many principal components' bins the gauge superposes (see gauge_rotations): 2
    # did not find the frames of the T-cell receptor's ends that PC1's bins miss
    # (bench/results/gauge_offline_tcr_continuous_d32_volume_metric_run.json)
    gauge_axes: int = 1
    # convergence: a round at the same step as the one before that still moves more than this
    # fraction of the particles is undone and the rounds stop (the poses are not settling:
    # each round a random walk of one step, the volumes following). Measured fractions of
    # particles whose rotation or shift changed: d=32, 10,000 images (converging, 6.1 -> 4.9
    # deg before the final gauge fix): 0.97, 0.98 at the first 4- and 2-deg rounds, then
    # 0.66, 0.41 at 2 deg, 0.96 at the first 1-deg round, then 0.49, 0.30, 0.22 (no round
    # undone, the same table as without the rule); d=16, 600 images from an 8-deg start
    # (drifting: 5.2 deg after the 4-deg round, 9.5 after all 8): 0.995, 0.985, then 0.93 at
    # the repeated 2-deg step -> undone, 6.2 deg. RELION's auto-refine likewise stops when
    # the changes in the angles stop shrinking.
    settle_fraction: float = 0.9
    # the first local rounds run even past time_limit_s: without them the table is the coarse
    # global search's (a slow global stage once left no time for any round: 9.3 deg median
    # view error on the d=32 two-state set); their time comes out of the encoder's training
    min_local_rounds: int = 2
    # under a time limit, what is left after the schedule goes to further cycles (a global
    # stage against the sharpened volumes, then the schedule again), at most this many; they
    # stop when a global stage moves fewer than settle_global of the particles
    max_cycles: int = 3
    settle_global: float = 0.005
    # the further cycles' global stage searches each particle against the volumes of the
    # PC1 bins within this many of its own (None: every bin; 0: its own only, as the first
    # cycle, whose z are still the encoder's), keeping the best fit: a minority
    # conformation's particles binned with a volume that blends it with the majority find
    # their poses against the neighbouring bin's (bench/results/table_all_bins_*.json)
    cycle_bins: int | None = 1
    # tail_rounds: when the time left under the limit cannot hold a further cycle, it goes to
    # rounds at the schedule's finest step, until one moves fewer than tail_settle of the
    # particles; otherwise back to the caller (the encoder's training). Off: on the four
    # d=32 sets five such rounds (8-19% of the particles moving) changed the table's median
    # by -0.30 to +0.12 deg and cost the encoder 2.2 deg on average
    # (bench/results/default_pipeline_*_tail_rounds.md against default_pipeline_*.md)
    tail_rounds: bool = False
    tail_settle: float = 0.02
    batch_size: int = 256
    seed: int = 0

    @classmethod
    def for_box(cls, d: int, max_shift_px: float | None = None, **kw) -> "HeteroRefineConfig":
        """Settings scaled to a d-px box from the ones measured at d = 32 (unchanged there).

        The global search stays at radius 8 px with its grid (a coarse stage: at 8 px the
        grid's 12-deg in-plane spacing moves the outermost slice points by ~1.7 px, as at
        d = 32), so at larger boxes it amounts to a search on a Fourier-cropped copy; the
        local rounds then run at the full box (radius d/2). Their schedule starts with the
        measured d = 32 steps and is extended by halving (two rounds per step) until a step
        moves the outermost slice point by at most half a pixel (``step <= 0.5 / r``
        radians): sub-degree steps at d >= 64. Shifts: ``max_shift_px`` or
        :func:`default_search_shift_px`."""
        base = cls()
        steps = list(base.refine_steps_deg)
        finest = np.degrees(0.5 / (d / 2))
        while steps[-1] > finest:
            steps += [steps[-1] / 2] * 2
        kw.setdefault("refine_steps_deg", tuple(steps))
        kw.setdefault("max_shift_px", default_search_shift_px(d) if max_shift_px is None else float(max_shift_px))
        return cls(**kw)

    def __post_init__(self):
        if self.n_components < 0 or self.n_bins < 1 or self.batch_size < 1:
            raise ValueError("n_components >= 0, n_bins >= 1 and batch_size >= 1 are required")
        if not 0 < self.support_radius <= 0.5:
            raise ValueError("support_radius is a fraction of the box in (0, 0.5]")
        if self.cycle_bins is not None and self.cycle_bins < 0:
            raise ValueError("cycle_bins is None (every bin) or >= 0")
        if self.gauge not in ("none", "ls", "robust", "trimmed"):
            raise ValueError(f"gauge must be 'none', 'ls', 'robust' or 'trimmed', not {self.gauge!r}")
        if self.gauge_axes < 1:
            raise ValueError("gauge_axes >= 1 is required")
        if self.latent_metric not in ("volume", "scores"):
            raise ValueError(f"latent_metric must be 'volume' or 'scores', not {self.latent_metric!r}")
        if not 0 < self.gauge_keep <= 1:
            raise ValueError("gauge_keep is a fraction of the density voxels in (0, 1]")


@dataclass
class HeteroRefineResult:
    rots: Tensor  # (N, 3, 3)
    shifts_px: Tensor  # (N, 2)
    coefficients: Tensor  # (N, K): 1 and the particles' standardised scores (the latent table is [:, 1:])
    basis: Tensor  # (K, m, m, m) Hartley basis fitted from all particles at the final poses
    pcs: PCMap  # z (or, with estimate_latents, the least-squares scores) -> coefficients
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)


@dataclass
class PCMap:
    """``a = [1, (z - mean) @ w]``: z (N, k) -> basis coefficients (N, 1 + q)."""

    mean: Tensor  # (k,)
    w: Tensor  # (k, q)

    def coefficients(self, z) -> Tensor:
        z = torch.as_tensor(np.asarray(z, dtype=np.float64)).reshape(len(z), -1)
        ones = torch.ones(z.shape[0], 1, dtype=torch.float64)
        return torch.cat([ones, (z - self.mean) @ self.w], 1).float()


def pc_map(z, n_components: int, basis: Tensor | None = None) -> PCMap:
    """The first q principal components of ``z`` (N, k), all scores scaled by one factor
    that gives PC1 unit variance (sign: PC1 correlates positively with z's first column,
    for reproducibility).

    ``basis`` (k, m, m, m), the volumes that ``z`` weights (a particle's volume changes by
    ``sum_j z_j basis[j]``): the components are those of the volumes' variation instead
    of z's, i.e. of ``z`` in the metric ``G = <basis_i, basis_j>``. The scores that a
    linear model reads off the images are not in orthonormal units of volume (the basis
    volumes differ in norm and overlap), and their own principal axes can mix the
    direction along which the volumes change most with directions that barely change
    them; in the new coordinates the basis volumes are orthogonal and of one norm.
    Compared on finished runs by bench/latent_metric.py (bench/results/latent_metric_*.json)."""
    z = torch.as_tensor(np.asarray(z, dtype=np.float64))
    z = z.reshape(z.shape[0], -1)
    k = z.shape[1]
    q = min(n_components, k)
    mean = z.mean(0)
    if q == 0:
        return PCMap(mean, torch.zeros(k, 0, dtype=torch.float64))
    zc = z - mean
    if basis is None:
        _, _, vt = torch.linalg.svd(zc, full_matrices=False)
        w = vt[:q].T.clone()  # (k, q)
    else:
        if basis.shape[0] != k:
            raise ValueError(f"basis has {basis.shape[0]} volumes for {k} scores")
        b = basis.detach().double().cpu().reshape(k, -1)
        ev, evec = torch.linalg.eigh(b @ b.T)
        root = evec @ torch.diag(ev.clamp_min(0).sqrt()) @ evec.T  # G^(1/2)
        _, vec = torch.linalg.eigh(root @ (zc.T @ zc) @ root)
        w = (root @ vec.flip(1))[:, :q].contiguous()  # scores along the volumes' principal axes
    # one scale for all: PC1 gets unit variance, the others keep their smaller share (a
    # whitened table would make PC1 of z an arbitrary direction)
    w = w / (zc @ w[:, 0]).std().clamp_min(1e-12)
    if ((zc @ w[:, 0]) * zc[:, 0]).sum() < 0:
        w[:, 0] = -w[:, 0]
    return PCMap(mean, w)


def basis_slices(basis: Tensor, lat: Lattice, rots: Tensor, index: Tensor) -> Tensor:
    """Central slices of every basis volume: rotations (..., 3, 3) -> (..., n, K)."""
    k = basis.shape[0]
    pos = slice_positions(lat.coords[index], rots.reshape(-1, 3, 3), lat.d).reshape(1, -1, 3)
    out = sample_trilinear(basis[None], pos)[0].T  # (r n, K)
    return out.reshape(*rots.shape[:-2], index.numel(), k)


def volume_at(basis: Tensor, a: Tensor) -> Tensor:
    """The volume ``sum_k a[k] basis[k]`` (m, m, m) at the coefficients ``a`` (K,)."""
    return torch.tensordot(a.to(basis.dtype), basis, dims=1)


def own_slices(basis: Tensor, coef: Tensor, lat: Lattice, rots: Tensor, index: Tensor) -> Tensor:
    """Slices of each image's own volume ``sum_k coef[b, k] basis[k]``: rotations
    (b, p, 3, 3) -> (b, p, n). The volumes are combined first (b m^3 values), which is
    K times less interpolation than slicing every basis volume."""
    b, p = rots.shape[:2]
    k, m = basis.shape[0], basis.shape[-1]
    vols = (coef.to(basis.dtype) @ basis.reshape(k, -1)).reshape(b, 1, m, m, m)
    pos = slice_positions(lat.coords[index], rots.reshape(-1, 3, 3), lat.d).reshape(b, -1, 3)
    return sample_trilinear(vols, pos).reshape(b, p, index.numel())


def local_search_basis(x: Tensor, ctf: Tensor, basis: Tensor, coef: Tensor, lat: Lattice, index: Tensor,
                       rots0: Tensor, shifts0: Tensor, rot_perturb: Tensor, shift_offsets: Tensor) -> SearchResult:
    """As :func:`cryofire_nb.search.local_search`, each image (b) scored against its own
    volume ``sum_k coef[b, k] basis[k]``."""
    b = x.shape[0]
    cand = rot_perturb[None] @ rots0[:, None]  # (b, p, 3, 3)
    p = cand.shape[1]
    sh = shifts0[:, None] + shift_offsets[None].to(shifts0.dtype)  # (b, s, 2)
    xs = shifted_images(x, lat, sh, index)  # (b, s, n)
    c = ctf[:, index]
    sl = own_slices(basis, coef, lat, cand, index).to(x.dtype)  # (b, p, n)
    cross = torch.einsum("bsn,bpn->bsp", xs * c[:, None], sl)
    pw = torch.einsum("bn,bpn->bp", c * c, sl * sl)
    err = (xs * xs).sum(-1)[:, :, None] - 2 * cross + pw[:, None, :]
    e, i = err.reshape(b, -1).min(dim=1)
    si, pi = i // p, i % p
    ar = torch.arange(b, device=x.device)
    return SearchResult(cand[ar, pi][:, None], sh[ar, si][:, None], (-e / 2)[:, None],
                        torch.ones(b, 1, dtype=x.dtype, device=x.device), e)


def fit_basis(data: HartleyData, rots: Tensor, shifts_px: Tensor, coef: Tensor, members: Tensor,
              cfg: HeteroRefineConfig, radius_px: float | None = None, group=None,
              progress: str | None = None) -> Tensor:
    """Basis volumes (K, m, m, m) from the particles ``members`` (indices) at their poses.
    With a ``group`` (:mod:`cryofire_nb.parallel`) each process backprojects the members
    in its part, and the sums are added over the processes before the solve.
    ``progress``: the description of a progress bar over the particles (none when None)."""
    group = group or Alone()
    lat, d = data.lattice, data.lattice.d
    index = torch.nonzero(lat.mask(d / 2 if radius_px is None else radius_px, exclude_dc=False)).squeeze(1)
    acc = VolumeAccumulator(d, coef.shape[1], dtype=data.dtype, device=data.device)
    own = members[own_positions(group, members, data.n_particles)]
    stopped = False
    bar = tqdm(total=len(own), desc=progress, unit="particle", leave=False, disable=progress is None)
    for i in range(0, len(own), cfg.batch_size):
        if stopped := stopping.requested():
            break
        sl = own[i:i + cfg.batch_size]
        acc.add(*data.rows(sl), lat, index, rots[sl], shifts_px[sl], coef=coef[sl])
        bar.update(len(sl))
    bar.close()
    stop_together(group, stopped)
    group.sum_(acc.num)
    group.sum_(acc.den)
    return acc.solve(cfg.reg_fraction, spherical_support(d, cfg.support_radius, data.dtype, data.device))


def _rotated_volumes(vol: Tensor, q: Tensor) -> Tensor:
    """Real-space volume (d, d, d) [z, y, x] sampled at ``x @ Q`` (about the box centre,
    x = (x, y, z)) for rotations ``q`` (r, 3, 3): (r, d, d, d). A particle whose pose
    ``R`` sees ``vol`` sees the rotated volume at ``R @ Q.T``."""
    d = vol.shape[-1]
    c = torch.arange(d, dtype=vol.dtype, device=vol.device) - d // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    pos = torch.stack([xx, yy, zz], -1).reshape(1, -1, 3) @ q.to(vol.dtype) + d // 2  # (r, d^3, 3)
    out = sample_trilinear(vol.expand(len(q), 1, d, d, d), pos)
    return out.reshape(len(q), d, d, d)


def superpose(mov: Tensor, ref: Tensor, robust: bool = False, iterations: int = 3,
              steps: tuple = ((3.0, 4), (1.0, 2), (0.5, 1)), keep: float | None = None) -> Tensor:
    """Small rotation ``Q`` (3, 3) with ``mov(x @ Q) ~ ref(x)`` (real-space volumes), by
    grid searches of shrinking step around the identity (up to ~15 deg). The loss is the
    sum of squared differences (least squares: a compromise between a core and the
    domains that move against it); ``robust`` reweights voxels by their residual
    (Geman-McClure, iterated from the least-squares fit); ``keep`` (a fraction) sums only
    the smallest squared differences over the voxels where either volume has density
    (trimmed least squares), so that the largest part that moves least decides: the
    reweighting starts at the compromise and stays near it, the trimmed loss does not."""
    q = torch.eye(3, dtype=mov.dtype, device=mov.device)
    if keep is not None:
        support = (ref.abs() > 0.1 * ref.abs().max()) | (mov.abs() > 0.1 * mov.abs().max())
        m = max(1, int(keep * int(support.sum())))
        for step, n in steps:
            cand = perturbation_grid(step, n, dtype=mov.dtype).to(mov.device) @ q
            errs = torch.cat([((_rotated_volumes(mov, cand[i:i + 64]) - ref) ** 2)[:, support]
                              .topk(m, dim=1, largest=False).values.sum(1) for i in range(0, len(cand), 64)])
            q = cand[int(errs.argmin())]
        return q
    w = torch.ones_like(ref)
    for it in range(iterations if robust else 1):
        for step, n in (steps if it == 0 else steps[-2:]):  # reweighting moves little: the finer steps only
            cand = perturbation_grid(step, n, dtype=mov.dtype).to(mov.device) @ q
            errs = torch.cat([(((_rotated_volumes(mov, cand[i:i + 128]) - ref) ** 2) * w).sum((1, 2, 3))
                              for i in range(0, len(cand), 128)])
            q = cand[int(errs.argmin())]
        if robust:
            r = (_rotated_volumes(mov, q[None])[0] - ref).abs()
            scale = 0.5 * r[ref.abs() > 0.1 * ref.abs().max()].median().clamp_min(1e-12)
            w = 1 / (1 + (r / scale) ** 2)
    return q


def gauge_rotations(basis: Tensor, coef: Tensor, n_bins: int, robust: bool = False,
                    keep: float | None = None, axes: int = 1) -> Tensor:
    """Per-particle rotations (N, 3, 3) Q_i that re-express each particle's volume in the
    frame where it is superposed on the mean volume: the images are explained equally well
    by poses ``R_i`` and volumes ``V(a)`` as by ``R_i Q(a_i)^T`` and ``V(a)`` rotated by
    ``Q(a)``, so the data leave the relative frame of the conformations open and the
    search that produced the first poses fixes it by chance. Each PC1 bin's volume (at the
    bin's mean scores) is superposed on the mean volume (:func:`superpose` with ``robust``
    / ``keep``); ``Q(a) = exp(w(a_1))`` with the rotation vector ``w`` interpolated
    linearly in the PC1 score between the bins' mean scores and held at the end bins' (a
    line through the bins would turn the particles of one state of a discrete set by
    their spread in PC1).

    ``axes`` > 1: the next principal components are treated alike, each by bins of its
    own score and volumes at ``[1, 0, .., mean, .., 0]``, and the rotation vectors of all
    axes are added (``w(a) = w_1(a_1) + w_2(a_2) + ...``, to first order in the
    rotations): a motion that PC1 alone does not follow, or a frame that drifts along
    another component, is still put in the frame of the mean volume."""
    n, k = coef.shape
    eye = torch.eye(3, dtype=coef.dtype, device=coef.device).expand(n, 3, 3)
    if k < 2:
        return eye.clone()
    ref = hartley_volume_to_real(basis[0])  # the scores are centred: V_0 is the mean volume
    w = np.zeros((n, 3))
    for j in range(1, min(axes, k - 1) + 1):
        bins = score_bins(coef, n_bins, j)
        means, omegas = [], []
        for b_ in range(n_bins):
            sel = bins == b_
            if not sel.any():
                continue
            a = coef[sel].mean(0)
            if j > 1:  # along this component only: PC1's share is PC1's bins'
                a = torch.zeros_like(a)
                a[0], a[j] = 1.0, coef[sel, j].mean()
            vol = hartley_volume_to_real(volume_at(basis, a))
            means.append(float(a[j]))
            omegas.append(matrix_to_axis_angle(superpose(vol, ref, robust, keep=keep).double()[None])[0].cpu())
        aj, om = np.asarray(means), torch.stack(omegas).numpy()  # (B,), (B, 3)
        order = np.argsort(aj)
        x = coef[:, j].double().cpu().numpy()
        w += np.stack([np.interp(x, aj[order], om[order, i]) for i in range(3)], 1)
    return axis_angle_to_matrix(torch.as_tensor(w)).to(device=coef.device, dtype=coef.dtype)


def score_bins(coef: Tensor, n_bins: int, j: int = 1) -> Tensor:
    """Bin index (N,) of each particle by equal-count quantiles of the score coef[:, j]."""
    n = coef.shape[0]
    if coef.shape[1] <= j or n_bins == 1:
        return torch.zeros(n, dtype=torch.long, device=coef.device)
    x = coef[:, j].contiguous()
    edges = torch.quantile(x.double().cpu(), torch.linspace(0, 1, n_bins + 1, dtype=torch.float64))
    return torch.bucketize(x, edges[1:-1].to(x).contiguous())


def pc1_bins(coef: Tensor, n_bins: int) -> Tensor:
    """Bin index (N,) of each particle by equal-count quantiles of PC1 (coef[:, 1])."""
    return score_bins(coef, n_bins, 1)


def _global_stage(data: HartleyData, groups: list, rots: Tensor, shifts: Tensor, cfg: HeteroRefineConfig,
                  progress: bool, keep_better: bool = True, group=None) -> None:
    """Global search of each group's particles against the group's volume; ``groups``:
    [(members (n_g,), volume (m, m, m))]. Updates ``rots``/``shifts`` in place; with
    ``keep_better`` a particle keeps its current pose unless the grid finds one that fits
    the same volume better (a coarse grid never undoes a good refinement). With a
    ``group``, each process searches the members in its part and the rows are joined."""
    group = group or Alone()
    groups = [(m[own_positions(group, m, data.n_particles)], v) for m, v in groups]
    lat, dt, dev = data.lattice, data.dtype, data.device
    index = torch.nonzero(lat.mask(cfg.global_radius_px, exclude_dc=True)).squeeze(1)
    grid = so3_grid(*cfg.grid, dtype=dt, device=dev)
    shifts_g = shift_grid(cfg.max_shift_px, cfg.shift_step_px, dtype=dt).to(dev)
    eye = torch.eye(3, dtype=dt, device=dev)[None]
    no_offset = torch.zeros(1, 2, dtype=dt, device=dev)
    bar = tqdm(total=sum(len(m) for m, _ in groups), desc="global search", disable=not progress)
    stopped = False
    for members, vol in groups:
        for i in range(0, len(members), cfg.batch_size):
            if stopped := stopping.requested():
                break
            sl = members[i:i + cfg.batch_size]
            x, c = data.rows(sl)
            res = global_search(x, c, vol, lat, index, grid, shifts_g, 1.0)
            new_r, new_s = res.rots[:, 0], res.shifts_px[:, 0]
            if keep_better:
                cur = local_search_basis(x, c, vol[None], torch.ones(len(sl), 1, dtype=dt,
                                                                                        device=dev),
                                         lat, index, rots[sl], shifts[sl], eye, no_offset)
                better = res.sq_err < cur.sq_err
                new_r = torch.where(better[:, None, None], new_r, rots[sl])
                new_s = torch.where(better[:, None], new_s, shifts[sl])
            rots[sl], shifts[sl] = new_r, new_s
            bar.update(len(sl))
        if stopped:
            break
    bar.close()
    stop_together(group, stopped)
    join_rows(group, rots)
    join_rows(group, shifts)


def _global_stage_near(data: HartleyData, halves: list, bases: list, coef: Tensor, bin_of: Tensor, rots: Tensor,
                       shifts: Tensor, cfg: HeteroRefineConfig, near: int | None, progress: bool, group=None) -> None:
    """Global search of each particle against the volumes of the PC1 bins within ``near``
    of its own (None: every bin), each built from its half's basis ``bases[h]`` at the
    bin's mean coefficients; a particle takes the best fit over them unless its current
    pose fits its own bin's volume better. Updates ``rots``/``shifts`` in place; with a
    ``group``, each process searches the particles in its part and the rows are joined."""
    group = group or Alone()
    n = data.n_particles
    lat, dt, dev = data.lattice, data.dtype, data.device
    index = torch.nonzero(lat.mask(cfg.global_radius_px, exclude_dc=True)).squeeze(1)
    grid = so3_grid(*cfg.grid, dtype=dt, device=dev)
    shifts_g = shift_grid(cfg.max_shift_px, cfg.shift_step_px, dtype=dt).to(dev)
    eye = torch.eye(3, dtype=dt, device=dev)[None]
    no_offset = torch.zeros(1, 2, dtype=dt, device=dev)
    vols, own_bin, searched = {}, [], []
    for h in (0, 1):
        mine = halves[h][own_positions(group, halves[h], n)]
        for b in range(cfg.n_bins):
            members = halves[h][bin_of[halves[h]] == b]
            if not len(members):
                continue
            vols[h, b] = volume_at(bases[h], coef[members].mean(0))
            own_bin.append((True, (h, b), mine[bin_of[mine] == b]))
            searched.append((False, (h, b), mine if near is None else mine[(bin_of[mine] - b).abs() <= near]))
    best = torch.full((n,), float("inf"), dtype=dt, device=dev)
    what = "" if near == 0 else " (every bin)" if near is None else f" (bins within {near})"
    bar = tqdm(total=sum(len(m) for _, _, m in own_bin + searched), desc=f"global search{what}",
               disable=not progress)
    stopped = False
    # first the current poses against their own bin's volume, then the searches
    for current, key, members in own_bin + searched:
        for i in range(0, len(members), cfg.batch_size):
            if stopped := stopping.requested():
                break
            sl = members[i:i + cfg.batch_size]
            x, c = data.rows(sl)
            if current:
                best[sl] = local_search_basis(x, c, vols[key][None], torch.ones(len(sl), 1, dtype=dt, device=dev),
                                              lat, index, rots[sl], shifts[sl], eye, no_offset).sq_err
            else:
                res = global_search(x, c, vols[key], lat, index, grid, shifts_g, 1.0)
                better = res.sq_err < best[sl]
                idx = sl[better]
                rots[idx], shifts[idx], best[idx] = res.rots[better, 0], res.shifts_px[better, 0], res.sq_err[better]
            bar.update(len(sl))
        if stopped:
            break
    bar.close()
    stop_together(group, stopped)
    join_rows(group, rots)
    join_rows(group, shifts)


def _local_round(data: HartleyData, groups: list, rots: Tensor, shifts: Tensor, index: Tensor, step: float,
                 cfg: HeteroRefineConfig, progress: bool, desc: str, group=None) -> float:
    """One local refinement round; ``groups``: [(members, basis (K, m, m, m), coef (n_g, K))].
    Returns the fraction of the particles whose pose changed (rotation or shift). With a
    ``group``, each process refines the members in its part and the rows are joined."""
    group = group or Alone()
    own = [own_positions(group, m, data.n_particles) for m, _, _ in groups]
    groups = [(m[o], b, c[o]) for (m, b, c), o in zip(groups, own)]
    dt, dev = data.dtype, data.device
    pert = perturbation_grid(step, 1, dtype=dt).to(dev)
    s_step = cfg.shift_step_ratio * step
    offs = shift_grid(s_step, s_step, dtype=dt).to(dev)
    bar = tqdm(total=sum(len(m) for m, _, _ in groups), desc=desc, disable=not progress)
    moved = total = 0
    stopped = False
    for members, basis, coef in groups:
        for i in range(0, len(members), cfg.batch_size):
            if stopped := stopping.requested():
                break
            sl = members[i:i + cfg.batch_size]
            res = local_search_basis(*data.rows(sl), basis, coef[i:i + cfg.batch_size], data.lattice,
                                     index, rots[sl], shifts[sl], pert, offs)
            new_s = res.shifts_px[:, 0].clamp(-cfg.max_shift_px, cfg.max_shift_px)
            same = ((res.rots[:, 0] - rots[sl]).abs().amax((-1, -2)) < 1e-6) & \
                   ((new_s - shifts[sl]).abs().amax(-1) < 1e-6)
            moved += int((~same).sum())
            total += len(sl)
            rots[sl] = res.rots[:, 0]
            shifts[sl] = new_s
            bar.update(len(sl))
        if stopped:
            break
    bar.close()
    stop_together(group, stopped)
    join_rows(group, rots)
    join_rows(group, shifts)
    counts = group.sum_(torch.tensor([moved, total], dtype=torch.float64, device=dev))
    return float(counts[0]) / max(float(counts[1]), 1.0)


def _unsettled(cfg: HeteroRefineConfig, rnd: int, moved: float, steps: tuple | None = None) -> bool:
    """Round ``rnd`` of ``steps`` (default ``cfg.refine_steps_deg``) repeated the previous
    round's step and still moved more than ``cfg.settle_fraction`` of the particles: the
    poses are not settling (see the config)."""
    steps = cfg.refine_steps_deg if steps is None else steps
    return rnd > 0 and steps[rnd] == steps[rnd - 1] and moved > cfg.settle_fraction


def estimate_latents(data: HartleyData, basis: Tensor, rots: Tensor, shifts: Tensor, members: Tensor,
                     prior: float, batch_size: int = 512, group=None, progress: str | None = None) -> Tensor:
    """Scores (n_m, K - 1) of the particles ``members`` that best explain each image
    with its pose: ``argmin_a |x - c (S_0 + sum_j a_j S_j)|^2 + prior |a|^2`` over the
    whole disc (closed form, a K-1 x K-1 solve per image): the conformation read off the
    image through the volume model, as an autodecoder would, rather than through the
    encoder. With a ``group``, each process reads the members in its part; the rows of
    the others are zero there, so a sum over the processes joins them. ``progress``: the
    description of a progress bar over the particles (none when None)."""
    group = group or Alone()
    lat, d = data.lattice, data.lattice.d
    index = torch.nonzero(lat.mask(d / 2, exclude_dc=True)).squeeze(1)
    q = basis.shape[0] - 1
    out = torch.zeros(len(members), q, dtype=data.dtype, device=data.device)
    if q == 0:
        return out
    eye = prior * torch.eye(q, dtype=data.dtype, device=data.device)
    own = own_positions(group, members, data.n_particles)
    stopped = False
    bar = tqdm(total=len(own), desc=progress, unit="particle", leave=False, disable=progress is None)
    for i in range(0, len(own), batch_size):
        if stopped := stopping.requested():
            break
        rows = own[i:i + batch_size]
        bar.update(len(rows))
        sl = members[rows]
        x, c = data.rows(sl)
        cs = c[:, index, None] * basis_slices(basis, lat, rots[sl], index)  # (b, n, K)
        xs = shifted_images(x, lat, shifts[sl][:, None], index)[:, 0]
        a = torch.einsum("bnk,bnl->bkl", cs[..., 1:], cs[..., 1:]) + eye
        rhs = torch.einsum("bnk,bn->bk", cs[..., 1:], xs - cs[..., 0])
        out[rows] = torch.linalg.solve(a, rhs[..., None])[..., 0]
    bar.close()
    stop_together(group, stopped)
    return group.sum_(out)


def search_basis(data: HartleyData, basis: Tensor, coef: Tensor, cfg: HeteroRefineConfig | None = None,
                 n_bins: int = 8, progress: bool = True, start: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Poses and conformation scores of particles that did not make the volumes (new
    particles of a trained run), the way :func:`hetero_refine` makes the run's table but
    with the basis ``basis`` (K, m, m, m) (Hartley, ``data``'s units) held fixed: a global
    search of each PC1 bin of the first scores ``coef`` (N, K) (``[1, a]``, e.g. from the
    encoder's z) against the volume at the bin's mean scores, then local rounds
    (``cfg.refine_steps_deg`` at ``cfg.refine_radius_px`` or d/2) in which every particle's
    scores are first re-read off its image through the basis (:func:`estimate_latents`,
    prior ``cfg.latent_prior``) and its pose refined against its own volume; the scores
    are read once more at the final poses. No half-set split is needed: the particles are
    not in the basis. ``start``: first poses (rotations (N, 3, 3), shifts (N, 2) px) to
    refine locally instead of the global search. Returns rotations (N, 3, 3), shifts
    (N, 2) in pixels and the coefficients (N, K)."""
    cfg = cfg or HeteroRefineConfig()
    dev, dt = data.device, data.dtype
    n, d = data.n_particles, data.lattice.d
    basis = basis.to(device=dev, dtype=dt)
    coef = torch.as_tensor(coef).to(device=dev, dtype=dt).clone()
    if coef.shape != (n, basis.shape[0]):
        raise ValueError(f"coef must be ({n}, {basis.shape[0]}), got {tuple(coef.shape)}")
    if start is not None:
        rots = torch.as_tensor(start[0]).to(device=dev, dtype=dt).clone()
        shifts = torch.as_tensor(start[1]).to(device=dev, dtype=dt).clone()
        if rots.shape != (n, 3, 3) or shifts.shape != (n, 2):
            raise ValueError(f"start must hold poses of all {n} particles")
    else:
        rots = torch.empty(n, 3, 3, dtype=dt, device=dev)
        shifts = torch.zeros(n, 2, dtype=dt, device=dev)
        bins = pc1_bins(coef, n_bins)
        groups = []
        for b_ in range(int(bins.max()) + 1):
            members = torch.nonzero(bins == b_).squeeze(1)
            if len(members):
                groups.append((members, volume_at(basis, coef[members].mean(0))))
        _global_stage(data, groups, rots, shifts, cfg, progress, keep_better=False)
    everyone = torch.arange(n, device=dev)

    def read_scores() -> None:
        if cfg.estimate_latents and basis.shape[0] > 1:
            coef[:, 1:] = estimate_latents(data, basis, rots, shifts, everyone, cfg.latent_prior)

    index = torch.nonzero(data.lattice.mask(cfg.refine_radius_px or d / 2, exclude_dc=True)).squeeze(1)
    for rnd, step in enumerate(cfg.refine_steps_deg):
        read_scores()
        before = (rots.clone(), shifts.clone())
        moved = _local_round(data, [(everyone, basis, coef)], rots, shifts, index, step, cfg, progress,
                             f"refine {rnd + 1} ({step:g} deg)")
        if _unsettled(cfg, rnd, moved):  # undo the round, stop
            rots, shifts = before
            break
    read_scores()
    return rots, shifts, coef


def hetero_refine(data: HartleyData, rots, shifts_px, z, cfg: HeteroRefineConfig | None = None,
                  progress: bool = True, time_limit_s: float | None = None,
                  monitor=None, group=None, hard_limit_s: float | None = None) -> HeteroRefineResult:
    """Refine poses ``rots`` (N, 3, 3), ``shifts_px`` (N, 2) of ``data`` against
    conformation-dependent volumes built from ``z`` (N, k) (see the module docstring).

    ``time_limit_s`` bounds the whole call: a local round after the first
    ``cfg.min_local_rounds`` is skipped when the previous one's duration plus a final gauge
    fix would overrun it (the global stage and those first rounds always run).
    ``hard_limit_s`` (>= ``time_limit_s``, e.g. what is left of a whole run's limit) is
    never passed knowingly: no round starts, not even one of the first ones, when it and
    the passes that end the call (about one latent update's time) would pass it, and once
    it is passed the call ends with one fit of the basis, without the gauge fix and the
    final re-reading of the scores. ``monitor(rots, shifts) -> dict``, if given, is called after every
    local round and its entries recorded in the round's history (e.g. errors against a
    ground truth). ``group`` (:mod:`cryofire_nb.parallel`, under torchrun) divides the
    particles between the processes: each searches, refines, reads the scores of and
    backprojects its part; the rows are joined and the backprojection sums added, and the
    time-limit decisions are taken together, so every process ends with the same result."""
    cfg = cfg or HeteroRefineConfig()
    group = group or Alone()
    t0 = time.time()
    dev, dt = data.device, data.dtype
    lat, d, n = data.lattice, data.lattice.d, data.n_particles
    rots = torch.as_tensor(rots).to(device=dev, dtype=dt).clone()
    shifts = torch.as_tensor(shifts_px).to(device=dev, dtype=dt).clone()
    if rots.shape != (n, 3, 3) or shifts.shape != (n, 2):
        raise ValueError(f"need poses for all {n} particles: got rotations {tuple(rots.shape)}, "
                         f"shifts {tuple(shifts.shape)}")
    pcs = pc_map(z, cfg.n_components)
    coef = pcs.coefficients(z).to(device=dev, dtype=dt)
    if coef.shape[0] != n:
        raise ValueError(f"z has {coef.shape[0]} rows for {n} particles")
    g = torch.Generator().manual_seed(cfg.seed)
    half = (torch.randperm(n, generator=g) % 2).to(dev)
    halves = [torch.nonzero(half == h).squeeze(1) for h in (0, 1)]
    hist: list[dict] = []

    def bar(what: str) -> str | None:  # the passes over the particles between the searches show progress too
        return what if progress else None

    def other_half_bases() -> list[Tensor]:
        return [fit_basis(data, rots, shifts, coef, halves[1 - h], cfg, group=group,
                          progress=bar(f"basis of half {2 - h} of 2")) for h in (0, 1)]

    def update_latents() -> list[Tensor]:
        """Scores of each half from the other half's basis, re-standardised; returns the
        other-half bases in the new coordinates."""
        nonlocal coef, pcs
        bases = other_half_bases()
        if not cfg.estimate_latents or coef.shape[1] < 2:
            return bases
        lat_ = torch.empty(n, coef.shape[1] - 1, dtype=dt, device=dev)
        for h in (0, 1):
            lat_[halves[h]] = estimate_latents(data, bases[h], rots, shifts, halves[h], cfg.latent_prior,
                                               group=group, progress=bar(f"scores of half {h + 1} of 2"))
        pcs = pc_map(lat_.cpu().numpy(), coef.shape[1] - 1, basis=metric(bases))
        coef = pcs.coefficients(lat_.cpu().numpy()).to(device=dev, dtype=dt)
        return other_half_bases()

    def metric(bases: list[Tensor]) -> Tensor | None:
        """What :func:`pc_map` measures the scores' variation with: the change of the
        volumes (the deviation volumes of every basis, joined along the voxels, so the
        halves' metrics add), or the scores themselves."""
        if cfg.latent_metric == "scores":
            return None
        return torch.cat([b[1:].reshape(b.shape[0] - 1, -1) for b in bases], 1)

    def near_bins(cycle: int) -> int:
        """How many bins either side of its own a particle is searched against in the
        cycle's global stage (0: its own only, always in the first cycle)."""
        if cycle == 0 or cfg.n_bins == 1 or coef.shape[1] < 2:
            return 0
        return cfg.n_bins if cfg.cycle_bins is None else cfg.cycle_bins

    def volumes_per_particle(near: int) -> float:
        k = cfg.n_bins
        return float(np.mean([min(k - 1, b + near) - max(0, b - near) + 1 for b in range(k)]))

    def global_stage(cycle: int) -> float:
        """The global search of every particle against its PC1 bin's volume (other half's
        basis), in further cycles against the bins near its own, keeping a particle's pose
        unless the grid fits better; the fraction moved."""
        bases = update_latents()
        bin_of = pc1_bins(coef, cfg.n_bins)
        before = rots.clone()
        near = near_bins(cycle)  # 0: each particle's own bin (the test pins it to _global_stage's search)
        _global_stage_near(data, halves, bases, coef, bin_of, rots, shifts, cfg, near, progress, group=group)
        changed = float((rots - before).abs().amax((1, 2)).gt(0).float().mean())
        hist.append({"stage": "global", "cycle": cycle, "radius_px": cfg.global_radius_px, "near_bins": near,
                     "changed_fraction": round(changed, 4), "elapsed_s": time.time() - t0})
        return changed

    t_c = time.time()  # a cycle's duration, the global stage included, plans the next one
    global_s = 0.0  # the last global stage's duration
    if cfg.global_search:
        global_stage(0)
        global_s = time.time() - t_c

    gauge_s = 0.0  # duration of a gauge fix, kept free of local rounds at the end

    def fix_gauge() -> None:
        nonlocal rots, gauge_s
        if cfg.gauge != "none" and coef.shape[1] > 1:
            t_g = time.time()
            basis_all = fit_basis(data, rots, shifts, coef, torch.arange(n, device=dev), cfg, group=group,
                                  progress=bar("basis of all (gauge)"))
            q = gauge_rotations(basis_all, coef, cfg.n_bins, robust=cfg.gauge == "robust",
                                keep=cfg.gauge_keep if cfg.gauge == "trimmed" else None, axes=cfg.gauge_axes)
            rots = rots @ q.transpose(1, 2)
            gauge_s = time.time() - t_g
            hist.append({"stage": "gauge", "elapsed_s": time.time() - t0})

    if cfg.refine_steps_deg:  # also before the rounds: a linear basis fits a change with less
        fix_gauge()           # rotation in it better
    radius = cfg.refine_radius_px or d / 2
    index = torch.nonzero(lat.mask(radius, exclude_dc=True)).squeeze(1)
    last = finish = 0.0  # the last round's duration; the ending passes' (about one latent update)

    def past(limit: float | None, ahead: float) -> bool:
        return limit is not None and time.time() - t0 + ahead > limit

    def local_rounds(cycle: int, tail: bool = False) -> bool:
        """The schedule of local rounds; True when time or an unsettled round ended it.
        ``tail``: rounds at the finest step instead, until time ends them or one moves
        fewer than ``cfg.tail_settle`` of the particles."""
        nonlocal rots, shifts, last, finish
        steps = cfg.refine_steps_deg
        if tail:  # the time limit ends them (decided together by every process), not the count
            steps = (steps[-1],) * 1000
        for rnd, step in enumerate(steps):
            first = cycle == 0 and rnd < cfg.min_local_rounds and not tail
            if group.any((not first and past(time_limit_s, last + gauge_s))
                         or past(hard_limit_s, last + gauge_s + finish)):
                hist.append({"stage": "local-skipped", "cycle": cycle, "round": rnd, "elapsed_s": time.time() - t0})
                return True
            t_r = time.time()
            bases = update_latents()
            finish = time.time() - t_r
            before = (rots.clone(), shifts.clone())
            moved = _local_round(data, [(halves[h], bases[h], coef[halves[h]]) for h in (0, 1)], rots, shifts,
                                 index, step, cfg, progress, f"hetero refine {rnd + 1} ({step:g} deg)", group=group)
            last = time.time() - t_r
            entry = {"stage": "local", "cycle": cycle, "round": rnd, "step_deg": step, "radius_px": radius,
                     "moved_fraction": round(moved, 4), "elapsed_s": time.time() - t0}
            if tail:
                entry["tail"] = True
            if _unsettled(cfg, rnd, moved, steps):
                rots, shifts = before  # a repeated step that still moves nearly every particle: a random walk
                entry["stage"] = "local-undone"
                hist.append(entry)
                return True
            if monitor is not None:
                entry.update(monitor(rots, shifts))
            hist.append(entry)
            if tail and moved < cfg.tail_settle:
                break
        return False

    ended = local_rounds(0)
    # Time left under the limit goes to further cycles (global stage, then the schedule
    # again) against the volumes the rounds have sharpened: the global stage can bring
    # back particles that the first one, against the consensus-like start, placed far off
    # and that local steps cannot reach.
    cycle = 1
    while (not ended and cfg.global_search and cfg.refine_steps_deg and time_limit_s is not None
           and cycle <= cfg.max_cycles):
        # the last cycle's duration, its global stage scaled to the volumes this one searches
        ratio = volumes_per_particle(near_bins(cycle)) / volumes_per_particle(near_bins(cycle - 1))
        cycle_s = time.time() - t_c + (ratio - 1) * global_s
        if group.any(past(time_limit_s, cycle_s + gauge_s) or past(hard_limit_s, cycle_s + gauge_s + finish)):
            hist.append({"stage": "cycle-skipped", "cycle": cycle, "elapsed_s": time.time() - t0})
            if cfg.tail_rounds:
                local_rounds(cycle, tail=True)
            break
        t_c = time.time()
        changed = global_stage(cycle)
        global_s = time.time() - t_c
        if changed < cfg.settle_global:
            break
        ended = local_rounds(cycle)
        cycle += 1
    late = group.any(past(hard_limit_s, 0.0))
    if late:
        hist.append({"stage": "ending-shortened", "elapsed_s": time.time() - t0})
    else:
        fix_gauge()
    everyone = torch.arange(n, device=dev)
    basis = fit_basis(data, rots, shifts, coef, everyone, cfg, group=group, progress=bar("basis of all"))
    if cfg.estimate_latents and coef.shape[1] > 1 and not late:  # final scores from the basis of all particles
        latents = estimate_latents(data, basis, rots, shifts, everyone, cfg.latent_prior,
                                   group=group, progress=bar("scores of all")).cpu().numpy()
        pcs = pc_map(latents, coef.shape[1] - 1, basis=metric([basis]))
        coef = pcs.coefficients(latents).to(device=dev, dtype=dt)
        basis = fit_basis(data, rots, shifts, coef, everyone, cfg, group=group, progress=bar("basis of all"))
    return HeteroRefineResult(rots, shifts, coef, basis, pcs, hist, asdict(cfg))
