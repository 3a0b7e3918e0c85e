"""``OUTDIR/checkpoint.pt``: everything needed to resume a run exactly.

A checkpoint holds the model and optimiser states, the counters (optimiser steps, images
seen, epoch and batch within the epoch), the resolved schedules, the random-number
generator states (the training generator used for z noise and sampling, and torch's
global CPU/CUDA states), the normalisation, the pose targets of a distillation phase,
the history so far and the settings of the run. Written atomically (temporary file,
then ``os.replace``), so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io._atomic import atomic_path

CHECKPOINT_FORMAT = "cryofire_nb.checkpoint/1"


@dataclass
class TrainState:
    """Counters of a run (all cumulative over resumes)."""

    step: int = 0  # optimiser steps
    images_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # next batch to take in ``epoch``
    train_seconds: float = 0.0  # time spent in the training loop, all invocations


@dataclass
class Checkpoint:
    config: dict  # TrainConfig.to_dict()
    spec: dict  # ModelSpec.to_dict()
    model_state: dict
    optimizer_state: dict
    state: TrainState
    generator_state: torch.Tensor
    torch_rng_state: torch.Tensor
    cuda_rng_state: list | None
    history: dict
    targets: tuple[np.ndarray, np.ndarray] | None = None  # distillation (rots, shift_px)
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "config": ckpt.config, "spec": ckpt.spec,
               "model_state": ckpt.model_state, "optimizer_state": ckpt.optimizer_state,
               "state": vars(ckpt.state).copy(), "generator_state": ckpt.generator_state,
               "torch_rng_state": ckpt.torch_rng_state, "cuda_rng_state": ckpt.cuda_rng_state,
               "history": ckpt.history, "targets": ckpt.targets, "extra": ckpt.extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found", "pass OUTDIR/checkpoint.pt of an earlier run")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - an unreadable file is the user's input
        raise InputError(path, f"not a readable checkpoint ({err})", "pass OUTDIR/checkpoint.pt") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a cryofire_nb checkpoint", "pass OUTDIR/checkpoint.pt of a train run")
    return Checkpoint(payload["config"], payload["spec"], payload["model_state"], payload["optimizer_state"],
                      TrainState(**payload["state"]), payload["generator_state"], payload["torch_rng_state"],
                      payload["cuda_rng_state"], payload["history"], payload["targets"], payload.get("extra", {}))
