"""Atomic file writing: write to a temporary file in the destination folder, then
``os.replace`` it onto the final name, so a failed or interrupted write never leaves a
partial output behind (the temporary file is removed on error)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The temporary file lives in the same folder (so ``os.replace`` is atomic on one
    file system) and keeps the final suffix (``.x.star.tmp1234.star``), so libraries
    that look at the suffix behave. The destination folder is created if needed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file 0600; give the output the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        names_no_output = getattr(err, "filename", None) is None or str(err.filename) == str(tmp)
        if isinstance(err, OSError) and err.errno is not None and names_no_output:
            # a full disk while writing names no file, or the temporary one: name the output
            raise OSError(err.errno, err.strerror or str(err), str(final)) from err
        raise
