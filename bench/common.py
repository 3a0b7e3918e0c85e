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


def hartley_set(data: Path):
    """The simulated set in ``data`` (a ``cryofire-nb simulate`` folder) as the pose
    search and refinement read it: particles.mrcs with its ctf.pkl as Hartley rows."""
    from cryofire_nb.hartley_data import HartleyData
    from cryofire_nb.io import read_ctf
    from cryofire_nb.train.data import ParticleData

    return HartleyData.from_images(ParticleData(data / "particles.mrcs", ctf=data / "ctf.pkl"),
                                   read_ctf(data / "ctf.pkl").table)


def true_labels(data: Path):
    """The true state of each particle (labels.pkl) as an int array, or None for a
    continuous set."""
    import numpy as np

    from cryofire_nb.io.pkl import load_pickles

    if not (data / "labels.pkl").is_file():
        return None
    return np.asarray(load_pickles(data / "labels.pkl")[0]).reshape(-1).astype(int)
