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
    except Exception as err:  # noqa: BLE001 - np.load raises ValueError, EOFError, SyntaxError,
        # tokenize.TokenError (a damaged header dictionary), MemoryError (a huge shape), ...: all the file's fault
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


def make_cs_table(stack_path: str | Path, n: int, image_size: int, pixel_size_angstrom: float, *,
                  poses=None, ctf=None, seed: int = 0) -> np.ndarray:
    """A cryoSPARC-style particle table (structured array, one row per image of one stack).

    Fields: ``uid`` (uint64, random from ``seed``), ``blob/path`` (``stack_path`` as
    given: cryoSPARC stores it relative to the project), ``blob/idx`` (0-based),
    ``blob/shape``, ``blob/psize_A``; with ``ctf`` (:class:`~cryofire_nb.io.CtfParams`)
    ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A``,
    ``ctf/df_angle_rad``, ``ctf/phase_shift_rad`` (angles in radians, as cryoSPARC);
    with ``poses`` (:class:`~cryofire_nb.io.Poses`) ``alignments3D/pose`` (axis-angle of
    ``R^T``, :func:`~cryofire_nb.rotations.matrix_to_cryosparc_pose`),
    ``alignments3D/shift`` (pixels: trans_frac * image_size) and ``alignments3D/psize_A``.
    :func:`cryofire_nb.io.parse_cs_poses_ctf` reads the poses and CTF back unchanged
    (float32 precision). Write it with :func:`write_cs`.
    """
    n = int(n)
    path_bytes = str(stack_path).encode()
    fields = [("uid", "<u8"), ("blob/path", f"S{max(1, len(path_bytes))}"), ("blob/idx", "<u4"),
              ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4")]
    if ctf is not None:
        if len(ctf) != n:
            raise ValueError(f"ctf has {len(ctf)} rows for {n} images")
        fields += [(f"ctf/{name}", "<f4") for name in ("accel_kv", "cs_mm", "amp_contrast", "df1_A", "df2_A",
                                                       "df_angle_rad", "phase_shift_rad")]
    if poses is not None:
        if len(poses) != n:
            raise ValueError(f"poses has {len(poses)} rows for {n} images")
        fields += [("alignments3D/shift", "<f4", (2,)), ("alignments3D/pose", "<f4", (3,)),
                   ("alignments3D/psize_A", "<f4")]
    table = np.zeros(n, dtype=np.dtype(fields))
    table["uid"] = np.random.default_rng(seed).integers(0, 2 ** 63, n, dtype=np.uint64)
    table["blob/path"] = path_bytes
    table["blob/idx"] = np.arange(n, dtype=np.uint32)
    table["blob/shape"] = int(image_size)
    table["blob/psize_A"] = float(pixel_size_angstrom)
    if ctf is not None:
        table["ctf/accel_kv"] = ctf.voltage_kv
        table["ctf/cs_mm"] = ctf.cs_mm
        table["ctf/amp_contrast"] = ctf.amplitude_contrast
        table["ctf/df1_A"] = ctf.defocus_u_angstrom
        table["ctf/df2_A"] = ctf.defocus_v_angstrom
        table["ctf/df_angle_rad"] = np.deg2rad(ctf.defocus_angle_deg.astype(np.float64))
        table["ctf/phase_shift_rad"] = np.deg2rad(ctf.phase_shift_deg.astype(np.float64))
    if poses is not None:
        from ..rotations import matrix_to_cryosparc_pose

        table["alignments3D/pose"] = matrix_to_cryosparc_pose(poses.rots.astype(np.float64)).numpy()
        trans = np.zeros((n, 2)) if poses.trans_frac is None else poses.trans_frac.astype(np.float64)
        table["alignments3D/shift"] = trans * int(image_size)
        table["alignments3D/psize_A"] = float(pixel_size_angstrom)
    return table
