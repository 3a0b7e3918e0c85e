"""Output checks shared by every command that writes: nothing is overwritten by accident
and no input is ever overwritten.

A command calls, once its arguments are known and before the long work starts,

* :func:`guard_files` for output files (``-o OUT.mrcs``, ``--poses P.pkl``): an existing
  file is refused unless ``overwrite``; a file that is also an input is refused always;
* :func:`guard_folder` for an output folder (``train -o RUN``): a folder that already
  holds one of the command's products is refused unless ``overwrite`` (or the run is
  resumed from a checkpoint in that folder); a folder that is an input, or that directly
  holds an input file, is refused always (the command could write over that file, e.g. a
  simulator's ``poses.pkl`` beside its ``particles.mrcs``).

Both then check that the location is writable (a temporary file is created and removed
in the nearest existing folder), so a read-only or impossible location is reported
before hours of work, not when the results are saved. Problems raise
:class:`~cryofire_nb.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

from ..errors import InputError

_OVERWRITE_FIX = "pass --overwrite to replace it, or choose another name"


def _paths(items: Iterable) -> list[Path]:
    return [Path(p) for p in items if p is not None and str(p) != ""]


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (links and ``..`` resolved)."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _is_in(path: Path, folder: Path, anywhere: bool) -> bool:
    """Whether ``path`` lies directly in ``folder`` (or anywhere below it with ``anywhere``)."""
    parents = path.resolve().parents if anywhere else [path.resolve().parent]
    return any(same_path(p, folder) for p in parents)


def check_writable(location: str | Path) -> None:
    """Raise InputError unless files can be created in folder ``location`` (or, when it does
    not exist yet, in its nearest existing parent, where the folder will be made)."""
    location = Path(location)
    probe = location
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(location, f"cannot be created: {probe} is a file, not a folder",
                         "choose an output location whose parent folders are folders")
    try:
        fd, name = tempfile.mkstemp(prefix=".cryofire_write_test.", dir=probe)
    except OSError as err:
        raise InputError(location, f"is not writable ({err.strerror or err})",
                         "choose a folder you can write to (and with free space)") from err
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def guard_files(outputs: Iterable, inputs: Iterable = (), *, overwrite: bool = False) -> list[Path]:
    """Check output files before a command writes them; return them as paths.

    ``inputs`` lists every file (or folder) the command reads; ``None`` entries are skipped.
    Two outputs naming the same file are refused too (one would replace the other).
    """
    outs, ins = _paths(outputs), _paths(inputs)
    for i, out in enumerate(outs):
        if out.is_dir():
            raise InputError(out, "is a folder, but an output file is expected here", "pass a file name")
        for other in outs[:i]:
            if same_path(out, other):
                raise InputError(out, "is given for two different outputs", "give each output its own file name")
        for src in ins:
            if same_path(out, src):
                raise InputError(out, f"is also an input ({src}); writing it would destroy the data being read",
                                 "write the output to a new file name")
        if out.exists() and not overwrite:
            raise InputError(out, "already exists", _OVERWRITE_FIX)
        check_writable(out.parent)
    return outs


def guard_folder(outdir: str | Path, inputs: Iterable = (), *, products: Iterable[str] = (),
                 overwrite: bool = False, resume_from: str | Path | None = None,
                 replaces_folder: bool = False) -> bool:
    """Check an output folder before a command writes into it.

    ``products``: names (glob patterns allowed) of the files the command writes there; the
    folder "holds results" when one of them exists. ``resume_from``: a checkpoint the run
    continues from; when it lies in ``outdir`` the folder is reused without ``overwrite``.
    ``replaces_folder``: the command replaces the whole folder (inputs anywhere below it
    are then refused, not only those directly in it).

    Returns True when this is a resume into the checkpoint's own folder.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(outdir, "exists and is not a folder", "pass a new or existing folder with -o")
    resume = resume_from is not None and outdir.is_dir() and _is_in(Path(resume_from), outdir, anywhere=False)
    for src in _paths(inputs):
        if resume and same_path(src, resume_from):
            continue
        if src.exists() and src.is_dir() and same_path(src, outdir):
            raise InputError(outdir, "is also an input folder of this command; writing there would replace "
                                     "what is being read", "choose a separate output folder")
        if outdir.is_dir() and _is_in(src, outdir, anywhere=replaces_folder):
            raise InputError(outdir, f"holds the input {src}, which writing there could destroy",
                             "choose a separate output folder")
    if outdir.is_dir() and not resume and not overwrite:
        found = sorted({p.name for pattern in products for p in outdir.glob(pattern)})
        if not products and any(outdir.iterdir()):
            found = ["files"]
        if found:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise InputError(outdir, f"already holds results ({shown})",
                             "pass --overwrite to replace them, or choose a new folder")
    check_writable(outdir)
    return resume
