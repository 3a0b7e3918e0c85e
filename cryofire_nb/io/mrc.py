"""MRC/MRCS files: particle stacks, single images and volumes.

Layout (CCP4/MRC 2014): a 1024-byte header, an optional extended header, then the data
indexed ``[section, row, column]``. We always present the data as a 3-D array:

* a particle stack ``.mrcs`` reads as ``(n, d, d)`` (n images, rows = y, columns = x);
* a single 2-D image reads as ``(1, d, d)``;
* a volume ``.mrc`` reads as ``(d, d, d)`` indexed ``[z, y, x]`` (the project convention).

All arrays are real space. Pixel (voxel) size comes from the header as
``cella.x / mx`` in Angstrom; a header pixel size of 0 (common for files written by
scripts) means *unknown* and reads as ``None``, not as an error.

Writers set the voxel size, mark ``.mrcs`` files as image stacks (space group 0) and
``.mrc`` 3-D arrays as volumes (space group 1), and are atomic (temporary file in the
same folder, then ``os.replace``). :func:`open_stack_writer` writes a stack chunk by
chunk through a memory map, for outputs larger than RAM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mrcfile
import mrcfile.utils
import numpy as np

from ..errors import InputError
from ._atomic import atomic_path

HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcHeaderInfo:
    """What the header of one MRC file says about its data block."""

    path: Path
    shape: tuple[int, int, int]  # (n_sections, ny, nx); a 2-D image has n_sections 1
    dtype: np.dtype  # on-disk dtype (mode 2 -> float32, mode 12 -> float16, ...)
    pixel_size_angstrom: float | None  # None when the header says 0
    data_offset: int  # bytes before the data block (header + extended header)


@dataclass(frozen=True)
class MrcData:
    """An MRC file read into memory (or memory-mapped)."""

    data: np.ndarray  # (n, ny, nx) real space; float32 unless memory-mapped
    pixel_size_angstrom: float | None


def _pixel_size_from_header(header) -> float | None:
    mx = int(header.mx)
    cella_x = float(header.cella.x)
    if mx <= 0 or not np.isfinite(cella_x) or cella_x <= 0:
        return None
    return cella_x / mx


@contextlib.contextmanager
def _quiet_mrcfile() -> Iterator[None]:
    # Permissive reading warns about a missing map ID / machine stamp (files written by
    # old tools, e.g. EMPIAR-10076); we check shape and size ourselves instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def read_mrc_header(path: str | Path) -> MrcHeaderInfo:
    """Read and check the header of ``path`` without touching the data.

    Raises :class:`InputError` if the file is missing, is not an MRC file, has an
    unsupported mode (complex data) or is shorter than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        with _quiet_mrcfile(), mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
            header = mrc.header
            nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
            mode = int(header.mode)
            offset = HEADER_BYTES + int(header.nsymbt)
            pixel_size = _pixel_size_from_header(header)
            try:
                dtype = mrcfile.utils.data_dtype_from_header(header)
            except ValueError:
                dtype = None
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the MRC header ({err})", "check that this is an MRC/MRCS file") from err
    if dtype is None or min(nx, ny, nz) <= 0:
        raise InputError(path, f"not a valid MRC file (mode {mode}, size {nx}x{ny}x{nz})",
                         "check that this is an MRC/MRCS file and that it was copied completely")
    if np.dtype(dtype).kind == "c":
        raise InputError(path, f"complex data (MRC mode {mode}) is not supported", "provide real-space images")
    expected = offset + nx * ny * nz * np.dtype(dtype).itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise InputError(path, f"file is truncated: {actual} bytes, header promises {expected}",
                         "re-copy or re-extract the file")
    return MrcHeaderInfo(path, (nz, ny, nx), np.dtype(dtype), pixel_size, offset)


def open_mrc_memmap(path: str | Path) -> np.ndarray:
    """Memory-map the data of ``path`` read-only, shape ``(n, ny, nx)``, on-disk dtype.

    Opened with ``mrcfile.mmap``; the returned ``np.memmap`` stays valid after the
    ``mrcfile`` object is closed (it keeps its own mapping). Convert slices with
    ``.astype(np.float32)``.
    """
    info = read_mrc_header(path)
    with _quiet_mrcfile(), mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        data = mrc.data
    if data is None or data.size != int(np.prod(info.shape)):
        raise InputError(path, "could not memory-map the data block the header describes",
                         "check that the file is a complete MRC file")
    return data.reshape(info.shape)


def read_mrc(path: str | Path, mmap: bool = False) -> MrcData:
    """Read an MRC/MRCS file: data ``(n, ny, nx)`` (a 2-D image gives ``(1, ny, nx)``).

    ``mmap=False`` loads the data as float32. ``mmap=True`` returns a read-only memory
    map in the on-disk dtype (float32 for the usual mode 2) that reads on demand.
    """
    info = read_mrc_header(path)
    data = open_mrc_memmap(path)
    if not mmap:
        data = np.array(data, dtype=np.float32)
    return MrcData(data, info.pixel_size_angstrom)


def _prepare_header(mrc, is_stack: bool, ndim: int, pixel_size_angstrom: float | None) -> None:
    if ndim == 3:
        if is_stack:
            mrc.set_image_stack()
        else:
            mrc.set_volume()
    mrc.voxel_size = 0.0 if pixel_size_angstrom is None else float(pixel_size_angstrom)


def write_mrc(path: str | Path, data: np.ndarray, pixel_size_angstrom: float | None = None,
              is_stack: bool | None = None) -> None:
    """Write ``data`` (``(n, d, d)`` stack, ``(d, d, d)`` volume or ``(d, d)`` image) as float32.

    ``is_stack`` defaults to ``True`` for ``.mrcs`` names and ``False`` otherwise (a 3-D
    ``.mrc`` is written as a volume). ``pixel_size_angstrom=None`` writes 0 (unknown).
    The write is atomic.
    """
    path = Path(path)
    arr = np.ascontiguousarray(data, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D array, got shape {arr.shape}")
    if is_stack is None:
        is_stack = path.suffix.lower() == ".mrcs"
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            _prepare_header(mrc, is_stack, arr.ndim, pixel_size_angstrom)


class StackWriter:
    """Fill an ``(n, d, d)`` float32 stack chunk by chunk (see :func:`open_stack_writer`)."""

    def __init__(self, mrc, n: int, d: int):
        self._mrc = mrc
        self.n, self.d = n, d
        self._written = np.zeros(n, dtype=bool)
        self._min, self._max = np.inf, -np.inf
        self._sum = self._sumsq = 0.0

    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``images`` (b, d, d) at positions ``start .. start + b - 1``."""
        images = np.asarray(images, dtype=np.float32)
        b = images.shape[0]
        if images.shape[1:] != (self.d, self.d) or start < 0 or start + b > self.n:
            raise ValueError(f"chunk of shape {images.shape} at {start} does not fit "
                             f"a ({self.n}, {self.d}, {self.d}) stack")
        self._mrc.data[start:start + b] = images
        self._written[start:start + b] = True
        if b:
            self._min = min(self._min, float(images.min()))
            self._max = max(self._max, float(images.max()))
            x = images.astype(np.float64)
            self._sum += float(x.sum())
            self._sumsq += float((x * x).sum())

    def _finish(self) -> None:
        if not self._written.all():
            missing = int((~self._written).sum())
            raise RuntimeError(f"{missing} of {self.n} images were never written")
        count = self.n * self.d * self.d
        mean = self._sum / count
        header = self._mrc.header
        header.dmin, header.dmax, header.dmean = self._min, self._max, mean
        header.rms = float(np.sqrt(max(self._sumsq / count - mean * mean, 0.0)))


def reserve_disk_space(path: str | Path) -> None:
    """Allocate the blocks of file ``path`` at its current size now. A memory-mapped file is
    created sparse, and a page written to a full disk later kills the process (SIGBUS)
    instead of raising; reserving the space turns a full disk into OSError(ENOSPC) here,
    before any work."""
    if not hasattr(os, "posix_fallocate"):  # not on every platform: keep the plain behaviour
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return  # a file system without allocation: nothing to reserve
            raise OSError(err.errno, err.strerror, str(path)) from err


@contextlib.contextmanager
def open_stack_writer(path: str | Path, n: int, d: int,
                      pixel_size_angstrom: float | None) -> Iterator[StackWriter]:
    """Context manager writing an ``(n, d, d)`` float32 ``.mrcs`` stack through a memory map.

    The file appears under ``path`` only when the block exits without error and every
    image was written; otherwise the temporary file is removed.
    """
    with atomic_path(path) as tmp:
        mrc = mrcfile.new_mmap(tmp, shape=(n, d, d), mrc_mode=2, overwrite=True)
        try:
            reserve_disk_space(tmp)
            _prepare_header(mrc, True, 3, pixel_size_angstrom)
            writer = StackWriter(mrc, n, d)
            yield writer
            writer._finish()
        finally:
            mrc.close()
