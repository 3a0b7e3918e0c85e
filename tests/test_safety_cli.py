"""The command line: the package's errors and the machine's (disk full, permission, read-only
file system, I/O) are one line and exit status 2; any other exception is a bug and keeps
its traceback; warnings about the input are one line each."""

from __future__ import annotations

import errno
import warnings

import pytest

from cryofire_nb import cli
from cryofire_nb.commands import write_subset
from cryofire_nb.validate import InputWarning


def _fail_with(monkeypatch, exc):
    def boom(args):
        raise exc

    monkeypatch.setattr(write_subset, "main", boom)


ARGS = ["write-subset", "in.star", "--ind", "i.pkl", "-o", "out.star"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EIO])
def test_system_errors_are_one_line(monkeypatch, capsys, code):
    _fail_with(monkeypatch, OSError(code, "os message", "/data/out.star"))
    assert cli.main(ARGS) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cryofire-nb write-subset: error: /data/out.star: ")
    assert cli.SYSTEM_ERRNOS[code] in err and "Fix:" in err


def test_other_os_errors_and_bugs_keep_their_traceback(monkeypatch):
    _fail_with(monkeypatch, OSError(errno.EBADF, "bad file descriptor"))
    with pytest.raises(OSError):
        cli.main(ARGS)
    _fail_with(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(ARGS)


def test_full_disk_while_writing_names_the_output_file(tmp_path, monkeypatch, capsys):
    """A write that fails on a full disk names no file; the atomic writer names the output."""
    from cryofire_nb.io import _atomic
    from cryofire_nb.io.pkl import write_indices

    star = tmp_path / "in.star"
    star.write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n2@a.mrcs\n")
    write_indices(tmp_path / "i.pkl", [1])

    real = _atomic.os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_atomic.os, "replace", full)
    rc = cli.main(["write-subset", str(star), "--ind", str(tmp_path / "i.pkl"), "-o", str(tmp_path / "out.pkl")])
    monkeypatch.setattr(_atomic.os, "replace", real)
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'out.pkl'}: no space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.pkl", "in.star"]  # temporary file removed


def test_input_warnings_are_one_line(monkeypatch, capsys):
    def warns(args):
        warnings.warn("ctf.pkl: voltage 30 kV is unusual", InputWarning)
        return 0

    monkeypatch.setattr(write_subset, "main", warns)
    assert cli.main(ARGS) == 0
    err = capsys.readouterr().err
    assert err == "cryofire-nb write-subset: warning: ctf.pkl: voltage 30 kV is unusual\n"


def test_full_disk_while_saving_torch_files_is_an_os_error(tmp_path, monkeypatch):
    """torch.save turns a failed write into a RuntimeError without errno; the weights and
    checkpoint writer re-raises the disk's OSError (one line in the CLI), removing the
    temporary file and keeping the earlier file."""
    import builtins

    import torch

    from cryofire_nb.train import run_model

    target = tmp_path / "weights.pt"
    target.write_bytes(b"earlier")
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if "w" in mode and str(file).endswith(".pt") else f

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(OSError) as err:
        run_model.save_torch_file(target, {"w": torch.zeros(1000)})
    monkeypatch.setattr(builtins, "open", real_open)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert cli.system_error_line(err.value).startswith(f"{target}: no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"] and target.read_bytes() == b"earlier"
