"""Simulator: an atomic model with two or more states -> a particle dataset with ground truth.

Image formation, one piece per step (each callable on its own):
density (:mod:`.density`: atoms -> band-limited Fourier density, direct atom projection)
-> projection -> CTF -> shift -> real space -> noise -> contrast (:mod:`.imaging`);
conformations in :mod:`.atoms`; settings in :mod:`.config`; the dataset writer in
:mod:`.dataset` (``cryofire-nb simulate CONFIG.yaml -o DIR``).
"""

from .atoms import (AtomicModel, Conformations, radius_of_gyration, read_atoms, read_conformations,
                    write_interpolated_structure)
from .config import CtfConfig, DensityConfig, HeterogeneityConfig, SimConfig, ViewConfig
from .dataset import (ParticleParams, SimulatedDataset, SimulationPlan, plan_dataset, render, render_clean,
                      sample_params, simulate_dataset)
from .density import (Scattering, bfactor_from_resolution, fourier_volume_from_atoms, project_atoms,
                      scattering_from_elements, scattering_from_weights, volume_from_atoms)
from .imaging import (add_noise, apply_ctf, clean_particles, ctf_on_grid, invert_contrast, noise_images, particles,
                      shift_to_stored, signal_variance, to_real)

__all__ = [
    "AtomicModel", "Conformations", "CtfConfig", "DensityConfig", "HeterogeneityConfig", "ParticleParams",
    "Scattering", "SimConfig", "SimulatedDataset", "SimulationPlan", "ViewConfig", "add_noise", "apply_ctf",
    "bfactor_from_resolution", "clean_particles", "ctf_on_grid", "fourier_volume_from_atoms", "invert_contrast",
    "noise_images", "particles", "plan_dataset", "project_atoms", "radius_of_gyration", "read_atoms",
    "read_conformations", "render",
    "render_clean", "sample_params", "scattering_from_elements", "scattering_from_weights", "shift_to_stored",
    "signal_variance", "simulate_dataset", "to_real", "volume_from_atoms", "write_interpolated_structure",
]
