"""Simulator physics: reading states, conformations, atom densities and projections."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.fft import ifft2_center
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import random_rotations
from cryofire_nb.simulate import (Conformations, project_atoms, read_atoms, read_conformations,
                                  scattering_from_elements, scattering_from_weights, volume_from_atoms)

DEMO = Path(__file__).resolve().parents[1] / "data_demo"
OPEN, CLOSED = DEMO / "adk_open.pdb.gz", DEMO / "adk_closed.pdb.gz"
CORE = [*range(1, 30), *range(60, 122), *range(160, 215)]


@pytest.fixture(scope="module")
def adk() -> Conformations:
    return read_conformations([OPEN, CLOSED])


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# --------------------------------------------------------------------------- demo data


def test_demo_structures_are_heavy_atoms_superposed_and_centred(adk):
    assert adk.n_states == 2 and adk.n_atoms == 1656
    assert set(adk.elements) == {"C", "N", "O", "S"}
    # CORE CA already superposed: a fresh Kabsch fit finds (nearly) nothing to rotate.
    resnum = [int(a.split()[1].split("/")[0]) for a in adk.atom_ids]  # 'A/MET 1/CA' -> 1
    ca = np.array([i for i, a in enumerate(adk.atom_ids) if a.endswith("/CA") and resnum[i] in CORE])
    x, y = adk.states_angstrom[1][ca], adk.states_angstrom[0][ca]
    u, _, vt = np.linalg.svd((x - x.mean(0)).T @ (y - y.mean(0)))
    angle = math.degrees(math.acos(np.clip((np.trace(u @ vt) - 1) / 2, -1, 1)))
    assert angle < 0.05
    assert np.linalg.norm(x.mean(0) - y.mean(0)) < 0.01
    # The two states really differ (LID/NMP motion) and their mean centre of mass is the origin.
    mass = np.array([gemmi.Element(e).weight for e in adk.elements])
    coms = [(mass @ s) / mass.sum() for s in adk.states_angstrom]
    assert np.linalg.norm(0.5 * (coms[0] + coms[1])) < 1e-3
    rmsd_all = np.sqrt(((adk.states_angstrom[0] - adk.states_angstrom[1]) ** 2).sum(-1).mean())
    assert rmsd_all > 5.0


# --------------------------------------------------------------------------- atoms


def _write_pdb(path: Path, model) -> None:
    st = gemmi.read_structure(str(OPEN))
    model(st)
    text = st.make_pdb_string(gemmi.PdbWriteOptions(minimal_file=True))
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())


def test_mismatched_states_raise_input_error_naming_the_file(tmp_path):
    short = tmp_path / "short.pdb"
    _write_pdb(short, lambda st: st[0][0][5].__delitem__(0))  # one atom fewer
    with pytest.raises(InputError, match="short.pdb.*1655 heavy atoms"):
        read_conformations([OPEN, short])
    renamed = tmp_path / "renamed.pdb"

    def rename(st):
        st[0][0][5].name = "GLY"
    _write_pdb(renamed, rename)
    with pytest.raises(InputError, match="renamed.pdb.*GLY"):
        read_conformations([OPEN, renamed])


def test_missing_element_columns_are_refused(tmp_path):
    # CHARMM-style line: atom name starting in column 13, no element columns -> 'CA' = calcium.
    line = "ATOM      2 CA   ALA     1       1.000   2.000   3.000  1.00  0.00      PROT"
    path = tmp_path / "charmm.pdb"
    path.write_text(line + "\nEND\n")
    with pytest.raises(InputError, match="element"):
        read_atoms(path)


def test_mmcif_and_pdb_read_the_same_atoms(tmp_path):
    cif = tmp_path / "open.cif"
    st = gemmi.read_structure(str(OPEN))
    st.setup_entities()
    st.make_mmcif_document().write_file(str(cif))
    a, b = read_atoms(OPEN), read_atoms(cif)
    assert a.atom_ids == b.atom_ids and a.elements == b.elements
    np.testing.assert_allclose(a.coords_angstrom, b.coords_angstrom, atol=1e-3)
    assert a.atomic_numbers[a.elements.index("S")] == 16


def test_path_endpoints_equal_states_and_is_piecewise_linear():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(3, 7, 3))
    conf = Conformations(states, ("C",) * 7, np.full(7, 6), tuple(str(i) for i in range(7)))
    out = conf.along_path([0.0, 0.5, 1.0, 0.25, 0.9])
    np.testing.assert_array_equal(out[0], states[0])
    np.testing.assert_array_equal(out[1], states[1])
    np.testing.assert_array_equal(out[2], states[2])
    np.testing.assert_allclose(out[3], 0.5 * (states[0] + states[1]))
    np.testing.assert_allclose(out[4], 0.2 * states[1] + 0.8 * states[2])
    np.testing.assert_array_equal(conf.of_labels([2, 0]), states[[2, 0]])


# --------------------------------------------------------------------------- density


@pytest.mark.parametrize("d", [16, 17])
def test_identity_projection_is_exact_sum_of_volume_along_z(adk, d):
    scat = scattering_from_elements(adk.elements)
    apix = 96.0 / d
    vol = volume_from_atoms(adk.states_angstrom[0], scat, d, apix, 30.0, dtype=torch.float64)
    f = project_atoms(adk.states_angstrom[0], scat, torch.eye(3)[None], d, apix, 30.0, dtype=torch.complex128)
    torch.testing.assert_close(ifft2_center(f).real[0], vol.sum(0), rtol=0, atol=1e-9 * vol.abs().max().item() * d)


def test_projection_of_volume_agrees_with_direct_atom_projection(adk):
    scat = scattering_from_elements(adk.elements)
    d, apix = 32, 2.9
    rots = random_rotations(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coords = adk.along_path([0.3])[0]
    vol = volume_from_atoms(coords, scat, d, apix, 50.0, dtype=torch.float64)
    via_volume = project_fourier(vol, rots)
    direct = ifft2_center(project_atoms(coords, scat, rots, d, apix, 50.0)).real
    for i in range(6):
        assert _corr(via_volume[i], direct[i]) >= 0.99


def test_image_sum_is_total_scattering_over_voxel_volume(adk):
    scat = scattering_from_elements(adk.elements)
    apix = 2.5
    f = project_atoms(adk.states_angstrom[1], scat, random_rotations(2, torch.Generator().manual_seed(0)), 32, apix)
    total = sum(scat.amplitude[s].sum() * np.sum(scat.species_of_atom == s) for s in range(scat.n_species))
    img = ifft2_center(f).real.double()
    np.testing.assert_allclose(img.sum((1, 2)).numpy(), total / apix ** 3, rtol=1e-4)


def test_off_centre_atom_lands_at_rotated_position():
    a = np.array([[7.3, -4.1, 5.6]])  # Angstrom
    d, apix = 48, 0.8
    rot = random_rotations(1, torch.Generator().manual_seed(3), dtype=torch.float64)
    img = ifft2_center(project_atoms(a, [1.0], rot, d, apix, 20.0, dtype=torch.complex128)).real[0]
    r = torch.arange(d, dtype=torch.float64) - d // 2
    centroid = np.array([(img.sum(0) * r).sum() / img.sum(), (img.sum(1) * r).sum() / img.sum()])  # (x, y) px
    expected = (rot[0].numpy() @ a[0])[:2] / apix
    np.testing.assert_allclose(centroid, expected, atol=0.02)
    peak = np.unravel_index(int(img.argmax()), img.shape)  # (row, column) = (y, x)
    assert (peak[1] - d // 2, peak[0] - d // 2) == tuple(np.round(expected).astype(int))


def test_volume_atom_position_and_bfactor_width():
    a = np.array([[3.0, -2.0, 4.5]])
    d, apix, bfac = 48, 0.5, 80.0
    vol = volume_from_atoms(a, [1.0], d, apix, bfac, dtype=torch.float64)
    r = torch.arange(d, dtype=torch.float64) - d // 2
    m = vol.sum()
    mean_x = (vol.sum((0, 1)) * r).sum() / m  # volume is [z, y, x]
    mean_z = (vol.sum((1, 2)) * r).sum() / m
    np.testing.assert_allclose([mean_x * apix, mean_z * apix], [3.0, 4.5], atol=1e-3)
    var_x = (vol.sum((0, 1)) * (r - mean_x) ** 2).sum() / m * apix ** 2  # Angstrom^2
    np.testing.assert_allclose(var_x, bfac / (8 * math.pi ** 2), rtol=0.01)


def test_scattering_kinds():
    elec = scattering_from_elements(["C", "O", "C"], "electron")
    z = scattering_from_elements(["C", "O", "C"], "atomic_number")
    assert elec.amplitude.shape == (2, 5) and z.amplitude[:, 0].tolist() == [6, 8]
    # electron form factor at q=0 equals gemmi's tabulated value (International Tables C 4.3.2.2)
    assert elec.form_factor(torch.zeros(1, dtype=torch.float64), 0).item() == pytest.approx(
        gemmi.Element("C").c4322.calculate_sf(0.0), rel=1e-6)
    w = scattering_from_weights([1.0, 2.0])
    assert w.atom_weight.tolist() == [1.0, 2.0]
