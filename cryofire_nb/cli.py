"""Command-line entry point ``cryofire-nb`` with cryoDRGN-like subcommands.

Each subcommand lives in ``cryofire_nb/commands/<name>.py`` (``parse_star`` becomes
``parse-star``) and defines ``HELP`` (one line), ``add_args(parser)`` and
``main(args)``. Modules are found automatically, so adding a command is adding a file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import pkgutil
import sys
import warnings

from . import __version__
from .errors import InputError

# Failures of the machine rather than of the program: reported in one line, no traceback.
SYSTEM_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
                 errno.EDQUOT: "disk quota exceeded", errno.EIO: "input/output error",
                 errno.EFBIG: "file too large (for the file system, or for the shell's file size limit)"}
SYSTEM_FIXES = {errno.ENOSPC: "free disk space or write to another disk",
                errno.EDQUOT: "free space within your quota or write elsewhere",
                errno.EFBIG: "write to a file system that takes large files, or raise the limit (ulimit -f)",
                errno.EIO: "check the disk (and its connection), then run again"}


def _command_modules():
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        yield info.name.replace("_", "-"), f"{commands.__name__}.{info.name}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryofire-nb",
        description="Ab initio heterogeneous cryo-EM reconstruction with amortised inference.",
    )
    parser.add_argument("--version", action="version", version=f"cryofire_nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in _command_modules():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_args(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        with _one_line_warnings(args.command):
            rc = args._main(args)
    except InputError as err:
        print(f"cryofire-nb {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in SYSTEM_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        print(f"cryofire-nb {args.command}: error: {system_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during train, or one during any other command
        print(f"cryofire-nb {args.command}: aborted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0 if rc is None else int(rc)


def system_error_line(err: OSError) -> str:
    """``FILE: problem. Fix: ...`` for a disk-full / permission / read-only / I/O error."""
    where = f"{err.filename}: " if err.filename else ""
    fix = SYSTEM_FIXES.get(err.errno, "choose a location you can write to, or fix the permissions")
    return f"{where}{SYSTEM_ERRNOS[err.errno]} ({err.strerror or err}). Fix: {fix}"


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """The package's warnings about the input as one line each on stderr, no source line."""
    from .validate import InputWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning) or (category is UserWarning and "cryofire_nb" in str(filename)):
            print(f"cryofire-nb {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    default = warnings.showwarning
    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
