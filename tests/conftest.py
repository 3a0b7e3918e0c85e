"""Shared pytest set-up: pinned threads, reference fixtures, the optional cryoDRGN venv.

Fixtures
--------
fixtures_dir     ``<repo>/../shared/fixtures`` (or ``$CRYOFIRE_FIXTURES``); skips when absent.
cryodrgn_python  ``<repo>/.venv-cryodrgn/bin/python`` (``make cryodrgn-venv``); skips when absent.
out_dir          a fresh empty folder for a test's output files (under pytest's tmp_path).

Tests marked ``cryodrgn`` are skipped automatically when the cryoDRGN venv is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before numpy / torch start their thread pools (the Makefile sets these too).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# Idle OpenMP workers sleep instead of spinning: spinning workers slow a loaded 2-core
# machine 10-30x when several processes (or notebook kernels) share it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(TORCH_THREADS)
try:
    torch.set_num_interop_threads(TORCH_THREADS)
except RuntimeError:  # already set, or the pool already started
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(
    os.environ.get("CRYOFIRE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")
)
CRYODRGN_PYTHON = REPO_ROOT / ".venv-cryodrgn" / "bin" / "python"


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated so a run from another rootdir knows them.
    config.addinivalue_line("markers", "slow: long-running tests (make test-slow)")
    config.addinivalue_line(
        "markers", "cryodrgn: needs cryoDRGN installed in .venv-cryodrgn (skipped otherwise)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not CRYODRGN_PYTHON.exists():
        skip = pytest.mark.skip(
            reason=f"cryoDRGN venv not found at {CRYODRGN_PYTHON}; run `make cryodrgn-venv`"
        )
        for item in items:
            if "cryodrgn" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Reference files made by cryoDRGN / RELION / ASPIRE (read-only, never copied)."""
    if not FIXTURES_DIR.is_dir():
        pytest.skip(
            f"reference fixtures not found at {FIXTURES_DIR}: the shared/ folder must sit "
            "beside the repository (or set CRYOFIRE_FIXTURES)"
        )
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def cryodrgn_python() -> Path:
    """Interpreter of the side-by-side cryoDRGN 4.3.1 venv."""
    if not CRYODRGN_PYTHON.exists():
        pytest.skip(f"cryoDRGN venv not found at {CRYODRGN_PYTHON}; run `make cryodrgn-venv`")
    return CRYODRGN_PYTHON


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path
