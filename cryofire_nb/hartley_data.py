"""Particle images prepared for comparison on the symmetric Hartley lattice.

Preprocessing as in cryoDRGN/cryoFIRE: optional contrast inversion (default on: typical
RELION/cryoSPARC stacks have white particles), a soft circular real-space window
(1 inside 0.85 of the half box, linear ramp to 0 at 0.99), centred Hartley transform,
symmetrised to the (d+1)^2 lattice, divided by one global standard deviation.

Dimension letters: N particles, b batch, d box, n = (d+1)^2 lattice points.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from . import memory, stopping
from .fft import ht2_center, symmetrize_ht
from .errors import InputError
from .io.records import CtfParams
from .lattice import Lattice
from .model.preprocess import real_space_window
from .validate import check_ctf_table

Tensor = torch.Tensor


def images_to_hartley(images: Tensor, invert: bool = True, window: bool = True) -> Tensor:
    """Real images (b, d, d) -> flattened symmetric Hartley (b, (d+1)^2), not normalised."""
    x = images.to(torch.float32)
    if invert:
        x = -x
    if window:
        x = x * real_space_window(x.shape[-1], dtype=x.dtype, device=x.device)  # the encoder's window
    return symmetrize_ht(ht2_center(x)).reshape(x.shape[0], -1)


# Images whose Hartley values are normalised by one standard deviation: the first
# NORM_SAMPLE particles (all of a smaller set), so that the value does not depend on N.
NORM_SAMPLE = 10000
NORM_BLOCK = 1000  # images per block of the float64 sums behind that deviation
# The resident arrays may use at most this fraction of the free memory.
MEMORY_FRACTION = 0.7


def available_memory_bytes(device: torch.device) -> int:
    """Memory free for new arrays on ``device``: the GPU's free memory, or the host's
    ``MemAvailable`` (free plus reclaimable cache)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class HartleyData:
    """Particles on the Hartley lattice, normalised, with their CTF on the lattice, served
    as rows ``(x (b, n), ctf (b, n))`` by :meth:`rows`.

    Resident (the default): every image's row is computed once and kept, N n values in
    float32, or in float16 with ``half`` (half the memory; the rounding, 5e-4 of a value,
    is far below the noise of a particle's Fourier component). Streaming (``lazy=True``):
    nothing of size N is kept; each call to :meth:`rows` reads its images (from disk when
    the image source is lazy) and transforms them, so memory is bounded by the batch. In
    both, the CTF rows are evaluated from the table when read (about 50 us per particle at
    d = 32, against milliseconds of search per particle) rather than stored per pixel.
    """

    def __init__(self, lattice: Lattice, norm_std: float, pixel_size_angstrom: float | None, n: int, *,
                 x: Tensor | None = None, get_images=None, ctf_table: Tensor | None = None, invert: bool = True):
        self.lattice = lattice
        self.norm_std = float(norm_std)
        self.pixel_size_angstrom = pixel_size_angstrom
        self._n = int(n)
        self._x = x
        self._get, self._ctf_table, self._invert = get_images, ctf_table, invert
        self._index: np.ndarray | None = None  # a view's positions in the set it was taken from

    # ------------------------------------------------------------------ basics

    @property
    def n_particles(self) -> int:
        return self._n

    @property
    def streaming(self) -> bool:
        return self._x is None

    @property
    def device(self) -> torch.device:
        return self.lattice.coords.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def x(self) -> Tensor:
        """All rows (N, n) of a resident set."""
        self._need_resident("x")
        return self._x if self._index is None else self.rows(slice(None))[0]

    @property
    def ctf(self) -> Tensor:
        """All CTF rows (N, n) of a resident set (ones without a CTF)."""
        self._need_resident("ctf")
        return self.rows(slice(None))[1]

    def _need_resident(self, what: str) -> None:
        if self._x is None:
            raise RuntimeError(f"a streaming HartleyData keeps no {what} of all particles; read rows(...)")

    # ------------------------------------------------------------------ rows

    def rows(self, sel) -> tuple[Tensor, Tensor]:
        """Hartley rows and CTF rows (b, n) of the particles ``sel`` (a slice, or positions
        as a tensor or an array)."""
        if self._index is not None:  # a view: positions in the set it shares its rows with
            sel = self._index[self._positions(sel)]
        pos = self._positions(sel)
        if self._x is not None:
            x = self._x[sel if isinstance(sel, slice) else torch.as_tensor(pos, device=self._x.device)].float()
        else:
            x = self._hartley(pos)
        ctf = self._ctf_rows(pos)
        return x, (torch.ones_like(x) if ctf is None else ctf)

    def view(self, index) -> "HartleyData":
        """The particles ``index`` (positions in this set) as a set of their own that shares
        this one's rows or image source: nothing is copied."""
        index = self._positions(index)
        if len(index) and (index.min() < 0 or index.max() >= self._n):
            raise IndexError(f"positions outside 0..{self._n - 1}")
        out = copy.copy(self)
        out._index = index if self._index is None else self._index[index]
        out._n = len(index)
        return out

    def _positions(self, sel) -> np.ndarray:
        if isinstance(sel, slice):
            return np.arange(self._n)[sel]
        if isinstance(sel, Tensor):
            sel = sel.cpu().numpy()
        return np.asarray(sel, dtype=np.int64).reshape(-1)

    def _hartley(self, pos: np.ndarray) -> Tensor:
        memory.release()  # the last batch's temporaries (see cryofire_nb.memory)
        raw = torch.as_tensor(np.asarray(self._get(pos))).to(self.device)
        return images_to_hartley(raw, invert=self._invert) / self.norm_std

    def _ctf_rows(self, pos: np.ndarray) -> Tensor | None:
        """CTF rows (b, n) evaluated from the table, or None without a CTF."""
        if self._ctf_table is None:
            return None
        params = CtfParams(self._ctf_table[torch.as_tensor(pos, device=self.device)])
        return params.evaluate(self.lattice.coords_xy.double(), self.lattice.d).float()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_images(cls, images, ctf_table=None, invert: bool = True, chunk: int = 2048,
                    device=None, progress=None, lazy: bool = False, source=None) -> "HartleyData":
        """``images``: array-like (N, d, d) or an object with ``images(indices)`` (such as
        :class:`~cryofire_nb.train.data.ParticleData`); ``ctf_table`` (N, 9) as in
        cryoDRGN's ctf.pkl or None. ``lazy``: stream rows instead of keeping them (see the
        class). A resident set that would not fit in ``MEMORY_FRACTION`` of the free memory
        is an InputError that names ``--lazy``; ``source`` (a path) is named in it."""
        get = images.images if hasattr(images, "images") else (lambda idx: images[idx])
        n = len(images)
        first = np.asarray(get(np.arange(min(1, n))))
        d = first.shape[-1]
        lat = Lattice(d, device=device)
        table = None
        apix = None
        if ctf_table is not None:
            check_ctf_table(ctf_table, None)  # a zero pixel size or voltage would give NaN or zero CTFs
            table = torch.as_tensor(np.asarray(ctf_table), dtype=torch.float64, device=lat.coords.device)
            apix = float(table[0, 1] * table[0, 0] / d)
        m = min(n, NORM_SAMPLE)
        total = total_sq = 0.0
        for i in range(0, m, NORM_BLOCK):  # fixed blocks: the same value whatever ``chunk`` is
            h = images_to_hartley(torch.as_tensor(np.asarray(get(np.arange(i, min(m, i + NORM_BLOCK))))),
                                  invert=invert).double()
            total += float(h.sum())
            total_sq += float((h * h).sum())
        count = m * (d + 1) ** 2
        std = float(np.sqrt(max(total_sq - total * total / count, 0.0) / max(count - 1, 1)))
        out = cls(lat, std, apix, n, get_images=get, ctf_table=table, invert=invert)
        return out if lazy else out.resident(progress=progress, chunk=chunk, source=source)

    def resident(self, progress=None, chunk: int = 2048, source=None, half: bool = False) -> "HartleyData":
        """This set (or view) with every row computed once and kept (in float16 with
        ``half``), in chunks of ``chunk`` images (``progress`` wraps their loop). A set that
        would not fit in ``MEMORY_FRACTION`` of the free memory is an InputError that names
        ``--lazy``; ``source`` (a path) is named in it."""
        if self._x is not None:
            return self
        n, d, device = self._n, self.lattice.d, self.device
        dtype = torch.float16 if half else torch.float32
        need = n * (d + 1) ** 2 * (2 if half else 4)
        free = available_memory_bytes(device)
        if need > MEMORY_FRACTION * free:
            raise InputError(source, f"{n} particles at {d} px need {need / 2 ** 30:.1f} GiB on the Hartley "
                                     f"lattice and {free / 2 ** 30:.1f} GiB is free",
                             "pass --lazy to read the particles in batches from disk")
        x = torch.empty(n, (d + 1) ** 2, dtype=dtype, device=device)
        it = range(0, n, chunk)
        for i in (progress(it) if progress else it):
            stopping.check()
            pos = np.arange(i, min(n, i + chunk))
            real = pos if self._index is None else self._index[pos]
            x[i:i + len(pos)] = self._hartley(real)
        table = self._ctf_table
        if table is not None and self._index is not None:
            table = table[torch.as_tensor(self._index, device=table.device)]
        return HartleyData(self.lattice, self.norm_std, self.pixel_size_angstrom, n, x=x, ctf_table=table,
                           invert=self._invert)
