"""The consensus voxel pose search (``cryofire_nb.abinit.run_abinit``, as the default
``train`` runs it: ``AbinitConfig.for_box`` with no consensus refinement rounds, no time
limit) from several seeds on one simulated set: each seed's median view error against the
truth (overall, and per state aligned on its own for a discrete set) beside its fit to the
data, the mean squared residual of the first 2,000 particles against the seed's volume at
their poses over the lattice disc of radius 8 and 12 px. Whether a failed search can be
told from a good one without the truth decides whether several starts, keeping the best
fit, would repair it.

    python bench/consensus_seeds.py bench/out/tcr_twostate_d32/data --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402


def main() -> None:
    from cryofire_nb.abinit import AbinitConfig, run_abinit
    from cryofire_nb.hetero import local_search_basis
    from cryofire_nb.io import read_poses
    from cryofire_nb.metrics import evaluate_run
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder written by cryofire-nb simulate")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", help="result name (default: the folder's parent name)")
    args = ap.parse_args()
    name = args.name or args.data.resolve().parent.name
    hd = common.hartley_set(args.data)
    gt = read_poses(args.data / "poses.pkl")
    labels = common.true_labels(args.data)
    d, lat = hd.lattice.d, hd.lattice
    sample = torch.arange(min(2000, hd.n_particles))
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        res = run_abinit(hd, AbinitConfig.for_box(d, None, seed=seed, refine_rounds=0), progress=False)
        rots, shifts = torch.as_tensor(res.rots).float(), torch.as_tensor(res.shifts_px).float()
        r64 = rots.double().numpy()
        row = {"seed": seed, "seconds": round(time.time() - t0, 1),
               "view_median_deg": evaluate_run(r64, None, gt.rots, None, d).rotations.view.median_deg}
        if labels is not None:
            row["view_median_deg_per_state_own_alignment"] = {
                int(k): evaluate_run(r64[labels == k], None, gt.rots[labels == k], None, d).rotations.view.median_deg
                for k in np.unique(labels)}
        x, c = hd.rows(sample)
        for radius in (8, 12):
            index = torch.nonzero(lat.mask(radius, exclude_dc=True)).squeeze(1)
            fit = local_search_basis(x, c, res.volume_hartley[None].float(), torch.ones(len(sample), 1), lat, index,
                                     rots[sample], shifts[sample], torch.eye(3)[None], torch.zeros(1, 2))
            row[f"mean_sq_residual_r{radius}"] = float(fit.sq_err.mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"data": str(args.data), "seeds": rows, "threads": torch.get_num_threads(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    path = ROOT / "bench" / "results" / f"consensus_seeds_{name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
