"""Make the demo structures ``adk_open.pdb.gz`` and ``adk_closed.pdb.gz`` from the
MDAnalysisTests 2.11.0 source distribution (see README.md in this folder).

    pip download MDAnalysisTests==2.11.0 --no-deps --no-binary :all: -d /tmp/mdat
    python data_demo/make_demo_structures.py /tmp/mdat/mdanalysistests-2.11.0.tar.gz

Steps, identical for both states:

1. read ``MDAnalysisTests/data/adk_open.pdb`` (PDB 4AKE) and ``adk_closed.pdb`` (PDB 1AKE)
   straight from the tarball (its SHA-256 is checked first);
2. keep heavy atoms only; the files are CHARMM-style PDBs without element columns and
   with atom names starting in column 13, so the element is taken from the first letter
   of the atom name (only C, N, O, S, H occur; H dropped);
3. check that both states list the same atoms (residue number, residue name, atom name)
   in the same order;
4. superpose the closed state onto the open one by a Kabsch fit of the CA atoms of the
   CORE domain (residues 1-29, 60-121, 160-214; NMP 30-59 and LID 122-159 move);
5. translate both states by the same vector so that the mean of their two centres of
   mass (atomic masses of the heavy atoms) sits at the origin;
6. write standard PDB files (element columns filled, chain ``A``) and gzip them without a
   timestamp, so rerunning the script reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import tarfile
from pathlib import Path

import gemmi
import numpy as np

SDIST_SHA256 = "5edeb5b01805da728b202103aa8d2b5974a37f1005ab1fe0150ed7d59702d2ea"
MEMBER = "mdanalysistests-2.11.0/MDAnalysisTests/data/{}.pdb"
STATES = (("adk_open", "4AKE", "open"), ("adk_closed", "1AKE", "closed"))
CORE_RESIDUES = [*range(1, 30), *range(60, 122), *range(160, 215)]
ELEMENTS = {"C", "N", "O", "S", "H"}


def read_member(tar: tarfile.TarFile, name: str) -> str:
    f = tar.extractfile(MEMBER.format(name))
    if f is None:
        raise SystemExit(f"{MEMBER.format(name)} is missing from the tarball")
    return f.read().decode("ascii")


def heavy_atoms(pdb_text: str):
    """(ids [(resnum, resname, atom name)], elements, coords (n, 3), b-factors) of heavy atoms."""
    st = gemmi.read_pdb_string(pdb_text)
    ids, elements, coords, bfac = [], [], [], []
    for res in st[0][0]:
        for atom in res:
            element = atom.name.lstrip("0123456789")[0]
            if element not in ELEMENTS:
                raise SystemExit(f"unexpected atom name {atom.name} in {res.name}{res.seqid.num}")
            if element == "H":
                continue
            ids.append((res.seqid.num, res.name, atom.name))
            elements.append(element)
            coords.append([atom.pos.x, atom.pos.y, atom.pos.z])
            bfac.append(atom.b_iso)
    return ids, elements, np.asarray(coords, dtype=np.float64), np.asarray(bfac)


def kabsch(mobile: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation c with ``mobile @ R.T + c`` best fitting ``target`` (both (m, 3))."""
    mc, tc = mobile.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((mobile - mc).T @ (target - tc))
    sign = np.sign(np.linalg.det(u @ vt))
    rot = (u @ np.diag([1.0, 1.0, sign]) @ vt).T
    return rot, tc - mc @ rot.T


def write_pdb_gz(path: Path, ids, elements, coords, bfac, remarks: list[str]) -> None:
    st = gemmi.Structure()
    st.name = path.name.split(".")[0]
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    residue = None
    for (num, resname, name), element, xyz, b in zip(ids, elements, coords, bfac):
        if residue is None or residue.seqid.num != num:
            if residue is not None:
                chain.add_residue(residue)
            residue = gemmi.Residue()
            residue.name, residue.seqid, residue.het_flag = resname, gemmi.SeqId(num, " "), "A"
        atom = gemmi.Atom()
        atom.name, atom.element = name, gemmi.Element(element)
        atom.pos, atom.occ, atom.b_iso = gemmi.Position(*xyz), 1.0, float(b)
        residue.add_atom(atom)
    chain.add_residue(residue)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    options = gemmi.PdbWriteOptions(minimal_file=True, cryst1_record=False)
    text = "".join(f"REMARK 250 {line}\n" for line in remarks) + st.make_pdb_string(options)
    write_gz(path, text)


def write_gz(path: Path, text: str) -> None:
    """``text`` gzipped without a timestamp, so that a rerun gives the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode("ascii"))


def sdist_args(doc: str) -> argparse.Namespace:
    """The command line of the scripts in this folder (the sdist, ``-o``), with the sdist's
    SHA-256 checked."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help="mdanalysistests-2.11.0.tar.gz")
    parser.add_argument("-o", "--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    digest = hashlib.sha256(args.sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{args.sdist}: SHA-256 {digest} is not the MDAnalysisTests 2.11.0 sdist")
    return args


def main() -> None:
    args = sdist_args(__doc__)

    with tarfile.open(args.sdist) as tar:
        states = {name: heavy_atoms(read_member(tar, name)) for name, _, _ in STATES}
    (ids_o, el_o, xyz_o, b_o), (ids_c, el_c, xyz_c, b_c) = states["adk_open"], states["adk_closed"]
    if ids_o != ids_c or el_o != el_c:
        raise SystemExit("the open and closed files do not list the same atoms")

    core_ca = np.array([i for i, (num, _, name) in enumerate(ids_o) if name == "CA" and num in CORE_RESIDUES])
    rot, shift = kabsch(xyz_c[core_ca], xyz_o[core_ca])
    xyz_c = xyz_c @ rot.T + shift
    mass = np.array([gemmi.Element(e).weight for e in el_o])
    com_o, com_c = (mass @ xyz_o) / mass.sum(), (mass @ xyz_c) / mass.sum()
    centre = 0.5 * (com_o + com_c)
    xyz_o, xyz_c = xyz_o - centre, xyz_c - centre

    all_ca = np.array([i for i, (_, _, name) in enumerate(ids_o) if name == "CA"])
    rmsd = lambda idx: float(np.sqrt(((xyz_o[idx] - xyz_c[idx]) ** 2).sum(1).mean()))  # noqa: E731
    print(f"{len(ids_o)} heavy atoms per state; {len(core_ca)} CORE CA atoms fitted")
    print(f"CA RMSD open vs closed: CORE {rmsd(core_ca):.2f} A, all {rmsd(all_ca):.2f} A")
    for label, xyz in (("open", xyz_o), ("closed", xyz_c)):
        com = (mass @ xyz) / mass.sum()
        rg = float(np.sqrt((mass @ ((xyz - com) ** 2).sum(1)) / mass.sum()))
        extent = float(np.max(np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)))
        print(f"{label}: centre of mass {np.round(com, 2)} A, Rg {rg:.1f} A, max extent {extent:.1f} A, "
              f"max |r| {np.linalg.norm(xyz, axis=1).max():.1f} A")

    for (name, pdb_id, label), (xyz, bfac) in zip(STATES, ((xyz_o, b_o), (xyz_c, b_c))):
        remarks = [f"Adenylate kinase (E. coli), {label} state, PDB {pdb_id}, heavy atoms only.",
                   "Source: MDAnalysisTests 2.11.0 (PyPI), MDAnalysisTests/data/" + name + ".pdb.",
                   "Made by data_demo/make_demo_structures.py (cryofire_nb): CORE-domain CA",
                   "Kabsch fit of closed onto open, then both moved so that the mean of their",
                   "two centres of mass is at the origin. B-factors as in the source file."]
        write_pdb_gz(args.out_dir / f"{name}.pdb.gz", ids_o, el_o, xyz, bfac, remarks)
        print(f"wrote {args.out_dir / (name + '.pdb.gz')}")


if __name__ == "__main__":
    main()
