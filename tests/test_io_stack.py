"""ImageSource over .mrcs / .txt / .star / .cs, lazy and eager, and its input checks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryofire_nb.errors import InputError
from cryofire_nb.io.mrc import read_mrc, write_mrc
from cryofire_nb.io.pkl import read_poses
from cryofire_nb.io.stack import ImageSource


@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def _star(path, names, extra_header=(), extra_values=()):
    lines = ["data_particles", "", "loop_", "_rlnImageName #1"]
    lines += [f"_{h} #{i + 2}" for i, h in enumerate(extra_header)]
    for i, name in enumerate(names):
        lines.append(" ".join([name, *[str(v) for v in (extra_values[i] if extra_values else [])]]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_relion31_images_through_star(fix):
    direct = read_mrc(fix / "relion31.mrcs").data
    for name in ("relion31.star", "relion31.v2.star"):
        src = ImageSource(fix / name)
        assert (len(src), src.d) == (5, 256)
        assert src.pixel_size_angstrom == pytest.approx(2.806)  # optics block, not the header's 1.0
        np.testing.assert_array_equal(src.images([4, 0]), direct[[4, 0]])


def test_star_index_mapping_toy_13(fix):
    src = ImageSource(fix / "toy_projections_13.star", lazy=False)
    stack = read_mrc(fix / "toy_projections.mrcs").data
    rows = [int(n.split("@")[0]) - 1 for n in src.star.particles["rlnImageName"]]
    np.testing.assert_array_equal(src.images(np.arange(13)), stack[rows])
    assert rows[0] == 92


def test_empiar_mrc_star_cs_agree(fix):
    mrc = ImageSource(fix / "empiar_10076_7.mrc")
    star = ImageSource(fix / "empiar_10076_7.star")
    cs = ImageSource(fix / "empiar_10076_7.cs", lazy=False)
    assert mrc.pixel_size_angstrom is None  # header pixel size 0
    assert star.pixel_size_angstrom == pytest.approx(5e4 / 38168, rel=1e-6)
    assert cs.pixel_size_angstrom == pytest.approx(1.31, abs=1e-4)
    a = mrc.images(slice(None))
    assert a.shape == (7, 320, 320) and a.dtype == np.float32
    np.testing.assert_array_equal(star.images(np.arange(7)), a)
    np.testing.assert_array_equal(cs.images([6, 1]), a[[6, 1]])


def test_lazy_and_eager_agree_and_chunks(fix):
    lazy = ImageSource(fix / "toy_projections.star", lazy=True, max_open_stacks=1)
    eager = ImageSource(fix / "toy_projections.mrcs", lazy=False)
    idx = np.array([999, 3, 3, 500, 0])
    np.testing.assert_array_equal(lazy.images(idx), eager.images(idx))
    chunks = list(lazy.iter_chunks(300))
    assert [s for s, _ in chunks] == [0, 300, 600, 900]
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), eager.images(slice(None)))
    restored = pickle.loads(pickle.dumps(lazy))  # e.g. a DataLoader worker: no memmap copied
    np.testing.assert_array_equal(restored.images([7]), eager.images([7]))


def test_txt_list_relative_to_txt_folder(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 8, 8)), rng.standard_normal((2, 8, 8))
    (tmp_path / "stacks").mkdir()
    write_mrc(tmp_path / "stacks" / "a.mrcs", a, 2.0)
    write_mrc(tmp_path / "stacks" / "b.mrcs", b, 2.0)
    (tmp_path / "list.txt").write_text("stacks/a.mrcs\n\n# comment\nstacks/b.mrcs\n")
    src = ImageSource(tmp_path / "list.txt")
    assert len(src) == 5 and src.pixel_size_angstrom == pytest.approx(2.0)
    np.testing.assert_allclose(src.images(np.arange(5)), np.concatenate([a, b]), rtol=1e-6)


def test_datadir_resolves_moved_stacks(tmp_path, fix):
    star = _star(tmp_path / "moved.star", [f"{i:06d}@Extract/job1/relion31.mrcs" for i in (1, 3)])
    with pytest.raises(InputError, match="--datadir"):
        ImageSource(star)
    src = ImageSource(star, datadir=fix)
    np.testing.assert_array_equal(src.images([1]), read_mrc(fix / "relion31.mrcs").data[[2]])


def test_missing_stack_names_star_line_and_suggests_datadir(tmp_path):
    star = _star(tmp_path / "p.star", ["000001@here.mrcs", "000001@gone/missing.mrcs"])
    write_mrc(tmp_path / "here.mrcs", np.zeros((1, 4, 4)))
    with pytest.raises(InputError) as err:
        ImageSource(star)
    msg = str(err.value)
    assert str(star) in msg and "missing.mrcs" in msg and "line 6" in msg and "--datadir" in msg


def test_star_without_image_name(tmp_path):
    star = tmp_path / "ctf_only.star"
    star.write_text("data_\nloop_\n_rlnDefocusU #1\n_rlnDefocusV #2\n10000 9000\n")
    with pytest.raises(InputError, match="_rlnImageName") as err:
        ImageSource(star)
    assert str(star) in str(err.value)


def test_non_square_stack(tmp_path):
    write_mrc(tmp_path / "rect.mrcs", np.zeros((2, 6, 8)))
    with pytest.raises(InputError, match="not square") as err:
        ImageSource(tmp_path / "rect.mrcs")
    assert "rect.mrcs" in str(err.value)


def test_index_beyond_stack_and_out_of_range(tmp_path, fix):
    star = _star(tmp_path / "p.star", ["000006@relion31.mrcs"])
    with pytest.raises(InputError, match="only 5 images"):
        ImageSource(star, datadir=fix)
    src = ImageSource(fix / "relion31.mrcs")
    with pytest.raises(InputError, match="out of range") as err:
        src.images([0, 5])
    assert "relion31.mrcs" in str(err.value)


def test_nan_detected_lazily_and_eagerly(tmp_path):
    data = np.zeros((6, 4, 4), np.float32)
    data[4, 1, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile notices too, but writes
        write_mrc(tmp_path / "nan.mrcs", data)
    src = ImageSource(tmp_path / "nan.mrcs", lazy=True)
    assert src.images([0, 1, 5]).shape == (3, 4, 4)  # clean images read fine
    with pytest.raises(InputError) as err:
        src.images([3, 4])
    msg = str(err.value)
    assert "nan.mrcs" in msg and "image 5" in msg and "particle 4" in msg
    with pytest.raises(InputError, match="NaN"):
        ImageSource(tmp_path / "nan.mrcs", lazy=False)


def test_pose_count_must_match_images(tmp_path, fix):
    src = ImageSource(fix / "relion31.star")
    rots = np.tile(np.eye(3, dtype=np.float32), (4, 1, 1))
    with open(tmp_path / "pose.pkl", "wb") as f:
        pickle.dump((rots, np.zeros((4, 2), np.float32)), f)
    with pytest.raises(InputError) as err:
        read_poses(tmp_path / "pose.pkl", n_expected=len(src))
    msg = str(err.value)
    assert str(tmp_path / "pose.pkl") in msg and "4 entries" in msg and "5 images" in msg and "--ind" in msg


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported"):
        ImageSource(tmp_path / "x.h5")
