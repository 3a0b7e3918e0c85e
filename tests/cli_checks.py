"""Checks shared by the command-line tests (imported by the test modules beside it)."""

from __future__ import annotations


def one_line_error(capsys, *fragments) -> str:
    """The command's stderr holds exactly one error line (warnings aside), no traceback, and
    that line contains every fragment; returns it."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "warning:" not in ln]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, err)
    return lines[0]
