"""``OUTDIR/checkpoint.pt``: everything needed to resume a run exactly.

A checkpoint holds the model and optimiser states, the counters (optimiser steps, images
seen, epoch and batch within the epoch), the resolved schedules, the random-number
generator states (the training generator used for z noise and sampling, and torch's
global CPU/CUDA states), the normalisation, the pose targets of a distillation phase,
the history so far and the settings of the run. Written atomically (temporary file,
then ``os.replace``), so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .run_model import _torch_load, save_torch_file

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
    save_torch_file(path, plain(payload))


def plain(obj):
    """``obj`` with numpy arrays as tensors, numpy scalars as Python numbers and paths as
    strings: what the weights-only loader reads without allowing any other type."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found", "pass OUTDIR/checkpoint.pt of an earlier run")
    try:
        payload = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - an unreadable file is the user's input
        raise InputError(path, f"not a readable checkpoint ({err})", "pass OUTDIR/checkpoint.pt") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a cryofire_nb checkpoint", "pass OUTDIR/checkpoint.pt of a train run")
    targets = payload["targets"]  # tensors since checkpoints are weights-only; numpy arrays before
    if targets is not None:
        targets = tuple(t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in targets)
    return Checkpoint(payload["config"], payload["spec"], payload["model_state"], payload["optimizer_state"],
                      TrainState(**payload["state"]), payload["generator_state"], payload["torch_rng_state"],
                      payload["cuda_rng_state"], payload["history"], targets, payload.get("extra", {}))
