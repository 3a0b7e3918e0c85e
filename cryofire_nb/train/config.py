"""``TrainConfig``: every setting of a training run, validated on construction and saved
with the run as ``OUTDIR/config.yaml`` (with the package version, the seed, the command
line and the encoder variant).

Budgets: ``epochs`` or ``max_images`` (images seen, each image counted once per pass)
and/or ``time_limit_min`` (wall clock of this invocation). With no budget at all, 20
epochs. Schedules are counted in images seen:

* pose-only phase (decoder sees Gaussian noise instead of z): ``pose_only_images``, or
  ``pose_only_fraction`` of the planned images when it is None;
* frequency marching (loss disc from ``march_start_px`` up to d/2, ``march_step_px``
  every ``march_images_per_step`` images): when None, chosen so that the disc reaches
  d/2 after ``march_end_fraction`` of the planned images. The paper used 100 k images
  per pixel at D = 128; a CPU budget of minutes never gets past 3 px with that;
* pose table (``method="table"``, the default without known poses, or ``distill_poses``,
  with ``hetero_refine``): the voxel pose search first (``init_search``), then after
  ``hetero_at_fraction`` of the planned images the targets are refined against the
  conformation-dependent volume (:mod:`cryofire_nb.hetero`, a basis of 1 + ``n_basis``
  volumes, z read off each image by least squares), then kept: from there on the
  decoder trains with the table's poses and z, the encoder is distilled towards both,
  and the tables are the run's ``poses.pkl`` and ``z.pkl`` (the encoder's own
  predictions go to ``encoder_poses.pkl`` / ``encoder_z.pkl``); no pose-only phase, full
  loss disc from the start;
* otherwise pose distillation (``--no-hetero-refine``): at most ``distill_images``,
  or ``distill_fraction`` of the planned images; it ends earlier at the first logging step
  where the median angle between the encoder's rotations and the targets is below
  ``distill_until_deg``.

"Planned images" is ``epochs * N`` or ``max_images``; with only a time limit it is
estimated from the throughput of the first steps (:meth:`TrainConfig.resolve_schedules`),
and the resolved numbers are what the saved config and checkpoint record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .. import __version__
from ..errors import InputError

METHODS = ("auto", "table", "amortised", "known")
ENCODERS = ("paper", "released")
DECODERS = ("hypervolume", "voxel")
DEFAULT_EPOCHS = 20
VOXEL_LR = 1e-2  # Adam moves each voxel by ~lr per step; Hartley values are O(1) after normalisation
# Settings a resumed run (--load) takes from its checkpoint rather than the command line.
MODEL_FIELDS = ("method", "preset", "n_basis", "invert_contrast", "zdim", "variational", "kl_weight", "encoder", "encoder_hidden",
                "encoder_channels", "n_pose_hypotheses", "max_shift_px", "decoder", "decoder_hidden",
                "decoder_layers", "pe_dim", "lr", "decoder_lr", "seed", "pose_only_images",
                "pose_only_fraction", "march_start_px", "march_step_px", "march_images_per_step",
                "march_end_fraction", "init_search", "distill_poses", "distill_images", "distill_fraction",
                "distill_until_deg", "search_starts", "hetero_refine", "hetero_at_fraction", "hetero_global", "hetero_cycles",
                "z_loss_weight", "quarter_turns", "rendered_per_image", "pose_loss_weight", "shift_loss_weight",
                "resolved")


@dataclass
class TrainConfig:
    """Settings of one ``cryofire-nb train`` run (paths are strings, as given)."""

    particles: str
    outdir: str
    # data
    ctf: str | None = None
    poses: str | None = None  # known poses: the encoder predicts z only
    ind: str | None = None
    datadir: str | None = None
    lazy: bool = False
    half: bool = False  # particles kept in memory in float16 (the stack and the search's Hartley rows)
    invert_contrast: bool = True
    # method: "table" (pose search, pose and latent tables refined against a volume basis,
    # encoder distilled from them), "amortised" (the published recipe alone) or "known"
    # (given poses); "auto" -> "known" with --poses, else "table"
    method: str = "auto"
    # model (None: from the preset for the method, box and device, cryofire_nb.train.presets)
    preset: str | None = None  # name of the preset that filled the None fields (set at run time)
    zdim: int | None = None
    n_basis: int | None = None  # conformational components of the pose table's volume basis
    variational: bool = False
    kl_weight: float | None = None  # None -> 1 / zdim (as cryoDRGN's beta)
    encoder: str | None = None
    encoder_hidden: int | None = None
    encoder_channels: list[int] | None = None  # None -> the variant's default widths
    n_pose_hypotheses: int = 1
    max_shift_px: float | None = None  # None -> d / 8
    decoder: str | None = None
    decoder_hidden: int = 256
    decoder_layers: int = 3
    pe_dim: int | None = None  # None -> d / 2 (paper)
    # optimisation
    batch_size: int | None = None
    lr: float | None = None
    decoder_lr: float | None = None  # None -> lr (hypervolume) or VOXEL_LR (voxel grid values)
    seed: int = 0
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when torch sees one)
    amp: bool | None = None  # None -> bf16 autocast on cuda, never on cpu
    # budget
    epochs: int | None = None
    max_images: int | None = None
    time_limit_min: float | None = None
    # schedules (images seen)
    pose_only_images: int | None = None
    pose_only_fraction: float = 0.4
    march_start_px: float = 3.0
    march_step_px: float = 1.0
    march_images_per_step: int | None = None
    march_end_fraction: float = 0.6
    # pose distillation (targets from the pose search of the table method, or distill_poses)
    init_search: bool = False
    distill_poses: str | None = None
    distill_images: int | None = None
    distill_fraction: float = 0.6  # the encoder needs many steps to learn poses (measured on the demo)
    distill_until_deg: float | None = 10.0  # end early once the encoder is this close to the targets
    search_time_fraction: float = 0.4  # of the time limit given to run_abinit
    # EM starts of the consensus search, the best fit to a sample of the particles kept
    # (AbinitConfig.n_starts); under a time limit, fewer when they would not fit
    search_starts: int = 4
    # pose table (cryofire_nb.hetero): with pose targets, refine them against the
    # conformation-dependent volume and keep them as the run's poses for the whole run
    hetero_refine: bool = True
    hetero_at_fraction: float = 0.15  # of the planned images: z is learnt from the search poses first
    hetero_time_fraction: float = 0.65  # of the time left when the refinement starts (time budgets)
    hetero_global: bool = True  # repeat the global search per z bin first (measured: fixes the consensus search's
    # gross errors on far conformations at d=32; on a 16-px synthetic set it did harm, 6.9 -> 22 deg)
    # under a time limit, further refinement cycles (global stage + local schedule) in the time
    # the refinement's share leaves (HeteroRefineConfig.max_cycles; compared with one cycle in
    # bench/results/default_pipeline_*_continuous_d32_one_cycle.md)
    hetero_cycles: int = 3
    z_loss_weight: float = 1.0  # pose table: encoder z regressed onto the latent table
    # pose table: once the table is refined, the encoder learns it from images turned by a
    # random number of quarter turns in their plane, the targets turned to match (exact).
    # Measured (20 CPU minutes, d=32 continuous set, median view error of the encoder on the
    # training set / on 10,000 unseen particles): off 22.6 / 28.9 deg, on 34.4 / 36.5 deg: it
    # closes the generalisation gap but the encoder is further from the table in that budget
    quarter_turns: bool = False
    # pose table: once the table is refined, each batch of particles is joined by this many
    # images per particle rendered from the run's decoder at random labels, through the data's
    # CTFs with its measured noise (cryofire_nb.train.rendered); the encoder learns their exact
    # labels as well, so it cannot learn the training particles by heart. 0: particles only.
    # The default follows bench/results/encoder_rendered_*.md (bench/encoder_rendered.py)
    rendered_per_image: float = 1.0
    pose_loss_weight: float = 1.0  # chordal distance ||R - R*||_F^2
    shift_loss_weight: float = 0.1  # shift MSE in px^2
    # ground truth for metrics logged during training
    gt_poses: str | None = None
    gt_conf: str | None = None
    gt_labels: str | None = None
    eval_every_images: int | None = None  # None -> about 10 evaluations per run
    eval_n_images: int = 1000
    # logging and checkpoints
    log_every_steps: int = 10
    checkpoint_every_images: int | None = None
    checkpoint_every_minutes: float = 10.0
    load: str | None = None
    progress: bool = True
    # recorded with the run
    command_line: str = ""
    package_version: str = __version__
    resolved: dict = field(default_factory=dict)  # schedule values fixed at run time

    def __post_init__(self):
        def bad(problem: str, fix: str) -> None:
            raise InputError(None, f"train settings: {problem}", fix)

        if self.method not in METHODS:
            bad(f"unknown method {self.method!r}", f"use one of {METHODS[1:]}")
        if self.method == "auto":
            self.method = "known" if self.poses is not None else "table"
        if self.method == "known" and self.poses is None:
            bad("the known-pose method needs --poses", "pass --poses POSES.pkl or another --method")
        if self.method in ("table", "amortised") and self.poses is not None:
            bad(f"--poses (known poses) cannot be combined with the {self.method} method",
                "drop --poses for ab initio training, or drop --method")
        if self.init_search and self.method == "known":
            bad("--poses (known poses) cannot be combined with --init-search", "drop --poses for ab initio training")
        if self.init_search and self.method == "amortised":
            bad("--init-search runs the table method, not the amortised one", "pass only one of them")
        if self.method == "table" and self.distill_poses is None and self.poses is None:
            self.init_search = True  # the table starts from the voxel pose search
        if self.encoder is not None and self.encoder not in ENCODERS:
            bad(f"unknown encoder {self.encoder!r}", f"use one of {ENCODERS}")
        if self.decoder is not None and self.decoder not in DECODERS:
            bad(f"unknown decoder {self.decoder!r}", f"use one of {DECODERS}")
        if self.zdim is not None and self.zdim < 0:
            bad(f"--zdim must be >= 0, got {self.zdim}", "pass e.g. --zdim 8")
        if self.n_basis is not None and self.n_basis < 0:
            bad(f"--n-basis must be >= 0, got {self.n_basis}", "pass e.g. --n-basis 2")
        if self.variational and self.zdim == 0:
            bad("a variational encoder needs --zdim > 0", "set --zdim or drop --variational")
        if (self.batch_size is not None and self.batch_size < 1) or (self.lr is not None and not self.lr > 0) \
                or (self.decoder_lr is not None and not self.decoder_lr > 0):
            bad("--batch-size must be >= 1 and the learning rate > 0", "fix the values")
        if self.max_shift_px is not None and not self.max_shift_px >= 0:
            bad(f"--max-shift must be >= 0 pixels, got {self.max_shift_px}", "pass e.g. --max-shift 8")
        if self.epochs is not None and self.max_images is not None:
            bad("--epochs and --max-images both given", "pass only one of them")
        for name in ("epochs", "max_images"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {v}", "pass a positive number")
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            bad(f"--time-limit must be > 0 minutes, got {self.time_limit_min}", "pass e.g. --time-limit 5")
        if not 0 <= self.rendered_per_image <= 8:
            bad(f"rendered images per particle image must lie in [0, 8], got {self.rendered_per_image}",
                "pass e.g. --rendered 1")
        if not (isinstance(self.search_starts, int) and 1 <= self.search_starts <= 20):
            bad(f"consensus search starts must be an integer in [1, 20], got {self.search_starts}",
                "pass e.g. --search-starts 4")
        if not (isinstance(self.hetero_cycles, int) and 0 <= self.hetero_cycles <= 20):
            bad(f"further refinement cycles must be an integer in [0, 20], got {self.hetero_cycles}",
                "pass e.g. --refine-cycles 3")
        for name in ("pose_only_fraction", "march_end_fraction", "distill_fraction", "search_time_fraction",
                     "hetero_at_fraction", "hetero_time_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                bad(f"{name} must lie in [0, 1], got {getattr(self, name)}", "pass a fraction")
        if self.gt_conf is not None and self.gt_labels is not None:
            bad("--gt-conf and --gt-labels both given", "pass the one that matches the dataset")
        if self.poses is not None and self.distill_poses is not None:
            bad("--poses (known poses) cannot be combined with --init-search / pose distillation",
                "drop --poses for ab initio training")
        if self.init_search and self.distill_poses is not None:
            bad("--init-search and --distill-poses both give pose targets", "pass only one")
        if self.n_pose_hypotheses < 1 or self.log_every_steps < 1 or self.eval_n_images < 1:
            bad("n_pose_hypotheses, log_every_steps and eval_n_images must be >= 1", "fix the values")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            bad(f"unknown device {self.device!r}", "use cpu, cuda, cuda:N or auto")

    # ------------------------------------------------------------------ derived

    @property
    def known_poses(self) -> bool:
        return self.poses is not None

    @property
    def distills(self) -> bool:
        return self.init_search or self.distill_poses is not None

    @property
    def pose_table(self) -> bool:
        """Pose targets are refined (:mod:`cryofire_nb.hetero`) and stay the run's poses:
        the encoder learns z from them and is distilled towards them throughout."""
        return self.distills and self.hetero_refine

    @property
    def outdir_path(self) -> Path:
        return Path(self.outdir)

    def resolved_decoder_lr(self) -> float:
        if self.decoder_lr is not None:
            return self.decoder_lr
        return VOXEL_LR if self.decoder == "voxel" else self.lr

    def resolved_kl_weight(self) -> float:
        return self.kl_weight if self.kl_weight is not None else 1.0 / max(self.zdim, 1)

    def planned_images(self, n_particles: int) -> int | None:
        """Images the run plans to see, or None when only a time limit bounds it."""
        if self.max_images is not None:
            return int(self.max_images)
        if self.epochs is not None:
            return int(self.epochs) * n_particles
        if self.time_limit_min is None:
            return DEFAULT_EPOCHS * n_particles
        return None

    def resolve_schedules(self, d: int, planned_images: int) -> dict:
        """Fix the schedule lengths (images) from the planned images; explicit values win.
        Returns and stores ``resolved`` (saved with the run)."""
        max_r = d / 2
        if self.pose_only_images is not None:
            pose_only = int(self.pose_only_images)
        elif self.known_poses or self.pose_table:
            pose_only = 0
        else:
            pose_only = int(self.pose_only_fraction * planned_images)
        if self.march_images_per_step is not None:
            per_step = int(self.march_images_per_step)
        else:
            n_steps = max(1.0, (max_r - self.march_start_px) / max(self.march_step_px, 1e-9))
            per_step = max(1, int(self.march_end_fraction * planned_images / n_steps))
        distill = 0
        if self.pose_table:
            distill = int(planned_images)
        elif self.distills:
            distill = int(self.distill_images if self.distill_images is not None
                          else self.distill_fraction * planned_images)
        self.resolved = {"planned_images": int(planned_images), "pose_only_images": pose_only,
                         "march_images_per_step": per_step, "distill_images": distill}
        if self.pose_table:
            self.resolved["hetero_at_images"] = int(self.hetero_at_fraction * planned_images)
        return self.resolved

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_yaml(self, extra: dict | None = None) -> str:
        """YAML text of the settings plus ``extra`` (encoder/decoder configs, pixel size, ...)."""
        out = {"cryofire_nb_version": __version__, "seed": self.seed, "command_line": self.command_line,
               "encoder_variant": self.encoder, "train": self.to_dict()}
        if extra:
            out.update(extra)
        return yaml.safe_dump(out, sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text())
        return cls.from_dict(data["train"])
