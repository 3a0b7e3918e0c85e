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


class FinishedRun:
    """A finished ``bench/default_pipeline.py`` folder (``data/`` and ``run/``) as the
    table studies read it: the particles, the truth grouped by conformation (each state,
    or t below 0.2 / between / above 0.8; ``t``, the true conformation of a continuous
    set, None for a discrete one), the run's pose table and z (``z``, as in z.pkl), and the
    volume basis refitted to that table with the refinement's settings for the box."""

    def __init__(self, work: Path):
        import numpy as np
        import torch

        from cryofire_nb.hetero import HeteroRefineConfig, fit_basis, pc_map
        from cryofire_nb.io import read_poses
        from cryofire_nb.io.pkl import load_pickles

        data, run = work / "data", work / "run"
        self.hd = hartley_set(data)
        self.d, self.n = self.hd.lattice.d, self.hd.n_particles
        self.gt, tab = read_poses(data / "poses.pkl"), read_poses(run / "poses.pkl")
        lab = true_labels(data)
        self.t = None
        if lab is not None:
            self.groups = [(f"state {k}", lab == k) for k in np.unique(lab)]
        else:
            t = self.t = np.asarray(load_pickles(data / "conf.pkl")[0], dtype=np.float64).reshape(-1)
            self.groups = [("t < 0.2", t < 0.2), ("0.2 <= t <= 0.8", (t >= 0.2) & (t <= 0.8)), ("t > 0.8", t > 0.8)]
        z = self.z = np.asarray(load_pickles(run / "z.pkl")[0], dtype=np.float64).reshape(self.n, -1)
        self.rots = torch.as_tensor(tab.rots).float()
        self.shifts = torch.as_tensor(tab.shift_px(self.d)).float()
        self.cfg = HeteroRefineConfig.for_box(self.d)
        self.coef = pc_map(z, self.cfg.n_components).coefficients(z).float()
        self.basis = fit_basis(self.hd, self.rots, self.shifts, self.coef, torch.arange(self.n), self.cfg)

    def summary(self, rots) -> dict:
        """Median / mean view error of ``rots`` (N, 3, 3) against the truth after one global
        alignment, and per group the median and the fraction past 20 deg."""
        import numpy as np

        from cryofire_nb.metrics import evaluate_run

        e = np.asarray(evaluate_run(rots.double().numpy(), None, self.gt.rots, None, self.d).rotations.view_deg)
        out = {"view_median_deg": float(np.median(e)), "view_mean_deg": float(e.mean())}
        for name, sel in self.groups:
            out[name] = {"n": int(sel.sum()), "view_median_deg": float(np.median(e[sel])),
                         "over_20deg": float((e[sel] > 20).mean())}
        return out
