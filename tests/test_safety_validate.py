"""Inputs checked for physical sense (cryofire_nb.validate), by the readers and by every
command: impossible values are one-line errors before any work, unusual ones warn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cryofire_nb import validate
from cryofire_nb.cli import main
from cryofire_nb.errors import InputError
from cryofire_nb.io import CtfParams, read_ctf, read_poses, write_ctf, write_indices, write_latents, write_mrc
from cryofire_nb.io.cs import read_cs, write_cs
from cryofire_nb.io.pkl import read_latents
from cryofire_nb.io.records import Latents
from cryofire_nb.io.stack import ImageSource
from cryofire_nb.train.synthetic import make_synthetic_set
from cli_checks import one_line_error


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=24, d=16, snr=2.0, seed=3)


def ctf_table(n=4, **changes) -> np.ndarray:
    t = CtfParams.from_columns(image_size=np.full(n, 16), pixel_size_angstrom=4.0, defocus_u_angstrom=10000.0,
                               defocus_v_angstrom=9800.0, defocus_angle_deg=30.0, voltage_kv=300.0, cs_mm=2.7,
                               amplitude_contrast=0.1).table
    cols = {"D": 0, "apix": 1, "dfu": 2, "kv": 5, "cs": 6, "w": 7, "ps": 8}
    for name, (row, value) in changes.items():
        t[row, cols[name]] = value
    return t


def bad_ctf_file(synth, path, column: int, value: float):
    t = read_ctf(synth.ctf).table.copy()
    t[5:, column] = value
    write_ctf(path, CtfParams(t))
    return path


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("change,fragment", [
    ({"apix": (2, 0.0)}, "pixel size"), ({"kv": (0, 0.0)}, "voltage"), ({"w": (3, 1.5)}, "amplitude contrast"),
    ({"w": (1, -0.1)}, "amplitude contrast"), ({"cs": (0, -1.0)}, "Cs"), ({"D": (1, 15.5)}, "box size"),
    ({"D": (1, 0.0)}, "box size"), ({"dfu": (2, np.nan)}, "NaN"), ({"ps": (1, np.inf)}, "NaN or inf"),
])
def test_impossible_ctf_values_are_errors_naming_the_row(change, fragment):
    (row, _), = change.values()
    with pytest.raises(InputError, match=fragment) as err:
        validate.check_ctf_table(ctf_table(**change), "ctf.pkl")
    assert f"first: row {row}" in str(err.value) and str(err.value).startswith("ctf.pkl: ")


@pytest.mark.parametrize("change,fragment", [
    ({"kv": (1, 30.0)}, "outside the usual"), ({"kv": (1, 1000.0)}, "outside the usual"),
    ({"cs": (0, 20.0)}, "unusually large"), ({"dfu": (2, -5000.0)}, "negative defocus"),
    ({"dfu": (2, 2e5)}, "above 10 um"),
])
def test_unusual_ctf_values_warn(change, fragment):
    with pytest.warns(validate.InputWarning, match=fragment):
        validate.check_ctf_table(ctf_table(**change), "ctf.pkl")


def test_a_normal_ctf_table_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate.check_ctf_table(ctf_table(), "ctf.pkl")


def test_ctf_agrees_with_a_downsampled_stack():
    t = ctf_table(n=3)  # D 16 at 4 A/px
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate.check_ctf_matches_stack(t, "ctf.pkl", 16, 4.0, "p.mrcs")
        validate.check_ctf_matches_stack(t, "ctf.pkl", 8, 8.0, "p8.mrcs")  # downsampled: same physical box
        validate.check_ctf_matches_stack(t, "ctf.pkl", 8, None, "p8.mrcs")  # stack pixel size unknown
    with pytest.warns(validate.InputWarning, match="says 4 A/px"):
        validate.check_ctf_matches_stack(t, "ctf.pkl", 8, 4.0, "p8.mrcs")
    with pytest.warns(validate.InputWarning, match="smaller than"):
        validate.check_ctf_matches_stack(t, "ctf.pkl", 32, None, "p32.mrcs")


def test_rotations_must_be_proper_and_orthonormal():
    r = np.tile(np.eye(3), (5, 1, 1))
    validate.check_rotations(r, "p.pkl")
    scaled = r.copy()
    scaled[3] *= 1.01
    with pytest.raises(InputError, match="rotation 3 is not orthonormal"):
        validate.check_rotations(scaled, "p.pkl")
    mirrored = r.copy()
    mirrored[2, 2, 2] = -1
    with pytest.raises(InputError, match="rotation 2 has determinant -1"):
        validate.check_rotations(mirrored, "p.pkl")
    float32_noise = (r + np.random.default_rng(0).normal(0, 1e-6, r.shape)).astype(np.float32)
    validate.check_rotations(float32_noise, "p.pkl")


def test_pose_reader_rejects_a_reflection_and_warns_on_far_shifts(tmp_path):
    r = np.tile(np.eye(3, dtype=np.float32), (4, 1, 1))
    r[1] = np.diag([1, 1, -1])
    import pickle

    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump((r, np.zeros((4, 2), np.float32)), f)
    with pytest.raises(InputError, match="rotation 1 has determinant"):
        read_poses(tmp_path / "p.pkl")
    trans = np.zeros((4, 2), np.float32)
    trans[2] = [0.7, 0]
    with open(tmp_path / "q.pkl", "wb") as f:
        pickle.dump((np.tile(np.eye(3, dtype=np.float32), (4, 1, 1)), trans), f)
    with pytest.warns(validate.InputWarning, match="first: row 2"):
        read_poses(tmp_path / "q.pkl")


def test_latents_must_be_finite(tmp_path):
    z = np.zeros((5, 2), np.float32)
    z[4, 1] = np.nan
    write_latents(tmp_path / "z.pkl", Latents(z))
    with pytest.raises(InputError, match="first: row 4"):
        read_latents(tmp_path / "z.pkl")


def test_indices_must_not_repeat():
    with pytest.raises(InputError, match="index 3 appears 3 times"):
        validate.check_indices(np.array([0, 3, 3, 3, 5]), "i.pkl", 10)
    np.testing.assert_array_equal(validate.check_indices(np.array([4, 0]), "i.pkl", 10), [4, 0])


def test_constant_images_warn_once(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 8, 8)).astype(np.float32)
    x[2] = 0.0
    write_mrc(tmp_path / "s.mrcs", x, 1.0)
    src = ImageSource(tmp_path / "s.mrcs", lazy=True)
    with pytest.warns(validate.InputWarning, match="particle 2 is a constant image"):
        src.images(np.arange(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src.images(np.arange(6))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_an_input_error():
    with pytest.raises(InputError, match="no CUDA device"):
        validate.check_device("cuda")
    with pytest.raises(InputError, match="not a device name"):
        validate.check_device("gpu0")


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("column,value,fragment", [(1, 0.0, "pixel size"), (5, 0.0, "voltage"),
                                                   (7, 1.5, "amplitude contrast")])
def test_backproject_rejects_an_impossible_ctf(synth, tmp_path, capsys, column, value, fragment):
    bad = bad_ctf_file(synth, tmp_path / "bad_ctf.pkl", column, value)
    out = tmp_path / "vol.mrc"
    rc = main(["backproject", str(synth.particles), "--poses", str(synth.poses), "--ctf", str(bad), "-o", str(out),
               "--oversample", "1"])
    assert rc == 2
    one_line_error(capsys, "bad_ctf.pkl", fragment, "first: row 5")
    assert not out.exists()


@pytest.mark.parametrize("column,value,fragment", [(1, 0.0, "pixel size"), (5, 0.0, "voltage"),
                                                   (7, 1.5, "amplitude contrast")])
def test_train_rejects_an_impossible_ctf(synth, tmp_path, capsys, column, value, fragment):
    bad = bad_ctf_file(synth, tmp_path / "bad_ctf.pkl", column, value)
    out = tmp_path / "run"
    rc = main(["train", str(synth.particles), "--ctf", str(bad), "-o", str(out), "--epochs", "1", "--no-progress",
               "--device", "cpu"])
    assert rc == 2
    one_line_error(capsys, "bad_ctf.pkl", fragment)
    assert not out.exists()


def test_duplicate_indices_are_refused_by_write_subset_and_backproject(synth, tmp_path, capsys):
    star = tmp_path / "in.star"
    star.write_text("data_\nloop_\n_rlnImageName\n" + "".join(f"{i}@a.mrcs\n" for i in range(1, 6)))
    write_indices(tmp_path / "dup.pkl", [1, 1, 1, 3])
    assert main(["write-subset", str(star), "--ind", str(tmp_path / "dup.pkl"), "-o", str(tmp_path / "o.star")]) == 2
    one_line_error(capsys, "dup.pkl", "appears 3 times")
    assert not (tmp_path / "o.star").exists()
    rc = main(["backproject", str(synth.particles), "--poses", str(synth.poses), "--ind", str(tmp_path / "dup.pkl"),
               "-o", str(tmp_path / "v.mrc")])
    assert rc == 2
    one_line_error(capsys, "dup.pkl", "both half-maps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_backproject_on_a_missing_gpu_is_one_line(synth, tmp_path, capsys):
    rc = main(["backproject", str(synth.particles), "--poses", str(synth.poses), "-o", str(tmp_path / "v.mrc"),
               "--device", "cuda"])
    assert rc == 2
    one_line_error(capsys, "--device cuda")


def test_parse_cs_with_zero_pixel_size(fixtures_dir, tmp_path, capsys):
    table = read_cs(fixtures_dir / "cryodrgn" / "empiar_10076_7.cs").copy()
    table["blob/psize_A"] = 0.0
    cs = tmp_path / "zero_apix.cs"
    write_cs(cs, table)
    assert main(["parse-cs", str(cs), "--ctf", str(tmp_path / "ctf.pkl")]) == 2
    one_line_error(capsys, "zero_apix.cs", "pixel size", "--Apix")
    assert not (tmp_path / "ctf.pkl").exists()
    assert main(["parse-cs", str(cs), "--ctf", str(tmp_path / "ctf.pkl"), "--Apix", "1.31"]) == 0


def test_parse_star_with_amplitude_contrast_7(fixtures_dir, tmp_path, capsys):
    star = fixtures_dir / "cryodrgn" / "empiar_10076_7.star"
    assert main(["parse-star", str(star), "-D", "320", "-w", "7", "--ctf", str(tmp_path / "ctf.pkl")]) == 2
    one_line_error(capsys, "empiar_10076_7.star", "amplitude contrast", "-w 0.1")
    assert not (tmp_path / "ctf.pkl").exists()


def test_stack_with_zero_header_pixel_size_still_reads(fixtures_dir):
    src = ImageSource(fixtures_dir / "cryodrgn" / "empiar_10076_7.mrc")
    assert src.pixel_size_angstrom is None and src.images([0]).shape[0] == 1


def test_cli_prints_ctf_warnings_as_one_line(synth, tmp_path, capsys):
    t = read_ctf(synth.ctf).table.copy()
    t[:, 5] = 30.0  # 30 kV: possible, unusual
    write_ctf(tmp_path / "low_kv.pkl", CtfParams(t))
    rc = main(["backproject", str(synth.particles), "--poses", str(synth.poses), "--ctf", str(tmp_path / "low_kv.pkl"),
               "-o", str(tmp_path / "v.mrc"), "--oversample", "1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert any(ln.startswith("cryofire-nb backproject: warning: ") and "low_kv.pkl" in ln and "30 kV" in ln
               for ln in err.splitlines()), err


def test_unknown_device_name_is_one_line(tmp_path, capsys):
    rc = main(["eval-vol", str(tmp_path / "no_run"), "--z", "0", "-o", str(tmp_path / "o"), "--device", "gpu0"])
    assert rc == 2
    one_line_error(capsys, "gpu0", "not a device name")


def test_hartley_data_checks_its_ctf_table():
    from cryofire_nb.hartley_data import HartleyData

    images = np.random.default_rng(0).standard_normal((4, 16, 16)).astype(np.float32)
    HartleyData.from_images(images, ctf_table(n=4))
    with pytest.raises(InputError, match="pixel size"):
        HartleyData.from_images(images, ctf_table(n=4, apix=(0, 0.0)))
