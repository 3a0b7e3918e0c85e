"""``ImageSource``: particle images from ``.mrcs``, ``.txt``, ``.star`` or ``.cs`` files.

Dimension letters: n particles in the source, b particles in a batch, d box size.

* ``.mrcs`` / ``.mrc``: one stack, all its images in order.
* ``.txt``: one stack path per line (blank lines and ``#`` comments skipped), paths
  relative to the ``.txt`` folder (or ``datadir``); images concatenated in order.
* ``.star``: ``rlnImageName = NNNNNN@stack.mrcs`` (1-based); stack paths relative to
  the STAR file's folder, or to ``datadir`` when given.
* ``.cs``: ``blob/path`` (leading ``>`` stripped) and ``blob/idx`` (0-based); paths
  relative to the ``.cs`` folder or ``datadir``.

For a relative stack path ``p`` we try ``base/p`` then ``base/basename(p)`` where
``base`` is ``datadir`` if given, else the metadata file's folder (absolute paths are
used as they are, then ``datadir/basename(p)``).

Images are real space float32 ``(b, d, d)``, indexed ``[y, x]``, contrast as stored (no
inversion here). Pixel size: RELION optics / cryoSPARC ``blob/psize_A`` for metadata
files, else the MRC header (0 there means unknown -> ``None``).

``lazy=True`` reads each request from the stacks on demand with positional reads (stacks
larger than RAM; at most ``max_open_stacks`` files open at once); ``lazy=False`` loads
every image at construction. Every image read is checked for NaN/inf.
"""

from __future__ import annotations

import collections
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .. import validate
from ..errors import InputError
from .cs import blob_indices, blob_paths, read_cs
from .mrc import MrcHeaderInfo, read_mrc_header
from .star import StarTable, read_star, split_image_names

STACK_SUFFIXES = (".mrcs", ".mrc")
READ_BYTES = 1 << 28
PARTICLE_SUFFIXES = (".mrcs", ".mrc", ".txt", ".star", ".cs")


def resolve_stack_path(name: str, base_dir: Path, datadir: Path | None) -> tuple[Path | None, list[Path]]:
    """Find a stack named in a metadata file. Returns (path or None, candidates tried)."""
    p = Path(name)
    if p.is_absolute():
        candidates = [p] + ([datadir / p.name] if datadir is not None else [])
    else:
        base = datadir if datadir is not None else base_dir
        candidates = [base / p] + ([base / p.name] if p.name != str(p) else [])
    for c in candidates:
        if c.is_file():
            return c, candidates
    return None, candidates


def _line_of(path: Path, token: str) -> int | None:
    """1-based line number of the first line of ``path`` holding ``token`` as a word."""
    with open(path, errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if token in line.split():
                return number
    return None


def _single_value(path: Path, values: np.ndarray | None) -> float | None:
    if values is None:
        return None
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return None
    uniq, counts = np.unique(np.round(values, 6), return_counts=True)
    if uniq.size > 1 and (uniq.max() - uniq.min()) > 1e-3 * uniq.max():
        warnings.warn(f"{path}: particles have {uniq.size} different pixel sizes "
                      f"({uniq.min():g}-{uniq.max():g} A); using the most common, {uniq[counts.argmax()]:g} A",
                      stacklevel=3)
    return float(uniq[counts.argmax()])


class ImageSource:
    """Particle images of one ``.mrcs``/``.txt``/``.star``/``.cs`` file, read by index."""

    def __init__(self, path: str | Path, datadir: str | Path | None = None, lazy: bool = True,
                 max_open_stacks: int = 32):
        self.path = Path(path)
        self.datadir = None if datadir is None else Path(datadir)
        self.lazy = lazy
        self.max_open_stacks = max(1, int(max_open_stacks))
        self.star: StarTable | None = None  # the metadata table for .star input
        self.cs: np.ndarray | None = None  # the metadata table for .cs input
        self._cache: collections.OrderedDict = collections.OrderedDict()  # stack number -> open file
        self._data: np.ndarray | None = None

        if not self.path.is_file():
            raise InputError(self.path, "particle file not found", "check the path")
        if self.datadir is not None and not self.datadir.is_dir():
            raise InputError(self.datadir, "--datadir is not a folder",
                             "pass the folder that holds the particle stacks")
        suffix = self.path.suffix.lower()
        if suffix in STACK_SUFFIXES:
            self._init_stacks([self.path])
        elif suffix == ".txt":
            self._init_txt()
        elif suffix == ".star":
            self._init_star()
        elif suffix == ".cs":
            self._init_cs()
        else:
            raise InputError(self.path, f"unsupported particle file type '{suffix}'",
                             "pass a .mrcs stack, a .txt list of stacks, a RELION .star or a cryoSPARC .cs")
        if not lazy:
            self._data = self._read(np.arange(len(self)))

    # ------------------------------------------------------------------ construction

    def _init_stacks(self, stack_paths: list[Path]) -> None:
        """Every image of each stack, in order."""
        infos = [read_mrc_header(p) for p in stack_paths]
        counts = np.array([i.shape[0] for i in infos], dtype=np.int64)
        self._set_layout(infos, np.repeat(np.arange(len(infos)), counts),
                         np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64))
        self._set_pixel_size(None)

    def _init_txt(self) -> None:
        paths = []
        with open(self.path, errors="replace") as f:
            for number, line in enumerate(f, start=1):
                name = line.strip()
                if not name or name.startswith("#"):
                    continue
                found, tried = resolve_stack_path(name, self.path.parent, self.datadir)
                if found is None:
                    looked = ", ".join(map(str, tried))
                    raise InputError(self.path, f"line {number}: stack '{name}' not found (looked for {looked})",
                                     "paths in a .txt are relative to the .txt folder; "
                                     "pass --datadir DIR if the stacks are elsewhere")
                paths.append(found)
        if not paths:
            raise InputError(self.path, "lists no stacks", "write one .mrcs path per line")
        self._init_stacks(paths)

    def _init_star(self) -> None:
        self.star = read_star(self.path)
        df = self.star.particles
        if "rlnImageName" not in df.columns:
            raise InputError(self.path, "no _rlnImageName column, so the particle images cannot be found",
                             "use a particle STAR file (e.g. from Extract or Refine3D); "
                             "poses and CTF can still be read with parse-star")
        names = df["rlnImageName"].astype(str).tolist()
        try:
            slices, stack_names = split_image_names(names)
        except ValueError as err:
            raise InputError(self.path, str(err), "image names must look like 000001@stack.mrcs") from err

        def where(row: int) -> str:
            line = _line_of(self.path, names[row])
            return f"line {line} " if line else ""

        self._init_indexed(stack_names, slices, lambda row: f"{where(row)}(particle {row}, _rlnImageName {names[row]})")
        self._set_pixel_size(self.star.optics_values().pixel_size_angstrom)

    def _init_cs(self) -> None:
        self.cs = read_cs(self.path)
        stack_names = blob_paths(self.path, self.cs)
        slices = blob_indices(self.path, self.cs)
        self._init_indexed(stack_names, slices,
                           lambda row: f"row {row} (blob/path {stack_names[row]}, blob/idx {slices[row]})")
        names = self.cs.dtype.names
        self._set_pixel_size(self.cs["blob/psize_A"].astype(np.float64) if "blob/psize_A" in names else None)

    def _init_indexed(self, stack_names: list[str], slices: np.ndarray, describe) -> None:
        """Particles given one by one as (stack name, 0-based index in the stack)."""
        codes, uniques = pd.factorize(pd.Series(stack_names, dtype=object))
        paths, missing = [], []
        for k, name in enumerate(uniques):
            found, tried = resolve_stack_path(str(name), self.path.parent, self.datadir)
            if found is None:
                missing.append((k, name, tried))
            paths.append(found)
        if missing:
            k, name, tried = missing[0]
            row = int(np.flatnonzero(codes == k)[0])
            more = f"; {len(missing) - 1} more of {len(uniques)} stacks are missing too" if len(missing) > 1 else ""
            where = "the .cs folder" if self.path.suffix.lower() == ".cs" else "the STAR file's folder"
            looked = ", ".join(map(str, tried))
            raise InputError(self.path, f"{describe(row)}: stack '{name}' not found (looked for {looked}){more}",
                             "pass --datadir DIR with the folder that holds the stacks "
                             f"(paths are taken relative to {where} by default)")
        infos = [read_mrc_header(p) for p in paths]
        self._set_layout(infos, codes.astype(np.int64), np.asarray(slices, dtype=np.int64))
        counts = np.array([i.shape[0] for i in infos])[self._stack_id]
        bad = np.flatnonzero(self._slice >= counts)
        if bad.size:
            row = int(bad[0])
            raise InputError(self.path, f"{describe(row)} asks for image {self._slice[row] + 1} of "
                             f"{infos[self._stack_id[row]].path}, which has only {counts[row]} images",
                             "the metadata does not match the stacks; check --datadir or re-export the particles")

    def _set_pixel_size(self, from_metadata: np.ndarray | None) -> None:
        """Pixel size from the metadata (per particle), else from the stack headers."""
        self._pixel_size = _single_value(self.path, from_metadata)
        if self._pixel_size is None:
            self._pixel_size = _single_value(self.path, np.array(
                [np.nan if i.pixel_size_angstrom is None else i.pixel_size_angstrom for i in self._stacks]))

    def _set_layout(self, infos: list[MrcHeaderInfo], stack_id: np.ndarray, slices: np.ndarray) -> None:
        d = None
        for info in infos:
            _, ny, nx = info.shape
            if ny != nx:
                raise InputError(info.path, f"images are {nx}x{ny} pixels (x by y), not square",
                                 "re-extract the particles with a square box")
            if d is None:
                d, first = ny, info.path
            elif ny != d:
                raise InputError(info.path, f"box size {ny} differs from {d} of {first}",
                                 "all stacks must share one box size; re-extract or downsample them to the same size")
        self._stacks = infos
        self._stack_id = stack_id
        self._slice = slices
        self._d = int(d) if d is not None else 0

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return int(self._stack_id.shape[0])

    @property
    def d(self) -> int:
        """Box size in pixels."""
        return self._d

    @property
    def pixel_size_angstrom(self) -> float | None:
        """Pixel size (Angstrom) from the metadata or the MRC header; None if unknown."""
        return self._pixel_size

    @property
    def stack_paths(self) -> list[Path]:
        return [info.path for info in self._stacks]

    def images(self, indices) -> np.ndarray:
        """Images ``indices`` (int, slice or (b,) integers, 0-based), float32 ``(b, d, d)``."""
        idx = self._check_indices(indices)
        if self._data is not None:
            return self._data[idx]
        return self._read(idx)

    def iter_chunks(self, chunk_size: int = 1000) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, images (b, d, d))`` over the whole source in order."""
        for start in range(0, len(self), chunk_size):
            yield start, self.images(np.arange(start, min(start + chunk_size, len(self))))

    def close(self) -> None:
        """Close the open stack files (they are reopened on demand)."""
        while self._cache:
            self._cache.popitem()[1].close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # do not pickle open files (DataLoader workers reopen them)
        state = self.__dict__.copy()
        state["_cache"] = collections.OrderedDict()
        return state

    def __repr__(self) -> str:
        return (f"ImageSource({str(self.path)!r}, n={len(self)}, d={self.d}, "
                f"pixel_size_angstrom={self.pixel_size_angstrom}, lazy={self.lazy})")

    # ------------------------------------------------------------------ reading

    def _check_indices(self, indices) -> np.ndarray:
        n = len(self)
        if isinstance(indices, slice):
            return np.arange(n)[indices]
        idx = np.asarray(indices)
        if idx.dtype == bool:
            raise TypeError("pass integer indices, not a boolean mask (use np.flatnonzero)")
        idx = idx.astype(np.int64).reshape(-1)
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            raise InputError(self.path, f"particle index {int(idx[bad][0])} is out of range for {n} particles",
                             "indices are 0-based and must be < the number of particles; "
                             "check that the --ind file was made for this particle stack")
        return idx

    def _file(self, stack: int):
        f = self._cache.get(stack)
        if f is None:
            try:
                f = open(self._stacks[stack].path, "rb")  # noqa: SIM115 - kept open in the cache, closed on eviction
            except OSError as err:
                raise InputError(self._stacks[stack].path, f"cannot open the stack ({err.strerror})",
                                 "check that the file is still there and readable") from err
            self._cache[stack] = f
            while len(self._cache) > self.max_open_stacks:
                self._cache.popitem(last=False)[1].close()
        else:
            self._cache.move_to_end(stack)
        return f

    def _read_stack(self, stack: int, local: np.ndarray) -> np.ndarray:
        """Images ``local`` (sorted, 0-based) of one stack, float32 (g, d, d), read with
        positional reads, one per run of consecutive images. Unlike a memory map, the
        pages read do not stay in this process's resident memory (only in the page
        cache, which the kernel reclaims), so reading a stack larger than RAM keeps the
        process's memory bounded by the batch."""
        info = self._stacks[stack]
        fd = self._file(stack).fileno()
        image_bytes = self.d * self.d * info.dtype.itemsize
        out = np.empty((local.size, self.d, self.d), dtype=np.float32)
        # runs of consecutive images, at most READ_BYTES each (one pread returns at most 2 GiB)
        per_read = max(1, READ_BYTES // image_bytes)
        breaks = np.diff(local, prepend=local[0] - 2) != 1
        breaks[::per_read] = True
        starts = np.flatnonzero(breaks)
        for a, b in zip(starts, [*starts[1:], local.size]):
            first, count = int(local[a]), int(b - a)
            want = count * image_bytes
            raw = os.pread(fd, want, info.data_offset + first * image_bytes)
            if len(raw) != want:
                raise InputError(info.path, f"images {first + 1}-{first + count} lie past the end of the file",
                                 "re-copy or re-extract the stack (it was truncated after opening)")
            out[a:b] = np.frombuffer(raw, dtype=info.dtype).reshape(count, self.d, self.d)
        return out

    def _read(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((idx.size, self.d, self.d), dtype=np.float32)  # (b, d, d)
        if idx.size == 0:
            return out
        stack_id, local = self._stack_id[idx], self._slice[idx]
        order = np.lexsort((local, stack_id))  # group by stack, ascending within a stack
        bounds = np.flatnonzero(np.diff(stack_id[order])) + 1
        for group in np.split(order, bounds):
            stack = int(stack_id[group[0]])
            chunk = self._read_stack(stack, local[group])  # (g, d, d)
            finite = np.isfinite(chunk).all(axis=(1, 2))
            if not finite.all():
                j = int(np.flatnonzero(~finite)[0])
                raise InputError(self._stacks[stack].path,
                                 f"image {int(local[group[j]]) + 1} of this stack (particle {int(idx[group[j]])} of "
                                 f"{self.path}) contains NaN or inf values "
                                 f"({int((~finite).sum())} bad images in this read)",
                                 "remove those particles (write-subset --ind) or re-extract the stack")
            if not getattr(self, "_warned_constant", False):
                const = np.ptp(chunk.reshape(len(chunk), -1), axis=1) == 0
                if const.any():  # warned once per source: a lazy source reads batch by batch
                    self._warned_constant = True
                    validate.warn(self.path, f"particle {int(idx[group[np.flatnonzero(const)[0]]])} is a constant "
                                             "image (no signal); remove such particles with write-subset --ind")
            out[group] = chunk
        return out
