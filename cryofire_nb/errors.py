"""User-facing errors.

Every problem with a user's input raises :class:`InputError` whose message names the
offending file and says how to fix it. The command line prints the message without a
traceback and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from the user: a missing file, a wrong shape, missing columns, NaNs."""

    def __init__(self, path: str | Path | None, problem: str, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        how = f" Fix: {fix}" if fix else ""
        super().__init__(f"{where}{problem}.{how}")
