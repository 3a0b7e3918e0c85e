"""RELION STAR files: read 3.0 (one data block), 3.1 and 5 (``data_optics`` +
``data_particles``, in either order); write 3.1 (optics + particles).

Column names are kept as ``starfile`` gives them, without the leading underscore
(``rlnImageName``). Image names are ``NNNNNN@path/stack.mrcs`` with a **1-based** index
into the stack. Optics-group values (pixel size, voltage, Cs, amplitude contrast,
image size) are looked up per particle through ``rlnOpticsGroup``; where both blocks
hold a column the optics block wins (as in cryoDRGN). RELION 3.0 has no optics block;
its pixel size is ``rlnDetectorPixelSize (um) * 1e4 / rlnMagnification``.

RELION angles (rot, tilt, psi) are ZYZ in degrees and convert with
:func:`cryofire_nb.rotations.relion_euler_to_matrix`; shifts ``rlnOriginX/Y`` are in
pixels (3.0) and ``rlnOriginXAngst/YAngst`` in Angstrom (3.1+). A particle image is the
centred projection translated by **minus** the origin shift.
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError
from ._atomic import atomic_path
from .records import CtfParams, Poses

OPTICS_BLOCK = "optics"


@dataclass(frozen=True)
class ParticleOptics:
    """Optics values per particle (n,); a field is None when the file does not give it."""

    pixel_size_angstrom: np.ndarray | None  # (n,) float64
    voltage_kv: np.ndarray | None
    cs_mm: np.ndarray | None
    amplitude_contrast: np.ndarray | None
    image_size: np.ndarray | None  # (n,) int64


@dataclass(frozen=True)
class StarTable:
    """The particle and optics blocks of a STAR file, as read (nothing renamed or dropped)."""

    particles: pd.DataFrame  # one row per particle, columns like 'rlnImageName'
    optics: pd.DataFrame | None  # None for RELION 3.0 files
    particles_block: str = "particles"  # block name in the file ('images', '' in 3.0 files)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def relion_version(self) -> str:
        """``'3.0'`` (single block) or ``'3.1+'`` (with an optics block)."""
        return "3.0" if self.optics is None else "3.1+"

    def optics_rows(self) -> np.ndarray:
        """Row of the optics block for each particle, (n,) int64 (empty for 3.0 files)."""
        if self.optics is None:
            return np.zeros(0, dtype=np.int64)
        n_groups = len(self.optics)
        if "rlnOpticsGroup" not in self.particles.columns:
            if n_groups == 1:
                return np.zeros(len(self), dtype=np.int64)
            raise InputError(self.path, f"the optics block has {n_groups} groups but particles have no _rlnOpticsGroup",
                             "add _rlnOpticsGroup to the particles block")
        if "rlnOpticsGroup" not in self.optics.columns:
            raise InputError(self.path, "the optics block has no _rlnOpticsGroup column", "fix the optics block")
        lookup = pd.Index(_group_numbers(self.path, self.optics["rlnOpticsGroup"], "data_optics"))
        if lookup.has_duplicates:  # two rows for one group: which one a particle gets is undefined
            raise InputError(self.path, f"optics group {lookup[lookup.duplicated()][0]} appears twice in data_optics",
                             "keep one row per optics group")
        groups = pd.Series(_group_numbers(self.path, self.particles["rlnOpticsGroup"], "the particles block"))
        rows = lookup.get_indexer(groups)
        if (rows < 0).any():
            missing = sorted(set(groups[rows < 0].tolist()))
            raise InputError(self.path, f"particles refer to optics groups {missing[:5]} missing from data_optics",
                             "add those groups to the optics block")
        return rows.astype(np.int64)

    def merged(self) -> pd.DataFrame:
        """Per-particle table: particle columns plus every optics column (optics wins)."""
        df = self.particles.copy()
        if self.optics is None:
            return df
        rows = self.optics_rows()
        for col in self.optics.columns:
            if col != "rlnOpticsGroup":
                df[col] = self.optics[col].to_numpy()[rows]
        return df

    def optics_values(self) -> ParticleOptics:
        """Pixel size, voltage, Cs, amplitude contrast and image size per particle."""
        df = self.merged()

        def col(name, dtype=np.float64):
            return numeric_column(self.path, df, name, dtype) if name in df.columns else None

        pixel_size = col("rlnImagePixelSize")
        if pixel_size is None and {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
            pixel_size = col("rlnDetectorPixelSize") * 1e4 / col("rlnMagnification")
        return ParticleOptics(pixel_size, col("rlnVoltage"), col("rlnSphericalAberration"),
                              col("rlnAmplitudeContrast"), col("rlnImageSize", np.int64))

    def subset(self, ind) -> "StarTable":
        """The same table restricted to rows ``ind`` (0-based), optics block unchanged."""
        rows = self.particles.iloc[np.asarray(ind, dtype=np.int64)].reset_index(drop=True)
        return StarTable(rows, self.optics, self.particles_block, self.path)


def numeric_column(path: Path | None, df: pd.DataFrame, name: str, dtype=np.float64) -> np.ndarray:
    """Column ``name`` as numbers: text in a numeric column (a damaged line) is NaN, and
    NaN in an integer column (a box size) is the user's file to fix."""
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
    if np.dtype(dtype).kind in "iu":
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2 ** 53)
        if bad.any():
            raise InputError(path, f"_{name} has {int(bad.sum())} value(s) that are not whole numbers (first: "
                             f"{df[name].iloc[int(np.argmax(bad))]!r})", f"fix _{name}")
    return values.astype(dtype)


def _group_numbers(path: Path | None, column: pd.Series, block: str) -> np.ndarray:
    """``rlnOpticsGroup`` as int64; text, NaN or fractions are the user's file to fix."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2 ** 53)
    if bad.any():
        raise InputError(path, f"_rlnOpticsGroup in {block} has {int(bad.sum())} value(s) that are not whole "
                         f"numbers (first: {column.iloc[int(np.argmax(bad))]!r})",
                         "fix the optics group numbers")
    return values.astype(np.int64)


def read_star(path: str | Path) -> StarTable:
    """Read a RELION 3.0, 3.1 or 5 STAR file (any block order)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:
        raise InputError(path, f"cannot parse the STAR file ({err})", "check that this is a RELION .star file") from err
    finally:
        # starfile reads lines through linecache and clears it only after a successful
        # parse: after a failure the same path, corrected, would read back stale lines
        linecache.clearcache()
    tables = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    for name, df in tables.items():  # a repeated header line would make df[column] a table, not a column
        twice = df.columns[df.columns.duplicated()]
        if len(twice):
            raise InputError(path, f"column _{twice[0]} appears twice in data_{name}", "remove the repeated line")
    optics = tables.pop(OPTICS_BLOCK, None)
    if "particles" in tables:
        name = "particles"
    else:
        with_images = [k for k, v in tables.items() if "rlnImageName" in v.columns]
        candidates = with_images or list(tables)
        if not candidates:
            raise InputError(path, "no particle data block (loop_) found", "pass a RELION particle .star file")
        name = max(candidates, key=lambda k: len(tables[k]))  # the largest block, as cryoDRGN does
    particles = tables[name].reset_index(drop=True)
    table = StarTable(particles, optics, name, path)
    if optics is not None:
        table.optics_rows()  # validate the optics-group mapping once
    return table


def write_star(path: str | Path, table: StarTable) -> None:
    """Write ``table`` atomically: optics block first (if any), then the particles block."""
    blocks = {}
    if table.optics is not None:
        blocks[OPTICS_BLOCK] = table.optics
    name = table.particles_block if table.optics is None else "particles"
    blocks[name] = table.particles
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp)


# --------------------------------------------------------------------------- image names

def split_image_names(names) -> tuple[np.ndarray, list[str]]:
    """``'NNNNNN@stack.mrcs'`` -> (0-based index (n,) int64, stack paths).

    A name without ``@`` is a single-image file (index 0). Raises ValueError naming the
    first malformed row (0-based).
    """
    names = [str(x).strip() for x in names]
    parts = [x.partition("@") for x in names]  # (head, '@' or '', tail); fast for 1e6 rows
    heads = [h.strip() if sep else "1" for h, sep, _ in parts]
    paths = [t.strip() if sep else h for h, sep, t in parts]
    ok = np.fromiter((h.isdigit() and p != "" for h, p in zip(heads, paths)), dtype=bool, count=len(names))
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"row {row}: malformed _rlnImageName {names[row]!r}")
    index = np.array(heads, dtype=np.int64) - 1
    if (index < 0).any():
        row = int(np.flatnonzero(index < 0)[0])
        raise ValueError(f"row {row}: _rlnImageName {names[row]!r} has index 0 (RELION counts from 1)")
    return index, paths


def image_names_for_stack(stack: str | Path, n: int) -> list[str]:
    """RELION image names ``000001@stack`` .. for the n images of one stack."""
    width = max(6, len(str(n)))
    return [f"{i + 1:0{width}d}@{stack}" for i in range(n)]


# --------------------------------------------------------------------------- writer


def write_relion31_star(path: str | Path, image_names, *, poses: Poses | None = None,
                        ctf: CtfParams | None = None, pixel_size_angstrom: float | None = None,
                        image_size: int | None = None) -> None:
    """Write a RELION 3.1 STAR file (optics + particles) for images ``image_names``.

    ``pixel_size_angstrom`` and ``image_size`` describe the named images; they default
    to the CTF table's Apix and D. One optics group per distinct (pixel size, voltage,
    Cs, amplitude contrast). Particle columns: ``rlnImageName``, ``rlnOpticsGroup``, the
    CTF (``rlnDefocusU/V/Angle``, ``rlnPhaseShift``) if ``ctf`` is given, and
    ``rlnAngleRot/Tilt/Psi`` plus ``rlnOriginXAngst/YAngst`` (= trans_frac * D * Apix)
    if ``poses`` is given.
    """
    from ..rotations import matrix_to_relion_euler

    names = [str(s) for s in image_names]
    n = len(names)
    for what, obj in (("poses", poses), ("ctf", ctf)):
        if obj is not None and len(obj) != n:
            raise ValueError(f"{what} has {len(obj)} rows for {n} image names")
    apix = np.full(n, np.nan) if pixel_size_angstrom is None else np.full(n, float(pixel_size_angstrom))
    box = None if image_size is None else np.full(n, int(image_size))
    if ctf is not None:
        if pixel_size_angstrom is None:
            apix = ctf.pixel_size_angstrom.astype(np.float64)
        if box is None:
            box = np.rint(ctf.image_size).astype(np.int64)
    if box is None or np.isnan(apix).any():
        raise ValueError("pixel_size_angstrom and image_size are needed (or a CTF table that holds them)")

    optics_cols = {"rlnImagePixelSize": apix, "rlnImageSize": box}
    if ctf is not None:
        optics_cols.update(rlnVoltage=ctf.voltage_kv.astype(np.float64),
                           rlnSphericalAberration=ctf.cs_mm.astype(np.float64),
                           rlnAmplitudeContrast=ctf.amplitude_contrast.astype(np.float64))
    keys = pd.DataFrame(optics_cols)
    groups = keys.drop_duplicates().reset_index(drop=True)
    group_of = keys.merge(groups.reset_index(), on=list(optics_cols), how="left")["index"].to_numpy() + 1
    optics = pd.DataFrame({"rlnOpticsGroup": np.arange(1, len(groups) + 1),
                           "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(groups) + 1)]})
    for c in optics_cols:
        optics[c] = groups[c].to_numpy()
    optics["rlnImageDimensionality"] = 2

    particles = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": group_of.astype(np.int64)})
    if ctf is not None:
        particles["rlnDefocusU"] = ctf.defocus_u_angstrom.astype(np.float64)
        particles["rlnDefocusV"] = ctf.defocus_v_angstrom.astype(np.float64)
        particles["rlnDefocusAngle"] = ctf.defocus_angle_deg.astype(np.float64)
        particles["rlnPhaseShift"] = ctf.phase_shift_deg.astype(np.float64)
    if poses is not None:
        euler = matrix_to_relion_euler(poses.rots.astype(np.float64)).numpy()  # (n, 3) degrees
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = euler.T
        trans = np.zeros((n, 2)) if poses.trans_frac is None else poses.trans_frac.astype(np.float64)
        shift_angstrom = trans * (box * apix)[:, None]  # (n, 2)
        particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = shift_angstrom.T
    write_star(path, StarTable(particles, optics))
