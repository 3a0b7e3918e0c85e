"""Make the second benchmark molecule, ``tcr_tilt_{m15,0,p15}.pdb.gz``: a T-cell receptor
bound to a peptide-MHC, with the receptor tilted rigidly on the MHC, from the structure
PDB 1BD2 that MDAnalysisTests 2.11.0 ships (see README.md in this folder).

    pip download MDAnalysisTests==2.11.0 --no-deps --no-binary :all: -d /tmp/mdat
    python data_demo/make_tcr_structures.py /tmp/mdat/mdanalysistests-2.11.0.tar.gz

Where the adenylate kinase sets test a domain closing onto a core inside a 24 kDa
protein, this molecule tests a different motion of a larger, elongated complex
(~90 kDa, 5 chains): half of its mass swings as one rigid body about a hinge. The
motion is synthetic (a rigid rotation applied here), not a measured one.

Steps:

1. read ``MDAnalysisTests/data/mmcif/1BD2.pdb.gz`` straight from the tarball (its SHA-256
   is checked first): HLA-A*02:01 heavy chain (A), beta-2 microglobulin (B), the Tax
   peptide (C), TCR B7 alpha (D) and beta (E);
2. keep the heavy atoms of the polymer chains (waters dropped; the entry has no
   alternative locations or ligands, which is checked);
3. the hinge: the centroid of the TCR's CA atoms within 10 A of any peptide-MHC atom;
   the axis: perpendicular to the line from the peptide-MHC's centre of mass to the
   TCR's and to the peptide's direction (its first to last CA), so a rotation about it
   tilts the TCR along the peptide-binding groove;
4. rotate chains D and E about that axis through the hinge by -15, 0 and +15 degrees
   (three states, so that the simulator's piecewise-linear path between neighbours
   stays within 0.8 A of the rigid rotation);
5. translate all states by one vector so that the mean of their centres of mass
   (atomic masses of the heavy atoms) sits at the origin;
6. write PDB files (element columns from the source, CRYST1 dropped) and gzip them
   without a timestamp, so rerunning the script reproduces the files byte for byte.
"""

from __future__ import annotations

import gzip
import tarfile

import gemmi
import numpy as np
from make_demo_structures import sdist_args, write_gz  # the same sdist, checked the same way

MEMBER = "mdanalysistests-2.11.0/MDAnalysisTests/data/mmcif/1BD2.pdb.gz"
PMHC, TCR = ("A", "B", "C"), ("D", "E")
ANGLES_DEG = (("m15", -15.0), ("0", 0.0), ("p15", 15.0))
CONTACT_ANGSTROM = 10.0


def rotation_about(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """3x3 rotation by ``angle_deg`` about the unit vector ``axis`` (right-handed)."""
    a = np.deg2rad(angle_deg)
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(a) * k + (1.0 - np.cos(a)) * (k @ k)


def atoms(st: gemmi.Structure):
    """[(chain, residue index, atom index)], coords (n, 3), masses (n,), CA flags (n,)."""
    index, xyz, mass, ca = [], [], [], []
    for chain in st[0]:
        for ri, res in enumerate(chain):
            for ai, atom in enumerate(res):
                index.append((chain.name, ri, ai))
                xyz.append(atom.pos.tolist())
                mass.append(atom.element.weight)
                ca.append(atom.name == "CA")
    return index, np.asarray(xyz), np.asarray(mass), np.asarray(ca)


def main() -> None:
    args = sdist_args(__doc__)
    with tarfile.open(args.sdist) as tar:
        f = tar.extractfile(MEMBER)
        if f is None:
            raise SystemExit(f"{MEMBER} is missing from the tarball")
        text = gzip.decompress(f.read()).decode("ascii")

    st = gemmi.read_pdb_string(text)
    st.setup_entities()
    st.remove_waters()
    st.remove_hydrogens()
    st.remove_empty_chains()
    while len(st) > 1:
        del st[len(st) - 1]
    chains = [c.name for c in st[0]]
    if chains != [*PMHC, *TCR]:
        raise SystemExit(f"expected chains {PMHC + TCR}, found {chains}")
    for chain in st[0]:
        for res in chain:
            if res.het_flag == "H":
                raise SystemExit(f"unexpected ligand {res.name} in chain {chain.name}")
            if any(atom.altloc != "\0" for atom in res):
                raise SystemExit(f"alternative locations in {chain.name}/{res.name}{res.seqid.num}")

    index, xyz, mass, is_ca = atoms(st)
    on_tcr = np.array([c in TCR for c, _, _ in index])
    pmhc_xyz = xyz[~on_tcr]
    tcr_ca = np.flatnonzero(on_tcr & is_ca)
    near = np.array([np.min(np.linalg.norm(pmhc_xyz - xyz[i], axis=1)) < CONTACT_ANGSTROM for i in tcr_ca])
    hinge = xyz[tcr_ca[near]].mean(0)
    com = lambda sel: (mass[sel] @ xyz[sel]) / mass[sel].sum()  # noqa: E731
    up = com(on_tcr) - com(~on_tcr)
    pep_ca = np.flatnonzero(np.array([c == "C" for c, _, _ in index]) & is_ca)
    groove = xyz[pep_ca[-1]] - xyz[pep_ca[0]]
    axis = np.cross(up, groove)
    axis /= np.linalg.norm(axis)

    states = {}
    for label, angle in ANGLES_DEG:
        rot = rotation_about(axis, angle)
        moved = xyz.copy()
        moved[on_tcr] = (xyz[on_tcr] - hinge) @ rot.T + hinge
        states[label] = moved
    centre = np.mean([(mass @ s) / mass.sum() for s in states.values()], axis=0)
    states = {k: s - centre for k, s in states.items()}

    print(f"{len(index)} heavy atoms ({int(on_tcr.sum())} on the TCR); hinge from {int(near.sum())} TCR CA atoms "
          f"within {CONTACT_ANGSTROM:g} A of the peptide-MHC; axis {np.round(axis, 3)}")
    ca = np.flatnonzero(is_ca)
    ends = states["m15"], states["p15"]
    rmsd = float(np.sqrt(((ends[0][ca] - ends[1][ca]) ** 2).sum(1).mean()))
    far = float(np.linalg.norm(ends[0][on_tcr] - ends[1][on_tcr], axis=1).max())
    print(f"CA RMSD between the end states {rmsd:.2f} A; largest atom displacement {far:.1f} A")
    mid_chord = 0.5 * (states["m15"] + states["0"])
    rigid_mid = (xyz - centre).copy()
    rigid_mid[on_tcr] = (xyz[on_tcr] - hinge) @ rotation_about(axis, -7.5).T + hinge - centre
    print(f"piecewise-linear path vs rigid rotation: at most {np.linalg.norm(mid_chord - rigid_mid, axis=1).max():.2f} A")
    for label, s in states.items():
        c = (mass @ s) / mass.sum()
        rg = float(np.sqrt((mass @ ((s - c) ** 2).sum(1)) / mass.sum()))
        print(f"state {label}: Rg {rg:.1f} A, max |r| {np.linalg.norm(s, axis=1).max():.1f} A")

    for label, angle in ANGLES_DEG:
        out = st.clone()
        coords = states[label]
        k = 0
        for chain in out[0]:
            for res in chain:
                for atom in res:
                    atom.pos = gemmi.Position(*coords[k])
                    k += 1
        remarks = ["T-cell receptor B7 on HLA-A*02:01 / Tax peptide (PDB 1BD2), heavy atoms only;",
                   f"TCR chains D and E rotated rigidly by {angle:+g} deg about an axis through their",
                   "interface with the peptide-MHC (a synthetic tilt along the peptide groove).",
                   "Source: MDAnalysisTests 2.11.0 (PyPI), MDAnalysisTests/data/mmcif/1BD2.pdb.gz.",
                   "Made by data_demo/make_tcr_structures.py (cryofire_nb); all states moved so",
                   "that the mean of their centres of mass is at the origin."]
        options = gemmi.PdbWriteOptions(minimal_file=True, cryst1_record=False)
        body = "".join(f"REMARK 250 {line}\n" for line in remarks) + out.make_pdb_string(options)
        path = args.out_dir / f"tcr_tilt_{label}.pdb.gz"
        write_gz(path, body)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
