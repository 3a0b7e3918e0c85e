"""Final outputs of a run, each written atomically into OUTDIR:

=====================  ==================================================================
poses.pkl              ``(rots (N,3,3), trans (N,2))`` float32, cryoDRGN format, trans =
                       shift_px / d; from one encoder pass over all particles with the
                       mirror decision (known-pose runs: the given poses)
z.pkl                  float32 (N, k) encoder means (of the winning path)
weights.pt             model weights and the spec to rebuild it (:mod:`.run_model`)
volume.mrc             real-space decoder volume (d, d, d) [z, y, x] at the per-dimension
                       median z, voxel size in the header
history.json           losses per logging step, metrics against ground truth when given
training_curve.png     :func:`cryofire_nb.viz_train.save_training_curve`
config.yaml            the settings (:class:`~cryofire_nb.train.config.TrainConfig`)
=====================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import Latents, Poses, write_latents, write_mrc, write_poses
from ..io._atomic import atomic_path
from ..viz_train import save_training_curve
from .config import TrainConfig
from .infer import Inferred
from .monitor import History
from .run_model import CryoFireModel, save_weights


# Every file a run may write in OUTDIR: a folder holding any of them holds a run's results.
RUN_FILES = ("poses.pkl", "z.pkl", "weights.pt", "volume.mrc", "history.json", "training_curve.png",
             "config.yaml", "checkpoint.pt", "encoder_poses.pkl", "encoder_z.pkl", "init_search_poses.pkl")


@dataclass(frozen=True)
class RunOutputs:
    outdir: Path
    poses: Path
    z: Path
    weights: Path
    volume: Path
    history: Path
    training_curve: Path
    config: Path


def write_config(outdir: Path, cfg: TrainConfig, extra: dict | None = None) -> Path:
    path = outdir / "config.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(cfg.to_yaml(extra))
    return path


@torch.no_grad()
def median_z_volume(model: CryoFireModel, z: np.ndarray) -> np.ndarray:
    """Real-space decoder volume (d, d, d) at the per-dimension median of ``z`` (N, k)."""
    dev = next(model.parameters()).device
    zmed = None
    if model.spec.zdim > 0 and len(z):
        zmed = torch.as_tensor(np.median(z, axis=0), dtype=torch.float32, device=dev)
    return model.decoder.eval_volume(zmed).float().cpu().numpy()


def write_outputs(outdir: Path, cfg: TrainConfig, model: CryoFireModel, inferred: Inferred, history: History,
                  config_extra: dict | None = None) -> RunOutputs:
    d = model.spec.d
    paths = RunOutputs(outdir, outdir / "poses.pkl", outdir / "z.pkl", outdir / "weights.pt",
                       outdir / "volume.mrc", outdir / "history.json", outdir / "training_curve.png",
                       outdir / "config.yaml")
    write_poses(paths.poses, Poses.from_shift_px(inferred.rots, inferred.shift_px, d))
    write_latents(paths.z, Latents(inferred.z.reshape(len(inferred.z), -1)))
    save_weights(paths.weights, model)
    write_mrc(paths.volume, median_z_volume(model, inferred.z), model.spec.pixel_size_angstrom)
    history.write(paths.history)
    title = f"{outdir.name}: encoder {cfg.encoder}, decoder {cfg.decoder}, zdim {cfg.zdim}"
    save_training_curve(history.to_dict(), paths.training_curve, title)
    write_config(outdir, cfg, config_extra)
    return paths
