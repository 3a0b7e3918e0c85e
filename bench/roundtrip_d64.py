"""Issue-3 round trip: simulate the demo protein, backproject with the true poses, compare
with the truth and with cryoDRGN 4.3.1's ``backproject_voxel`` on the same files.

Steps (all through the command line a user would type):

1. ``cryofire-nb simulate data_demo/adk_roundtrip_d64.yaml -o OUT/data`` (adenylate kinase,
   continuous open <-> closed motion, D = 64, 3,000 images, SNR 1, CTF, shifts up to 3 px,
   inverted contrast);
2. ``cryofire-nb backproject OUT/data/particles.mrcs --poses poses.pkl --ctf ctf.pkl``;
3. ``cryodrgn backproject_voxel`` (``.venv-cryodrgn``) on the same three files, if present.

Truth: the particles sample the conformation t ~ U(0, 1) along the path, so the volume a
known-pose reconstruction converges to is the mean of the path volumes; the t = 0.5 volume
is also reported. Correlations are plain real-space correlations inside a soft sphere
(radius 0.45 D), no filtering. The hand test compares with the mirror image of the truth
(z flipped): the correct hand must correlate clearly better.

Usage::

    .venv/bin/python bench/roundtrip_d64.py [-o bench/out/roundtrip_d64] [--skip-cryodrgn]

Prints a table and writes ``roundtrip.json`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "data_demo" / "adk_roundtrip_d64.yaml"
OURS = REPO / ".venv" / "bin" / "cryofire-nb"
CRYODRGN = REPO / ".venv-cryodrgn" / "bin" / "cryodrgn"


def run(cmd: list[str]) -> float:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    t0 = time.time()
    subprocess.run([str(c) for c in cmd], check=True)
    return time.time() - t0


def read(path: Path) -> torch.Tensor:
    from cryofire_nb.io import read_mrc

    return torch.as_tensor(np.asarray(read_mrc(path).data), dtype=torch.float64)


def masked_corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    a = (a - (a * mask).sum() / mask.sum()) * mask
    b = (b - (b * mask).sum() / mask.sum()) * mask
    return float((a * b).sum() / (a.norm() * b.norm()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=REPO / "bench" / "out" / "roundtrip_d64")
    p.add_argument("--skip-cryodrgn", action="store_true")
    args = p.parse_args(argv)
    from cryofire_nb.fsc import fsc
    from cryofire_nb.reconstruct import soft_sphere_mask

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    times = {}
    if not (data / "particles.mrcs").is_file():
        times["simulate_s"] = run([OURS, "simulate", CONFIG, "-o", data])
    times["ours_backproject_s"] = run([OURS, "backproject", data / "particles.mrcs", "--poses",
                                       data / "poses.pkl", "--ctf", data / "ctf.pkl", "-o", out / "ours.mrc"])
    ours = read(out / "ours.mrc")
    d = ours.shape[-1]
    mask = soft_sphere_mask(d, radius_px=0.45 * d, edge_px=3).double()
    paths = sorted(data.glob("vol_path_*.mrc"))
    truth_mean = torch.stack([read(f) for f in paths]).mean(0)
    truth_mid = read(paths[len(paths) // 2])
    res = fsc(ours * mask, truth_mean * mask, pixel_size_angstrom=1.45)
    result = {
        "config": str(CONFIG.relative_to(REPO)),
        "d": d,
        "corr_ours_vs_truth_mean": masked_corr(ours, truth_mean, mask),
        "corr_ours_vs_truth_t0.5": masked_corr(ours, truth_mid, mask),
        "corr_ours_vs_mirrored_truth": masked_corr(ours, truth_mean.flip(0), mask),
        "fsc_auc_ours_truth": float(res.auc),
        "fsc_0.5_resolution_angstrom": res.at_0_5.resolution_angstrom,
        **times,
    }
    result["hand_correct"] = result["corr_ours_vs_truth_mean"] > result["corr_ours_vs_mirrored_truth"] + 0.1
    if not args.skip_cryodrgn:
        if not CRYODRGN.is_file():
            print(f"{CRYODRGN} is missing: run `make cryodrgn-venv` (or pass --skip-cryodrgn)", file=sys.stderr)
            return 2
        times_c = run([CRYODRGN, "backproject_voxel", data / "particles.mrcs", "--poses", data / "poses.pkl",
                       "--ctf", data / "ctf.pkl", "-o", out / "cryodrgn"])
        theirs_path = out / "cryodrgn" / "backproject.mrc"
        theirs = read(theirs_path)
        result.update({
            "cryodrgn_backproject_s": times_c,
            "corr_ours_vs_cryodrgn": masked_corr(ours, theirs, mask),
            "corr_cryodrgn_vs_truth_mean": masked_corr(theirs, truth_mean, mask),
            "corr_ours_vs_cryodrgn_mirrored": masked_corr(ours, theirs.flip(0), mask),
        })
    (out / "roundtrip.json").write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
