"""Particles/s of the pose table's stages on one process against ``torchrun
--nproc_per_node P`` (gloo on the CPU, NCCL on GPUs): the voxel pose search
(:func:`cryofire_nb.abinit.run_abinit`) and the heterogeneous refinement
(:func:`cryofire_nb.hetero.hetero_refine`) on the same particles, with the accuracy
each process count reached beside its rate.

Each process count runs a worker script (``python`` for P = 1, ``torchrun`` otherwise)
that builds the particles' Hartley rows, times the search with the pipeline's settings
for the box (``AbinitConfig.for_box``, no consensus rounds, as ``train`` runs it before
the refinement), then times the refinement of the search's poses
(``HeteroRefineConfig.for_box``, two basis volumes). The refinement starts from scores
that stand in for an encoder's rough z: the simulated conformation plus Gaussian noise
of its own standard deviation, the same draw for every process count. Accuracy: median
view-direction error of the search's and the refinement's poses against the simulated
ones, and |Spearman| of the refinement's PC1 score against the simulated conformation.
On a CPU the cores are shared: P processes get ``threads // P`` threads each, so the
comparison is at equal hardware; ``--one-thread`` adds one process of one thread, which
separates the gain of the split from the cost of a process's threads sharing its work.

    .venv/bin/python bench/torchrun_table.py [--procs 1 2] [--n 3000] [--threads 2] [--one-thread]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, git_commit, simulate_demo, write_result  # noqa: E402

WORKER = r'''
import json, pickle, sys, time
import numpy as np
import torch
from scipy.stats import spearmanr
from cryofire_nb.abinit import AbinitConfig, run_abinit
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.hetero import HeteroRefineConfig, hetero_refine
from cryofire_nb.io import read_ctf, read_mrc, read_poses
from cryofire_nb.metrics import evaluate_run
from cryofire_nb.train.distributed import Group

data_dir, out, device = sys.argv[1:4]
group = Group.from_env(torch.device(device))
dev = group.device
shards = {"group": group} if group.active else {}
hd = HartleyData.from_images(np.asarray(read_mrc(f"{data_dir}/particles.mrcs").data),
                             read_ctf(f"{data_dir}/ctf.pkl").table, device=dev)
d, n = hd.lattice.d, hd.n_particles
gt = read_poses(f"{data_dir}/poses.pkl")
t = np.asarray(pickle.load(open(f"{data_dir}/conf.pkl", "rb")), dtype=np.float64).reshape(n, -1)[:, 0]
z = (t + t.std() * np.random.default_rng(0).standard_normal(n))[:, None]


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


sync(); t0 = time.perf_counter()
res = run_abinit(hd, AbinitConfig.for_box(d, seed=0, refine_rounds=0), progress=False, **shards)
sync(); search_s = time.perf_counter() - t0
t0 = time.perf_counter()
het = hetero_refine(hd, res.rots, res.shifts_px, z, HeteroRefineConfig.for_box(d, n_components=1, seed=0),
                    progress=False, **shards)
sync(); hetero_s = time.perf_counter() - t0
if group.is_main:
    def view(r, s):
        m = evaluate_run(r.float().cpu().numpy(), s.float().cpu().numpy() / d, gt.rots, gt.trans_frac, d)
        return round(m.rotations.view.median_deg, 3)
    rho = spearmanr(het.coefficients[:, 1].float().cpu().numpy(), t)[0]
    json.dump({"particles": n, "box": d, "search_s": round(search_s, 2), "hetero_s": round(hetero_s, 2),
               "search_particles_per_s": round(n / search_s, 1), "hetero_particles_per_s": round(n / hetero_s, 1),
               "search_view_error_median_deg": view(res.rots, res.shifts_px),
               "hetero_view_error_median_deg": view(het.rots, het.shifts_px),
               "hetero_abs_spearman_pc1": round(abs(float(rho)), 3),
               "hetero_stages": [h["stage"] for h in het.history]}, open(out, "w"))
group.close()
'''


def run(data: Path, out: Path, procs: int, threads: int, device: str) -> dict:
    per = max(1, threads // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per), "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(procs)]
    out.mkdir(parents=True, exist_ok=True)
    worker = out / "worker.py"
    worker.write_text(WORKER)
    result = out / "result.json"
    load_before = os.getloadavg()
    t0 = time.time()
    res = subprocess.run([*launcher, str(worker), str(data), str(result), device], env=env, capture_output=True,
                         text=True, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{res.stderr[-3000:]}")
    return {"processes": procs, "threads_per_process": per, "wall_s": round(time.time() - t0, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            **json.loads(result.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=3000, help="particles simulated")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one-thread", action="store_true",
                    help="also one process of one thread: what a process's own threads give, apart from the split")
    ap.add_argument("-o", "--out", type=Path, default=HERE / "out" / "torchrun_table")
    ap.add_argument("--result", type=Path, default=HERE / "results" / "torchrun_table_cpu.json")
    args = ap.parse_args()
    data = simulate_demo(args.out / f"data_n{args.n}", args.n)
    runs = [run(data, args.out / f"p{p}", p, args.threads, args.device) for p in args.procs]
    if args.one_thread:
        runs.append(run(data, args.out / "p1_t1", 1, 1, args.device))
    for r in runs:
        for stage in ("search", "hetero"):
            r[f"{stage}_speed_ratio_to_first"] = round(runs[0][f"{stage}_s"] / r[f"{stage}_s"], 3)
        print(json.dumps(r), flush=True)
    write_result(args.result, {"commit": git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                               "device": args.device, "load_average_at_end": os.getloadavg(), "runs": runs})


if __name__ == "__main__":
    main()
