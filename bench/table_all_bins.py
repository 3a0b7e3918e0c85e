"""A finished run's pose table searched again, every particle against every PC1 bin's
volume (the basis fitted to the table at each bin's mean coefficients; the grid and
radius of the refinement's global stage), keeping for each particle the best fit over the
bins and its current pose against its own bin's volume. Measures, against the truth, how
many of a minority conformation's lost particles a search over all the bins' volumes
brings back, where the refinement's global stage searches each particle against its own
bin's volume only. No local rounds follow: the table's own refinement would.

    python bench/table_all_bins.py bench/out/adk_twostate_d32
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
    from cryofire_nb.hetero import local_search_basis, pc1_bins, volume_at
    from cryofire_nb.rotations import so3_grid
    from cryofire_nb.search import global_search, shift_grid

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="bench/default_pipeline.py's folder (data/ and run/)")
    ap.add_argument("--bins", type=int, default=6, help="PC1 bins (the refinement's n_bins, default 6)")
    ap.add_argument("--neighbours", type=int, default=None, metavar="K",
                    help="search only the bins within K of the particle's own (default: every bin)")
    args = ap.parse_args()
    fr = common.FinishedRun(args.work)
    hd, lat, n, cfg, groups, summary = fr.hd, fr.hd.lattice, fr.n, fr.cfg, fr.groups, fr.summary
    rots, shifts, coef = fr.rots, fr.shifts, fr.coef
    bins = pc1_bins(coef, args.bins)
    vols = [volume_at(fr.basis, coef[bins == b].mean(0)) for b in range(args.bins)]

    index = torch.nonzero(lat.mask(cfg.global_radius_px, exclude_dc=True)).squeeze(1)
    grid = so3_grid(*cfg.grid, dtype=hd.dtype)
    sgrid = shift_grid(cfg.max_shift_px, cfg.shift_step_px, dtype=hd.dtype)
    eye, zero = torch.eye(3)[None], torch.zeros(1, 2)
    new_r, best_bin = rots.clone(), bins.clone()
    t0 = time.time()
    for i in range(0, n, cfg.batch_size):
        sl = torch.arange(i, min(n, i + cfg.batch_size))
        x, c = hd.rows(sl)
        err = torch.empty(len(sl))
        for b in range(args.bins):  # the current pose against its own bin's volume
            m = bins[sl] == b
            if m.any():
                err[m] = local_search_basis(x[m], c[m], vols[b][None], torch.ones(int(m.sum()), 1), lat, index,
                                            rots[sl][m], shifts[sl][m], eye, zero).sq_err
        r, bb = rots[sl].clone(), bins[sl].clone()
        for b in range(args.bins):
            near = torch.ones(len(sl), dtype=torch.bool) if args.neighbours is None else \
                (bins[sl] - b).abs() <= args.neighbours
            if not near.any():
                continue
            res = global_search(x[near], c[near], vols[b], lat, index, grid, sgrid, 1.0)
            pos = torch.nonzero(near).squeeze(1)
            better = res.sq_err < err[pos]
            err[pos[better]] = res.sq_err[better]
            r[pos[better]], bb[pos[better]] = res.rots[better, 0], b
        new_r[sl], best_bin[sl] = r, bb
    seconds = time.time() - t0
    out = {"work": str(args.work), "bins": args.bins, "neighbours": args.neighbours, "grid": list(cfg.grid), "radius_px": cfg.global_radius_px,
           "table": summary(rots), "all_bins": summary(new_r), "seconds": round(seconds, 1),
           "moved_fraction": float((new_r - rots).abs().amax((1, 2)).gt(0).float().mean()),
           "bin_counts": {name: {"before": np.bincount(bins.numpy()[sel], minlength=args.bins).tolist(),
                                 "after": np.bincount(best_bin.numpy()[sel], minlength=args.bins).tolist()}
                          for name, sel in groups},
           "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    tag = "" if args.neighbours is None else f"_neighbours{args.neighbours}"
    path = ROOT / "bench" / "results" / f"table_all_bins_{args.work.resolve().name}{tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
