"""The README's "Reliability" table stays true: each row names a case of
``tools/bad_input_sweep.py`` (the last column) and the outcome it promises; the case is run
(the command line in a subprocess on a small simulated set) and must end that way."""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("bad_input_sweep", REPO_ROOT / "tools" / "bad_input_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
sys.modules["bad_input_sweep"] = sweep
_spec.loader.exec_module(sweep)

# Rows whose run takes longer than the normal suite's budget (a training run each).
SLOW_CASES = {"train-ok", "train-sigterm", "train-sigint", "train-disk-full", "infer-ok", "simulate-ok"}


def readme_rows() -> list[tuple[str, str, str]]:
    """(case id, outcome, what happens) for every row of the README's Reliability table."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`[a-z0-9-]+`", cells[-1]):
            outcome = re.search(r"ok-error|ok-warning|ok", cells[-2]).group(0)
            rows.append((cells[-1].strip("`"), outcome, cells[-2]))
    return rows


ROWS = readme_rows()
CASES = {c.id: c for c in sweep.cases()}


def test_the_table_is_there_and_names_known_cases():
    assert len(ROWS) >= 25
    assert [r[0] for r in ROWS if r[0] not in CASES] == []
    assert len({r[0] for r in ROWS}) == len(ROWS)
    commands = {CASES[r[0]].command for r in ROWS}
    assert {"simulate", "parse-star", "parse-cs", "downsample", "backproject", "write-subset", "train", "infer",
            "eval-vol", "evaluate", "demo"} <= commands


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "base"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep.make_base(folder)
    return folder


@pytest.mark.parametrize("case_id, outcome, text", [
    pytest.param(*row, id=row[0], marks=[pytest.mark.slow] if row[0] in SLOW_CASES else [])
    for row in ROWS])
def test_readme_reliability_row(base, tmp_path, case_id, outcome, text):
    case = CASES[case_id]
    if case.skip:
        pytest.skip(case.skip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sweep.run_case(case, base, tmp_path)
    assert result.outcome == outcome, f"{case_id}: {result.outcome} ({result.detail}); stderr: {result.stderr_tail}"
