"""Selecting particles in a 2-D view of z and writing the selection.

Indices are 0-based rows of the particle stack (and of z). A selection is written as an
index ``.pkl`` (int64, cryoDRGN's format, usable with ``--ind``) or, given the source
``.star`` / ``.cs`` table, as the subset of that table (same columns; a STAR file keeps
its optics block), exactly as ``cryofire-nb write-subset`` does. Writes are atomic.

Dimension letters: n particles, v polygon vertices, m selected particles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .latent import _points2d


def indices_in_polygon(points2d, polygon) -> np.ndarray:
    """Sorted int64 indices of the points (n, 2) strictly inside ``polygon`` (v, 2),
    a closed or open list of vertices (matplotlib ``Path.contains_points``)."""
    from matplotlib.path import Path as MplPath

    p = _points2d(points2d)
    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
        raise InputError(None, f"polygon has shape {poly.shape}, expected (v, 2) with v >= 3 finite vertices",
                         "give the polygon as [(x0, y0), (x1, y1), (x2, y2), ...]")
    inside = MplPath(poly).contains_points(p)  # (n,)
    return np.flatnonzero(inside).astype(np.int64)


def _as_indices(indices) -> np.ndarray:
    ind = np.asarray(indices.detach().cpu() if hasattr(indices, "detach") else indices)
    if ind.dtype == bool:
        ind = np.flatnonzero(ind)
    ind = ind.reshape(-1)
    if ind.size and not np.issubdtype(ind.dtype, np.integer):
        raise InputError(None, f"indices must be integers (or a boolean mask), got {ind.dtype}",
                         "pass particle indices, e.g. from indices_in_polygon")
    ind = ind.astype(np.int64)
    if ind.size and ind.min() < 0:
        raise InputError(None, f"negative index {int(ind.min())}", "indices are 0-based and non-negative")
    return np.unique(ind)


def to_original_indices(selected, ind) -> np.ndarray:
    """Rows of the original stack for a selection made on a model trained with ``--ind``.

    A model trained on the subset ``ind`` (int array, the rows of the original stack it
    kept, in order) numbers its particles 0 .. len(ind) - 1; ``selected`` are such numbers.
    Returns ``ind[selected]`` sorted (int64): the indices to write for the original
    ``.star`` / ``.cs`` table or to pass as ``--ind`` to a run on the full stack.
    """
    sel = _as_indices(selected)
    base = np.asarray(ind).reshape(-1)
    if base.size and not np.issubdtype(base.dtype, np.integer):
        raise InputError(None, f"--ind indices must be integers, got {base.dtype}", "pass the index .pkl of the run")
    if sel.size and sel.max() >= len(base):
        raise InputError(None, f"selected particle {int(sel.max())} is out of range for the {len(base)} particles "
                         "of the --ind subset", "select on the z of the run trained with this --ind file")
    return np.sort(base.astype(np.int64)[sel])


def _count(source: Path) -> int:
    from ..io import ImageSource, read_cs, read_star

    kind = source.suffix.lower()
    if kind == ".star":
        return len(read_star(source))
    if kind == ".cs":
        return len(read_cs(source))
    return len(ImageSource(source))


def write_selection(indices, out_path, source=None) -> Path:
    """Write the selected particles ``indices`` (int array or boolean mask (n,)).

    ``out_path`` ``.pkl``: the sorted unique int64 indices (checked against the number of
    particles in ``source`` when given). ``.star`` / ``.cs``: the subset of ``source``, a
    table of the same kind. Returns the path written.
    """
    from ..io import read_cs, read_star, write_cs, write_indices, write_star

    out = Path(out_path)
    src = None if source is None else Path(source)
    ind = _as_indices(indices)
    out_kind = out.suffix.lower()
    if out_kind not in (".pkl", ".star", ".cs"):
        raise InputError(out, f"unsupported output type '{out_kind}'", "name the output .pkl, .star or .cs")
    if out_kind != ".pkl" and (src is None or src.suffix.lower() != out_kind):
        given = "no source" if src is None else f"source {src.name}"
        raise InputError(out, f"a {out_kind} subset needs a {out_kind} source table ({given})",
                         f"pass source=<particles{out_kind}>, or write an index .pkl")
    if out_kind == ".star":
        table = read_star(src)
        _check_range(src, ind, len(table))
        write_star(out, table.subset(ind))
    elif out_kind == ".cs":
        table = read_cs(src)
        _check_range(src, ind, len(table))
        write_cs(out, table[ind])
    else:
        if src is not None:
            _check_range(src, ind, _count(src))
        write_indices(out, ind)
    return out


def _check_range(src: Path, ind: np.ndarray, n: int) -> None:
    if ind.size and ind.max() >= n:
        raise InputError(src, f"index {int(ind.max())} is out of range for its {n} particles",
                         "the selection was made on a different (larger) particle set")


class SelectionSaver:
    """Callback that writes every selection it receives: pass it as ``on_select`` to
    :func:`cryofire_nb.viz.make_selectable_scatter` (or call it with indices yourself).

    Each call writes ``OUT_DIR/STEM.pkl`` (indices), and ``STEM.star`` / ``STEM.cs`` (the
    subsets of the source tables, when given) through :func:`write_selection`,
    overwriting the previous selection; ``last`` holds the indices (sorted, unique) and
    ``written`` the paths of the latest call, ``count`` the number of calls. An empty
    selection (a click on empty space) writes nothing and keeps the previous files.
    """

    def __init__(self, out_dir, star=None, cs=None, stem: str = "selected", n_particles: int | None = None):
        self.out_dir = Path(out_dir)
        self.star = None if star is None else Path(star)
        self.cs = None if cs is None else Path(cs)
        self.stem = stem
        self.n_particles = n_particles
        self.last = np.zeros(0, dtype=np.int64)
        self.written: list[Path] = []
        self.count = 0

    def __call__(self, indices) -> list[Path]:
        ind = _as_indices(indices)
        if ind.size == 0:
            return []
        if self.n_particles is not None and ind.max() >= self.n_particles:
            raise InputError(None, f"index {int(ind.max())} is out of range for {self.n_particles} particles",
                             "select on the points of this particle set")
        paths = [write_selection(ind, self.out_dir / f"{self.stem}.pkl")]
        if self.star is not None:
            paths.append(write_selection(ind, self.out_dir / f"{self.stem}.star", source=self.star))
        if self.cs is not None:
            paths.append(write_selection(ind, self.out_dir / f"{self.stem}.cs", source=self.cs))
        self.last, self.written = ind, paths
        self.count += 1
        return paths
