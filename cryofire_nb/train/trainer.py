"""The training loop: :func:`train` runs one ``cryofire-nb train`` invocation.

Order of work: read and check every input (nothing is written before that passes),
write ``config.yaml``, run the voxel pose search for the table method (the default;
:func:`cryofire_nb.abinit.run_abinit`), then Adam steps on
batches in a seeded order until the budget (epochs, images or wall time) is spent, with
a checkpoint every ``checkpoint_every_images`` images / ``checkpoint_every_minutes``
minutes, and finally one inference pass over all particles and every output file
(:mod:`.outputs`). ``--time-limit`` covers the whole invocation: training stops early
enough to leave time for the final pass.

Precision: bf16 autocast only on cuda (``amp``); fp32 on CPU. Reproducibility: the model
is initialised after ``torch.manual_seed(seed)``, the data order is a function of
(seed, epoch) and all sampling (z noise, reparameterisation) uses one generator whose
state is checkpointed, so a CPU run is a function of its seed and a resumed run continues
exactly.

Dimension letters: N particles, b batch, d box.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import Latents, Poses, write_latents, write_poses
from ..io.pkl import write_indices
from ..metrics import RunMetrics
from ..model.decoder import HyperVolumeConfig, VoxelVolumeConfig
from ..model.encoder import EncoderConfig
from ..model.preprocess import PreprocessConfig
from ..model.schedule import FrequencyMarching, PoseOnlyPhase
from ..rotations import geodesic_distance_deg
from ..validate import check_device
from .. import memory, stopping
from . import interrupt
from .distributed import Group
from .checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from .config import DEFAULT_EPOCHS, MODEL_FIELDS, TrainConfig
from .data import GroundTruth, ParticleData
from .infer import Inferred, autocast_for, infer_dataset
from .presets import apply_preset
from .rendered import Renderer, shell_noise_power
from .monitor import EvalEntry, History, LogEntry, eval_entry, gt_metrics
from .outputs import RunOutputs, write_config, write_outputs
from .run_model import CryoFireModel, ModelSpec
from .steps import PoseTargets, amortised_step, distill_step, known_pose_step, view_planarity

#: Fraction of the particles the encoder never trains on in a pose-table run: it is scored
#: on them against the table during training, which shows whether it generalises.
HOLDOUT_FRACTION = 0.1
NOISE_SAMPLE = 1000  # particles whose residuals measure the noise of rendered images
#: Warn when the view directions' planarity (1: spread over the sphere, 0: on one great
#: circle) falls below this: the spurious planar-symmetry minimum of amortised training.
PLANARITY_WARN = 0.2
#: Warn when the encoder's rotations are further than this from the pose table (median, deg).
ENCODER_TABLE_WARN_DEG = 15.0
NEVER = 10 ** 18  # schedule placeholder until a time-only budget is resolved
PROBE_STEPS = 10  # steps timed before a time-only budget fixes its schedules
# The first steps of a run are not timed for the budget: on a GPU they include CUDA's lazy
# start-up and cuDNN's algorithm search (seconds, against ~25 ms for a step after them).
WARMUP_STEPS = 2
#: Under a time limit, the pose table (search and heterogeneous refinement) covers a random
#: subset of a set too large for the limit, never fewer particles than this (a smaller set:
#: all of them, even past the limit), so that the consensus and the refinement's volumes
#: stay well determined.
TABLE_MIN_PARTICLES = 5000
#: The heterogeneous refinement's least work per particle (latent updates, its global stage,
#: gauge fixes, the first two local rounds, the final fits) in units of the search rate the
#: plan measures (abinit.global_search_seconds): 5.1 at d = 64 (bench/table_budget.py,
#: bench/results/table_budget_d64.json), rounded up for a margin.
HETERO_COST = 6.0
#: Images timed through the encoder to plan the time the final pass over all particles needs.
INFER_PROBE_IMAGES = 512


@dataclass
class TrainResult:
    outputs: RunOutputs | None  # None in a torchrun process other than rank 0 (it writes nothing)
    state: TrainState
    history: History
    stopped_by: str  # "epochs", "max_images", "time_limit" or "interrupted" (SIGINT / SIGTERM)
    train_images_per_s: float
    final_metrics: RunMetrics | None
    steady_images_per_s: float | None = None  # this run's steps after the first WARMUP_STEPS
    config: TrainConfig | None = None  # the run's settings with the preset's values filled in


def resolve_device(name: str) -> torch.device:
    dev = check_device(name)  # an unknown name or a missing GPU is a one-line InputError
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest convolutions
    return dev


def _merge_resume(cfg: TrainConfig, ckpt: Checkpoint) -> TrainConfig:
    """Model and schedule settings come from the checkpoint; data, budget, logging and
    device from the command line."""
    data = cfg.to_dict()
    for name in MODEL_FIELDS:
        if name in ckpt.config:
            data[name] = ckpt.config[name]
    if data.get("batch_size") is None:  # the preset's, recorded in the checkpoint (the preset is not applied
        data["batch_size"] = ckpt.config.get("batch_size")  # again on resume, and the epoch position needs it)
    elif ckpt.config.get("batch_size") not in (None, data["batch_size"]):
        # the checkpoint's place in the epoch is counted in batches of its own size
        raise InputError(cfg.load, f"was written by a run with batch size {ckpt.config['batch_size']}, and "
                                   f"-b {data['batch_size']} would resume at another place in the epoch",
                         f"resume with -b {ckpt.config['batch_size']} (or without -b)")
    if "method" not in ckpt.config:  # written before runs recorded their method
        data["method"] = "known" if data.get("poses") else (
            "table" if data.get("init_search") or data.get("distill_poses") else "amortised")
    return TrainConfig.from_dict(data)


def settings_line(cfg: TrainConfig, d: int, device: torch.device) -> str:
    """One line with the method, the preset and the settings it resolved."""
    from ..hetero import default_search_shift_px

    enc_shift = cfg.max_shift_px if cfg.max_shift_px is not None else d / 8
    search_shift = cfg.max_shift_px if cfg.max_shift_px is not None else default_search_shift_px(d)
    shift = f"{enc_shift:g} px" if enc_shift == search_shift or cfg.method != "table" else \
        f"{search_shift:g} px searched, {enc_shift:g} px encoder"
    line = (f"method {cfg.method}, preset {cfg.preset}: encoder {cfg.encoder}"
            f"{'' if cfg.encoder_channels is None else ' ' + '-'.join(map(str, cfg.encoder_channels))}"
            f" (hidden {cfg.encoder_hidden}), decoder {cfg.decoder}, zdim {cfg.zdim}")
    if cfg.method == "table":
        line += f", basis components {cfg.n_basis}"
    return line + (f", batch {cfg.batch_size}, lr {cfg.lr:g}, decoder lr {cfg.resolved_decoder_lr():g}, "
                   f"max shift {shift}, device {device} (all settings in config.yaml)")


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.t0 = time.perf_counter()
        self.ckpt = load_checkpoint(cfg.load) if cfg.load else None
        if self.ckpt is not None:
            cfg = _merge_resume(cfg, self.ckpt)
            print(f"resuming {cfg.load} at step {self.ckpt.state.step} ({self.ckpt.state.images_seen} images): "
                  "model, optimiser and schedule settings come from the checkpoint", flush=True)
        self.cfg = cfg
        self.group = Group.from_env(resolve_device(cfg.device))
        self.device = self.group.device  # under torchrun on GPUs, this process's own GPU
        self.amp = bool(cfg.amp if cfg.amp is not None else True) and self.device.type == "cuda"
        spec0 = None if self.ckpt is None else ModelSpec.from_dict(self.ckpt.spec)
        # ---- every input is read and checked here, before anything is written
        self.data = ParticleData(cfg.particles, ctf=cfg.ctf, ind=cfg.ind, datadir=cfg.datadir, lazy=cfg.lazy,
                                 half=cfg.half,
                                 preprocess_config=PreprocessConfig(invert_contrast=cfg.invert_contrast),
                                 normalization=None if spec0 is None else spec0.norm, device=self.device)
        d, n = self.data.d, len(self.data)
        if cfg.preset is None:  # fill what the command line left open, then record it
            cfg = apply_preset(cfg, d, self.device.type)
            self.cfg = cfg
        print(settings_line(cfg, d, self.device), flush=True)
        if spec0 is not None and spec0.d != d:
            raise InputError(cfg.load, f"checkpoint was trained on {spec0.d}-px images, the particles are {d} px",
                             "resume with the same particle stack")
        if spec0 is not None and spec0.has_ctf != (self.data.ctf_table is not None):
            raise InputError(cfg.load, "the checkpoint's run " + ("used" if spec0.has_ctf else "did not use")
                             + " a CTF file", "resume with the same --ctf setting")
        self.known = None
        if cfg.poses is not None:
            self.known = self.data.read_poses_for(cfg.poses)
        self.gt: GroundTruth | None = self.data.read_ground_truth(cfg.gt_poses, cfg.gt_conf, cfg.gt_labels)
        self.targets = None
        if cfg.distill_poses is not None:
            self.targets = self.data.read_poses_for(cfg.distill_poses)
        self.z_table = None  # (N, zdim) latent table of a pose-table run, after the refinement
        if self.ckpt is not None and self.ckpt.targets is not None:
            saved = tuple(np.asarray(t, dtype=np.float32) for t in self.ckpt.targets)
            self.targets = saved[:2]
            self.z_table = saved[2] if len(saved) > 2 else None
        self.outdir = cfg.outdir_path
        if self.outdir.exists() and not self.outdir.is_dir():
            raise InputError(self.outdir, "exists and is not a folder", "pass a new or existing folder with -o")
        self.spec = spec0 or self._new_spec()
        self.history = History() if self.ckpt is None else History.from_dict(self.ckpt.history)
        self.state = TrainState() if self.ckpt is None else self.ckpt.state
        self.n, self.d = n, d
        # particles of the pose table when it covers a subset (a time limit too short for all), else None
        self.table_index: np.ndarray | None = None
        if self.ckpt is not None and self.ckpt.extra.get("table_index") is not None:
            self.table_index = np.asarray(self.ckpt.extra["table_index"], dtype=np.int64)
        # the refinement does not fit the time limit beside the final pass (decided with the table)
        self._skip_hetero = bool(self.ckpt is not None and self.ckpt.extra.get("hetero_skipped"))
        self._set_positions()
        self._next_holdout: int | None = None
        if self.ckpt is not None and len(self.holdout) and self.history.holdout:
            # a resumed run scores the held-out particles where the straight run would have
            self._next_holdout = self.history.holdout[-1]["images_seen"] + self._holdout_interval()
        elif self.ckpt is not None and len(self.holdout) and cfg.resolved.get("hetero_done"):
            self._next_holdout = self.state.images_seen
        self._distill_ended_at: int | None = None
        self._target_err = None
        self._renderer = None  # images rendered from the refined volumes for the encoder (built when needed)
        self._noise_power = None if self.ckpt is None else self.ckpt.extra.get("noise_power")
        self._hd = None  # the table's particles on the Hartley lattice for the search / refinement (built once)
        self._hd_all = None
        self._infer_s: float | None = None  # seconds per particle of an encoder pass (timed once)

    # ------------------------------------------------------------------ set-up

    def _set_positions(self) -> None:
        """Held-out and training particles: in a pose-table run, a tenth of the table's
        particles is held out; without a table every particle trains."""
        cfg, n = self.cfg, self.n
        self.holdout = holdout_positions(n, cfg.seed) if cfg.pose_table else np.empty(0, dtype=np.int64)
        pool = np.arange(n) if self.table_index is None else self.table_index
        if self.table_index is not None:
            self.holdout = np.intersect1d(self.holdout, pool)
        self.train_positions = np.setdiff1d(pool, self.holdout)

    def _new_spec(self) -> ModelSpec:
        cfg, d = self.cfg, self.data.d
        enc = EncoderConfig(d=d, zdim=cfg.zdim, variant=cfg.encoder, variational=cfg.variational,
                            conv_channels=None if cfg.encoder_channels is None else tuple(cfg.encoder_channels),
                            hidden=cfg.encoder_hidden, n_pose_hypotheses=cfg.n_pose_hypotheses,
                            max_shift_px=cfg.max_shift_px)
        if cfg.decoder == "hypervolume":
            dec = HyperVolumeConfig(d=d, zdim=cfg.zdim, pe_dim=cfg.pe_dim, hidden=cfg.decoder_hidden,
                                    n_layers=cfg.decoder_layers, seed=cfg.seed).to_dict()
        else:
            dec = VoxelVolumeConfig(d=d, zdim=cfg.zdim, seed=cfg.seed).to_dict()
        return ModelSpec(d=d, encoder=enc.to_dict(), decoder_kind=cfg.decoder, decoder=dec,
                         preprocess=self.data.preprocess_config.to_dict(),
                         normalization=self.data.normalization.to_dict(), known_poses=cfg.known_poses,
                         has_ctf=self.data.ctf_table is not None,
                         pixel_size_angstrom=self.data.pixel_size_angstrom)

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = CryoFireModel(self.spec).to(self.device)
        self.opt = torch.optim.Adam([{"params": self.model.encoder.parameters(), "lr": cfg.lr},
                                     {"params": self.model.decoder.parameters(), "lr": cfg.resolved_decoder_lr()}])
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        if self.ckpt is not None:
            self.model.load_state_dict(self.ckpt.model_state)
            self.opt.load_state_dict(self.ckpt.optimizer_state)
            self.gen.set_state(self.ckpt.generator_state)
            torch.set_rng_state(self.ckpt.torch_rng_state)
            if self.ckpt.cuda_rng_state is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.ckpt.cuda_rng_state)
        if self.group.rank > 0:
            # The checkpoint holds rank 0's stream. Every other rank draws its own augmentations
            # and rendered images (the same stream on every rank would repeat one rendered
            # batch world-size times); rank 0, and so a single process, is unchanged.
            start = 0 if self.ckpt is None else int(self.ckpt.state.step)
            self.gen.manual_seed(int(np.random.SeedSequence([cfg.seed + 1, self.group.rank, start]).generate_state(1)[0]))
        self.lattice = self.data.lattice

    def _config_extra(self) -> dict:
        return {"encoder_config": self.spec.encoder, "decoder_kind": self.spec.decoder_kind,
                "decoder_config": self.spec.decoder, "normalization": self.spec.normalization,
                "preprocess": self.spec.preprocess, "image_size_px": self.d, "n_particles": self.n,
                "pixel_size_angstrom": self.spec.pixel_size_angstrom, "device": str(self.device),
                "amp_bf16": self.amp, "resumed_from": self.cfg.load, "world_size": self.group.world}

    def _set_schedules(self) -> None:
        r = self.cfg.resolved
        start_px = self.d / 2 if self.cfg.pose_table else self.cfg.march_start_px  # poses given: no marching
        if r:
            self.pose_only = PoseOnlyPhase(r["pose_only_images"])
            self.marching = FrequencyMarching(self.d, start_px, self.cfg.march_step_px, r["march_images_per_step"])
            self.distill_images = r["distill_images"]
            if self._distill_ended_at is not None:  # ended early before a time-only budget was resolved
                self.distill_images = r["distill_images"] = min(r["distill_images"], self._distill_ended_at)
            planned = r["planned_images"]
        else:  # time-only budget: placeholders until the throughput probe
            self.pose_only = PoseOnlyPhase(0 if self.cfg.known_poses or self.cfg.pose_table else NEVER)
            self.marching = FrequencyMarching(self.d, start_px, self.cfg.march_step_px, NEVER)
            self.distill_images = NEVER
            planned = None
        ev = self.cfg.eval_every_images
        self.eval_every = ev if ev is not None else (max(self.cfg.batch_size, planned // 10) if planned else None)

    # ------------------------------------------------------------------ init search

    def _progress(self, desc: str):
        """A tqdm wrapper for a loop over chunks, or None without progress bars."""
        if not self.cfg.progress:
            return None
        return lambda it: tqdm(it, desc=desc, unit="chunk")

    def _streaming_hartley_data(self):
        """All particles on the Hartley lattice, each row computed when read (only the
        normalisation is computed here)."""
        from ..hartley_data import HartleyData

        if self._hd_all is None:
            self._hd_all = HartleyData.from_images(self.data, self.data.ctf_table, invert=self.cfg.invert_contrast,
                                                   device=self.device, lazy=True)
        return self._hd_all

    def _hartley_data(self):
        """The pose table's particles (all, or ``table_index``) on the Hartley lattice for
        the search and refinement: rows kept in memory, or streamed under ``--lazy``."""
        if self._hd is None:
            hd = self._streaming_hartley_data()
            if self.table_index is not None:
                hd = hd.view(self.table_index)
            if self.data.in_memory:
                hd = hd.resident(progress=self._progress("images to the Hartley lattice"),
                                 source=self.data.source_path, half=self.data.half)
            self._hd = hd
        return self._hd

    def _plan_table(self, hd, acfg, limit_s: float | None) -> np.ndarray | None:
        """The particles of the pose table: all (None), or under a time limit too short for
        all of them, a random subset sized from this machine's measured search rate so that
        the global search fits its share of the limit and the heterogeneous refinement's
        least work fits its share (at least ``TABLE_MIN_PARTICLES``). ``hd()`` gives all
        particles on the Hartley lattice (built only when a plan is needed)."""
        cfg, n = self.cfg, self.n
        if limit_s is None or n <= TABLE_MIN_PARTICLES:
            return None
        from ..abinit import global_search_seconds

        # the search's particles are divided between the processes (one process's rate, measured here)
        per = global_search_seconds(hd(), acfg) / self.group.world
        hetero = cfg.pose_table and cfg.hetero_refine
        # the final pass over all particles (with a latent table, one encoder pass) is kept free
        final = self._pass_seconds((1 if hetero else 2) * n)
        search = cfg.search_time_fraction * limit_s
        # the search's EM stage stops at half of its share; the global search has the rest
        fits = 0.5 * search / per
        if hetero:
            fits_hetero = cfg.hetero_time_fraction * max(limit_s - search - final, 0.0) / (HETERO_COST * per)
            if fits_hetero < TABLE_MIN_PARTICLES:
                # the limit at which the smallest table's refinement fits its share beside the final pass
                need = (TABLE_MIN_PARTICLES * HETERO_COST * per / cfg.hetero_time_fraction + final) \
                    / (1 - cfg.search_time_fraction)
                self._warn(f"a {limit_s / 60:g}-min limit leaves no time on this machine for the heterogeneous "
                           f"refinement of a pose table of {TABLE_MIN_PARTICLES} particles beside the final pass "
                           f"over all {n} (about {need / 60:.0f} min would): the table is the search's poses, "
                           "not refined")
                self._skip_hetero = True
            else:
                fits = min(fits, fits_hetero)
        m = int(fits)
        if m < TABLE_MIN_PARTICLES:
            need = TABLE_MIN_PARTICLES * per / (0.5 * cfg.search_time_fraction)
            self._warn(f"a {limit_s / 60:g}-min limit is too short on this machine for the search of a pose table "
                       f"of {TABLE_MIN_PARTICLES} particles (about {need / 60:.0f} min would fit it): the run will "
                       "end after its limit")
            m = TABLE_MIN_PARTICLES
        if m >= n:
            return None
        rng = np.random.default_rng([int(cfg.seed), 23])
        index = np.sort(rng.choice(n, size=m, replace=False))
        refined = hetero and not self._skip_hetero
        need_min = n * per * (1 + (HETERO_COST if refined else 0)) / 60
        print(f"pose table on {m} of {n} particles (a random subset): the global search takes {1e3 * per:.2f} ms "
              f"per particle here, and the table of all {n} would need about {need_min:.0f} min of search"
              f"{' and refinement' if refined else ''} in a {limit_s / 60:g}-min limit; the other {n - m} get the "
              "encoder's poses and z (table_ind.pkl lists the table's particles)", flush=True)
        return index

    def _init_search(self, limit_s: float | None) -> None:
        from ..abinit import AbinitConfig, run_abinit

        print("init search: voxel pose search (cryofire_nb.abinit) ...", flush=True)
        # with the heterogeneous refinement to follow, the consensus refinement rounds are skipped
        kw = dict(refine_rounds=0) if self.cfg.pose_table else {}
        acfg = AbinitConfig.for_box(self.d, self.cfg.max_shift_px, seed=self.cfg.seed, n_starts=self.cfg.search_starts,
                                    **kw)
        plan = self._plan_table(self._streaming_hartley_data, acfg, limit_s) if self.group.is_main else None
        self.table_index, self._skip_hetero = self.group.from_main((plan, self._skip_hetero))
        self._set_positions()
        idx = self.table_index
        hd = self._hartley_data()
        time_limit_s = None if limit_s is None else self.cfg.search_time_fraction * limit_s
        with interrupt.stage("voxel pose search"):
            # under torchrun each process searches its part of the particles
            shards = {"group": self.group} if self.group.active else {}
            res = run_abinit(hd, acfg, time_limit_s=time_limit_s, progress=self.cfg.progress and self.group.is_main,
                             **shards)
        starts = next((h for h in res.history if h["stage"] == "starts"), None)
        if starts is not None and self.group.is_main:
            ran, asked = len(starts["starts"]), acfg.n_starts
            scores = ", ".join(f"{s['score']:.4g}" for s in starts["starts"])
            print(f"consensus search: {ran} of {asked} EM starts"
                  + (" (the time limit left no room for more)" if ran < asked else "")
                  + f", mean squared residual of {starts['sample']} particles: {scores}; kept start "
                  f"{starts['kept'] + 1}", flush=True)
        rots = torch.as_tensor(res.rots).float().cpu().numpy()
        shifts = torch.as_tensor(res.shifts_px).float().cpu().numpy()
        if self.group.is_main:  # the search's poses of the table's particles (in table_ind.pkl's order)
            write_poses(self.outdir / "init_search_poses.pkl", Poses.from_shift_px(rots, shifts, self.d))
            if idx is not None:
                write_indices(self.outdir / "table_ind.pkl", idx)
        if idx is not None:  # rows outside the table are placeholders that no stage reads
            full_r = np.broadcast_to(np.eye(3, dtype=np.float32), (self.n, 3, 3)).copy()
            full_s = np.zeros((self.n, 2), dtype=np.float32)
            full_r[idx], full_s[idx] = rots, shifts
            rots, shifts = full_r, full_s
        self.targets = (rots, shifts)
        vol = getattr(res, "volume_hartley", None)
        grids = getattr(self.model.decoder, "grids", None)
        if vol is not None and grids is not None and tuple(vol.shape) == tuple(grids.shape[1:]):
            scale = hd.norm_std / self.data.normalization.std  # to this run's normalisation
            with torch.no_grad():
                grids[0].copy_(torch.as_tensor(vol).to(grids) * scale)
        self._share_tables()

    # ------------------------------------------------------------------ checkpoints

    def _share_tables(self) -> None:
        """With torchrun: rank 0's pose and latent tables and volume on every rank. The
        divided search and refinement already leave every rank the same tables; this makes
        the agreement explicit, whatever a stage's floating-point sums did."""
        if not self.group.active:
            return
        self.targets, self.z_table = self.group.from_main((self.targets, self.z_table))
        grids = getattr(self.model.decoder, "grids", None)
        if grids is not None:
            self.group.tensor_from_main(grids)

    def _checkpoint(self) -> None:
        if not self.group.is_main:
            return
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        targets = None if self.targets is None else (self.targets[0], self.targets[1])
        if targets is not None and self.z_table is not None:
            targets = (*targets, self.z_table)
        save_checkpoint(self.outdir / "checkpoint.pt", Checkpoint(
            self.cfg.to_dict(), self.spec.to_dict(), self.model.state_dict(), self.opt.state_dict(), self.state,
            self.gen.get_state(), torch.get_rng_state(), cuda, self.history.to_dict(), targets,
            {**({} if self.table_index is None else {"table_index": self.table_index}),
             **({"hetero_skipped": True} if self._skip_hetero else {}),
             **({} if self._noise_power is None else {"noise_power": np.asarray(self._noise_power)})}))

    # ------------------------------------------------------------------ evaluation

    def _eval_positions(self) -> np.ndarray:
        return np.unique(np.linspace(0, self.n - 1, min(self.n, self.cfg.eval_n_images)).round().astype(np.int64))

    def _evaluate(self, elapsed: float) -> EvalEntry:
        pos = self._eval_positions()
        inf = infer_dataset(self.model, self.data, batch_size=max(self.cfg.batch_size, 128),
                            radius_px=self.marching.radius_px(self.state.images_seen), known=self.known,
                            pose_only_active=self.pose_only.active(self.state.images_seen), positions=pos,
                            amp=self.amp)
        self.model.train()
        m = gt_metrics(inf.rots, inf.shift_px, inf.z, self.gt, pos, self.d)
        entry = eval_entry(m, self.state.step, self.state.images_seen, elapsed)
        self.history.log_eval(entry)
        return entry

    # ------------------------------------------------------------------ one step

    def _rendered(self, b: int):
        """Rendered images to join a batch of ``b`` particles, or None (no refined table,
        or the run renders none)."""
        cfg = self.cfg
        if not (cfg.pose_table and cfg.rendered_per_image > 0 and self._table_final()) or self.targets is None:
            return None
        if self._renderer is None:
            if self._noise_power is None:
                self._measure_noise()
            self._renderer = Renderer(self.data, self.train_positions, self.targets[1], self.z_table,
                                      torch.as_tensor(self._noise_power))
        n = max(1, int(round(b * cfg.rendered_per_image)))
        return self._renderer.draw(self.model, n, self.gen)

    def _measure_noise(self) -> None:
        """Noise power per ring of the table's particles against the refined volumes
        (:func:`cryofire_nb.train.rendered.shell_noise_power`), from up to 1,000 training
        particles; kept in the checkpoint so a resumed run renders with the same noise."""
        pos = self.train_positions
        if len(pos) > NOISE_SAMPLE:
            pos = np.sort(np.random.default_rng([int(self.cfg.seed), 29]).choice(pos, NOISE_SAMPLE, replace=False))
        z = None if self.z_table is None else self.z_table[pos]
        self._noise_power = shell_noise_power(self.model, self.data, pos, self.targets[0][pos], self.targets[1][pos],
                                              z).cpu().numpy()

    def _step(self, pos: np.ndarray):
        cfg, st = self.cfg, self.state
        batch = self.data.batch(pos)
        rendered = None
        mask = self.marching.mask(self.lattice, st.images_seen)
        with autocast_for(self.device, self.amp):
            if self.known is not None:
                kr = torch.as_tensor(self.known[0][pos], device=self.device)
                ks = torch.as_tensor(self.known[1][pos], device=self.device)
                res = self.group.step(known_pose_step, self.model, batch, kr, ks, self.lattice, mask,
                                      st.images_seen, self.pose_only, cfg.resolved_kl_weight(), self.gen)
                phase = "known_poses"
            elif self.targets is not None and (cfg.pose_table or st.images_seen < self.distill_images):
                tgt = PoseTargets(torch.as_tensor(self.targets[0][pos], device=self.device),
                                  torch.as_tensor(self.targets[1][pos], device=self.device))
                zt = None if self.z_table is None else torch.as_tensor(self.z_table[pos], device=self.device)
                rendered = self._rendered(len(pos))
                res = self.group.step(distill_step, self.model, batch, tgt, self.lattice, mask, st.images_seen,
                                      self.pose_only, cfg.resolved_kl_weight(), cfg.pose_loss_weight,
                                      cfg.shift_loss_weight, self.gen, z_target=zt, z_weight=cfg.z_loss_weight,
                                      quarter_turns=cfg.quarter_turns and cfg.pose_table and self._table_final(),
                                      rendered=rendered)
                phase = "distill"
                self._target_err = geodesic_distance_deg(res.rots.float(), tgt.rots.float()).detach().cpu()
            else:
                res = self.group.step(amortised_step, self.model, batch, self.lattice, mask, st.images_seen,
                                      self.pose_only, cfg.resolved_kl_weight(), self.gen)
                phase = "amortised"
        self.opt.zero_grad(set_to_none=True)
        res.loss.backward()
        self.opt.step()
        return res, phase

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._build()
        if self.group.is_main and not (self.outdir / "weights.pt").exists():
            # a new folder gets its settings now; over earlier results (resume, --overwrite) the new
            # config.yaml is written with the new weights at the end, so a failed run leaves a matching pair
            write_config(self.outdir, cfg, self._config_extra())
        limit_s = None if cfg.time_limit_min is None else cfg.time_limit_min * 60.0
        if cfg.init_search and self.targets is None:
            try:
                self._init_search(limit_s)
            except stopping.StageStopped:
                # nothing trained yet: the checkpoint holds the settings and the untrained
                # model, and a run resumed from it starts the search again
                self._checkpoint()
                raise
        planned = cfg.planned_images(self.n)
        if not cfg.resolved and planned is not None:
            cfg.resolve_schedules(self.d, planned)
        self._set_schedules()
        self.group.wrap(self.model, self.device)
        stopped_by = self._loop(limit_s)
        # ---- final pass and outputs
        radius = self.marching.radius_px(st.images_seen)
        self.spec.final_radius_px = float(radius)
        self.spec.images_seen = int(st.images_seen)
        table = self.targets if cfg.pose_table else None  # the refined pose table is the run's poses
        known = self.known if table is None else table
        encoder = None
        if table is not None:  # the encoder's own (amortised) poses, as `infer` would give on new particles
            encoder = self._infer_parts(batch_size=max(cfg.batch_size, 256), radius_px=radius, amp=self.amp,
                                        progress=cfg.progress)
        if table is not None and self.z_table is not None:
            # poses and z are the tables: no encoder pass needed (outputs use rots, shifts and z only)
            inferred = dataclasses.replace(encoder, rots=table[0].astype(np.float32),
                                           shift_px=table[1].astype(np.float32), z=self.z_table.copy(),
                                           mirrored=np.zeros(self.n, dtype=bool),
                                           loss=np.full(self.n, np.nan, dtype=np.float32), seconds=0.0)
        else:
            inferred = self._infer_parts(batch_size=max(cfg.batch_size, 256), radius_px=radius, known=known,
                                         pose_only_active=self.pose_only.active(st.images_seen), amp=self.amp,
                                         progress=cfg.progress, positions=None if table is None else self.table_index)
        if len(self.holdout) and self.targets is not None:
            self._score_holdout()
            h = self.history.holdout[-1]
            print(f"encoder vs pose table: median rotation difference {h['held_out_rotation_median_deg']:.1f} deg "
                  f"on {len(self.holdout)} held-out particles, {h['training_rotation_median_deg']:.1f} deg on "
                  "training particles", flush=True)
        if table is not None and self.table_index is not None:
            inferred = self._with_encoder_outside_table(inferred, encoder)
        self._final_warnings(inferred.rots, encoder)
        final = None
        if self.gt is not None:
            final = gt_metrics(inferred.rots, inferred.shift_px, inferred.z, self.gt, np.arange(self.n), self.d)
            self.history.final = {**final.to_dict(), "summary": final.summary_lines()}
            if encoder is not None:
                enc = gt_metrics(encoder.rots, encoder.shift_px, encoder.z, self.gt, np.arange(self.n), self.d)
                self.history.final["encoder"] = {**enc.to_dict(), "summary": enc.summary_lines()}
        outputs = None
        if self.group.is_main:
            outputs = write_outputs(self.outdir, cfg, self.model, inferred, self.history, self._config_extra())
        if encoder is not None and self.group.is_main:
            write_poses(self.outdir / "encoder_poses.pkl", Poses.from_shift_px(encoder.rots, encoder.shift_px, self.d))
            write_latents(self.outdir / "encoder_z.pkl", Latents(encoder.z.reshape(len(encoder.z), -1)))
        self._checkpoint()
        rate = st.images_seen / max(st.train_seconds, 1e-9)
        steady = self._steady[0] / self._steady[1] if self._steady[1] > 0 else None
        return TrainResult(outputs, st, self.history, stopped_by, rate, final, steady, cfg)

    def _with_encoder_outside_table(self, inferred, encoder):
        """All particles' results: the table's rows for its particles (``inferred`` holds
        all rows or, from a pass over the table's particles, only theirs) and the encoder's
        poses and z for the rest."""
        idx = self.table_index
        out = dataclasses.replace(encoder, rots=encoder.rots.copy(), shift_px=encoder.shift_px.copy(),
                                  z=encoder.z.copy(), mirrored=encoder.mirrored.copy(), loss=encoder.loss.copy())
        rows = idx if len(inferred.rots) == self.n else slice(None)
        for name in ("rots", "shift_px", "z", "mirrored", "loss"):
            getattr(out, name)[idx] = getattr(inferred, name)[rows]
        outside = self.n - len(idx)
        last = self.history.holdout[-1] if self.history.holdout else None
        gap = (f", {last['held_out_rotation_median_deg']:.1f} deg (median) from the table on held-out particles"
               if last else "")
        self._warn(f"the pose table covers {len(idx)} of {self.n} particles (the time limit was too short for "
                   f"all); poses.pkl and z.pkl give the encoder's poses and z for the other {outside}{gap}. "
                   "table_ind.pkl lists the table's particles (pass it as --ind to select them); a longer "
                   "--time-limit, or `cryofire-nb infer --search` on the others, gives table poses for all")
        return out

    def _infer_seconds_per_image(self) -> float:
        """Seconds per particle of an encoder pass over this set (reading included), timed
        once on ``INFER_PROBE_IMAGES`` particles: what the final pass over all of them will
        take (the work does not depend on the weights)."""
        if self._infer_s is None:
            pos = np.unique(np.linspace(0, self.n - 1, min(self.n, INFER_PROBE_IMAGES)).round().astype(np.int64))
            t = time.perf_counter()
            infer_dataset(self.model, self.data, batch_size=max(self.cfg.batch_size, 256), positions=pos,
                          amp=self.amp)
            self.model.train()
            self._infer_s = (time.perf_counter() - t) / len(pos)
        return self._infer_s

    def _pass_seconds(self, images: int) -> float:
        """Time kept for encoder passes over ``images`` particles (a quarter more than
        the timed rate, and 5 s for writing the outputs); under torchrun every process
        encodes its part of them (:meth:`_infer_parts`)."""
        return 5.0 + 1.25 * images * self._infer_seconds_per_image() / self.group.world

    def _infer_parts(self, positions=None, progress: bool = False, **kw) -> Inferred:
        """:func:`infer_dataset` over ``positions`` (default all particles), in order.
        Under torchrun each process encodes a contiguous part of them and the rows are
        gathered, so every process holds the whole result (a pass over all particles
        takes 1/world of the time)."""
        g = self.group
        pos = np.arange(self.n) if positions is None else np.asarray(positions, dtype=np.int64)
        if not g.active or len(pos) < g.world:
            return infer_dataset(self.model, self.data, positions=positions, progress=progress, **kw)
        lo, hi = g.part(len(pos))
        part = infer_dataset(self.model, self.data, positions=pos[lo:hi], progress=progress and g.is_main, **kw)

        def join(a: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(a.astype(np.uint8) if a.dtype == bool else a))
            return g.gather(t, len(pos)).numpy().astype(a.dtype)

        return Inferred(join(part.rots), join(part.shift_px), join(part.z), join(part.mirrored), join(part.loss),
                        part.seconds)

    def _final_seconds(self) -> float:
        """Time the final passes will take: one over all particles, and in a table run
        without a latent table yet, one more over the table's particles."""
        images = self.n
        if self.cfg.pose_table and self.z_table is None:
            images += self.n if self.table_index is None else len(self.table_index)
        return self._pass_seconds(images)

    def _budget_done(self) -> str | None:
        cfg, st = self.cfg, self.state
        if cfg.max_images is not None and st.images_seen >= cfg.max_images:
            return "max_images"
        epochs = cfg.epochs
        if epochs is None and cfg.max_images is None and cfg.time_limit_min is None:
            epochs = DEFAULT_EPOCHS
        if epochs is not None and st.epoch >= epochs:
            return "epochs"
        return None

    def _loop(self, limit_s: float | None) -> str:
        cfg, st = self.cfg, self.state
        bs = cfg.batch_size
        order_epoch, order = -1, None
        acc: dict = {"t_start": st.train_seconds}
        step_time = None
        last_ckpt_t, last_ckpt_images = time.perf_counter(), st.images_seen
        next_eval = None
        if self.gt is not None:  # evaluate before the first step (unless a resumed run just did)
            done_here = bool(self.history.eval) and self.history.eval[-1]["images_seen"] == st.images_seen
            next_eval = st.images_seen + ((self.eval_every or 0) if done_here else 0)
        steps_this_run, images_this_run = 0, 0
        self._steady = [0, 0.0]  # images and seconds of this run's steps after the warm-up steps
        t_probe0, probe_images0 = time.perf_counter(), 0
        planned = cfg.resolved.get("planned_images") if cfg.resolved else None
        bar = tqdm(total=planned, initial=min(st.images_seen, planned or st.images_seen), unit="img",
                   desc="train", disable=not cfg.progress, dynamic_ncols=True)
        stopped_by = "epochs"
        # the final passes' time is kept free at the end of a time limit
        infer_s = None if limit_s is None else self._infer_seconds_per_image()
        if infer_s is not None and self.n > 10 * INFER_PROBE_IMAGES:  # worth saying on a large set
            print(f"{self._final_seconds() / 60:.1f} min is kept for the final pass over the {self.n} "
                  f"particles at the end of the time limit (the encoder reads {1 / infer_s:.0f} images/s here)",
                  flush=True)
        while True:
            done = self._budget_done()
            if done:
                stopped_by = done
                break
            stop = None
            if interrupt.requested():  # SIGINT / SIGTERM: stop between steps, outputs as at the end
                stop = "interrupted"
            elif limit_s is not None:
                now = time.perf_counter() - self.t0
                if now + (step_time or 0.0) + self._final_seconds() > limit_s:
                    stop = "time_limit"
            stop = self.group.agree_stop(stop)  # with torchrun: every rank stops at the same step
            if stop is not None:
                stopped_by = stop
                break
            if st.batch_in_epoch >= -(-len(self.train_positions) // bs):
                st.epoch += 1
                st.batch_in_epoch = 0
                continue
            if order_epoch != st.epoch:
                order, order_epoch = self._epoch_order(st.epoch), st.epoch
            pos = order[st.batch_in_epoch * bs:(st.batch_in_epoch + 1) * bs]
            if cfg.max_images is not None:
                pos = pos[:cfg.max_images - st.images_seen]
            if len(pos) < self.group.world:  # too few left to give every process an image
                if cfg.max_images is not None and st.images_seen + len(pos) >= cfg.max_images:
                    stopped_by = "max_images"
                    break
                st.batch_in_epoch = -(-len(self.train_positions) // bs)  # the epoch ends here
                continue
            if next_eval is not None and st.images_seen >= next_eval and self.eval_every is not None:
                self._evaluate(time.perf_counter() - self.t0)
                next_eval = st.images_seen + self.eval_every
            t_step = time.perf_counter()
            res, phase = self._step(self.group.shard(pos))
            memory.release()
            dt = time.perf_counter() - t_step
            if steps_this_run >= WARMUP_STEPS:
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
                self._steady[0] += len(pos)
                self._steady[1] += dt
            st.step += 1
            st.images_seen += len(pos)
            st.batch_in_epoch += 1
            st.train_seconds += dt
            steps_this_run += 1
            images_this_run += len(pos)
            if acc.get("images") and acc["phase"] != phase:  # one history entry never mixes phases
                self._log(acc, time.perf_counter() - self.t0)
            self._accumulate(acc, res, phase, len(pos))
            bar.update(len(pos))
            if steps_this_run == WARMUP_STEPS:
                t_probe0, probe_images0 = time.perf_counter(), images_this_run
            if not cfg.resolved and steps_this_run == WARMUP_STEPS + PROBE_STEPS and limit_s is not None:
                self._resolve_from_probe(limit_s, (images_this_run - probe_images0)
                                         / max(time.perf_counter() - t_probe0, 1e-9))
                bar.total = cfg.resolved["planned_images"]
            if st.step % cfg.log_every_steps == 0:
                entry = self._log(acc, time.perf_counter() - self.t0)
                bar.set_postfix(loss=f"{entry.recon:.4g}", r=f"{entry.radius_px:.0f}", phase=phase[:4])
                self._maybe_end_distillation(entry)
                if self.group.active:  # rank 0's decision, from its own shard's numbers
                    self.distill_images = self.group.from_main(self.distill_images)
            if cfg.pose_table and self.targets is not None and not cfg.resolved.get("hetero_done") \
                    and not self._skip_hetero \
                    and "hetero_at_images" in cfg.resolved and st.images_seen >= cfg.resolved["hetero_at_images"]:
                self._hetero(limit_s)
                if next_eval is not None:
                    next_eval = st.images_seen  # evaluate the refined poses at the next step
            if self._next_holdout is not None and st.images_seen >= self._next_holdout:
                self._score_holdout()
            ck_imgs = cfg.checkpoint_every_images
            if (ck_imgs is not None and st.images_seen - last_ckpt_images >= ck_imgs) or \
                    (time.perf_counter() - last_ckpt_t) / 60 >= cfg.checkpoint_every_minutes:
                self._checkpoint()
                last_ckpt_t, last_ckpt_images = time.perf_counter(), st.images_seen
        bar.close()
        if acc.get("images"):
            self._log(acc, time.perf_counter() - self.t0)
        if self.gt is not None and self.eval_every is not None and (
                not self.history.eval or self.history.eval[-1]["images_seen"] != st.images_seen):
            self._evaluate(time.perf_counter() - self.t0)
        if not cfg.resolved and stopped_by != "interrupted":  # stopped before the probe finished: fix
            # schedules as they were (an interrupted run leaves them open for its resumption)
            cfg.resolve_schedules(self.d, max(st.images_seen, 1))
        return stopped_by

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Training order of ``epoch``: all particles, or those outside the held-out set."""
        if not len(self.holdout):
            return self.data.epoch_order(self.cfg.seed, epoch)
        perm = np.random.default_rng([int(self.cfg.seed), int(epoch)]).permutation(len(self.train_positions))
        return self.train_positions[perm]

    def _score_holdout(self) -> dict | None:
        """The encoder's poses against the table on the held-out particles and on as many
        training particles (median rotation difference, deg; shift difference, px)."""
        if not len(self.holdout) or self.targets is None:
            return None
        cfg, st = self.cfg, self.state
        rng = np.random.default_rng([int(cfg.seed), 17])
        seen = np.sort(rng.choice(self.train_positions, size=min(len(self.holdout), len(self.train_positions)),
                                  replace=False))
        entry = {"images_seen": int(st.images_seen), "table": "refined" if self._table_final() else "search"}
        for name, pos in (("held_out", self.holdout), ("training", seen)):
            inf = infer_dataset(self.model, self.data, batch_size=max(cfg.batch_size, 256), positions=pos,
                                amp=self.amp)
            rot = geodesic_distance_deg(torch.as_tensor(inf.rots, dtype=torch.float64),
                                        torch.as_tensor(self.targets[0][pos], dtype=torch.float64))
            shift = np.linalg.norm(inf.shift_px - self.targets[1][pos], axis=1)
            entry[f"{name}_rotation_median_deg"] = round(float(rot.median()), 3)
            entry[f"{name}_shift_median_px"] = round(float(np.median(shift)), 4)
        self.model.train()
        self.history.holdout.append(entry)
        self._next_holdout = st.images_seen + self._holdout_interval()
        return entry

    def _holdout_interval(self) -> int:
        """Images between two scorings of the held-out particles: about ten per run."""
        planned = self.cfg.resolved.get("planned_images") if self.cfg.resolved else None
        return max(self.cfg.batch_size, (planned or 10 * self.n) // 10)

    def _warn(self, text: str) -> None:
        self.history.warnings.append(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def _final_warnings(self, rots: np.ndarray, encoder=None) -> None:
        """Say in the log (and history.json) when the result shows a known failure."""
        plan = view_planarity(torch.as_tensor(rots, dtype=torch.float64))
        if plan < PLANARITY_WARN and self.cfg.method != "known":
            self._warn(f"the view directions of the run's poses collapsed towards a great circle (planarity "
                       f"{plan:.2f}; 1 for views spread over the sphere): the spurious planar-symmetry minimum "
                       "of amortised training. The table method (the default, --method table) avoids it")
        if encoder is not None and self.history.holdout:
            last = self.history.holdout[-1]
            far = last["held_out_rotation_median_deg"]
            if far > ENCODER_TABLE_WARN_DEG:
                self._warn(f"the encoder's rotations are {far:.1f} deg (median) from the pose table on particles "
                           f"it did not train on ({last['training_rotation_median_deg']:.1f} deg on training "
                           "particles): use the table (poses.pkl, z.pkl) for this set, and infer --search for new "
                           "particles (--refine only corrects poses that are already close)")

    def _table_final(self) -> bool:
        """The pose targets are the run's refined table (not yet the search's poses)."""
        return bool(self.cfg.resolved.get("hetero_done"))

    def _hetero(self, limit_s: float | None) -> None:
        """Refine the pose targets against the conformation-dependent volume built from
        the encoder's current z (:func:`cryofire_nb.hetero.hetero_refine`); the voxel
        decoder is re-seeded with the fitted basis."""
        from ..hetero import HeteroRefineConfig, hetero_refine

        cfg, st = self.cfg, self.state
        t_start = time.perf_counter()
        idx = self.table_index  # the table's particles (None: all)
        pos = np.arange(self.n) if idx is None else idx
        inf = self._infer_parts(batch_size=max(cfg.batch_size, 256), known=self.targets, positions=idx,
                                amp=self.amp)
        budget = hard = None
        if limit_s is not None:  # a share of the time left before the final pass's
            final = self._pass_seconds(self.n) if self._infer_s is not None else 0.0  # one pass after it
            hard = max(limit_s - (t_start - self.t0) - final, 0.0)  # never past the final pass's time
            budget = cfg.hetero_time_fraction * hard
        before = None
        if self.gt is not None:
            before = gt_metrics(self.targets[0][pos], self.targets[1][pos], inf.z, self.gt, pos, self.d)
        print(f"heterogeneous refinement of the pose targets at {st.images_seen} images"
              + (f" (budget {budget / 60:.1f} min)" if budget is not None else ""), flush=True)
        hd = self._hartley_data()
        n_basis = cfg.n_basis if cfg.n_basis is not None else cfg.zdim
        def view_error(r, s):  # the median view error after every local round, in the event's stages
            m = gt_metrics(r.float().cpu().numpy(), s.float().cpu().numpy(), None, self.gt, pos, self.d)
            return {"view_error_median_deg": round(m.rotations.view.median_deg, 3)}

        monitor = view_error if self.gt is not None else None
        with interrupt.stage("heterogeneous refinement"):
            try:
                res = hetero_refine(hd, torch.as_tensor(self.targets[0][pos]),
                                    torch.as_tensor(self.targets[1][pos]), inf.z,
                                    HeteroRefineConfig.for_box(self.d, cfg.max_shift_px, n_components=n_basis,
                                                               global_search=cfg.hetero_global,
                                                               max_cycles=cfg.hetero_cycles, seed=cfg.seed),
                                    progress=cfg.progress and self.group.is_main, time_limit_s=budget,
                                    hard_limit_s=hard,
                                    monitor=monitor, group=self.group if self.group.active else None)
            except stopping.StageStopped:  # stopped part-way: the table stays as before; a resumed run refines
                print("heterogeneous refinement stopped part-way by a signal: the pose table is the one it started "
                      "from", flush=True)
                return
        rots, shifts = self.targets[0].copy(), self.targets[1].copy()
        rots[pos], shifts[pos] = res.rots.float().cpu().numpy(), res.shifts_px.float().cpu().numpy()
        self.targets = (rots, shifts)
        if n_basis > 0:  # the latent table: z of each particle read off its image through the basis
            z = res.coefficients[:, 1:].float().cpu().numpy()
            self.z_table = np.zeros((self.n, z.shape[1]), dtype=np.float32)  # rows outside the table: unused
            self.z_table[pos] = z
        grids = getattr(self.model.decoder, "grids", None)
        if grids is not None and tuple(res.basis.shape) == tuple(grids.shape):  # voxel decoder = the basis
            with torch.no_grad():
                grids.copy_(res.basis.to(grids) * (hd.norm_std / self.data.normalization.std))
            self.opt.state.pop(grids, None)  # Adam's moments belong to the old grids
        self._share_tables()
        cfg.resolved["hetero_done"] = True
        self._renderer = None
        if cfg.rendered_per_image > 0:
            self._measure_noise()
        self._next_holdout = st.images_seen
        seconds = time.perf_counter() - t_start
        event = {"images_seen": int(st.images_seen), "seconds": round(seconds, 1),
                 "stages": res.history, "config": res.config}
        if before is not None:
            after = gt_metrics(self.targets[0][pos], self.targets[1][pos],
                               inf.z if self.z_table is None else self.z_table[pos], self.gt, pos, self.d)
            vb, va = before.rotations.view.median_deg, after.rotations.view.median_deg
            event["view_error_median_deg"] = [vb, va]
            line = f"heterogeneous refinement: median view error {vb:.2f} -> {va:.2f} deg"
            cb, ca = before.conformation, after.conformation
            if cb is not None and ca is not None and cb.spearman_pc1_conf is not None:
                event["spearman_pc1"] = [cb.spearman_pc1_conf, ca.spearman_pc1_conf]
                line += f"; |Spearman(PC1, truth)| {abs(cb.spearman_pc1_conf):.3f} -> {abs(ca.spearman_pc1_conf):.3f}"
            if cb is not None and ca is not None and cb.confusion is not None:
                event["confusion_error"] = [cb.confusion.error_fraction, ca.confusion.error_fraction]
                line += f"; confusion {cb.confusion.error_fraction:.3f} -> {ca.confusion.error_fraction:.3f}"
            print(line, flush=True)
        self.history.events.append(event)
        print(f"heterogeneous refinement done in {seconds:.0f} s", flush=True)
        self.model.train()
        self._checkpoint()

    def _maybe_end_distillation(self, entry: LogEntry) -> None:
        """End the distillation once the encoder reproduces the targets (recorded in the
        resolved schedule, so a resumed run agrees)."""
        until = self.cfg.distill_until_deg
        if entry.phase != "distill" or until is None or entry.target_error_deg is None or self.cfg.pose_table:
            return
        if entry.target_error_deg < until and self.state.images_seen < self.distill_images:
            self.distill_images = self._distill_ended_at = self.state.images_seen
            if self.cfg.resolved:
                self.cfg.resolved["distill_images"] = self.state.images_seen
            print(f"distillation ended at {self.state.images_seen} images: the encoder's rotations are within "
                  f"{entry.target_error_deg:.1f} deg (median) of the targets", flush=True)

    def _resolve_from_probe(self, limit_s: float, images_per_s: float) -> None:
        """Time-only budget: planned images = rate x remaining time x 0.6 (steps slow down as
        the loss disc grows)."""
        remaining = max(limit_s - (time.perf_counter() - self.t0), 0.0)
        planned = self.group.from_main(int(self.state.images_seen + 0.6 * images_per_s * remaining))
        self.cfg.resolve_schedules(self.d, max(planned, 1))
        self._set_schedules()
        if self.gt is not None and self.eval_every is None:
            self.eval_every = max(self.cfg.batch_size, planned // 10)

    def _accumulate(self, acc: dict, res, phase: str, b: int) -> None:
        acc.setdefault("loss", []).append(float(res.loss.detach()))
        acc.setdefault("recon", []).append(float(res.recon.detach()))
        if res.kl is not None:
            acc.setdefault("kl", []).append(float(res.kl.detach()))
        if res.pose_loss is not None:
            acc.setdefault("pose_loss", []).append(float(res.pose_loss))
        acc.setdefault("mirrored", []).append(float(res.mirrored.float().mean()))
        acc.setdefault("rots", []).append(res.rots.detach().float().cpu())
        if phase == "distill":
            acc.setdefault("target_err", []).append(self._target_err)
        acc["phase"] = phase
        acc.setdefault("images", []).append(b)

    def _log(self, acc: dict, elapsed: float) -> LogEntry:
        st = self.state

        def mean(key):
            return float(np.mean(acc[key])) if acc.get(key) else None

        rate = sum(acc["images"]) / max(st.train_seconds - acc["t_start"], 1e-9)
        entry = LogEntry(st.step, st.images_seen, st.epoch, round(elapsed, 2), acc["phase"], mean("loss"),
                         mean("recon"), mean("kl"), mean("pose_loss"),
                         float(self.marching.radius_px(st.images_seen)), self.pose_only.active(st.images_seen),
                         mean("mirrored"), view_planarity(torch.cat(acc["rots"])), round(rate, 1),
                         float(torch.cat(acc["target_err"]).median()) if acc.get("target_err") else None)
        self.history.log(entry)
        acc.clear()
        acc["t_start"] = st.train_seconds
        return entry


def holdout_positions(n: int, seed: int, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Sorted positions of the particles held out from the encoder (a fixed function of
    ``n`` and ``seed``, so a resumed run holds out the same ones); none below 10 particles."""
    k = int(fraction * n) if n >= 10 else 0
    return np.sort(np.random.default_rng([int(seed), 91]).choice(n, size=k, replace=False)).astype(np.int64)


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training invocation (see the module docstring)."""
    if not cfg.command_line:
        cfg.command_line = " ".join(shlex.quote(a) for a in sys.argv)
    trainer = Trainer(cfg)
    try:
        result = trainer.run()
    except BaseException:
        trainer.group.close(wait=False)  # torchrun stops the other processes
        raise
    trainer.group.close()
    return result


