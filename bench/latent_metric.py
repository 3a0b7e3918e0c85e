"""What the latent table's first principal component follows on a finished continuous run,
and what limits it: the scores are read again off the images (the basis fitted to a pose
set, the scores re-read through it, three times, as hetero_refine's updates do), at
  - the run's pose table,
  - the true rotations (the run's shifts),
  - the run's table with each tenth of the true t aligned to the truth on its own (the
    relative frame of the conformations set as the truth's, everything else the run's),
once with every reading's principal components taken in the scores' own metric and once in
the volumes' (hetero.pc_map without and with the basis), and |Spearman(PC1, t)| is
measured at the end, beside the best linear combination of the scores (an upper bound for
any choice of one direction).

    python bench/latent_metric.py bench/out/tcr_continuous_d32
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    from cryofire_nb.hetero import estimate_latents, fit_basis, pc_map
    from cryofire_nb.metrics.conformation import spearman_pc1
    from cryofire_nb.metrics.poses import align_poses, view_error_deg

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="bench/default_pipeline.py's folder (data/ and run/) of a continuous set")
    ap.add_argument("--rounds", type=int, default=3, help="basis fits and score readings per pose set")
    ap.add_argument("--tag", default="", help="suffix of the result file's name")
    args = ap.parse_args()
    if not (args.work / "data" / "conf.pkl").is_file():
        sys.exit(f"{args.work}/data has no conf.pkl: this measurement needs a continuous set's truth")
    fr = common.FinishedRun(args.work)
    t = fr.t
    every = torch.arange(fr.n)
    gt = torch.as_tensor(fr.gt.rots).double()
    q = fr.coef.shape[1] - 1

    def read(rots: torch.Tensor, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """The scores after ``args.rounds`` basis fits and readings, each reading's
        components taken in ``metric``; returns them and their PC1."""
        coef = fr.coef.clone()
        for _ in range(args.rounds):
            basis = fit_basis(fr.hd, rots, fr.shifts, coef, every, fr.cfg)
            a = estimate_latents(fr.hd, basis, rots, fr.shifts, every, fr.cfg.latent_prior).double().numpy()
            coef = pc_map(a, q, basis=basis[1:] if metric == "volume" else None).coefficients(a).float()
        return a, coef[:, 1].double().numpy()

    def measure(rots: torch.Tensor) -> dict:
        t0 = time.time()
        view = view_error_deg(align_poses(rots.double(), gt).aligned_rots, gt).numpy()
        res = {"view_median_deg": float(np.median(view))}
        for metric in ("scores", "volume"):
            a, pc1 = read(rots, metric)
            x = np.c_[a, np.ones(len(a))]
            fit = x @ np.linalg.lstsq(x, t, rcond=None)[0]
            res[f"spearman_pc1_{metric}_metric"] = spearman_pc1(pc1[:, None], t)
            res[f"spearman_best_linear_{metric}_metric"] = spearman_pc1(fit[:, None], t)
        res["seconds"] = round(time.time() - t0, 1)
        return res

    own = align_poses(fr.rots.double(), gt).aligned_rots.clone()
    for lo in np.arange(0.0, 1.0, 0.1):
        sel = torch.as_tensor((t >= lo) & ((t < lo + 0.1) | (lo >= 0.85)))
        own[sel] = align_poses(own[sel], gt[sel]).aligned_rots
    out = {"work": str(args.work), "rounds": args.rounds, "run_z": {"spearman_pc1": spearman_pc1(fr.z, t)},
           "pose_sets": {}}
    for name, rots in (("table", fr.rots), ("true rotations", gt.float()),
                       ("table, each tenth of t aligned on its own", own.float())):
        res = measure(rots)
        out["pose_sets"][name] = res
        print(f"{name:42s} view {res['view_median_deg']:.2f} deg | |Spearman(PC1, t)| scores' metric "
              f"{res['spearman_pc1_scores_metric']:.3f}, volumes' {res['spearman_pc1_volume_metric']:.3f} "
              f"(best linear {res['spearman_best_linear_scores_metric']:.3f}, "
              f"{res['spearman_best_linear_volume_metric']:.3f})", flush=True)
    out.update(threads=torch.get_num_threads(), machine=f"{platform.machine()}, {os.cpu_count()} cores",
               commit=common.git_commit())
    common.write_result(ROOT / "bench" / "results" / f"latent_metric_{args.work.resolve().name}{args.tag}.json", out)


if __name__ == "__main__":
    main()
