"""Pieces the benchmark scripts share: the commit a result was measured at, the JSON
result file, and the simulated demo set they time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit(cwd: Path = REPO) -> str:
    """``git describe --always --dirty`` of ``cwd`` (a run's code, as measured)."""
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=cwd, capture_output=True,
                          text=True).stdout.strip()


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` (folders made) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def simulate_demo(out: Path, n: int) -> Path:
    """``n`` particles of the 32-px continuous demo set in ``out`` (kept when already there)."""
    if not (out / "particles.mrcs").is_file():
        config = REPO / "data_demo" / "adk_continuous_d32.yaml"
        subprocess.run([sys.executable, "-m", "cryofire_nb", "simulate", str(config), "--n-particles", str(n),
                        "-o", str(out), "--overwrite"], check=True, cwd=REPO)
    return out
