"""The I/O commands through ``cryofire_nb.cli.main``: parse-star, parse-cs, downsample,
write-subset. Bad input must exit 2 with a message naming the file, and write nothing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryofire_nb.cli import main
from cryofire_nb.io.cs import read_cs
from cryofire_nb.io.mrc import read_mrc, write_mrc
from cryofire_nb.io.pkl import read_indices, write_indices
from cryofire_nb.io.star import read_star


@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- parse-star / parse-cs


def test_parse_star_cli_matches_cryodrgn(out_dir, fix):
    rc = main(["parse-star", str(fix / "FinalRefinement-OriginalParticles-PfCRT.star"), "-D", "300",
               "--Apix", "1.035", "-w", "0.1", "--poses", str(out_dir / "pose.pkl"), "--ctf", str(out_dir / "ctf.pkl")])
    assert rc == 0
    rots, trans = _load(out_dir / "pose.pkl")
    ref_rots, ref_trans = _load(fix / "pose.star.pkl")
    np.testing.assert_allclose(rots, ref_rots, atol=1e-4)
    np.testing.assert_allclose(trans, ref_trans, atol=1e-6)
    ctf = _load(out_dir / "ctf.pkl")
    assert ctf.dtype == np.float32 and ctf.shape == (5, 9)
    np.testing.assert_allclose(ctf, _load(fix / "ctf1.pkl"), atol=1e-4, rtol=0)


def test_parse_cs_cli_matches_cryodrgn(out_dir, fix):
    rc = main(["parse-cs", str(fix / "cryosparc_P12_J24_001_particles.cs"), "-D", "180",
               "--poses", str(out_dir / "pose.pkl"), "--ctf", str(out_dir / "ctf.pkl")])
    assert rc == 0
    rots, trans = _load(out_dir / "pose.pkl")
    ref_rots, ref_trans = _load(fix / "pose.cs.pkl")
    np.testing.assert_allclose(rots, ref_rots, atol=1e-4)
    np.testing.assert_allclose(trans, ref_trans, atol=1e-6)
    np.testing.assert_allclose(_load(out_dir / "ctf.pkl"), _load(fix / "ctf2.pkl"), atol=1e-4, rtol=0)


def test_parse_star_ctf_only_file(out_dir, fix, capsys):
    star = fix / "empiar_10076_7.star"
    assert main(["parse-star", str(star), "-D", "320", "--ctf", str(out_dir / "ctf.pkl")]) == 0
    assert _load(out_dir / "ctf.pkl")[0, 1] == pytest.approx(5e4 / 38168, rel=1e-6)
    # Asking for poses from a file without angles fails before anything is written.
    rc = main(["parse-star", str(star), "-D", "320",
               "--poses", str(out_dir / "p.pkl"), "--ctf", str(out_dir / "c.pkl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(star) in err and "--poses" in err
    assert _files(out_dir) == ["ctf.pkl"]


def test_parse_star_needs_an_output(fix, capsys):
    assert main(["parse-star", str(fix / "relion31.star")]) == 2
    assert "--poses" in capsys.readouterr().err


# --------------------------------------------------------------------------- downsample


def _cosine_images(d: int, k: int, n: int) -> np.ndarray:
    """Images cos(2 pi k (x - d//2) / d) (band-limited), contrast varying per image."""
    x = np.arange(d) - d // 2
    img = np.cos(2 * np.pi * k * x / d)[None, :] * np.ones((d, 1))  # (d, d), varies along x (columns)
    return np.stack([(i + 1) * img for i in range(n)]).astype(np.float32)


def test_downsample_is_bandlimited_resampling(out_dir):
    d, d_new, k, n = 32, 16, 3, 5
    write_mrc(out_dir / "in.mrcs", _cosine_images(d, k, n) + 2.0, pixel_size_angstrom=1.5)
    for chunk in ("2", "1000"):
        out = out_dir / f"out{chunk}.mrcs"
        assert main(["downsample", str(out_dir / "in.mrcs"), "-D", str(d_new), "--chunk", chunk,
                     "-o", str(out), "--no-progress"]) == 0
        got = read_mrc(out)
        assert got.data.shape == (n, d_new, d_new)
        assert got.pixel_size_angstrom == pytest.approx(1.5 * d / d_new)
        # The same cosine sampled on the coarser grid, offset kept, centre at d_new//2.
        np.testing.assert_allclose(got.data, _cosine_images(d_new, k, n) + 2.0, atol=1e-4)


def test_downsample_star_keeps_particle_order(out_dir, fix):
    out = out_dir / "toy13.mrcs"
    assert main(["downsample", str(fix / "toy_projections_13.star"), "-D", "30", "-o", str(out), "--no-progress"]) == 0
    stack = read_mrc(fix / "toy_projections.mrcs").data
    rows = [int(s.split("@")[0]) - 1 for s in read_star(fix / "toy_projections_13.star").particles["rlnImageName"]]
    np.testing.assert_allclose(read_mrc(out).data, stack[rows], atol=1e-5)  # same box: unchanged


@pytest.mark.parametrize("d_new", ["15", "40"])
def test_downsample_odd_or_larger_box(out_dir, fix, capsys, d_new):
    rc = main(["downsample", str(fix / "toy_projections.mrcs"), "-D", d_new, "-o", str(out_dir / "o.mrcs")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "toy_projections.mrcs" in err and "even" in err
    assert _files(out_dir) == []


def test_bad_input_star_with_missing_stack(out_dir, capsys):
    star = out_dir / "p.star"
    star.write_text("data_particles\nloop_\n_rlnImageName #1\n000001@stacks/missing.mrcs\n")
    rc = main(["downsample", str(star), "-D", "16", "-o", str(out_dir / "o.mrcs")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(star) in err and "missing.mrcs" in err and "--datadir" in err and "line 4" in err
    assert _files(out_dir) == ["p.star"]


def test_bad_input_star_without_image_name(out_dir, capsys):
    star = out_dir / "p.star"
    star.write_text("data_particles\nloop_\n_rlnDefocusU #1\n10000\n")
    rc = main(["downsample", str(star), "-D", "16", "-o", str(out_dir / "o.mrcs")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(star) in err and "_rlnImageName" in err
    assert _files(out_dir) == ["p.star"]


def test_bad_input_non_square_stack(out_dir, capsys):
    write_mrc(out_dir / "rect.mrcs", np.zeros((3, 20, 24), np.float32))
    rc = main(["downsample", str(out_dir / "rect.mrcs"), "-D", "16", "-o", str(out_dir / "o.mrcs")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(out_dir / "rect.mrcs") in err and "not square" in err
    assert _files(out_dir) == ["rect.mrcs"]


def test_bad_input_nan_in_a_later_chunk(out_dir, capsys):
    data = np.ones((10, 16, 16), np.float32)
    data[7, 3, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        write_mrc(out_dir / "nan.mrcs", data)
    # Chunks of 3: the first two chunks are written before the NaN is met.
    rc = main(["downsample", str(out_dir / "nan.mrcs"), "-D", "8", "--chunk", "3",
               "-o", str(out_dir / "o.mrcs"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(out_dir / "nan.mrcs") in err and "NaN" in err and "particle 7" in err
    assert _files(out_dir) == ["nan.mrcs"]  # no output and no temporary file left behind


# --------------------------------------------------------------------------- write-subset


def test_write_subset_star(out_dir, fix):
    write_indices(out_dir / "ind.pkl", [4, 1])
    out = out_dir / "sub.star"
    assert main(["write-subset", str(fix / "relion31.v2.star"), "--ind", str(out_dir / "ind.pkl"), "-o", str(out)]) == 0
    full, sub = read_star(fix / "relion31.v2.star"), read_star(out)
    assert list(sub.particles.columns) == list(full.particles.columns)
    assert sub.particles["rlnImageName"].tolist() == full.particles["rlnImageName"].to_numpy()[[4, 1]].tolist()
    np.testing.assert_allclose(sub.particles["rlnAngleRot"], full.particles["rlnAngleRot"].to_numpy()[[4, 1]])
    assert sub.optics.equals(full.optics)


def test_write_subset_cs_and_pkl(out_dir, fix):
    src = fix / "cryosparc_P12_J24_001_particles.cs"
    write_indices(out_dir / "ind.pkl", [10, 2000, 3])
    assert main(["write-subset", str(src), "--ind", str(out_dir / "ind.pkl"), "-o", str(out_dir / "s.cs")]) == 0
    np.testing.assert_array_equal(read_cs(out_dir / "s.cs"), read_cs(src)[[10, 2000, 3]])
    # The same indices do not fit the 1000-image toy stack ...
    assert main(["write-subset", str(fix / "toy_projections.mrcs"), "--ind", str(out_dir / "ind.pkl"),
                 "-o", str(out_dir / "kept.pkl")]) == 2
    assert not (out_dir / "kept.pkl").exists()
    # ... these do, and come back as a checked int64 index pickle.
    write_indices(out_dir / "ind2.pkl", [10, 999, 3])
    assert main(["write-subset", str(fix / "toy_projections.mrcs"), "--ind", str(out_dir / "ind2.pkl"),
                 "-o", str(out_dir / "kept.pkl")]) == 0
    assert read_indices(out_dir / "kept.pkl").tolist() == [10, 999, 3]


def test_write_subset_index_out_of_range(out_dir, fix, capsys):
    write_indices(out_dir / "ind.pkl", [0, 5])
    rc = main(["write-subset", str(fix / "relion31.star"), "--ind", str(out_dir / "ind.pkl"),
               "-o", str(out_dir / "s.star")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(out_dir / "ind.pkl") in err and "out of range" in err
    assert _files(out_dir) == ["ind.pkl"]


def test_python_dash_m_runs_the_cli():
    """``python -m cryofire_nb`` is the command without an installed entry point (a GPU
    machine's own Python with the repository on PYTHONPATH)."""
    import subprocess
    import sys

    import cryofire_nb

    r = subprocess.run([sys.executable, "-m", "cryofire_nb", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"cryofire_nb {cryofire_nb.__version__}"
    r = subprocess.run([sys.executable, "-m", "cryofire_nb", "simulate", "missing.yaml", "-o", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing.yaml" in r.stderr
