"""The floor of a simulated set: the pose table's local refinement started from the TRUE
poses, each particle scored against the TRUE volume of its own conformation.

What the table can reach on that data at best: noise, the CTF and the interpolation move
poses away from the truth even when the references are perfect. The pipeline's error is
stated relative to this number (bench/results/default_pipeline_*.json).

The true volume of a particle is the linear interpolation of the simulator's path volumes
(continuous sets) at its conformation t, or its state's volume (discrete sets), expressed
as a fixed linear basis (the path or state volumes, coefficients = interpolation weights)
and scaled by one least-squares factor to the images. The refinement is
:func:`cryofire_nb.hetero.search_basis` from the true poses with the schedule the
pipeline uses at this box (:meth:`HeteroRefineConfig.for_box`), the scores held fixed.

    python bench/true_pose_floor.py bench/out/adk_continuous_d32/data
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
import yaml

ROOT = Path(__file__).resolve().parents[1]


def interpolation_weights(t: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Hat-function weights (N, K) of ``t`` on the sorted ``knots``: linear interpolation."""
    w = np.zeros((len(t), len(knots)))
    j = np.clip(np.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)
    f = (t - knots[j]) / (knots[j + 1] - knots[j])
    w[np.arange(len(t)), j] = 1 - f
    w[np.arange(len(t)), j + 1] = f
    return w


def main(argv=None) -> int:
    from cryofire_nb.hartley_data import HartleyData
    from cryofire_nb.hetero import HeteroRefineConfig, own_slices, search_basis
    from cryofire_nb.io import read_mrc, read_poses
    from cryofire_nb.io.pkl import load_pickles
    from cryofire_nb.metrics import evaluate_run
    from cryofire_nb.search import real_to_hartley_volume, shifted_images
    from cryofire_nb.train.data import ParticleData

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder written by cryofire-nb simulate")
    ap.add_argument("--name", help="result name (default: the folder's parent name)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = yaml.safe_load((args.data / "sim_info.yaml").read_text())
    data = ParticleData(args.data / "particles.mrcs", ctf=args.data / "ctf.pkl")
    hd = HartleyData.from_images(data, data.ctf_table, invert=True)
    d, n = hd.lattice.d, hd.n_particles
    gt = read_poses(args.data / "poses.pkl")
    if (args.data / "conf.pkl").is_file():
        vols = sorted((v for v in info["volumes"] if "t" in v), key=lambda v: v["t"])
        t = np.asarray(load_pickles(args.data / "conf.pkl")[0], dtype=np.float64).reshape(-1)
        coef = interpolation_weights(t, np.array([v["t"] for v in vols]))
    else:
        vols = sorted((v for v in info["volumes"] if "state" in v), key=lambda v: v["state"])
        labels = np.asarray(load_pickles(args.data / "labels.pkl")[0]).reshape(-1).astype(int)
        coef = np.eye(len(vols))[labels]
    basis = torch.stack([real_to_hartley_volume(torch.as_tensor(read_mrc(args.data / v["file"]).data).float())
                         for v in vols])
    coef_t = torch.as_tensor(coef, dtype=torch.float32)
    rots = torch.as_tensor(gt.rots, dtype=torch.float32)
    shifts = torch.as_tensor(gt.shift_px(d), dtype=torch.float32)
    # one scale for all: least squares of the images on the CTF-modulated true slices
    index = torch.nonzero(hd.lattice.mask(d / 2, exclude_dc=True)).squeeze(1)
    sub = torch.arange(0, n, max(1, n // 2000))
    x, c = hd.rows(sub)
    sl = own_slices(basis, coef_t[sub], hd.lattice, rots[sub, None], index)[:, 0] * c[:, index]
    xs = shifted_images(x, hd.lattice, shifts[sub, None], index)[:, 0]
    scale = float((sl * xs).sum() / (sl * sl).sum())
    cfg = HeteroRefineConfig.for_box(d, estimate_latents=False)
    r, s, _ = search_basis(hd, basis * scale, coef_t, cfg, progress=False, start=(rots, shifts))
    m = evaluate_run(r.numpy(), s.numpy() / d, gt.rots, gt.trans_frac, d)
    res = {"data": str(args.data), "n_particles": n, "d": d, "volumes": [v["file"] for v in vols],
           "scale": scale, "refine_steps_deg": list(cfg.refine_steps_deg), "max_shift_px": cfg.max_shift_px,
           "view_median_deg": m.rotations.view.median_deg, "view_mean_deg": m.rotations.view.mean_deg,
           "translation_median_px": m.translations.median_px, "seconds": round(time.perf_counter() - t0, 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    name = args.name or args.data.absolute().parent.name
    out = ROOT / "bench" / "results" / f"true_pose_floor_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
