"""The consensus search's EM starts as ``train`` runs them (``--search-starts K``, the
random streams of ``AbinitConfig(n_starts=K)`` for one seed): each start's score (the
mean squared residual of the same particle sample that the pipeline scores it on, no
truth used) beside the median view error of a global search of every particle against
its volume (the truth used); the start the pipeline keeps is the one with the lowest
score. Shows whether the kept start is a good one, and how often a start fails.

    python bench/abinit_starts.py bench/out/tcr_twostate_d32/data --starts 8
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
    from cryofire_nb.abinit import AbinitConfig, _em_stage, _index, _start_generator, start_score
    from cryofire_nb.io import read_poses
    from cryofire_nb.metrics import evaluate_run
    from cryofire_nb.parallel import Alone
    from cryofire_nb.rotations import so3_grid
    from cryofire_nb.search import global_search, shift_grid

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder written by cryofire-nb simulate")
    ap.add_argument("--starts", type=int, default=8, help="starts to run (the pipeline runs the first 4)")
    ap.add_argument("--seed", type=int, default=0, help="the run's --seed (default 0, as train)")
    ap.add_argument("--name", help="result name (default: the folder's parent name)")
    args = ap.parse_args()
    name = args.name or args.data.resolve().parent.name
    hd = common.hartley_set(args.data)
    gt = read_poses(args.data / "poses.pkl")
    labels = common.true_labels(args.data)
    lat, d, n = hd.lattice, hd.lattice.d, hd.n_particles
    cfg = AbinitConfig.for_box(d, None, seed=args.seed, refine_rounds=0, n_starts=args.starts)
    # the pipeline's sample (run_abinit's _best_start draws it the same way)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[: min(n, cfg.start_sample)]
    index = _index(lat, cfg.radius_end_px)
    grid_f = so3_grid(*cfg.grid_fine, dtype=hd.dtype)
    shifts_f = shift_grid(cfg.max_shift_px, cfg.shift_step_fine_px, dtype=hd.dtype)
    rows = []
    for k in range(args.starts):
        t0 = time.time()
        vol_h, sigma2 = _em_stage(hd, cfg, _start_generator(cfg.seed, k), Alone(), t0, None, False, None, [], start=k)
        t_em = time.time() - t0
        score = start_score(hd, cfg, vol_h, sigma2, sample)
        rots = torch.empty(n, 3, 3)
        for j in range(0, n, cfg.batch_size_full):
            sel = torch.arange(j, min(n, j + cfg.batch_size_full))
            rots[sel] = global_search(*hd.rows(sel), vol_h, lat, index, grid_f, shifts_f, sigma2).rots[:, 0].float()
        r64 = rots.double().numpy()
        row = {"start": k, "score": score, "em_seconds": round(t_em, 1),
               "view_median_deg": evaluate_run(r64, None, gt.rots, None, d).rotations.view.median_deg}
        if labels is not None:
            row["view_median_deg_per_state_own_alignment"] = {
                int(s): evaluate_run(r64[labels == s], None, gt.rots[labels == s], None, d).rotations.view.median_deg
                for s in np.unique(labels)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    def kept(k: int) -> dict:
        best = min(rows[:k], key=lambda r: r["score"])
        return {"starts": k, "kept": best["start"], "view_median_deg": best["view_median_deg"]}

    failed = [r["start"] for r in rows if r["view_median_deg"] > 20.0]
    out = {"data": str(args.data), "seed": args.seed, "sample": len(sample), "starts": rows,
           "kept_by_the_pipeline": [kept(k) for k in range(1, args.starts + 1)],
           "failed_starts_over_20_deg": failed,
           # how far the lowest score's start is from the start nearest the truth
           "kept_minus_best_view_median_deg": min(rows, key=lambda r: r["score"])["view_median_deg"]
           - min(r["view_median_deg"] for r in rows),
           "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    path = ROOT / "bench" / "results" / f"abinit_starts_{name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
