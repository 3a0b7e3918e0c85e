"""Committed notebooks are executed in order, tagged, and free of volatile metadata.

The checker lives in ``tools/check_notebooks.py``; its own behaviour is tested here on
small synthetic notebooks, so a checker that accepts everything would fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _load_checker():
    spec = importlib.util.spec_from_file_location(
        "check_notebooks", REPO_ROOT / "tools" / "check_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass / NamedTuple machinery looks it up
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.mark.parametrize(
    "notebook",
    NOTEBOOKS or [pytest.param(None, marks=pytest.mark.skip(reason="no notebooks/*.ipynb yet"))],
    ids=[p.name for p in NOTEBOOKS] or ["none"],
)
def test_committed_notebook_is_clean(notebook: Path) -> None:
    problems = checker.check_notebook(notebook)
    assert not problems, "\n".join(map(str, problems))


# ------------------------------------------------------------- the checker itself
def _executed_notebook() -> nbformat.NotebookNode:
    """A notebook as a clean restart-and-run-all leaves it."""
    params = new_code_cell("N_PARTICLES = 100  # 10_000 takes ~1 h", execution_count=2)
    params.metadata["tags"] = ["parameters"]
    result = new_code_cell("N_PARTICLES * 2", execution_count=3)
    result.outputs = [new_output("execute_result", {"text/plain": "200"}, execution_count=3)]
    return new_notebook(cells=[
        new_markdown_cell("# Aim"),
        new_code_cell("import math", execution_count=1),
        params,
        new_markdown_cell("## Practical"),
        result,
    ])


def _write(nb: nbformat.NotebookNode, tmp_path: Path, name: str = "nb.ipynb") -> Path:
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_checker_accepts_clean_notebook(tmp_path: Path) -> None:
    assert checker.check_notebook(_write(_executed_notebook(), tmp_path)) == []


def test_checker_rejects_out_of_order_counts(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[1].execution_count = 5  # "import math" re-run after the others
    problems = checker.check_notebook(_write(nb, tmp_path))
    assert any("execution count 5, expected 1" in p.message for p in problems)
    assert checker.main([str(tmp_path / "nb.ipynb")]) == 1


def test_checker_rejects_unexecuted_cell(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[4].execution_count = None
    nb.cells[4].outputs = []
    problems = checker.check_notebook(_write(nb, tmp_path))
    assert [p.cell for p in problems] == [4]


def test_checker_wants_one_parameters_cell_near_top(tmp_path: Path) -> None:
    missing = _executed_notebook()
    missing.cells[2].metadata["tags"] = []
    assert any("no code cell tagged" in p.message
               for p in checker.check_notebook(_write(missing, tmp_path, "a.ipynb")))

    late = _executed_notebook()
    for count in range(4, 7):  # push the parameters cell to code cell 5
        late.cells.insert(2, new_code_cell(f"x{count} = {count}", execution_count=count))
    for count, cell in enumerate((c for c in late.cells if c.cell_type == "code"), 1):
        cell.execution_count = count
        for output in cell.outputs:
            output.execution_count = count
    problems = checker.check_notebook(_write(late, tmp_path, "b.ipynb"))
    assert [p.message for p in problems] == [
        "the 'parameters' cell is code cell 5; move it into the first 3"
    ]


def test_checker_flags_and_fix_strips_volatile_metadata(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-11-26T16:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {f"m{i}": {"model_name": "x" * 100} for i in range(500)}}}
    path = _write(nb, tmp_path)
    messages = [p.message for p in checker.check_notebook(path)]
    assert any("'execution'" in m for m in messages)
    assert any("widget state" in m for m in messages)

    assert checker.strip_volatile(path) is True
    assert checker.check_notebook(path) == []
    assert checker.strip_volatile(path) is False  # nothing left to strip
    kept = nbformat.read(path, as_version=4)
    assert kept.cells[4].outputs[0]["data"]["text/plain"] == "200"  # outputs kept


def test_checker_rejects_committed_error(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[4].outputs = [new_output("error", ename="AssertionError", evalue="", traceback=[])]
    problems = checker.check_notebook(_write(nb, tmp_path))
    assert any("AssertionError" in p.message for p in problems)


def test_checker_flags_files_outside_the_repository(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[1].source = 'FIX = REPO.parent / "shared" / "fixtures"'
    problems = checker.check_notebook(_write(nb, tmp_path))
    assert any("outside the repository" in p.message for p in problems)


def test_checker_flags_output_checks_on_training_cells(tmp_path: Path) -> None:
    nb = _executed_notebook()
    nb.cells[4].source = "# NBVAL_CHECK_OUTPUT\nresult = train(config)\nresult"
    problems = checker.check_notebook(_write(nb, tmp_path))
    assert any("trains or searches" in p.message for p in problems)
    nb.cells[4].source = "result = train(config)\nresult"  # no comparison: fine
    assert not checker.check_notebook(_write(nb, tmp_path, "ok.ipynb"))


def test_notebooks_cite_pages_that_exist() -> None:
    import re

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            for target in re.findall(r"\]\((\.\./[^)#\s]+)", cell.source):
                assert (path.parent / target).resolve().exists(), f"{path.name}: link to missing {target}"
