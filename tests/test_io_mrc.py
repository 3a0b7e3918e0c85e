"""MRC/MRCS reading and writing (cryofire_nb.io.mrc)."""

from __future__ import annotations


import mrcfile
import numpy as np
import pytest

from cryofire_nb.errors import InputError
from cryofire_nb.io.mrc import open_stack_writer, read_mrc, read_mrc_header, write_mrc



@pytest.fixture(scope="module")
def fix(fixtures_dir):
    return fixtures_dir / "cryodrgn"


def test_stack_round_trip_keeps_pixel_size(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((4, 12, 12)).astype(np.float32)
    out = tmp_path / "s.mrcs"
    write_mrc(out, stack, pixel_size_angstrom=2.5)
    got = read_mrc(out)
    assert got.data.dtype == np.float32 and got.data.shape == (4, 12, 12)
    np.testing.assert_array_equal(got.data, stack)
    assert got.pixel_size_angstrom == pytest.approx(2.5)
    with mrcfile.open(out) as mrc:  # a stack, as RELION expects for .mrcs
        assert mrc.is_image_stack()


def test_volume_written_as_volume_and_memmap_matches(tmp_path):
    vol = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    out = tmp_path / "v.mrc"
    write_mrc(out, vol, pixel_size_angstrom=1.7)
    with mrcfile.open(out) as mrc:
        assert mrc.is_volume()
    mm = read_mrc(out, mmap=True)
    np.testing.assert_array_equal(np.asarray(mm.data), vol)
    assert mm.pixel_size_angstrom == pytest.approx(1.7)


def test_single_image_reads_as_stack_of_one(tmp_path):
    img = np.ones((8, 8), dtype=np.float32)
    write_mrc(tmp_path / "one.mrc", img, pixel_size_angstrom=None)
    got = read_mrc(tmp_path / "one.mrc")
    assert got.data.shape == (1, 8, 8)
    assert got.pixel_size_angstrom is None  # written as 0 = unknown


def test_header_pixel_size_zero_is_none_not_error(fix):
    info = read_mrc_header(fix / "empiar_10076_7.mrc")
    assert info.shape == (7, 320, 320)
    assert info.pixel_size_angstrom is None
    assert read_mrc_header(fix / "toy_projections.mrcs").pixel_size_angstrom == pytest.approx(1.0)


def test_truncated_file_is_input_error(tmp_path):
    out = tmp_path / "t.mrcs"
    write_mrc(out, np.zeros((3, 10, 10), np.float32))
    data = out.read_bytes()
    out.write_bytes(data[:-50])
    with pytest.raises(InputError, match="truncated") as err:
        read_mrc(out)
    assert str(out) in str(err.value)


def test_not_an_mrc_file(tmp_path):
    bad = tmp_path / "bad.mrcs"
    bad.write_bytes(b"hello" * 10)
    with pytest.raises(InputError) as err:
        read_mrc_header(bad)
    assert str(bad) in str(err.value)


def test_stack_writer_chunks_and_atomicity(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.standard_normal((7, 6, 6)).astype(np.float32)
    out = tmp_path / "w.mrcs"
    with open_stack_writer(out, 7, 6, 3.0) as w:
        for start in range(0, 7, 3):
            w.write(start, stack[start:start + 3])
    got = read_mrc(out)
    np.testing.assert_array_equal(got.data, stack)
    assert got.pixel_size_angstrom == pytest.approx(3.0)
    with mrcfile.open(out) as mrc:
        assert mrc.header.dmean == pytest.approx(stack.mean(), abs=1e-5)
        assert mrc.header.rms == pytest.approx(stack.std(), rel=1e-4)

    # An error inside the block leaves neither the output nor a temporary file.
    out2 = tmp_path / "fail.mrcs"
    with pytest.raises(RuntimeError, match="boom"):
        with open_stack_writer(out2, 7, 6, 3.0) as w:
            w.write(0, stack[:3])
            raise RuntimeError("boom")
    # Forgetting images is an error too, and also leaves nothing.
    with pytest.raises(RuntimeError, match="never written"):
        with open_stack_writer(out2, 7, 6, 3.0) as w:
            w.write(0, stack[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mrcs"]
