"""The planning ratio behind a time-limited pose table (``trainer.HETERO_COST``).

Under ``--time-limit``, ``cryofire-nb train`` sizes its pose table from one measured rate,
the consensus search's global search per particle (``abinit.global_search_seconds``), and
one ratio: the least work of the heterogeneous refinement (its latent updates, global
stage, gauge fixes, the first two local rounds and the final fits) per particle, in units
of that global search. This script measures both on a simulated set, exactly as the
trainer runs them (``AbinitConfig.for_box`` with no consensus refinement rounds,
``HeteroRefineConfig.for_box``, the refinement given no time so that it does its least
work), and writes ``bench/results/table_budget_<name>.json``.

    .venv/bin/cryofire-nb simulate data_demo/adk_continuous_d32.yaml --box 64 -o bench/out/d64
    .venv/bin/python bench/table_budget.py --stack bench/out/d64 --n 3000 --name d64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", type=Path, required=True, help="folder of a simulated set (particles.mrcs, ctf.pkl)")
    ap.add_argument("--n", type=int, default=3000, help="particles used (the first N)")
    ap.add_argument("--name", required=True, help="result name: bench/results/table_budget_NAME.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from cryofire_nb.abinit import AbinitConfig, global_search_seconds, run_abinit
    from cryofire_nb.hartley_data import HartleyData
    from cryofire_nb.hetero import HeteroRefineConfig, hetero_refine
    from cryofire_nb.io.pkl import write_indices
    from cryofire_nb.train.data import ParticleData

    out = ROOT / "bench" / "out" / f"table_budget_{args.name}"
    out.mkdir(parents=True, exist_ok=True)
    ind = out / "ind.pkl"
    write_indices(ind, np.arange(args.n))
    data = ParticleData(str(args.stack / "particles.mrcs"), ctf=str(args.stack / "ctf.pkl"), ind=str(ind))
    hd = HartleyData.from_images(data, data.ctf_table)
    d = data.d
    acfg = AbinitConfig.for_box(d, refine_rounds=0, seed=args.seed)
    probe = global_search_seconds(hd, acfg)
    res = run_abinit(hd, acfg, progress=False)
    em_end = max(h["elapsed_s"] for h in res.history if h["stage"] == "em")
    glob = next(h for h in res.history if h["stage"] == "global")
    global_per = (glob["elapsed_s"] - em_end) / args.n
    # z for the refinement: random coordinates (the work does not depend on them)
    z = np.random.default_rng(args.seed).normal(size=(args.n, 2)).astype(np.float32)
    hcfg = HeteroRefineConfig.for_box(d, n_components=2, seed=args.seed)
    t = time.perf_counter()
    het = hetero_refine(hd, res.rots, res.shifts_px, z, hcfg, progress=False, time_limit_s=0.0)
    hetero_per = (time.perf_counter() - t) / args.n
    result = {
        "stack": str(args.stack), "particles": args.n, "box": d,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": list(os.getloadavg()),
        "global_search_ms_per_particle_probe": round(1e3 * probe, 4),
        "global_search_ms_per_particle_run": round(1e3 * global_per, 4),
        "hetero_least_work_ms_per_particle": round(1e3 * hetero_per, 4),
        "hetero_over_global_search": round(hetero_per / global_per, 2),
        "hetero_over_probe": round(hetero_per / probe, 2),
        "hetero_stages": [h["stage"] for h in het.history],
    }
    path = ROOT / "bench" / "results" / f"table_budget_{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
