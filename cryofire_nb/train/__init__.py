"""Training, inference and outputs of cryoFIRE runs (``cryofire-nb train / infer``).

* :mod:`.config`: :class:`TrainConfig`, every setting, saved as ``config.yaml``;
* :mod:`.data`: particles (in memory or lazy), CTF, poses and ground truth, in batches;
* :mod:`.steps`: the objective in its three modes (amortised, known poses, distillation);
* :mod:`.trainer`: the loop (:func:`train`), time limits, checkpoints;
* :mod:`.checkpoint`, :mod:`.run_model` (``weights.pt``), :mod:`.infer`, :mod:`.outputs`,
  :mod:`.monitor` (history and metrics during training);
* :mod:`.presets`: :func:`simulated_train_config` for a simulator folder, small CPU presets.
"""

from .checkpoint import Checkpoint, TrainState, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Batch, GroundTruth, ParticleData
from .infer import Inferred, infer_dataset, search_poses
from .monitor import EvalEntry, History, LogEntry
from .outputs import RunOutputs, write_outputs
from .presets import ABINIT_CPU, KNOWN_POSE_CPU, simulated_train_config
from .run_model import CryoFireModel, ModelSpec, load_weights, save_weights
from .trainer import TrainResult, train

__all__ = [
    "ABINIT_CPU", "Batch", "Checkpoint", "CryoFireModel", "EvalEntry", "GroundTruth", "History", "Inferred", "KNOWN_POSE_CPU",
    "LogEntry",
    "ModelSpec", "ParticleData", "RunOutputs", "TrainConfig", "TrainResult", "TrainState", "infer_dataset",
    "load_checkpoint", "load_weights", "save_checkpoint", "save_weights", "search_poses", "simulated_train_config",
    "train",
    "write_outputs",
]
