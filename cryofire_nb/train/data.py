"""Training data: particle images (in memory or lazy), CTF, known poses and ground truth,
checked against each other before anything is written, and served in batches.

A batch holds the encoder input (windowed, sign-corrected, normalised real-space images)
and the loss target (symmetric Hartley images, same normalisation), plus the CTF on the
Hartley lattice. The real-space centre is pixel ``d // 2``; the Hartley lattice is the
odd (d+1)^2 lattice of :mod:`cryofire_nb.lattice`.

Per-particle files (CTF, poses, ground truth) may describe the whole stack (cryoDRGN's
convention with ``--ind``) or, when ``--ind`` is given, exactly the kept particles.

Data order: epoch ``e`` visits the particles in the permutation drawn from
``numpy.random.default_rng([seed, e])``, so a run resumed at (epoch, batch) continues
exactly where it stopped.

Dimension letters: N particles (after --ind), b batch, d box, m = d + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..hartley_data import MEMORY_FRACTION, available_memory_bytes
from ..io import CtfParams, ImageSource, read_ctf, read_indices, read_poses
from ..io.pkl import load_pickles
from ..validate import check_ctf_matches_stack
from ..lattice import Lattice
from ..model.preprocess import Normalization, PreprocessConfig, compute_normalization, preprocess

Tensor = torch.Tensor
HALF_BLOCK = 4096  # images converted to float16 at a time


class Batch(NamedTuple):
    index: Tensor  # (b,) long, particle positions 0..N-1 (after --ind)
    real: Tensor  # (b, d, d) real space, encoder input
    hartley: Tensor  # (b, m, m) symmetric Hartley, loss target
    ctf: Tensor | None  # (b, m, m) CTF on the lattice


@dataclass
class GroundTruth:
    """Truth for metrics (all for the kept particles, in order)."""

    rots: np.ndarray  # (N, 3, 3)
    trans_frac: np.ndarray | None  # (N, 2) fraction of the box
    conf: np.ndarray | None = None  # (N,) continuous
    labels: np.ndarray | None = None  # (N,) int


def _subset_rows(path: str | Path, arr: np.ndarray, n_total: int, ind: np.ndarray | None, what: str) -> np.ndarray:
    """Rows of a per-particle array for the kept particles: full-stack files are indexed
    by ``ind``; a file with exactly ``len(ind)`` rows is taken as already filtered."""
    n = arr.shape[0]
    if n == n_total:
        return arr if ind is None else arr[ind]
    if ind is not None and n == len(ind):
        return arr
    kept = "" if ind is None else f" (or {len(ind)}, the particles kept by --ind)"
    raise InputError(path, f"{what} has {n} entries but the particle stack has {n_total} images{kept}",
                     "it must describe the same particles, in the same order, as the particle stack")


def _read_vector(path: str | Path, what: str) -> np.ndarray:
    arr = np.asarray(load_pickles(path)[0])
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(path, f"{what} has shape {arr.shape}, expected (n,)", f"pass the simulator's {what} file")
    return arr


def _device_copy(images: np.ndarray, device: torch.device, max_fraction: float = 0.4) -> Tensor | None:
    """The stack on ``device`` when that is a GPU with room for it (at most ``max_fraction``
    of its free memory), else None: batches are then gathered on the GPU instead of being
    indexed and copied from host memory at every step."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes > max_fraction * free:
        return None
    return torch.as_tensor(images).to(device)


class ParticleData:
    """Particles of one stack (optionally a subset) with their CTF, ready for the model."""

    def __init__(self, particles: str | Path, *, ctf: str | Path | None = None, ind: str | Path | None = None,
                 datadir: str | Path | None = None, lazy: bool = False,
                 preprocess_config: PreprocessConfig | None = None,
                 normalization: Normalization | None = None, device: str | torch.device = "cpu",
                 half: bool = False):
        self.source = ImageSource(particles, datadir=datadir, lazy=True)
        self.n_total = len(self.source)
        self.d = self.source.d
        if self.n_total == 0:
            raise InputError(particles, "holds no particle images", "pass a non-empty particle stack")
        if self.d % 2:
            raise InputError(particles, f"box size {self.d} is odd",
                             "downsample (cryofire-nb downsample -D EVEN) or crop to an even box")
        self.ind = None if ind is None else read_indices(ind, self.n_total)
        if self.ind is not None and self.ind.size == 0:
            raise InputError(ind, "keeps no particles", "pass a non-empty index file")
        self.ctf_table = None
        if ctf is not None:
            table = read_ctf(ctf).table
            self.ctf_table = _subset_rows(ctf, table, self.n_total, self.ind, "CTF file").astype(np.float32)
            check_ctf_matches_stack(self.ctf_table, ctf, self.d, self.source.pixel_size_angstrom, particles)
        self.preprocess_config = preprocess_config or PreprocessConfig()
        self.device = torch.device(device)
        self.lattice = Lattice(self.d, device=self.device)
        self._memory = None
        self._memory_device = None  # the in-memory stack copied to the GPU when it fits (fast batches)
        if not lazy:
            keep = np.arange(self.n_total) if self.ind is None else self.ind
            need = keep.size * self.d * self.d * (2 if half else 4)
            free = available_memory_bytes(torch.device("cpu"))
            if need > MEMORY_FRACTION * free:
                raise InputError(particles, f"{keep.size} images of {self.d} px need {need / 2 ** 30:.1f} GiB "
                                            f"in memory and {free / 2 ** 30:.1f} GiB is free",
                                 "pass --lazy to read the particles in batches from disk")
            self._memory = self._read_kept(keep, half, particles)  # (N, d, d)
            self._memory_device = _device_copy(self._memory, self.device)
        # the CTF is evaluated where the batch lives (float64, as on the CPU)
        self._ctf_device = None if self.ctf_table is None else torch.as_tensor(self.ctf_table, dtype=torch.float64,
                                                                                device=self.device)
        self._freqs64 = self.lattice.coords_xy.to(torch.float64)
        self.normalization = normalization or self._compute_normalization()

    # ------------------------------------------------------------------ basics

    @property
    def in_memory(self) -> bool:
        """Whether the images were read into memory (False with ``lazy=True``)."""
        return self._memory is not None

    @property
    def source_path(self) -> Path:
        return self.source.path

    def __len__(self) -> int:
        return self.n_total if self.ind is None else int(self.ind.size)

    @property
    def pixel_size_angstrom(self) -> float | None:
        """Pixel size of these images: from the CTF table (Apix * D / d) or the stack."""
        if self.ctf_table is not None:
            t = self.ctf_table[0]
            return float(t[1] * t[0] / self.d)
        return self.source.pixel_size_angstrom

    def _read_kept(self, keep: np.ndarray, half: bool, particles) -> np.ndarray:
        """The kept images in memory: float32, or float16 with ``half`` (read in blocks, so
        no float32 copy of the whole stack is made). float16 keeps 11 significant bits and
        values below 65,504 in magnitude: a stack outside that range is an input error."""
        if not half:
            return self.source.images(keep)
        out = np.empty((keep.size, self.d, self.d), dtype=np.float16)
        for i in range(0, keep.size, HALF_BLOCK):
            block = self.source.images(keep[i:i + HALF_BLOCK])
            if np.abs(block).max(initial=0.0) >= np.finfo(np.float16).max:
                raise InputError(particles, "holds values beyond the float16 range (65,504)",
                                 "drop --half, or normalise the stack")
            out[i:i + len(block)] = block
        return out

    @property
    def half(self) -> bool:
        """The images are kept in memory in float16."""
        return self._memory is not None and self._memory.dtype == np.float16

    def images(self, positions) -> np.ndarray:
        """Raw images (b, d, d) float32 at positions 0..N-1 (after --ind)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self._memory is not None:
            return self._memory[pos].astype(np.float32, copy=False)
        return self.source.images(pos if self.ind is None else self.ind[pos])

    def _compute_normalization(self) -> Normalization:
        n = len(self)
        pos = np.unique(np.linspace(0, n - 1, min(n, 1000)).round().astype(np.int64))
        imgs = torch.as_tensor(self.images(pos))
        return compute_normalization(imgs, self.preprocess_config)

    # ------------------------------------------------------------------ batches

    def ctf_on_lattice(self, positions) -> Tensor | None:
        """CTF (b, m, m) on the Hartley lattice, or None without a CTF file."""
        if self.ctf_table is None:
            return None
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64).reshape(-1), device=self.device)
        params = CtfParams(self._ctf_device[pos])
        c = params.evaluate(self._freqs64, self.d)  # (b, n)
        m = self.d + 1
        return c.reshape(-1, m, m).to(torch.float32)

    def batch(self, positions) -> Batch:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if self._memory_device is not None:
            raw = self._memory_device[torch.as_tensor(pos, device=self.device)].float()
        else:
            raw = torch.as_tensor(self.images(pos)).to(self.device)
        pre = preprocess(raw, self.preprocess_config, self.normalization)
        return Batch(torch.as_tensor(pos, device=self.device), pre.real, pre.hartley, self.ctf_on_lattice(pos))

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """Permutation (N,) of the particles for ``epoch``."""
        return np.random.default_rng([int(seed), int(epoch)]).permutation(len(self))

    def batches_in_epoch(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def iter_in_order(self, batch_size: int):
        """Yield batches over all particles in order (inference)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))

    # ------------------------------------------------------------------ per-particle files

    def read_poses_for(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and shifts in pixels (N, 2) of a pose file, for the kept particles."""
        poses = read_poses(path)
        rots = _subset_rows(path, poses.rots, self.n_total, self.ind, "pose file")
        shift = _subset_rows(path, poses.shift_px(self.d), self.n_total, self.ind, "pose file")
        return rots.astype(np.float32), shift.astype(np.float32)

    def read_ground_truth(self, poses: str | Path | None, conf: str | Path | None,
                          labels: str | Path | None) -> GroundTruth | None:
        if poses is None:
            if conf is not None or labels is not None:
                raise InputError(conf or labels, "ground-truth conformations need --gt-poses too",
                                 "pass --gt-poses with the true poses")
            return None
        p = read_poses(poses)
        rots = _subset_rows(poses, p.rots, self.n_total, self.ind, "ground-truth pose file")
        trans = None if p.trans_frac is None else _subset_rows(poses, p.trans_frac, self.n_total, self.ind,
                                                               "ground-truth pose file")
        gt = GroundTruth(rots.astype(np.float32), trans)
        if conf is not None:
            gt.conf = _subset_rows(conf, _read_vector(conf, "conf.pkl"), self.n_total, self.ind,
                                   "ground-truth conformation file").astype(np.float64)
        if labels is not None:
            gt.labels = _subset_rows(labels, _read_vector(labels, "labels.pkl"), self.n_total, self.ind,
                                     "ground-truth label file").astype(np.int64)
        return gt
