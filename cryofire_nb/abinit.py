"""Ab initio consensus volume and poses by stochastic expectation-maximisation on an
explicit Hartley voxel volume (the cryoSPARC ab initio idea), followed by full-data
global search and local refinement.

Why: amortised pose inference from a random start needs millions of images before the
encoder escapes the near-symmetric initial blob (see ``docs/method.md``); a voxel volume
costs a trilinear lookup per slice point, so thousands of candidate poses per image are
affordable at low resolution, and noisy, annealed pose assignments let the volume escape
spurious symmetric minima. The resulting poses then initialise the amortised encoder.

Stages
1. Stochastic EM (``n_iterations`` minibatches): the volume starts as the backprojection
   of a random subset at random poses; each minibatch is scored against the current
   volume over a rotation grid x shift grid within a growing frequency radius; the top
   ``k`` poses per image are backprojected with annealed posterior weights into running
   sums that decay (older, worse assignments are forgotten); the volume is kept
   non-negative inside a spherical support in real space. With ``n_starts`` > 1 the EM
   runs from several random starts and keeps the one whose poses best explain a sample
   of the particles (:func:`start_score`): whether a start escapes a wrong volume depends
   on its random stream, and the residual tells a failed start from a good one without
   the truth (``bench/consensus_seeds.py``).
2. Global search of every particle at the final EM radius with a finer grid.
3. Local refinement rounds: rotation perturbations and shift offsets around each pose,
   with the resolution raised to ``refine_radius_px`` and the steps halved each round.

Time budget (``time_limit_s``): EM stops at half of it (a further start runs only when
one more fits there); the global search always runs;
a refinement round is skipped when the previous round's duration would overrun it.

Measured floor (d=32 adenylate kinase, continuous motion, SNR 0.3, 3,000 images): local
refinement started from the TRUE poses against the consensus volume reconstructed with
the true poses ends at a median view error of 6.2 deg (radius 8 px) and 5.0 deg (radius
12 px). A single consensus volume cannot fit every conformation, so consensus search alone
cannot go much below that on heterogeneous data.

Dimension letters: N particles, b batch, k poses per image, m = d + 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import stopping
from .hartley_data import HartleyData
from .parallel import Alone, stop_together
from .rotations import random_rotations, so3_grid
from .search import (VolumeAccumulator, global_search, hartley_volume_to_real, local_search,
                     perturbation_grid, shift_grid, spherical_support)

Tensor = torch.Tensor


@dataclass
class AbinitConfig:
    """Settings of the voxel ab initio front end (defaults sized for d=32 on 2 CPU cores)."""

    n_iterations: int = 150
    batch_size: int = 200
    n_init: int = 500
    radius_start_px: float = 3.0
    radius_end_px: float = 8.0
    grid_coarse: tuple[int, int] = (300, 24)  # view directions x in-plane angles
    grid_fine: tuple[int, int] = (600, 30)  # used by the last EM iterations and the global search
    fine_after: float = 0.8  # fraction of the EM iterations after which the fine grid is used
    max_shift_px: float = 1.5
    shift_step_em_px: float = 1.0
    shift_step_fine_px: float = 1.0  # global search; refinement then resolves sub-pixel shifts
    top_k_start: int = 20
    top_k_end: int = 3
    beta_start: float = 0.1
    beta_end: float = 1.0
    decay_start: float = 0.7
    decay_end: float = 0.95
    reg_fraction: float = 0.1  # Wiener-like regulariser as a fraction of the mean weight
    positivity: bool = True
    support_radius: float = 0.4  # real-space support radius as a fraction of the box
    refine_rounds: int = 3
    refine_radius_px: float | None = None  # default 3 d / 8 (measured: higher radii cost 3x, gain < 0.3 deg at d=32)
    refine_step_deg: float = 4.0  # first round: about half the fine grid's spacing; halved each round
    refine_shift_step_px: float = 0.5
    batch_size_full: int = 256
    # EM from several random starts, keeping the one whose poses fit a sample of the
    # particles best: a start can settle in a wrong volume that no later stage repairs,
    # and which start does depends on the seed (bench/results/consensus_seeds_*.json)
    n_starts: int = 1
    start_sample: int = 1000  # particles that score each start
    seed: int = 0

    @classmethod
    def for_box(cls, d: int, max_shift_px: float | None = None, **kw) -> "AbinitConfig":
        """Settings for a d-px box: the EM and global stages keep their radii in pixels (a
        low-resolution, coarse search whatever the box); the shift range follows the box
        (:func:`cryofire_nb.hetero.default_search_shift_px`) unless ``max_shift_px``."""
        from .hetero import default_search_shift_px

        kw.setdefault("max_shift_px", default_search_shift_px(d) if max_shift_px is None else float(max_shift_px))
        return cls(**kw)

    def __post_init__(self):
        if self.n_iterations < 1 or self.batch_size < 1:
            raise ValueError("n_iterations and batch_size must be positive")
        if not 0 < self.radius_start_px <= self.radius_end_px:
            raise ValueError("need 0 < radius_start_px <= radius_end_px")
        if self.n_starts < 1 or self.start_sample < 1:
            raise ValueError("n_starts and start_sample must be positive")
        if not 0 < self.support_radius <= 0.5:
            raise ValueError("support_radius is a fraction of the box in (0, 0.5]")


@dataclass
class AbinitResult:
    rots: Tensor  # (N, 3, 3)
    shifts_px: Tensor  # (N, 2)
    volume_hartley: Tensor  # (m, m, m)
    volume: Tensor  # (d, d, d) real space, in units of the normalised data
    history: list = field(default_factory=list)
    config: dict = field(default_factory=dict)


def _lerp(a: float, b: float, f: float) -> float:
    return a + (b - a) * f


class _VolumeModel:
    """Running backprojection sums plus the real-space constraints."""

    def __init__(self, d: int, cfg: AbinitConfig, dtype, device):
        self.acc = VolumeAccumulator(d, dtype=dtype, device=device)
        self.support = spherical_support(d, cfg.support_radius, dtype, device)
        self.cfg = cfg

    def volume(self) -> Tensor:
        return self.acc.solve(self.cfg.reg_fraction, self.support, self.cfg.positivity)[0]


def global_search_seconds(data: HartleyData, cfg: AbinitConfig | None = None) -> float:
    """Seconds per particle of :func:`run_abinit`'s global search (reading the rows
    included) on this machine, timed on one of its batches (``cfg.batch_size_full``
    particles: the slices of every grid rotation are shared by a batch) against a volume
    backprojected from them at random poses (the cost does not depend on the volume)."""
    cfg = cfg or AbinitConfig()
    lat, n = data.lattice, data.n_particles
    dev, dt = data.device, data.dtype
    g = torch.Generator().manual_seed(cfg.seed)
    sel = torch.arange(min(n, cfg.batch_size_full))
    model = _VolumeModel(lat.d, cfg, dt, dev)
    model.acc.add(*data.rows(sel), lat, torch.nonzero(lat.mask(cfg.radius_end_px + 2)).squeeze(1),
                  random_rotations(len(sel), g, dtype=dt).to(dev)[:, None],
                  torch.zeros(len(sel), 1, 2, dtype=dt, device=dev))
    vol_h = model.volume()
    index = torch.nonzero(lat.mask(cfg.radius_end_px, exclude_dc=True)).squeeze(1)
    grid_f = so3_grid(*cfg.grid_fine, dtype=dt, device=dev)
    shifts_f = shift_grid(cfg.max_shift_px, cfg.shift_step_fine_px, dtype=dt).to(dev)
    times = []
    for part in (sel[: max(1, len(sel) // 4)], sel):  # the first call also pays one-off set-up costs
        t = time.perf_counter()
        global_search(*data.rows(part), vol_h, lat, index, grid_f, shifts_f, 1.0)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append((time.perf_counter() - t) / len(part))
    return times[-1]


def _stop_check(group) -> None:
    """:func:`stopping.check`, agreed between processes (all stop at the same batch)."""
    stop_together(group, stopping.requested())


def _batches(group, n: int, size: int):
    """This process's batches (slices) of its part of ``n`` particles. Every process gets
    the same number of batches (the last ones may be empty), so that the collectives in a
    loop over them match."""
    lo, hi = group.part(n)
    per = -(-n // group.world)  # the largest part
    for j in range(-(-per // size)):
        yield slice(min(hi, lo + j * size), min(hi, lo + (j + 1) * size))


def _backproject_parts(model: "_VolumeModel", data: HartleyData, group, cfg: AbinitConfig, lat, index: Tensor,
                       rots: Tensor, shifts: Tensor) -> None:
    """Backproject every particle at its pose into ``model``: each process its part, the
    sums then added over the processes."""
    for sl in _batches(group, data.n_particles, cfg.batch_size_full):
        if sl.stop > sl.start:
            model.acc.add(*data.rows(sl), lat, index, rots[sl, None], shifts[sl, None])
    group.sum_(model.acc.num)
    group.sum_(model.acc.den)


def _index(lat, radius: float, dc: bool = False) -> Tensor:
    """Lattice points within ``radius`` px (the origin only with ``dc``)."""
    return torch.nonzero(lat.mask(radius, exclude_dc=not dc)).squeeze(1)


def _em_stage(data: HartleyData, cfg: AbinitConfig, g: torch.Generator, group, t0: float, stop_at_s: float | None,
              progress: bool, callback, hist: list, start: int = 0, desc: str = "ab initio EM") -> tuple[Tensor, float]:
    """Stochastic EM from random start number ``start``, drawn from ``g``: the volume
    (Hartley) and the noise variance it ends with. Stops early once ``stop_at_s`` seconds
    have passed since ``t0``."""
    lat, n = data.lattice, data.n_particles
    dev, dt = data.device, data.dtype
    model = _VolumeModel(lat.d, cfg, dt, dev)

    def index_for(radius: float, dc: bool = False) -> Tensor:
        return _index(lat, radius, dc)

    # initial volume: a random subset backprojected at random poses
    init = torch.randperm(n, generator=g)[: min(n, cfg.n_init)]
    bp_index = index_for(cfg.radius_start_px + 2, dc=True)
    model.acc.add(*data.rows(init), lat, bp_index,
                  random_rotations(len(init), g, dtype=dt).to(dev)[:, None],
                  torch.zeros(len(init), 1, 2, dtype=dt, device=dev))

    grid_c = so3_grid(*cfg.grid_coarse, dtype=dt, device=dev)
    grid_f = so3_grid(*cfg.grid_fine, dtype=dt, device=dev)
    shifts_em = shift_grid(cfg.max_shift_px, cfg.shift_step_em_px, dtype=dt).to(dev)
    sigma2 = None
    it_range = range(cfg.n_iterations)
    bar = tqdm(it_range, desc=desc, disable=not progress)
    for it in bar:
        _stop_check(group)
        f = it / max(1, cfg.n_iterations - 1)
        radius = _lerp(cfg.radius_start_px, cfg.radius_end_px, f)
        index = index_for(radius)
        vol_h = model.volume()
        bi = torch.randint(0, n, (cfg.batch_size,), generator=g).to(dev)
        x, c = data.rows(bi)
        if sigma2 is None:
            sigma2 = float((x[:, index] ** 2).mean())
        k = max(1, round(_lerp(cfg.top_k_start, cfg.top_k_end, f)))
        res = global_search(x, c, vol_h, lat, index, grid_c if f < cfg.fine_after else grid_f,
                            shifts_em, sigma2, top_k=k, beta=_lerp(cfg.beta_start, cfg.beta_end, f))
        sigma2 = 0.9 * sigma2 + 0.1 * float(res.sq_err.mean() / index.numel())
        model.acc.decay(_lerp(cfg.decay_start, cfg.decay_end, f))
        model.acc.add(x, c, lat, index_for(radius + 2, dc=True), res.rots, res.shifts_px, res.weights)
        info = {"stage": "em", "start": start, "iteration": it, "radius_px": radius, "sigma2": sigma2,
                "top_weight": float(res.weights[:, 0].mean()), "elapsed_s": time.time() - t0}
        hist.append(info)
        if callback is not None and (it % 20 == 0 or it == cfg.n_iterations - 1):
            callback("em", dict(info, batch_index=bi, rots=res.rots[:, 0]))
        bar.set_postfix(r=f"{radius:.1f}", w=f"{info['top_weight']:.2f}")
        if group.any(stop_at_s is not None and time.time() - t0 > stop_at_s):
            break
    return model.volume(), sigma2


def _start_generator(seed: int, start: int) -> torch.Generator:
    """The random stream of EM start ``start``: start 0 uses ``seed`` itself (one start
    is the search as it always was), the others independent streams derived from it."""
    if start == 0:
        return torch.Generator().manual_seed(seed)
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start]).generate_state(1)[0]))


def _best_start(data: HartleyData, cfg: AbinitConfig, group, t0: float, em_stop: float | None, progress: bool,
                callback, hist: list) -> tuple[Tensor, float]:
    """EM from up to ``cfg.n_starts`` starts, each scored by :func:`start_score` on the
    same sample of particles; the best start's volume and noise variance. Under a time
    limit a further start runs only when one more (as long as the longest so far) fits
    before ``em_stop`` seconds."""
    n = data.n_particles
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: min(n, cfg.start_sample)]
    starts: list[dict] = []
    best = None
    longest = 0.0
    for k in range(cfg.n_starts):
        if k and group.any(em_stop is not None and time.time() - t0 + longest > em_stop):
            break
        t_start = time.time()
        desc = f"ab initio EM, start {k + 1}/{cfg.n_starts}"
        vol_h, sigma2 = _em_stage(data, cfg, _start_generator(cfg.seed, k), group, t0, em_stop, progress,
                                  callback, hist, start=k, desc=desc)
        score = start_score(data, cfg, vol_h, sigma2, sample, group)
        longest = max(longest, time.time() - t_start)
        starts.append({"start": k, "score": score, "seconds": time.time() - t_start})
        if best is None or score < best[0]:
            best = (score, k, vol_h, sigma2)
    hist.append({"stage": "starts", "starts": starts, "kept": best[1], "sample": len(sample),
                 "elapsed_s": time.time() - t0})
    return best[2], best[3]


def start_score(data: HartleyData, cfg: AbinitConfig, vol_h: Tensor, sigma2: float, sample: Tensor,
                group=None) -> float:
    """How well an EM start explains the data: the particles of ``sample`` are searched
    globally against the start's volume, a volume is backprojected from them at the poses
    found, and the score is their mean squared residual against it over the EM's final
    radius (lower is better). The residual is taken against the volume refitted to the
    poses found, so that it scores the poses rather than the start volume's amplitude or
    regularisation, which differ between starts.
    Each process scores its part of the sample; the sums are joined, so every process
    gets the same score."""
    group = group or Alone()
    lat = data.lattice
    dev, dt = data.device, data.dtype
    lo, hi = group.part(len(sample))
    index = _index(lat, cfg.radius_end_px)
    grid_f = so3_grid(*cfg.grid_fine, dtype=dt, device=dev)
    shifts_f = shift_grid(cfg.max_shift_px, cfg.shift_step_fine_px, dtype=dt).to(dev)
    model = _VolumeModel(lat.d, cfg, dt, dev)
    found = []  # the sample's rows are kept for the residual (a fixed sample, not the stack)
    for j in range(lo, hi, cfg.batch_size_full):
        x, c = data.rows(sample[j:min(hi, j + cfg.batch_size_full)])
        res = global_search(x, c, vol_h, lat, index, grid_f, shifts_f, sigma2)
        model.acc.add(x, c, lat, _index(lat, cfg.radius_end_px + 2, dc=True), res.rots, res.shifts_px)
        found.append((x, c, res.rots[:, 0], res.shifts_px[:, 0]))
    group.sum_(model.acc.num)
    group.sum_(model.acc.den)
    refit = model.volume()
    total = torch.zeros(2, dtype=torch.float64, device=dev)
    eye, zero = torch.eye(3, dtype=dt, device=dev)[None], torch.zeros(1, 2, dtype=dt, device=dev)
    for x, c, rots, shifts in found:
        fit = local_search(x, c, refit, lat, index, rots, shifts, eye, zero, 1.0)
        total[0] += fit.sq_err.double().sum()
        total[1] += len(rots)
    group.sum_(total)
    return float(total[0] / total[1])


def run_abinit(data: HartleyData, cfg: AbinitConfig | None = None, time_limit_s: float | None = None,
               progress: bool = True, callback=None, group=None) -> AbinitResult:
    """Ab initio poses and consensus volume for all particles of ``data``.

    ``callback(stage, info: dict)`` is called after each logged step (for ground-truth
    monitoring in notebooks and the trainer). ``time_limit_s`` bounds the EM stage and
    shortens refinement when exceeded. ``group`` (:mod:`cryofire_nb.parallel`) divides
    the particle-parallel stages between processes: the EM stage, a few thousand images,
    runs the same on every process; the global search, the local rounds and the
    backprojections run on each process's part of the particles, joined by collectives.
    """
    cfg = cfg or AbinitConfig()
    group = group or Alone()
    t0 = time.time()
    lat, d, n = data.lattice, data.lattice.d, data.n_particles
    dev, dt = data.device, data.dtype
    g = _start_generator(cfg.seed, 0)
    hist: list[dict] = []

    def index_for(radius: float, dc: bool = False) -> Tensor:
        return _index(lat, radius, dc)

    em_stop = None if time_limit_s is None else 0.5 * time_limit_s
    if cfg.n_starts == 1:
        vol_h, sigma2 = _em_stage(data, cfg, g, group, t0, em_stop, progress, callback, hist)
    else:
        vol_h, sigma2 = _best_start(data, cfg, group, t0, em_stop, progress, callback, hist)

    # stage 2: global search of every particle at the final EM radius
    index = index_for(cfg.radius_end_px)
    grid_f = so3_grid(*cfg.grid_fine, dtype=dt, device=dev)
    shifts_f = shift_grid(cfg.max_shift_px, cfg.shift_step_fine_px, dtype=dt).to(dev)
    lo, hi = group.part(n)
    rots = torch.empty(hi - lo, 3, 3, dtype=dt, device=dev)  # this process's part, then all of them
    shifts = torch.empty(hi - lo, 2, dtype=dt, device=dev)
    errs = torch.empty(hi - lo, dtype=dt, device=dev)
    for sl in tqdm(list(_batches(group, n, cfg.batch_size_full)), desc="global search", disable=not progress):
        _stop_check(group)
        if sl.stop > sl.start:
            res = global_search(*data.rows(sl), vol_h, lat, index, grid_f, shifts_f, sigma2)
            own = slice(sl.start - lo, sl.stop - lo)
            rots[own], shifts[own], errs[own] = res.rots[:, 0], res.shifts_px[:, 0], res.sq_err
    rots, shifts, errs = group.gather(rots, n), group.gather(shifts, n), group.gather(errs, n)
    hist.append({"stage": "global", "mean_sq_err": float(errs.mean() / index.numel()), "elapsed_s": time.time() - t0})
    if callback is not None:
        callback("global", {"rots": rots, "shifts_px": shifts})

    # stage 3: local refinement with rising resolution and shrinking steps
    r_final = cfg.refine_radius_px or 3 * d / 8
    step, sstep = cfg.refine_step_deg, cfg.refine_shift_step_px
    last_round_s = 0.0
    for rnd in range(cfg.refine_rounds):
        model = _VolumeModel(d, cfg, dt, dev)
        radius = _lerp(cfg.radius_end_px, r_final, (rnd + 1) / cfg.refine_rounds)
        bp = index_for(min(d / 2, radius + 2), dc=True)
        _backproject_parts(model, data, group, cfg, lat, bp, rots, shifts)
        vol_h = model.volume()
        # stop refining when the next round (as long as the last one) would overrun the budget
        if group.any(time_limit_s is not None and time.time() - t0 + last_round_s > time_limit_s):
            hist.append({"stage": "refine-skipped", "round": rnd, "elapsed_s": time.time() - t0})
            break
        t_round = time.time()
        index = index_for(radius)
        pert = perturbation_grid(step, 1, dtype=dt).to(dev)
        offs = shift_grid(sstep, sstep, dtype=dt).to(dev)
        new_r, new_s = rots[lo:hi].clone(), shifts[lo:hi].clone()
        for sl in tqdm(list(_batches(group, n, cfg.batch_size_full)), desc=f"refine {rnd + 1}",
                       disable=not progress):
            _stop_check(group)
            if sl.stop > sl.start:
                res = local_search(*data.rows(sl), vol_h, lat, index, rots[sl], shifts[sl], pert, offs, sigma2)
                own = slice(sl.start - lo, sl.stop - lo)
                new_r[own] = res.rots[:, 0]
                new_s[own] = res.shifts_px[:, 0].clamp(-cfg.max_shift_px, cfg.max_shift_px)
        rots, shifts = group.gather(new_r, n), group.gather(new_s, n)
        last_round_s = time.time() - t_round
        hist.append({"stage": "refine", "round": rnd, "radius_px": radius, "step_deg": step, "elapsed_s": time.time() - t0})
        if callback is not None:
            callback("refine", {"rots": rots, "shifts_px": shifts})
        step, sstep = step / 2, sstep / 2

    model = _VolumeModel(d, cfg, dt, dev)
    _backproject_parts(model, data, group, cfg, lat, index_for(d / 2, dc=True), rots, shifts)
    vol_h = model.volume()
    return AbinitResult(rots, shifts, vol_h, hartley_volume_to_real(vol_h), hist, asdict(cfg))
