"""The relative frame of the conformations (hetero_refine's gauge fix) compared on a
finished run's pose table: the basis is fitted to the table, each gauge fix is applied
once, and the view error against the truth is measured after one global alignment,
overall and per true conformation (state, or t below 0.2 / between / above 0.8). The
data cannot tell the frames apart (a conformation's volume turned by Q and its particles'
poses by Q^T explain the images equally well); the truth of the project's sets keeps the
rigid core fixed, so this measures how well each fix finds the core. The run's table
already carries the gauge fix the run used (its history.json says which: run_gauge).

    python bench/gauge_offline.py bench/out/tcr_twostate_d32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402

FIXES = {"ls": {}, "robust": {"robust": True}, "trimmed 0.5": {"keep": 0.5}, "trimmed 0.75": {"keep": 0.75},
         "trimmed 0.85": {"keep": 0.85}, "trimmed 0.75, PC1 and PC2": {"keep": 0.75, "axes": 2}}


def main() -> None:
    from cryofire_nb.hetero import gauge_rotations

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="bench/default_pipeline.py's folder (data/ and run/)")
    ap.add_argument("--tag", default="", help="suffix of the result file's name")
    args = ap.parse_args()
    fr = common.FinishedRun(args.work)
    cfg, rots, summary = fr.cfg, fr.rots, fr.summary
    run = args.work / "run"
    run_cfg = [e["config"] for e in json.loads((run / "history.json").read_text()).get("events", [])
               if isinstance(e, dict) and "config" in e]
    out = {"work": str(args.work), "run_gauge": {k: run_cfg[-1].get(k) for k in ("gauge", "gauge_keep")} if run_cfg
           else None, "n_bins": cfg.n_bins, "table": summary(rots), "fixes": {}}
    for name, kw in FIXES.items():
        t0 = time.time()
        q = gauge_rotations(fr.basis, fr.coef, cfg.n_bins, **kw)
        res = summary(rots @ q.transpose(1, 2))
        res["seconds"] = round(time.time() - t0, 1)
        out["fixes"][name] = res
        print(f"{name:26s} view median {res['view_median_deg']:.2f} mean {res['view_mean_deg']:.2f} deg | "
              + " | ".join(f"{g}: {res[g]['view_median_deg']:.2f}" for g, _ in fr.groups), flush=True)
    out.update(threads=torch.get_num_threads(), machine=f"{platform.machine()}, {os.cpu_count()} cores")
    path = ROOT / "bench" / "results" / f"gauge_offline_{args.work.resolve().name}{args.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"table as the run left it: view median {out['table']['view_median_deg']:.2f} deg; wrote {path}")


if __name__ == "__main__":
    main()
