#!/usr/bin/env python3
"""Check that notebooks are committed executed, top to bottom, without volatile metadata.

What CI runs (``pytest --nbval-lax``) compares against the committed outputs, so each
notebook must be saved straight after a clean "restart and run all":

- it is a valid nbformat-4 notebook with no error outputs;
- every code cell has source and an execution count, and the counts run 1, 2, 3, ...
  in cell order (an ``execute_result`` output carries its cell's count);
- exactly one code cell is tagged ``parameters``, and it is one of the first
  ``PARAMETERS_WITHIN`` code cells;
- no volatile metadata: per-cell timings (``execution``, ``ExecuteTime``), UI state
  (``collapsed``, ``scrolled``), notebook ``signature``; saved widget state only while
  it is small (``MAX_WIDGET_STATE_BYTES``); the file stays under ``max_bytes``;
- self-contained: no cell reads files outside the repository (``OUTSIDE_REPOSITORY``), so
  a fresh clone runs every cell;
- no output comparison on a cell that trains or searches (``STOCHASTIC_CALLS``): their
  numbers change in the last digits between machines and thread counts, so such claims
  are ``assert`` cells with margins instead.

Usage::

    python tools/check_notebooks.py [--fix] [--max-bytes N] [NOTEBOOK ...]

With no paths it checks ``notebooks/*.ipynb``. ``--fix`` first removes the volatile
metadata in place (it never renumbers counts: re-run the notebook for that).
Exit status: 0 clean, 1 problems found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import nbformat

PARAMETERS_TAG = "parameters"
PARAMETERS_WITHIN = 3  # the parameters cell is one of the first 3 code cells
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
VOLATILE_NOTEBOOK_METADATA = ("signature",)
MAX_WIDGET_STATE_BYTES = 20_000
MAX_NOTEBOOK_BYTES = 10_000_000
CHECK_OUTPUT_MARKER = "# NBVAL_CHECK_OUTPUT"
OUTSIDE_REPOSITORY = ("shared/fixtures", "CRYOFIRE_FIXTURES", '"shared"')
STOCHASTIC_CALLS = ("train(", "run_abinit(", "hetero_refine(", "train_known_poses(")


class Problem(NamedTuple):
    path: Path
    cell: int | None  # index in nb.cells (0-based), None for the whole notebook
    message: str

    def __str__(self) -> str:
        where = f"{self.path}" if self.cell is None else f"{self.path} cell {self.cell}"
        return f"{where}: {self.message}"


def _widget_state_bytes(metadata: dict) -> int:
    widgets = metadata.get("widgets")
    return 0 if widgets is None else len(json.dumps(widgets))


def check_notebook(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> list[Problem]:
    """Return every problem found in one notebook (empty list when it is clean)."""
    path = Path(path)
    problems: list[Problem] = []

    def add(cell: int | None, message: str) -> None:
        problems.append(Problem(path, cell, message))

    if not path.is_file():
        add(None, "no such file")
        return problems
    size = path.stat().st_size
    if size > max_bytes:
        add(None, f"file is {size:,} bytes (limit {max_bytes:,}); shrink outputs "
            "(static figures at modest size, no embedded plotly.js per figure)")
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    except Exception as err:  # not JSON, or not a notebook at all
        add(None, f"cannot be read as a notebook: {err}")
        return problems
    if nb.get("nbformat") != 4:
        add(None, f"nbformat {nb.get('nbformat')} (expected 4)")
        return problems
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as err:
        add(None, f"invalid notebook: {err.message}")

    for key in VOLATILE_NOTEBOOK_METADATA:
        if key in nb.metadata:
            add(None, f"volatile notebook metadata '{key}' (run with --fix)")
    widget_bytes = _widget_state_bytes(nb.metadata)
    if widget_bytes > MAX_WIDGET_STATE_BYTES:
        add(None, f"saved widget state is {widget_bytes:,} bytes "
            f"(limit {MAX_WIDGET_STATE_BYTES:,}); run with --fix to drop it")

    expected_count = 1
    code_seen = 0
    parameter_cells: list[tuple[int, int]] = []  # (cell index, code-cell ordinal)
    for index, cell in enumerate(nb.cells):
        for key in VOLATILE_CELL_METADATA:
            if key in cell.get("metadata", {}):
                add(index, f"volatile cell metadata '{key}' (run with --fix)")
        if cell.cell_type != "code":
            continue
        code_seen += 1
        if PARAMETERS_TAG in cell.metadata.get("tags", []):
            parameter_cells.append((index, code_seen))
        if not cell.source.strip():
            add(index, "empty code cell: delete it")
            continue
        for marker in OUTSIDE_REPOSITORY:
            if marker in cell.source:
                add(index, f"reads files outside the repository ({marker!r}): a fresh clone cannot run it")
        if cell.source.lstrip().startswith(CHECK_OUTPUT_MARKER):
            calls = [c for c in STOCHASTIC_CALLS if c in cell.source]
            if calls:
                add(index, f"output compared digit for digit on a cell that trains or searches ({calls[0]!r}): "
                    "drop the marker and state the claim as an assert with a margin")
        count = cell.get("execution_count")
        if count is None:
            add(index, "code cell was not executed (no execution count)")
        elif count != expected_count:
            add(index, f"execution count {count}, expected {expected_count}: "
                "restart the kernel and run all cells in order, then save")
        if count is not None:
            expected_count = count + 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                add(index, f"error output ({output.get('ename')}) committed")
            if (output.get("output_type") == "execute_result"
                    and output.get("execution_count") != count):
                add(index, "execute_result count differs from the cell's count")

    if not parameter_cells:
        add(None, f"no code cell tagged '{PARAMETERS_TAG}' (papermill / the house style "
            "want one parameters cell near the top)")
    elif len(parameter_cells) > 1:
        add(None, f"{len(parameter_cells)} cells tagged '{PARAMETERS_TAG}' "
            f"(cells {[i for i, _ in parameter_cells]}); keep one")
    elif parameter_cells[0][1] > PARAMETERS_WITHIN:
        add(parameter_cells[0][0], f"the '{PARAMETERS_TAG}' cell is code cell "
            f"{parameter_cells[0][1]}; move it into the first {PARAMETERS_WITHIN}")
    return problems


def strip_volatile(path: Path) -> bool:
    """Remove volatile metadata in place; return True when the file changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    changed = False
    for key in VOLATILE_NOTEBOOK_METADATA:
        changed |= nb.metadata.pop(key, None) is not None
    if _widget_state_bytes(nb.metadata) > MAX_WIDGET_STATE_BYTES:
        del nb.metadata["widgets"]
        changed = True
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            changed |= cell.get("metadata", {}).pop(key, None) is not None
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        nbformat.write(nb, tmp)
        tmp.replace(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--fix", action="store_true", help="strip volatile metadata first")
    parser.add_argument("--max-bytes", type=int, default=MAX_NOTEBOOK_BYTES)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(Path("notebooks").glob("*.ipynb"))
    if not paths:
        print("no notebooks to check")
        return 0
    problems: list[Problem] = []
    for path in paths:
        if args.fix and path.is_file() and strip_volatile(path):
            print(f"{path}: volatile metadata removed")
        problems += check_notebook(path, max_bytes=args.max_bytes)
    for problem in problems:
        print(problem)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
