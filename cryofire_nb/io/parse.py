"""Poses and CTF parameters from RELION ``.star`` and cryoSPARC ``.cs`` tables.

RELION: rotation from ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` via
:func:`cryofire_nb.rotations.relion_euler_to_matrix`; shift in pixels from
``rlnOriginX/Y``, or ``rlnOriginXAngst/YAngst`` divided by the pixel size;
``trans_frac = shift_px / D`` (same sign: the particle is the centred projection moved
by minus the shift). Checked against cryoDRGN's ``pose.star.pkl``/``ctf1.pkl``.

cryoSPARC: rotation ``cryosparc_pose_to_matrix(alignments3D/pose)`` (exp(hat(v))^T),
``trans_frac = alignments3D/shift / D``; D from ``blob/shape``, Apix from
``blob/psize_A``; CTF angles are stored in radians and converted to degrees. Checked
against ``pose.cs.pkl``/``ctf2.pkl``.

Files with CTF columns but no pose columns (or the reverse) give ``poses=None``
(``ctf=None``). ``D`` and Apix must describe the same images (those the shifts were
measured on); both default to the values in the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import validate
from ..errors import InputError
from .cs import read_cs, require_fields
from .records import CtfParams, Poses
from .star import StarTable, numeric_column, read_star


class PosesAndCtf(NamedTuple):
    poses: Poses | None  # None when the file has no alignment columns
    ctf: CtfParams | None  # None when the file has no defocus columns


# What to pass on the command line when the file's own value makes a CTF table unusable.
_STAR_FIXES = {"pixel size": "pass the pixel size with --Apix (the file gives none usable)",
               "voltage": "pass the voltage with --kv", "cs": "pass Cs in mm with --cs",
               "amplitude contrast": "pass the amplitude contrast as a fraction in [0, 1], e.g. -w 0.1",
               "box size": "pass the box size of the particle images with -D"}
_CS_FIXES = {"pixel size": "pass the pixel size with --Apix (the file gives none usable)",
             "box size": "pass the box size of the particle images with -D"}


def _positive(path, value, flag: str):
    if value is not None and not (np.isfinite(value) and value > 0):
        raise InputError(path, f"{flag} must be positive, got {value}", f"pass a positive {flag}")
    return value


def _per_particle(value, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64).reshape(-1), (n,)).copy()


def _finite(path, arr: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))  # per row (no reshape: 0 rows are fine)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"{what} is NaN/inf for {int(bad.sum())} particles (first: row {first})",
                         "fix or remove those particles")
    return arr


# --------------------------------------------------------------------------- RELION

_CTF_STAR = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
_EULER_STAR = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def parse_star_poses_ctf(star: str | Path | StarTable, d: int | None = None,
                         pixel_size_angstrom: float | None = None,
                         amplitude_contrast: float | None = None, voltage_kv: float | None = None,
                         cs_mm: float | None = None, phase_shift_deg: float | None = None) -> PosesAndCtf:
    """Poses and CTF table of every particle in a RELION 3.0/3.1/5 STAR file.

    Keyword values override (for every particle) what the file says, and are required
    where the file lacks them: ``d`` (``-D``, else ``rlnImageSize``), the pixel size
    (``--Apix``, else ``rlnImagePixelSize`` or detector pixel size / magnification),
    voltage, Cs and amplitude contrast (for the CTF). Phase shift defaults to 0.
    """
    table = star if isinstance(star, StarTable) else read_star(star)
    path = table.path
    df = table.merged()
    optics = table.optics_values()
    n = len(df)
    cols = set(df.columns)
    if n == 0:
        raise InputError(path, "the particle block has no rows", "pass a STAR file with particles")

    def num(*columns) -> np.ndarray:  # text where a number belongs (a damaged line) reads as NaN
        out = np.stack([numeric_column(path, df, c) for c in columns], axis=1)
        return out[:, 0] if len(columns) == 1 else out

    _positive(path, d, "-D")
    _positive(path, pixel_size_angstrom, "--Apix")
    if d is not None:
        box = np.full(n, float(int(d)))
    elif optics.image_size is not None:
        box = optics.image_size.astype(np.float64)
    else:
        raise InputError(path, "the box size is unknown (no _rlnImageSize)", "pass the box size with -D")
    apix = _per_particle(pixel_size_angstrom, n) if pixel_size_angstrom is not None else optics.pixel_size_angstrom

    def need_apix(purpose: str) -> np.ndarray:
        if apix is None:
            raise InputError(path, f"the pixel size is unknown (needed for {purpose})", "pass --Apix")
        return _finite(path, apix, "pixel size")

    # ---- CTF
    ctf = None
    present = [c for c in _CTF_STAR if c in cols]
    if present and len(present) < 3:
        raise InputError(path, f"incomplete CTF columns: has {present}, needs {list(_CTF_STAR)}",
                         "add the missing defocus columns")
    if present:
        def value(override, column, flag, stored):
            if override is not None:
                return _per_particle(override, n)
            if stored is None:
                raise InputError(path, f"no _{column} in the file", f"pass {flag}")
            return stored
        ctf = CtfParams.from_columns(
            image_size=box, pixel_size_angstrom=need_apix("the CTF table"),
            defocus_u_angstrom=_finite(path, num("rlnDefocusU"), "rlnDefocusU"),
            defocus_v_angstrom=_finite(path, num("rlnDefocusV"), "rlnDefocusV"),
            defocus_angle_deg=_finite(path, num("rlnDefocusAngle"), "rlnDefocusAngle"),
            voltage_kv=value(voltage_kv, "rlnVoltage", "--kv", optics.voltage_kv),
            cs_mm=value(cs_mm, "rlnSphericalAberration", "--cs", optics.cs_mm),
            amplitude_contrast=value(amplitude_contrast, "rlnAmplitudeContrast", "-w", optics.amplitude_contrast),
            phase_shift_deg=(_per_particle(phase_shift_deg, n) if phase_shift_deg is not None
                             else num("rlnPhaseShift") if "rlnPhaseShift" in cols else 0.0),
        )
        _finite(path, ctf.table, "CTF parameters")
        validate.check_ctf_table(ctf.table, path, _STAR_FIXES)

    # ---- poses
    poses = None
    present = [c for c in _EULER_STAR if c in cols]
    if present and len(present) < 3:
        raise InputError(path, f"incomplete Euler angles: has {present}, needs {list(_EULER_STAR)}",
                         "use a STAR file from a 3-D refinement or classification")
    if present:
        from ..rotations import relion_euler_to_matrix

        euler = _finite(path, num(*_EULER_STAR), "Euler angles")  # (n, 3) degrees
        rots = relion_euler_to_matrix(euler).numpy()  # (n, 3, 3)
        if {"rlnOriginX", "rlnOriginY"} <= cols:
            shift_px = num("rlnOriginX", "rlnOriginY")
        elif {"rlnOriginXAngst", "rlnOriginYAngst"} <= cols:
            shift_angstrom = num("rlnOriginXAngst", "rlnOriginYAngst")  # (n, 2)
            shift_px = shift_angstrom / need_apix("_rlnOriginXAngst")[:, None]
            if d is not None and pixel_size_angstrom is None and optics.image_size is not None \
                    and (optics.image_size != int(d)).any():
                warnings.warn(f"{path}: -D {d} differs from _rlnImageSize {int(optics.image_size[0])} but the "
                              "Angstrom shifts are converted with the file's pixel size; pass --Apix for the "
                              f"{d}-pixel images too, or leave -D out", stacklevel=2)
        else:
            shift_px = np.zeros((n, 2))
        trans = _finite(path, shift_px, "origin shifts") / box[:, None]  # (n, 2) fraction of the box
        poses = Poses(rots, trans)
    return PosesAndCtf(poses, ctf)


# --------------------------------------------------------------------------- cryoSPARC

_CTF_CS = ("ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")


def parse_cs_poses_ctf(cs: str | Path | np.ndarray, d: int | None = None,
                       pixel_size_angstrom: float | None = None, path: str | Path | None = None) -> PosesAndCtf:
    """Poses (``alignments3D``) and CTF table of every particle in a cryoSPARC table.

    ``d`` defaults to ``blob/shape``, the pixel size to ``blob/psize_A``. ``path`` names
    the file in error messages when ``cs`` is an array already loaded.
    """
    if isinstance(cs, np.ndarray):
        table = cs
    else:
        path = Path(cs)
        table = read_cs(path)
    names = set(table.dtype.names)
    n = len(table)
    if n == 0:
        raise InputError(path, "the table has no rows", "pass a .cs file with particles")
    _positive(path, d, "-D")
    _positive(path, pixel_size_angstrom, "--Apix")
    if d is not None:
        box = np.full(n, float(int(d)))
    elif "blob/shape" in names:
        shape = table["blob/shape"].reshape(n, -1).astype(np.float64)
        box = shape[:, 0]
    else:
        raise InputError(path, "the box size is unknown (no blob/shape field)", "pass the box size with -D")

    ctf = None
    if any(c in names for c in _CTF_CS):
        require_fields(path, table, _CTF_CS, "the CTF table")
        if pixel_size_angstrom is not None:
            apix = _per_particle(pixel_size_angstrom, n)
        elif "blob/psize_A" in names:
            apix = table["blob/psize_A"].astype(np.float64)
        else:
            raise InputError(path, "the pixel size is unknown (no blob/psize_A field)", "pass --Apix")
        phase = table["ctf/phase_shift_rad"].astype(np.float64) if "ctf/phase_shift_rad" in names else 0.0
        ctf = CtfParams.from_columns(
            image_size=box, pixel_size_angstrom=apix,
            defocus_u_angstrom=table["ctf/df1_A"], defocus_v_angstrom=table["ctf/df2_A"],
            defocus_angle_deg=np.rad2deg(table["ctf/df_angle_rad"].astype(np.float64)),
            voltage_kv=table["ctf/accel_kv"], cs_mm=table["ctf/cs_mm"],
            amplitude_contrast=table["ctf/amp_contrast"], phase_shift_deg=np.rad2deg(phase),
        )
        _finite(path, ctf.table, "CTF parameters")
        validate.check_ctf_table(ctf.table, path, _CS_FIXES)

    poses = None
    if "alignments3D/pose" in names:
        from ..rotations import cryosparc_pose_to_matrix

        pose = _finite(path, np.array(table["alignments3D/pose"], dtype=np.float64), "alignments3D/pose")  # (n, 3)
        rots = cryosparc_pose_to_matrix(pose).numpy()  # (n, 3, 3)
        if "alignments3D/shift" in names:
            shift_px = _finite(path, table["alignments3D/shift"].astype(np.float64), "alignments3D/shift")
        else:
            shift_px = np.zeros((n, 2))
        poses = Poses(rots, shift_px / box[:, None])
    return PosesAndCtf(poses, ctf)
