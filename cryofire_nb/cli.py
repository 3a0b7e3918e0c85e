"""Command-line entry point ``cryofire-nb`` with cryoDRGN-like subcommands.

Each subcommand lives in ``cryofire_nb/commands/<name>.py`` (``parse_star`` becomes
``parse-star``) and defines ``HELP`` (one line), ``add_args(parser)`` and
``main(args)``. Modules are found automatically, so adding a command is adding a file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import InputError


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
        rc = args._main(args)
    except InputError as err:
        print(f"cryofire-nb {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
