"""cryoSPARC ``.cs`` particle tables.

A ``.cs`` file is a numpy structured array saved with ``np.save`` (one row per
particle). Fields used here:

* ``blob/path`` (bytes): the particle stack, relative to the cryoSPARC project folder;
  exported/imported tables prefix it with ``>``, which we strip;
* ``blob/idx`` (uint32): **0-based** index into that stack;
* ``blob/shape`` (2,) box size, ``blob/psize_A`` pixel size (Angstrom);
* ``alignments3D/pose`` axis-angle vector (radians), ``alignments3D/shift`` (pixels);
* ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm``,
  ``ctf/amp_contrast``, ``ctf/phase_shift_rad``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ._atomic import atomic_path


def read_cs(path: str | Path) -> np.ndarray:
    """Load a cryoSPARC table (structured array, one row per particle)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        table = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"not a cryoSPARC .cs file ({err})",
                         "pass a particle .cs exported by cryoSPARC") from err
    if not isinstance(table, np.ndarray) or table.dtype.names is None or table.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs table (expected a 1-D structured array)",
                         "pass a particle .cs exported by cryoSPARC")
    return table


def require_fields(path: str | Path, table: np.ndarray, fields, purpose: str) -> None:
    """Raise InputError if ``table`` lacks any of ``fields`` (needed for ``purpose``)."""
    missing = [f for f in fields if f not in table.dtype.names]
    if missing:
        raise InputError(path, f"missing field(s) {', '.join(missing)} needed for {purpose}",
                         "export the particles from a cryoSPARC job that has them (e.g. a refinement)")


def blob_paths(path: str | Path, table: np.ndarray) -> list[str]:
    """Stack path of each particle as text, with a leading ``>`` removed."""
    require_fields(path, table, ["blob/path"], "reading images")
    raw = table["blob/path"]
    out = []
    for p in raw:
        s = p.decode() if isinstance(p, bytes) else str(p)
        out.append(s[1:] if s.startswith(">") else s)
    return out


def blob_indices(path: str | Path, table: np.ndarray) -> np.ndarray:
    """0-based index of each particle in its stack, (n,) int64."""
    require_fields(path, table, ["blob/idx"], "reading images")
    return table["blob/idx"].astype(np.int64)


def write_cs(path: str | Path, table: np.ndarray) -> None:
    """Write a structured array as a ``.cs`` file (``np.save`` format, atomic)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(table), allow_pickle=False)
