"""Atomic models and their conformations.

Read PDB / mmCIF files (optionally gzipped) with gemmi, keep the heavy atoms of the
first model (first alternative location, waters dropped), and combine two or more
states of the same molecule into a :class:`Conformations` object that makes per-particle
coordinates:

* continuous heterogeneity: ``t`` in [0, 1] walks piecewise linearly through the states
  (state ``j`` of ``k`` sits at ``t = j / (k - 1)``; two states give plain linear
  interpolation of the coordinates);
* discrete heterogeneity: integer labels pick one of the ``k`` states.

Coordinates are in Angstrom in the frame of the files (the simulator does not centre
them: centre the states when you prepare them, as ``data_demo/make_demo_structures.py``
does).

Dimension letters: n atoms, k states, b particles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from ..errors import InputError

# Elements that can occur in standard protein / nucleic-acid residues. Anything else there
# means the element columns are missing and gemmi guessed from a misaligned atom name
# ('CA' read as calcium, 'HG1' as mercury): common in CHARMM / MD-written PDB files.
_POLYMER_ELEMENTS = {"H", "D", "C", "N", "O", "S", "Se", "P"}


@dataclass(frozen=True)
class AtomicModel:
    """Heavy atoms of one structure file."""

    coords_angstrom: np.ndarray  # (n, 3) float64, x y z
    elements: tuple[str, ...]  # (n,) element symbols, e.g. 'C'
    atomic_numbers: np.ndarray  # (n,) int64
    atom_ids: tuple[str, ...]  # (n,) 'chain/resname resnum/atom', e.g. 'A/MET 1/CA'
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.elements)


def read_atoms(path: str | Path, heavy_only: bool = True) -> AtomicModel:
    """Read the first model of a PDB / mmCIF file (``.gz`` allowed) with gemmi."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "structure file not found", "check the path in the config")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(path, f"gemmi cannot read this structure ({err})",
                         "pass a PDB or mmCIF file (optionally .gz)") from err
    if len(st) == 0:
        raise InputError(path, "the file has no models", "pass a PDB or mmCIF file with coordinates")
    st.remove_alternative_conformations()
    st.remove_waters()
    coords, elements, numbers, ids = [], [], [], []
    for chain in st[0]:
        for res in chain:
            info = gemmi.find_tabulated_residue(res.name)
            polymer = info is not None and (info.is_amino_acid() or info.is_nucleic_acid())
            for atom in res:
                el = atom.element
                if heavy_only and el.is_hydrogen:
                    continue
                atom_id = f"{chain.name}/{res.name} {res.seqid.num}{res.seqid.icode.strip()}/{atom.name}"
                if el.atomic_number == 0 or (polymer and el.name not in _POLYMER_ELEMENTS):
                    raise InputError(path, f"atom {atom_id} has element {el.name!r}",
                                     "write element symbols in columns 77-78 of the PDB file "
                                     "(gemmi guesses them from the atom name otherwise)")
                coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
                elements.append(el.name)
                numbers.append(el.atomic_number)
                ids.append(atom_id)
    if not coords:
        raise InputError(path, "no atoms found", "pass a structure file with atom records")
    return AtomicModel(np.asarray(coords, dtype=np.float64), tuple(elements),
                       np.asarray(numbers, dtype=np.int64), tuple(ids), path)


@dataclass(frozen=True)
class Conformations:
    """``k >= 1`` states of one molecule with the same atoms in the same order."""

    states_angstrom: np.ndarray  # (k, n, 3) float64
    elements: tuple[str, ...]  # (n,)
    atomic_numbers: np.ndarray  # (n,) int64
    atom_ids: tuple[str, ...]  # (n,)

    @property
    def n_states(self) -> int:
        return self.states_angstrom.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.states_angstrom.shape[1]

    def along_path(self, t) -> np.ndarray:
        """Coordinates (b, n, 3) at path positions ``t`` (b,) in [0, 1], piecewise linear
        through the states (state j at ``t = j / (k - 1)``)."""
        t = np.clip(np.asarray(t, dtype=np.float64).reshape(-1), 0.0, 1.0)
        k = self.n_states
        if k == 1:
            return np.broadcast_to(self.states_angstrom, (t.size, self.n_atoms, 3)).copy()
        pos = t * (k - 1)  # (b,)
        seg = np.minimum(np.floor(pos).astype(np.int64), k - 2)  # (b,) segment index
        frac = (pos - seg)[:, None, None]  # (b, 1, 1)
        s = self.states_angstrom
        return (1.0 - frac) * s[seg] + frac * s[seg + 1]

    def of_labels(self, labels) -> np.ndarray:
        """Coordinates (b, n, 3) of the discrete states ``labels`` (b,) int."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_states):
            raise ValueError(f"labels must lie in [0, {self.n_states - 1}]")
        return self.states_angstrom[labels]


def conformations_from_models(models: list[AtomicModel]) -> Conformations:
    """Stack states; raises InputError naming the file whose atoms differ from the first."""
    if not models:
        raise ValueError("need at least one structure")
    ref = models[0]
    for m in models[1:]:
        if len(m) != len(ref):
            raise InputError(m.path, f"has {len(m)} heavy atoms but {ref.path} has {len(ref)}",
                             "all states must contain the same atoms in the same order")
        if m.atom_ids != ref.atom_ids or m.elements != ref.elements:
            i = next(j for j in range(len(ref)) if (m.atom_ids[j], m.elements[j]) != (ref.atom_ids[j], ref.elements[j]))
            raise InputError(m.path, f"atom {i} is {m.atom_ids[i]} ({m.elements[i]}) but in {ref.path} it is "
                             f"{ref.atom_ids[i]} ({ref.elements[i]})",
                             "all states must contain the same atoms in the same order "
                             "(same chain, residue and atom names)")
    states = np.stack([m.coords_angstrom for m in models])  # (k, n, 3)
    return Conformations(states, ref.elements, ref.atomic_numbers, ref.atom_ids)


def read_conformations(paths, heavy_only: bool = True) -> Conformations:
    """Read ``k`` structure files of one molecule as states (see :class:`Conformations`)."""
    return conformations_from_models([read_atoms(p, heavy_only) for p in paths])


def write_interpolated_structure(paths, t: float, out_path: str | Path) -> Path:
    """Write the structure at path position ``t`` in [0, 1] between the states ``paths``
    (two or more files of one molecule, same heavy atoms in the same order) as a PDB file.

    The coordinates are :meth:`Conformations.along_path` (piecewise linear through the
    states: two states give ``(1 - t) * first + t * second``); the atom records (names,
    residues, elements) are those of the first file with hydrogens, waters, alternative
    locations and all models but the first removed. Use it to add an intermediate state
    to a discrete simulation, e.g. ``structures: [open, mid, closed]`` with ``mid`` the
    file written here at ``t = 0.5``. Linear interpolation of coordinates is a
    geometric stand-in for a real intermediate (bond lengths are not kept exactly).
    Written atomically; returns ``out_path``.
    """
    from ..io._atomic import atomic_path

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise InputError(None, f"need at least two structure files, got {len(paths)}", "list two or more states")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise InputError(None, f"path position t={t} is outside [0, 1]", "choose t between 0 and 1")
    coords = read_conformations(paths).along_path([t])[0]  # (n, 3)
    st = gemmi.read_structure(str(paths[0]))
    st.remove_alternative_conformations()
    st.remove_waters()
    st.remove_hydrogens()
    while len(st) > 1:
        del st[len(st) - 1]
    atoms = [atom for chain in st[0] for res in chain for atom in res]
    if len(atoms) != len(coords):  # read_atoms keeps exactly these atoms; guard anyway
        raise InputError(paths[0], f"{len(atoms)} heavy atoms written but {len(coords)} read",
                         "pass plain PDB / mmCIF files without unusual records")
    for atom, (x, y, z) in zip(atoms, coords):
        atom.pos = gemmi.Position(float(x), float(y), float(z))
    out = Path(out_path)
    with atomic_path(out) as tmp:
        st.write_pdb(str(tmp))
    return out


def radius_of_gyration(coords_angstrom) -> np.ndarray | float:
    """Radius of gyration (Angstrom) of atoms (n, 3), or of each state of (k, n, 3):
    ``sqrt(mean_i |a_i - mean(a)|^2)`` with every atom weighted equally (a geometric
    size; heavy atoms only when the coordinates come from :func:`read_atoms`)."""
    a = np.asarray(coords_angstrom, dtype=np.float64)
    if a.ndim not in (2, 3) or a.shape[-1] != 3 or a.shape[-2] == 0:
        raise ValueError(f"coordinates must be (n, 3) or (k, n, 3) with n >= 1, got {a.shape}")
    centred = a - a.mean(axis=-2, keepdims=True)
    rg = np.sqrt((centred ** 2).sum(-1).mean(-1))
    return float(rg) if a.ndim == 2 else rg
