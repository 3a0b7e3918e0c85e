"""Physical-sense checks of the inputs, shared by every reader and command.

Each ``check_*`` function takes the data and the file it came from, raises
:class:`~cryofire_nb.errors.InputError` (one line: the file, the problem, the fix) for
values no experiment can produce or that would silently ruin a result, and warns
(:class:`InputWarning` through :func:`warnings.warn`; the command line prints it as one
line on stderr) for values that are possible but unusual.

==============  ==================================================================
CTF table       (n, 9) ``D, Apix, DefocusU, DefocusV, DefocusAngle (deg), Voltage
                (kV), Cs (mm), w, PhaseShift (deg)``: D a positive integer, Apix > 0,
                voltage > 0 (warn outside 60-400 kV), Cs >= 0 (warn above 10 mm),
                0 <= w <= 1, every value finite; defocus negative or above 10 um warns
poses           rotations orthonormal with determinant +1 (to ``ROTATION_TOL``),
                shifts finite (warn when beyond half the box)
latents         finite
images          finite (error) and not constant (warn); checked as they are read
                (:class:`cryofire_nb.io.stack.ImageSource`)
indices         integers in [0, n), no repeats (a particle could land in both
                half-maps, or be counted twice)
sizes           table rows = stack images; CTF D and Apix agree with the stack's box
                and pixel size (a downsampled stack keeps the original D and Apix
                in its CTF table: Apix * D_ctf / D_stack is compared)
==============  ==================================================================
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InputError

ROTATION_TOL = 1e-3  # |R^T R - I| and |det R - 1|; float32 tables written by other tools stay well within
VOLTAGE_RANGE_KV = (60.0, 400.0)
CS_WARN_MM = 10.0
DEFOCUS_WARN_ANGSTROM = 1e5  # 10 um
APIX_RELATIVE_TOL = 0.02  # stack pixel size vs the CTF table's, after the box change


class InputWarning(UserWarning):
    """An input value that is possible but unusual (printed as one line by the CLI)."""


def warn(path: str | Path | None, problem: str) -> None:
    where = f"{path}: " if path is not None else ""
    warnings.warn(f"{where}{problem}", InputWarning, stacklevel=3)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _rows_with(mask: np.ndarray) -> str:
    n_bad = int(mask.sum())
    return f"{n_bad} row{'s' if n_bad > 1 else ''} (first: row {_first_bad(mask)})"


# --------------------------------------------------------------------------- CTF


def check_ctf_table(table, path: str | Path | None, fixes: dict[str, str] | None = None) -> np.ndarray:
    """Check a CTF table (n, 9); returns it as float64. ``fixes`` replaces the default fix
    text per column name (``"pixel size"``, ``"voltage"``, ``"amplitude contrast"`` ...),
    e.g. to name the command-line flag that sets it."""
    fixes = fixes or {}
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 9:
        raise InputError(path, f"CTF table has shape {t.shape}, expected (n, 9)",
                         "pass a CTF file written by parse-star/parse-cs or cryoDRGN")
    if len(t) == 0:
        return t
    bad = ~np.isfinite(t).all(axis=1)
    if bad.any():
        raise InputError(path, f"the CTF table contains NaN or inf in {_rows_with(bad)}",
                         "re-export the CTF parameters, or drop those particles with write-subset --ind")

    def error(mask, problem, column, default_fix):
        if mask.any():
            raise InputError(path, f"{problem} in {_rows_with(mask)}", fixes.get(column, default_fix))

    D, apix, dfu, dfv, _angle, kv, cs, w, _ps = t.T
    # D is the original stack's box: odd is possible there (the stack used must be even, checked on it)
    error((D <= 0) | (D != np.round(D)), "the box size D (column 0) is not a positive integer", "box size",
          "rewrite the CTF table with the box size of the original particle stack (-D)")
    error(apix <= 0, "the pixel size (column 1) is not positive", "pixel size",
          "rewrite the CTF table with the pixel size in Angstrom (parse-star/parse-cs --Apix)")
    error(kv <= 0, "the voltage (column 5) is not positive", "voltage",
          "rewrite the CTF table with the microscope voltage in kV (parse-star --kv)")
    error(cs < 0, "the spherical aberration Cs (column 6) is negative", "cs",
          "rewrite the CTF table with Cs in mm (parse-star --cs)")
    error((w < 0) | (w > 1), "the amplitude contrast w (column 7) is outside [0, 1]", "amplitude contrast",
          "rewrite the CTF table with the amplitude contrast as a fraction, e.g. 0.1 (parse-star -w 0.1)")
    lo, hi = VOLTAGE_RANGE_KV
    odd = (kv < lo) | (kv > hi)
    if odd.any():
        warn(path, f"voltage {kv[odd][0]:g} kV (column 5) in {_rows_with(odd)} is outside the usual "
                   f"{lo:g}-{hi:g} kV of cryo-EM microscopes; check the units (kV)")
    if (cs > CS_WARN_MM).any():
        warn(path, f"spherical aberration {cs.max():g} mm (column 6) is unusually large; check the units (mm)")
    defocus = np.stack([dfu, dfv], axis=1)
    odd = (defocus < 0).any(axis=1)
    if odd.any():
        warn(path, f"negative defocus in {_rows_with(odd)} (underfocus is positive in this convention)")
    odd = (defocus > DEFOCUS_WARN_ANGSTROM).any(axis=1)
    if odd.any():
        warn(path, f"defocus above 10 um in {_rows_with(odd)}; check the units (Angstrom)")
    return t


def check_ctf_matches_stack(table, ctf_path: str | Path | None, d_stack: int,
                            apix_stack: float | None, stack_path: str | Path | None = None) -> None:
    """The CTF table's D and Apix describe the original stack; a downsampled stack of box
    ``d_stack`` should have pixel size ``Apix * D / d_stack``, and be no larger than D.
    Mismatches warn: the CTF table's values are the ones used."""
    t = np.asarray(table, dtype=np.float64)
    if len(t) == 0:
        return
    D, apix = t[:, 0], t[:, 1]
    small = D < d_stack
    if small.any():
        warn(ctf_path, f"the CTF table's box size D = {D[small][0]:g} (row {_first_bad(small)}) is smaller than the "
                       f"{d_stack}-px images of {stack_path}; D should be the box of the original stack (a "
                       "downsampled stack is smaller); check that this CTF table belongs to these particles")
    if apix_stack is None or not np.isfinite(apix_stack) or apix_stack <= 0:
        return
    expected = apix * D / d_stack
    off = np.abs(expected / apix_stack - 1) > APIX_RELATIVE_TOL
    if off.any():
        i = _first_bad(off)
        warn(ctf_path, f"row {i}: pixel size {apix[i]:g} A at box {D[i]:g} means {expected[i]:.4g} A at the "
                       f"{d_stack}-px images, but {stack_path} says {apix_stack:.4g} A/px; the CTF table's pixel "
                       "size is used")


# --------------------------------------------------------------------------- poses and latents


def check_rotations(rots, path: str | Path | None, tol: float = ROTATION_TOL) -> None:
    """Rotation matrices (n, 3, 3): finite, orthonormal and with determinant +1."""
    r = np.asarray(rots, dtype=np.float64)
    if len(r) == 0:
        return
    bad = ~np.isfinite(r.reshape(len(r), -1)).all(axis=1)
    if bad.any():
        raise InputError(path, f"the rotations contain NaN or inf in {_rows_with(bad)}",
                         "re-export the poses, or drop those particles with write-subset --ind")
    gram = np.einsum("nji,njk->nik", r, r) - np.eye(3)
    bad = np.abs(gram).max(axis=(1, 2)) > tol
    if bad.any():
        raise InputError(path, f"rotation {_first_bad(bad)} is not orthonormal (R^T R differs from I by "
                               f"{np.abs(gram[_first_bad(bad)]).max():.3g}; {int(bad.sum())} such rows)",
                         "pass rotation matrices (cryoDRGN pose .pkl from parse-star/parse-cs)")
    det = np.linalg.det(r)
    bad = np.abs(det - 1) > tol
    if bad.any():
        raise InputError(path, f"rotation {_first_bad(bad)} has determinant {det[_first_bad(bad)]:.3g}, not +1 "
                               f"(a reflection; {int(bad.sum())} such rows)",
                         "pass proper rotation matrices (cryoDRGN pose .pkl from parse-star/parse-cs)")


def check_shifts(trans_frac, path: str | Path | None) -> None:
    """Shifts in fractions of the box (n, 2): finite; beyond half the box warns."""
    t = np.asarray(trans_frac, dtype=np.float64)
    if len(t) == 0:
        return
    bad = ~np.isfinite(t).all(axis=1)
    if bad.any():
        raise InputError(path, f"the translations contain NaN or inf in {_rows_with(bad)}",
                         "re-export the poses, or drop those particles with write-subset --ind")
    far = (np.abs(t) > 0.5).any(axis=1)
    if far.any():
        warn(path, f"translations beyond half the box in {_rows_with(far)} (they are fractions of the box: "
                   "pixels / D); check the pose file")


def check_latents(z, path: str | Path | None) -> None:
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return
    bad = ~np.isfinite(z.reshape(len(z), -1)).all(axis=1)
    if bad.any():
        raise InputError(path, f"the latents contain NaN or inf in {_rows_with(bad)}",
                         "pass the z.pkl written by train or infer (or remove the bad rows)")


# --------------------------------------------------------------------------- indices and sizes


def check_indices(ind, path: str | Path | None, n_total: int | None = None) -> np.ndarray:
    """Indices: a 1-D integer array in [0, n_total), without repeats. Returns int64."""
    a = np.asarray(ind)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise InputError(path, f"indices must be a 1-D integer array, got {a.dtype} {a.shape}",
                         "pass an index .pkl (e.g. from write-subset or cryoDRGN filter)")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise InputError(path, f"negative index {int(a.min())}", "indices are 0-based and non-negative")
    if n_total is not None and a.size and a.max() >= n_total:
        raise InputError(path, f"index {int(a.max())} is out of range for {n_total} particles",
                         "these indices were made for a different (larger) particle stack")
    uniq, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        rep = uniq[counts > 1]
        raise InputError(path, f"index {int(rep[0])} appears {int(counts[counts > 1][0])} times "
                               f"({len(rep)} repeated indices): a particle would be used twice (and could land "
                               "in both half-maps)", "pass each index once (e.g. numpy.unique)")
    return a


def check_count(path: str | Path | None, n: int, n_expected: int | None, what: str,
                stack: str | Path | None = None) -> None:
    """Rows of a per-particle table against the images of the stack."""
    if n_expected is not None and n != n_expected:
        of = f" {stack}" if stack is not None else " the particle stack"
        raise InputError(path, f"{what} has {n} entries but{of} has {n_expected} images",
                         "it must describe the same particles, in the same order, as the particle stack; "
                         "if the stack was filtered, pass the same --ind or filter this file with write-subset")


# --------------------------------------------------------------------------- device


def check_device(name: str):
    """A torch device that exists here (``auto``: cuda when present); InputError otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise InputError(None, f"--device {name!r} is not a device name", "use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, f"--device {name} asked for, but torch sees no CUDA device",
                             "use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(None, f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here",
                             "use --device cuda (or auto)")
    elif dev.type != "cpu":
        raise InputError(None, f"--device {name} is not supported", "use cpu, cuda, cuda:N or auto")
    return dev
