"""The cryoFIRE model: preprocessing, encoder (amortised pose and conformation),
decoders (hypervolume, voxel), losses (symmetric, KL) and training schedules."""

from .decoder import (HyperVolume, HyperVolumeConfig, VolumeDecoder, VoxelVolume,
                      VoxelVolumeConfig, lattice_3d)
from .encoder import Encoder, EncoderConfig, EncoderOutput, Pose, sample_z
from .losses import SliceLoss, SymmetricLoss, kl_divergence, slice_loss, symmetric_loss
from .preprocess import (Normalization, Preprocessed, PreprocessConfig, compute_normalization,
                         mirror_hartley, mirror_real, preprocess, real_space_window, to_hartley)
from .schedule import FrequencyMarching, PoseOnlyPhase

__all__ = [
    "Encoder", "EncoderConfig", "EncoderOutput", "FrequencyMarching", "HyperVolume",
    "HyperVolumeConfig", "Normalization", "Pose", "PoseOnlyPhase", "PreprocessConfig",
    "Preprocessed", "SliceLoss", "SymmetricLoss", "VolumeDecoder", "VoxelVolume",
    "VoxelVolumeConfig", "compute_normalization", "kl_divergence", "lattice_3d",
    "mirror_hartley", "mirror_real", "preprocess", "real_space_window", "sample_z",
    "slice_loss", "symmetric_loss", "to_hartley",
]
