"""Pickle inputs are read as data only: an object whose unpickling would run code is refused
before it runs, and every cryoDRGN-format pickle still loads."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cryofire_nb.cli import main as cli_main
from cryofire_nb.errors import InputError
from cryofire_nb.io.pkl import load_pickles, read_ctf, read_indices, read_latents, read_poses


class _RunsCommand:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _dump(path: Path, *objects) -> Path:
    with open(path, "wb") as f:
        for obj in objects:
            pickle.dump(obj, f)
    return path


def test_pickle_that_runs_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    bad = _dump(tmp_path / "poses.pkl", _RunsCommand(marker))
    with pytest.raises(InputError) as err:
        read_poses(bad)
    assert not marker.exists()
    msg = str(err.value)
    assert str(bad) in msg and "refusing to load it" in msg
    assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg


def test_refused_object_after_a_valid_pickle_is_not_skipped(tmp_path):
    # z.pkl holds two pickles; a second one that runs code must not pass as trailing garbage
    marker = tmp_path / "marker"
    bad = _dump(tmp_path / "z.pkl", np.zeros((3, 2), np.float32), _RunsCommand(marker))
    with pytest.raises(InputError, match="refusing to load it"):
        read_latents(bad)
    assert not marker.exists()


def test_cli_refuses_code_pickle_in_one_line(tmp_path, capsys):
    marker = tmp_path / "marker"
    bad = _dump(tmp_path / "ind.pkl", _RunsCommand(marker))
    star = tmp_path / "p.star"
    star.write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n2@a.mrcs\n")
    rc = cli_main(["write-subset", str(star), "--ind", str(bad), "-o", str(tmp_path / "out.pkl")])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "refusing to load it" in err


@pytest.mark.parametrize("obj", [
    pickle.loads,  # a function
    {"a": Path("/x")},  # a pathlib object inside a dict
    np.array([1, Path("/x")], dtype=object),  # an object array pickles its items
])
def test_other_objects_are_refused(tmp_path, obj):
    with pytest.raises(InputError, match="refusing to load it"):
        load_pickles(_dump(tmp_path / "x.pkl", obj))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_arrays_scalars_and_builtins_load_with_every_protocol(tmp_path, protocol):
    rots = np.tile(np.eye(3, dtype=np.float32), (4, 1, 1))
    trans = np.zeros((4, 2), np.float32)
    path = tmp_path / "p.pkl"
    with open(path, "wb") as f:
        pickle.dump((rots, trans), f, protocol=protocol)
        pickle.dump([np.float32(1.5), np.int64(2), 1 + 2j, b"x", {"k": 1.0}, True, "s"], f, protocol=protocol)
    poses = read_poses(path)
    np.testing.assert_array_equal(poses.rots, rots)
    other = load_pickles(path)[1]
    assert other == [np.float32(1.5), np.int64(2), 1 + 2j, b"x", {"k": 1.0}, True, "s"]


def test_arrays_keep_dtype_byte_order_and_memory_order(tmp_path):
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = _dump(tmp_path / f"a{protocol}.pkl", (big_endian, fortran, np.zeros((0, 3), np.complex64)))
        a, b, c = load_pickles(path)[0]
        assert a.dtype == big_endian.dtype and np.array_equal(a, big_endian)
        assert b.dtype == fortran.dtype and np.array_equal(b, fortran)
        assert c.shape == (0, 3) and c.dtype == np.complex64


def _with_bytes_replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def test_damaged_numpy_state_is_refused_before_numpy_sees_it(tmp_path):
    """numpy's own reconstructor trusts the state in the file: a damaged dtype flag word
    crashed the interpreter. Each damaged field must give an InputError instead."""
    data = pickle.dumps(np.arange(8, dtype=np.float32).reshape(4, 2), protocol=4)
    flags = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"  # elsize -1, alignment -1, flags 0
    cases = {
        "flags": _with_bytes_replaced(data, flags, flags[:-1] + b"\x03"),
        "shape": _with_bytes_replaced(data, b"K\x04K\x02\x86", b"K\x05K\x02\x86"),
        "dtype": _with_bytes_replaced(data, b"\x8c\x02f4", b"\x8c\x02O8"),
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(bad)
        with pytest.raises(InputError, match="refusing to load it"):
            load_pickles(path)


def test_length_field_larger_than_the_file_is_refused_without_allocating(tmp_path):
    # BYTEARRAY8 (protocol 5) claiming 2**62 bytes: the unpickler would allocate first
    path = tmp_path / "big.pkl"
    path.write_bytes(b"\x80\x05\x96" + (2 ** 62).to_bytes(8, "little") + b"abc.")
    with pytest.raises(InputError, match="not a readable pickle file"):
        load_pickles(path)


def test_indices_and_ctf_written_by_the_package_load(tmp_path):
    from cryofire_nb.io.pkl import write_indices

    write_indices(tmp_path / "i.pkl", [0, 2, 1])
    np.testing.assert_array_equal(read_indices(tmp_path / "i.pkl"), [0, 2, 1])


def test_cryodrgn_fixture_pickles_load(fixtures_dir):
    files = sorted((fixtures_dir / "cryodrgn").glob("*.pkl"))
    assert files
    for path in files:
        objs = load_pickles(path)
        assert objs and isinstance(np.asarray(objs[0] if not isinstance(objs[0], tuple) else objs[0][0]),
                                   np.ndarray)
    read_ctf(fixtures_dir / "cryodrgn" / "ctf1.pkl")
    read_poses(fixtures_dir / "cryodrgn" / "pose.star.pkl")


# --------------------------------------------------------------------------- torch files


def test_weights_and_checkpoint_files_that_run_code_are_refused(tmp_path):
    import torch

    from cryofire_nb.train.checkpoint import load_checkpoint
    from cryofire_nb.train.run_model import WEIGHTS_FORMAT, load_weights

    marker = tmp_path / "marker"
    torch.save({"format": WEIGHTS_FORMAT, "spec": _RunsCommand(marker), "state_dict": {}}, tmp_path / "weights.pt")
    with pytest.raises(InputError, match="not a readable weights file"):
        load_weights(tmp_path)
    torch.save({"format": "cryofire_nb.checkpoint/1", "config": _RunsCommand(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_checkpoint_payload_is_plain_and_older_numpy_fields_still_load(tmp_path):
    import torch

    from cryofire_nb.train.checkpoint import CHECKPOINT_FORMAT, Checkpoint, TrainState, load_checkpoint, \
        save_checkpoint

    targets = (np.zeros((4, 3, 3), np.float32), np.ones((4, 2), np.float32))
    ckpt = Checkpoint({"outdir": Path("run"), "lr": np.float64(1e-3)}, {"d": 16}, {"w": torch.ones(2)}, {},
                      TrainState(step=3), torch.zeros(5, dtype=torch.uint8), torch.zeros(5, dtype=torch.uint8),
                      None, {"train": [{"loss": np.float32(0.5)}]}, targets)
    save_checkpoint(tmp_path / "new.pt", ckpt)
    torch.load(tmp_path / "new.pt", weights_only=True)  # nothing but tensors, containers and numbers
    got = load_checkpoint(tmp_path / "new.pt")
    assert got.config == {"outdir": "run", "lr": 1e-3} and got.state.step == 3
    np.testing.assert_array_equal(got.targets[1], targets[1])
    # a checkpoint written before (numpy arrays and scalars inside) still loads
    old = {"format": CHECKPOINT_FORMAT, "config": {"lr": np.float64(1e-3)}, "spec": {}, "model_state": {},
           "optimizer_state": {}, "state": {"step": 2}, "generator_state": torch.zeros(1),
           "torch_rng_state": torch.zeros(1), "cuda_rng_state": None, "history": {}, "targets": targets}
    torch.save(old, tmp_path / "old.pt")
    got = load_checkpoint(tmp_path / "old.pt")
    assert got.state.step == 2 and isinstance(got.targets[0], np.ndarray)
