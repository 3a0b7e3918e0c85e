"""The trained model of a run: encoder + decoder, and ``weights.pt``, the file that
``infer`` and ``eval-vol`` read (the configs needed to rebuild the modules, the
preprocessing and normalisation the encoder expects, the final loss-disc radius).

weights.pt (``torch.save`` of a dict, written atomically):

==================  ===========================================================
format              "cryofire_nb.weights/1"
spec                :class:`ModelSpec` as a dict
state_dict          ``CryoFireModel.state_dict()``
==================  ===========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..errors import InputError
from ..io._atomic import atomic_path
from ..model.decoder import HyperVolume, HyperVolumeConfig, VolumeDecoder, VoxelVolume, VoxelVolumeConfig
from ..model.encoder import Encoder, EncoderConfig
from ..model.preprocess import Normalization, PreprocessConfig

WEIGHTS_FORMAT = "cryofire_nb.weights/1"


@dataclass
class ModelSpec:
    """Everything besides the weights that a trained model needs."""

    d: int
    encoder: dict  # EncoderConfig.to_dict()
    decoder_kind: str  # "hypervolume" or "voxel"
    decoder: dict  # HyperVolumeConfig / VoxelVolumeConfig .to_dict()
    preprocess: dict  # PreprocessConfig.to_dict()
    normalization: dict  # Normalization.to_dict()
    known_poses: bool = False  # trained with fixed poses: the pose heads were never trained
    has_ctf: bool = False
    pixel_size_angstrom: float | None = None
    final_radius_px: float | None = None  # loss disc at the end of training
    images_seen: int = 0
    package_version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(**data)

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig.from_dict(self.encoder)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def norm(self) -> Normalization:
        return Normalization.from_dict(self.normalization)

    @property
    def zdim(self) -> int:
        return int(self.encoder["zdim"])


def build_decoder(kind: str, config: dict) -> VolumeDecoder:
    if kind == "hypervolume":
        return HyperVolume(HyperVolumeConfig.from_dict(config))
    if kind == "voxel":
        return VoxelVolume(VoxelVolumeConfig.from_dict(config))
    raise ValueError(f"unknown decoder kind {kind!r}")


class CryoFireModel(nn.Module):
    """Encoder (amortised pose and z) + decoder (Hartley values at 3-D frequencies)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec.encoder_config)
        self.decoder = build_decoder(spec.decoder_kind, spec.decoder)


def save_weights(path: str | Path, model: CryoFireModel) -> None:
    payload = {"format": WEIGHTS_FORMAT, "spec": model.spec.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    save_torch_file(path, payload)


class _WriteErrorRecorder:
    """A file wrapper that remembers the OSError of a failed write: torch.save reports a
    failed write (a full disk) as a RuntimeError without the errno."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def save_torch_file(path: str | Path, payload) -> None:
    """``torch.save`` atomically; a write that fails on the disk raises its OSError (so a
    full disk is reported as one, with the file's name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        rec = _WriteErrorRecorder(f)
        try:
            torch.save(payload, rec)
        except RuntimeError as err:
            if rec.error is None:
                raise
            raise OSError(rec.error.errno, rec.error.strerror or str(rec.error), str(path)) from err


def _numpy_globals() -> list:
    """numpy's array and scalar constructors, under the names numpy 1 and 2 write. Files
    written before checkpoints held tensors only keep numpy arrays; these rebuild data and
    nothing else, so they may pass the weights-only loader."""
    import numpy as np

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.ndarray, np.dtype, core._reconstruct, core.scalar]
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(core._reconstruct, f"{prefix}._reconstruct"), (core.scalar, f"{prefix}.scalar")]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    return allowed


def _torch_load(path: Path) -> dict:
    """``torch.load`` restricted to tensors, containers and numbers (``weights_only``):
    loading a weights or checkpoint file never runs code from it."""
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path_or_outdir: str | Path, device: str | torch.device = "cpu") -> CryoFireModel:
    """Rebuild the model of ``OUTDIR/weights.pt`` (or a weights file) on ``device``."""
    path = Path(path_or_outdir)
    if path.is_dir() or path.suffix != ".pt":
        path = path / "weights.pt"
    if not path.is_file():
        raise InputError(path, "weights file not found",
                         "pass the output folder of a finished `cryofire-nb train` run")
    try:
        payload = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise InputError(path, f"not a readable weights file ({err})", "pass weights.pt of a train run") from err
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise InputError(path, "not a cryofire_nb weights file", "pass weights.pt of a train run")
    model = CryoFireModel(ModelSpec.from_dict(payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
