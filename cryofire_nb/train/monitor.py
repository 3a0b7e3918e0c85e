"""What a run logs: training losses per logging step and, when ground truth is given,
pose and conformation metrics on a fixed subset of particles (via
:func:`cryofire_nb.metrics.evaluate_run`). Saved as ``OUTDIR/history.json``.

Metric definitions (see :mod:`cryofire_nb.metrics`): view error = angle between view
directions after aligning the predicted rotations to the truth (global rotation and
hand); translation error in pixels of the box d; |Spearman(PC1 of z, truth)| for a
continuous conformation, confusion error for discrete states.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..io._atomic import atomic_path
from ..metrics import RunMetrics, evaluate_run
from .data import GroundTruth


@dataclass
class LogEntry:
    """Means over the steps since the previous entry."""

    step: int
    images_seen: int
    epoch: int
    elapsed_s: float
    phase: str  # "amortised", "known_poses" or "distill"
    loss: float  # total
    recon: float  # masked Hartley MSE (normalised units)
    kl: float | None
    pose_loss: float | None
    radius_px: float
    pose_only: bool
    frac_mirrored: float  # share of images whose mirrored path won
    view_planarity: float  # 1 = views spread over the sphere, 0 = on one great circle
    images_per_s: float
    target_error_deg: float | None = None  # distillation: median angle, encoder rotation vs target


@dataclass
class EvalEntry:
    step: int
    images_seen: int
    elapsed_s: float
    n_images: int
    median_view_error_deg: float
    mean_view_error_deg: float
    median_trans_error_px: float | None
    spearman_pc1: float | None  # |Spearman(PC1, truth)| (continuous) or vs state index
    confusion_error: float | None  # discrete states


@dataclass
class History:
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    final: dict | None = None  # metrics of the final poses (all particles) when truth is given
    events: list[dict] = field(default_factory=list)  # e.g. the heterogeneous pose refinement
    # the encoder on particles it never trains on, against the pose table (no truth needed)
    holdout: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def log(self, entry: LogEntry) -> None:
        self.train.append(_finite(asdict(entry)))

    def log_eval(self, entry: EvalEntry) -> None:
        self.eval.append(_finite(asdict(entry)))

    def to_dict(self) -> dict:
        return {"train": self.train, "eval": self.eval, "final": self.final, "events": self.events,
                "holdout": self.holdout, "warnings": self.warnings}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(list(data.get("train", [])), list(data.get("eval", [])), data.get("final"),
                   list(data.get("events", [])), list(data.get("holdout", [])), list(data.get("warnings", [])))

    def write(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def gt_metrics(rots: np.ndarray, shift_px: np.ndarray | None, z: np.ndarray | None, gt: GroundTruth,
               positions: np.ndarray, d: int) -> RunMetrics:
    """:func:`evaluate_run` of predictions for ``positions`` against the truth there."""
    trans = None if shift_px is None else shift_px / d
    gt_trans = None if gt.trans_frac is None else gt.trans_frac[positions]
    use_z = z if z is not None and z.shape[1] > 0 else None
    return evaluate_run(rots, trans, gt.rots[positions], gt_trans, d, z=use_z,
                        gt_conf=None if gt.conf is None or use_z is None else gt.conf[positions],
                        gt_labels=None if gt.labels is None or use_z is None else gt.labels[positions])


def eval_entry(m: RunMetrics, step: int, images_seen: int, elapsed_s: float) -> EvalEntry:
    c = m.conformation
    spear = None
    conf_err = None
    if c is not None:
        spear = c.spearman_pc1_conf if c.spearman_pc1_conf is not None else c.spearman_pc1_labels
        conf_err = None if c.confusion is None else float(c.confusion.error_fraction)
    return EvalEntry(step, images_seen, round(elapsed_s, 2), m.n_images, float(m.rotations.view.median_deg),
                     float(m.rotations.view.mean_deg),
                     None if m.translations is None else float(m.translations.median_px),
                     None if spear is None else float(spear), conf_err)
