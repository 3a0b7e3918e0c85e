"""RELION STAR reading (3.0, 3.1, 5; optics before/after particles) and writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryofire_nb.errors import InputError
from cryofire_nb.io.star import (StarTable, image_names_for_stack, read_star, split_image_names,
                                 write_star)



@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def _plain_star_blocks(path: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Tiny independent STAR reader for the tests: block -> (column names, rows of words)."""
    blocks, name = {}, None
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("data_"):
            name = s[5:]
            blocks[name] = ([], [])
        elif name is None or not s or s.startswith("#") or s.startswith("loop_"):
            continue
        elif s.startswith("_"):
            blocks[name][0].append(s.split()[0][1:])
        else:
            blocks[name][1].append(s.split())
    return blocks


@pytest.mark.parametrize("name, n, version", [
    ("toy_projections.star", 1000, "3.0"),
    ("toy_projections_13.star", 13, "3.1+"),
    ("relion31.star", 5, "3.1+"),
    ("relion31.v2.star", 5, "3.1+"),
    ("relion31.6opticsgroups.star", 139, "3.1+"),
    ("relion5.star", 17, "3.1+"),
    ("FinalRefinement-OriginalParticles-PfCRT.star", 5, "3.0"),
    ("empiar_10076_7.star", 7, "3.0"),
])
def test_every_fixture_parses(name, n, version, fix):
    table = read_star(fix / name)
    assert len(table) == n and table.relion_version == version
    optics = table.optics_values()
    assert optics.pixel_size_angstrom is not None or name == "toy_projections.star"


def test_image_names_of_toy_files(fix):
    idx, paths = split_image_names(read_star(fix / "toy_projections.star").particles["rlnImageName"])
    assert idx.tolist() == list(range(1000)) and set(paths) == {"toy_projections.mrcs"}
    idx13, _ = split_image_names(read_star(fix / "toy_projections_13.star").particles["rlnImageName"])
    assert idx13[:4].tolist() == [92, 31, 3, 4]  # 000093@, 000032@, ... are 1-based


def test_optics_after_particles_same_as_before(fix):
    a, b = read_star(fix / "relion31.star"), read_star(fix / "relion31.v2.star")
    for field in ("pixel_size_angstrom", "voltage_kv", "cs_mm", "amplitude_contrast", "image_size"):
        np.testing.assert_array_equal(getattr(a.optics_values(), field), getattr(b.optics_values(), field))
    np.testing.assert_array_equal(a.optics_values().pixel_size_angstrom, np.full(5, 2.806))
    assert a.optics_values().image_size.tolist() == [256] * 5


def test_six_optics_groups_give_per_particle_values(fix):
    path = fix / "relion31.6opticsgroups.star"
    blocks = _plain_star_blocks(path)
    ocols, orows = blocks["optics"]
    pcols, prows = blocks["particles"]
    by_group = {int(r[ocols.index("rlnOpticsGroup")]): r for r in orows}
    groups = [int(r[pcols.index("rlnOpticsGroup")]) for r in prows]
    assert len(set(groups)) > 1  # the fixture really mixes groups
    got = read_star(path).optics_values()
    for field, col in [("pixel_size_angstrom", "rlnImagePixelSize"), ("voltage_kv", "rlnVoltage"),
                       ("cs_mm", "rlnSphericalAberration"), ("amplitude_contrast", "rlnAmplitudeContrast"),
                       ("image_size", "rlnImageSize")]:
        expected = [float(by_group[g][ocols.index(col)]) for g in groups]
        np.testing.assert_allclose(getattr(got, field), expected, err_msg=field)
    assert len(set(got.pixel_size_angstrom.tolist())) == 2 and len(set(got.cs_mm.tolist())) == 2


def test_relion30_pixel_size_from_detector_and_magnification(fix):
    got = read_star(fix / "empiar_10076_7.star").optics_values()
    np.testing.assert_allclose(got.pixel_size_angstrom, 5 * 1e4 / 38168)
    np.testing.assert_allclose(got.cs_mm, 2.7)
    assert got.image_size is None


def test_relion5_columns_survive(fix):
    table = read_star(fix / "relion5.star")
    merged = table.merged()
    assert {"rlnOriginXAngst", "rlnMagMat00", "rlnImagePixelSize"} <= set(merged.columns)
    np.testing.assert_allclose(table.optics_values().pixel_size_angstrom, 0.89)


def test_missing_optics_group_is_input_error(tmp_path, fix):
    text = (fix / "relion31.star").read_text()
    bad = tmp_path / "bad.star"
    # Point every particle at optics group 7, which does not exist.
    blocks = _plain_star_blocks(fix / "relion31.star")
    col = blocks["particles"][0].index("rlnOpticsGroup")
    lines = []
    for line in text.splitlines():
        words = line.split()
        if "@relion31.mrcs" in line:
            words[col] = "7"
            line = " ".join(words)
        lines.append(line)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="optics groups") as err:
        read_star(bad)
    assert str(bad) in str(err.value)


def test_write_star_subset_round_trip(tmp_path, fix):
    table = read_star(fix / "relion31.6opticsgroups.star")
    ind = [5, 0, 138, 17]
    write_star(tmp_path / "sub.star", table.subset(ind))
    back = read_star(tmp_path / "sub.star")
    assert list(back.particles.columns) == list(table.particles.columns)
    assert back.optics.equals(table.optics)
    for col in table.particles.columns:
        a, b = back.particles[col].to_numpy(), table.particles[col].to_numpy()[ind]
        if a.dtype.kind in "fi":
            np.testing.assert_allclose(a, b.astype(float), rtol=1e-6, err_msg=col)
        else:
            assert a.tolist() == b.tolist(), col


def test_write_star_keeps_relion30_single_block(tmp_path, fix):
    table = read_star(fix / "FinalRefinement-OriginalParticles-PfCRT.star")
    write_star(tmp_path / "r30.star", table.subset([1, 2]))
    back = read_star(tmp_path / "r30.star")
    assert back.optics is None and back.particles_block == "images" and len(back) == 2
    np.testing.assert_allclose(back.particles["rlnOriginX"], table.particles["rlnOriginX"].to_numpy()[[1, 2]])


def test_image_names_for_stack():
    names = image_names_for_stack("a/b.mrcs", 3)
    assert names == ["000001@a/b.mrcs", "000002@a/b.mrcs", "000003@a/b.mrcs"]
    idx, paths = split_image_names(names)
    assert idx.tolist() == [0, 1, 2] and paths == ["a/b.mrcs"] * 3
    with pytest.raises(ValueError, match="index 0"):
        split_image_names(["000000@x.mrcs"])


def test_not_a_star_file(tmp_path, fix):
    with pytest.raises(InputError, match="not found"):
        read_star(tmp_path / "nope.star")
    assert isinstance(read_star(fix / "relion31.star"), StarTable)
