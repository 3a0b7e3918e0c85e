"""Simulate a particle dataset with full ground truth from a :class:`SimConfig`.

1. :func:`plan_dataset` reads the states, draws every particle's parameters (rotation,
   shift, CTF, conformation) in one stream ``default_rng([seed, PARAMS_STREAM])`` and
   measures the signal variance on the clean particles ``0 .. snr_reference_particles - 1``
   to set the noise level ``sqrt(var_signal / snr)``.
2. :func:`render` makes the stored images of any set of particle indices (noise keyed
   by index), so any chunking or order gives the same dataset.
3. :func:`simulate_dataset` writes, atomically (a temporary folder renamed at the end):

   =====================  ==========================================================
   particles.mrcs         (N, d, d) float32, pixel size in the header
   particles.star         RELION 3.1 (optics + particles: CTF, Euler angles, OriginXAngst)
   poses.pkl              (rots (N,3,3), trans (N,2) = shift_px / d), cryoDRGN format
   ctf.pkl                float32 (N, 9) (absent when ``ctf: null``)
   conf.pkl / labels.pkl  ground truth: float32 (N,) path position t, or int64 (N,) state
   vol_state_XX.mrc       one volume per state
   vol_path_XX.mrc        continuous only: volumes at evenly spaced t (see sim_info.yaml)
   sim_config.yaml        the config (absolute structure paths) with the package version
   sim_info.yaml          noise level, signal variance, volume files and their t values
   =====================  ==========================================================

Dimension letters: N particles, b batch, d box, n atoms.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .. import __version__
from ..errors import InputError
from ..io import (CtfParams, Poses, image_names_for_stack, open_stack_writer, write_ctf, write_mrc, write_poses,
                  write_relion31_star)
from ..rotations import quaternion_to_matrix
from .atoms import Conformations, read_conformations
from .config import SimConfig
from .density import Scattering, scattering_from_elements, volume_from_atoms
from .imaging import add_noise, clean_particles, invert_contrast, signal_variance

PARAMS_STREAM = 0


@dataclass(frozen=True)
class ParticleParams:
    """Ground-truth parameters of N particles, in the dtype they are stored with."""

    rots: np.ndarray  # (N, 3, 3) float32
    shift_px: np.ndarray  # (N, 2) float32, stored shift t (particle = projection moved by -t)
    ctf_table: np.ndarray | None  # (N, 9) float32 cryoDRGN CTF table
    conf_t: np.ndarray | None  # (N,) float32 path position (continuous)
    labels: np.ndarray | None  # (N,) int64 state (discrete)

    def __len__(self) -> int:
        return self.rots.shape[0]


@dataclass(frozen=True)
class SimulationPlan:
    """Everything needed to render any particle of the dataset."""

    config: SimConfig
    conformations: Conformations
    scattering: Scattering
    params: ParticleParams
    signal_variance: float  # of the clean, CTF-affected images (reference subset)
    noise_std: float  # 0 when snr is None


@dataclass(frozen=True)
class SimulatedDataset:
    """What :func:`simulate_dataset` wrote."""

    out_dir: Path
    n_particles: int
    signal_variance: float
    noise_std: float
    path_t: tuple[float, ...]  # t of vol_path_XX.mrc (empty for discrete data)
    seconds: float


# --------------------------------------------------------------------------- parameters


def sample_rotations(rng: np.random.Generator, n: int, views) -> np.ndarray:
    """Rotations (n, 3, 3) float64: uniform (Haar), or preferred orientation (see ViewConfig)."""
    q = rng.standard_normal((n, 4))
    rots = quaternion_to_matrix(q / np.linalg.norm(q, axis=1, keepdims=True)).numpy()  # (n, 3, 3)
    if views.distribution == "uniform":
        return rots
    preferred = rng.random(n) < views.fraction  # (n,)
    u = np.asarray(views.direction, dtype=np.float64)
    u /= np.linalg.norm(u)
    e1 = np.cross(u, [1.0, 0, 0] if abs(u[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    g = rng.standard_normal((n, 2)) * np.deg2rad(views.spread_deg)  # tangent-plane offsets (radians)
    tilt = np.linalg.norm(g, axis=1)[:, None]  # (n, 1)
    tangent = (g[:, :1] * e1 + g[:, 1:] * e2) / np.maximum(tilt, 1e-12)  # (n, 3)
    view = np.cos(tilt) * u + np.sin(tilt) * tangent  # (n, 3) view direction = third row of R
    helper = np.where(np.abs(view[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    a = np.cross(view, helper)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(view, a)
    psi = rng.uniform(0, 2 * np.pi, n)[:, None]  # in-plane angle
    r1 = np.cos(psi) * a + np.sin(psi) * b
    r2 = np.cross(view, r1)  # rows r1, r2, view: right-handed (r1 x r2 = view)
    pref_rots = np.stack([r1, r2, view], axis=1)
    return np.where(preferred[:, None, None], pref_rots, rots)


def sample_params(config: SimConfig, n_states: int) -> ParticleParams:
    """Draw all per-particle parameters from ``default_rng([seed, PARAMS_STREAM])``."""
    rng = np.random.default_rng([config.seed, PARAMS_STREAM])
    n = config.n_particles
    rots = sample_rotations(rng, n, config.views).astype(np.float32)
    shift = rng.uniform(-config.max_shift_px, config.max_shift_px, (n, 2)).astype(np.float32)
    table = None
    if config.ctf is not None:
        c = config.ctf
        dfu = rng.uniform(*c.defocus_u_angstrom, n)
        dfv = dfu - rng.uniform(0.0, c.astigmatism_angstrom, n)
        angle = rng.uniform(0.0, 180.0, n)
        table = CtfParams.from_columns(image_size=config.d, pixel_size_angstrom=config.pixel_size_angstrom,
                                       defocus_u_angstrom=dfu, defocus_v_angstrom=dfv, defocus_angle_deg=angle,
                                       voltage_kv=c.voltage_kv, cs_mm=c.cs_mm, amplitude_contrast=c.amplitude_contrast,
                                       phase_shift_deg=c.phase_shift_deg).table
    het = config.heterogeneity
    conf_t = labels = None
    if het.kind == "continuous":
        conf_t = rng.uniform(0.0, 1.0, n).astype(np.float32)
    else:
        w = np.ones(n_states) if het.weights is None else np.asarray(het.weights, dtype=np.float64)
        labels = rng.choice(n_states, size=n, p=w / w.sum()).astype(np.int64)
    return ParticleParams(rots, shift, table, conf_t, labels)


def particle_coords(plan: SimulationPlan, indices) -> np.ndarray:
    """Atom coordinates (b, n, 3) of particles ``indices``."""
    p, confs = plan.params, plan.conformations
    if p.conf_t is not None:
        return confs.along_path(p.conf_t[indices].astype(np.float64))
    return confs.of_labels(p.labels[indices])


def _check_fits_box(config: SimConfig, confs: Conformations) -> None:
    """Atoms (plus the largest shift) must stay inside the box: images are periodic."""
    radius = float(np.linalg.norm(confs.states_angstrom, axis=-1).max())  # interpolations stay inside
    half_box = 0.5 * config.d * config.pixel_size_angstrom
    if radius + config.max_shift_px * config.pixel_size_angstrom >= half_box:
        raise InputError(config.source, f"atoms reach {radius:.1f} A from the origin but half the box is "
                         f"{half_box:.1f} A ({config.d} px of {config.pixel_size_angstrom} A)",
                         "centre the structures, or use a larger box or pixel size")


# --------------------------------------------------------------------------- rendering


def render_clean(plan: SimulationPlan, indices) -> np.ndarray:
    """Noise-free, un-inverted particles (b, d, d) float32 for particle ``indices``."""
    cfg, p = plan.config, plan.params
    indices = np.asarray(indices, dtype=np.int64)
    ctf = None if p.ctf_table is None else CtfParams(p.ctf_table[indices])
    ctf_bfactor = 0.0 if cfg.ctf is None else cfg.ctf.bfactor_angstrom2
    return clean_particles(particle_coords(plan, indices), plan.scattering, p.rots[indices].astype(np.float64),
                           p.shift_px[indices].astype(np.float64), ctf, cfg.d, cfg.pixel_size_angstrom,
                           cfg.density.effective_bfactor_angstrom2, ctf_bfactor)


def render(plan: SimulationPlan, indices) -> np.ndarray:
    """Stored particles (b, d, d) float32 for ``indices``: clean -> noise -> inversion."""
    indices = np.asarray(indices, dtype=np.int64)
    noisy = add_noise(render_clean(plan, indices), plan.noise_std, indices, plan.config.seed)
    return invert_contrast(noisy, plan.config.invert_contrast)


def plan_dataset(config: SimConfig, chunk_size: int = 256) -> SimulationPlan:
    """Read the states, draw the parameters and set the noise level."""
    confs = read_conformations(config.structures)
    _check_fits_box(config, confs)
    scattering = scattering_from_elements(confs.elements, config.density.scattering)
    params = sample_params(config, confs.n_states)
    plan = SimulationPlan(config, confs, scattering, params, 0.0, 0.0)
    if config.snr is None:
        return plan
    n_ref = min(config.n_particles, config.snr_reference_particles)
    ref = np.concatenate([render_clean(plan, np.arange(lo, min(lo + chunk_size, n_ref)))
                          for lo in range(0, n_ref, chunk_size)])
    var = signal_variance(ref)
    return SimulationPlan(config, confs, scattering, params, var, float(np.sqrt(var / config.snr)))


# --------------------------------------------------------------------------- writing


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise InputError(out_dir, "output folder exists and is not empty", "choose a new folder or pass --overwrite")


@contextlib.contextmanager
def _atomic_dir(out_dir: Path, overwrite: bool):
    """Yield a temporary folder beside ``out_dir``; on success it becomes ``out_dir``."""
    _check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        old = None
        if out_dir.exists() and any(out_dir.iterdir()):
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)  # replaces an empty folder too
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_umask(folder: Path) -> None:
    """Temporary files and folders are private (0600 / 0700); give the results the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_volumes(plan: SimulationPlan, folder: Path) -> tuple[list[dict], tuple[float, ...]]:
    cfg, confs = plan.config, plan.conformations
    bfac, apix = cfg.density.effective_bfactor_angstrom2, cfg.pixel_size_angstrom
    files = []
    for k, path in enumerate(cfg.structures):
        vol = volume_from_atoms(confs.states_angstrom[k], plan.scattering, cfg.d, apix, bfac).numpy()
        write_mrc(folder / f"vol_state_{k:02d}.mrc", vol, apix)
        files.append({"file": f"vol_state_{k:02d}.mrc", "state": k, "structure": path})
    n_path = cfg.heterogeneity.n_path_volumes if cfg.heterogeneity.kind == "continuous" else 0
    path_t = tuple(float(t) for t in np.linspace(0.0, 1.0, n_path)) if n_path else ()
    for j, t in enumerate(path_t):
        vol = volume_from_atoms(confs.along_path([t])[0], plan.scattering, cfg.d, apix, bfac).numpy()
        write_mrc(folder / f"vol_path_{j:02d}.mrc", vol, apix)
        files.append({"file": f"vol_path_{j:02d}.mrc", "t": t})
    return files, path_t


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def simulate_dataset(config: SimConfig, out_dir: str | Path, chunk_size: int = 256, overwrite: bool = False,
                     progress: bool = True) -> SimulatedDataset:
    """Simulate ``config`` into ``out_dir`` (created; must be new or empty unless ``overwrite``)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)  # before the expensive part
    plan = plan_dataset(config, chunk_size)
    cfg, p = plan.config, plan.params
    n, d = cfg.n_particles, cfg.d
    with _atomic_dir(out_dir, overwrite) as tmp:
        with open_stack_writer(tmp / "particles.mrcs", n, d, cfg.pixel_size_angstrom) as stack:
            for lo in tqdm(range(0, n, chunk_size), desc="simulate", unit="chunk", disable=not progress):
                stack.write(lo, render(plan, np.arange(lo, min(lo + chunk_size, n))))
        poses = Poses.from_shift_px(p.rots, p.shift_px, d)
        ctf = None if p.ctf_table is None else CtfParams(p.ctf_table)
        write_relion31_star(tmp / "particles.star", image_names_for_stack("particles.mrcs", n), poses=poses, ctf=ctf,
                            pixel_size_angstrom=cfg.pixel_size_angstrom, image_size=d)
        write_poses(tmp / "poses.pkl", poses)
        if ctf is not None:
            write_ctf(tmp / "ctf.pkl", ctf)
        if p.conf_t is not None:
            _pickle(tmp / "conf.pkl", p.conf_t)
        else:
            _pickle(tmp / "labels.pkl", p.labels)
        volumes, path_t = _write_volumes(plan, tmp)
        (tmp / "sim_config.yaml").write_text(cfg.to_yaml(__version__))
        seconds = time.perf_counter() - start
        info = {"cryofire_nb_version": __version__, "seed": cfg.seed, "n_particles": n,
                "signal_variance": plan.signal_variance, "noise_std": plan.noise_std,
                "snr": cfg.snr, "snr_reference_particles": min(n, cfg.snr_reference_particles),
                "density_bfactor_angstrom2": cfg.density.effective_bfactor_angstrom2,
                "structures": [{"path": s, "sha256": _sha256(s)} for s in cfg.structures],
                "volumes": volumes, "seconds": round(seconds, 2)}
        (tmp / "sim_info.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return SimulatedDataset(out_dir, n, plan.signal_variance, plan.noise_std, path_t, seconds)
