"""Training images/s of one process against ``torchrun --nproc_per_node P`` (gloo on the CPU,
NCCL on GPUs), same particles, same global batch, same number of images.

The gradient loop only (``--method amortised``, which has no search stage): every
process count trains ``--images`` images of a simulated 32-px set, and the script reads
each run's steady rate (after the warm-up steps) from its report, with the last logged
reconstruction loss beside it. On a CPU the cores are shared: P processes get
``threads // P`` threads each, so the comparison is at equal hardware.

    .venv/bin/python bench/torchrun_scaling.py [--procs 1 2] [--images 6000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, git_commit, simulate_demo, write_result  # noqa: E402


def train(data: Path, out: Path, procs: int, images: int, threads: int, device: str) -> dict:
    per = max(1, threads // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per), "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(procs)]
    cmd = [*launcher, "-m", "cryofire_nb", "train", str(data / "particles.mrcs"), "--ctf", str(data / "ctf.pkl"),
           "-o", str(out), "--method", "amortised", "--max-images", str(images), "--no-progress",
           "--device", device, "--overwrite"]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    m = re.search(r"at (\d+) images/s \((\d+) after the first", res.stdout)
    hist = json.loads((out / "history.json").read_text())["train"]
    return {"processes": procs, "threads_per_process": per, "images": images, "wall_s": round(wall, 1),
            "images_per_s": int(m.group(1)) if m else None, "steady_images_per_s": int(m.group(2)) if m else None,
            "last_recon_loss": hist[-1]["recon"], "command": " ".join(cmd[len(launcher):])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--n", type=int, default=4000, help="particles simulated")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-o", "--out", type=Path, default=HERE / "out" / "torchrun_scaling")
    ap.add_argument("--result", type=Path, default=HERE / "results" / "torchrun_scaling_cpu.json")
    args = ap.parse_args()
    data = simulate_demo(args.out / f"data_n{args.n}", args.n)
    runs = [train(data, args.out / f"run_p{p}", p, args.images, args.threads, args.device) for p in args.procs]
    base = runs[0]["steady_images_per_s"]
    for r in runs:
        rate = r["steady_images_per_s"]
        r["speed_ratio_to_first"] = round(rate / base, 3) if base and rate else None
        print(json.dumps(r), flush=True)
    write_result(args.result, {"commit": git_commit(), "machine": platform.node(), "cpus": os.cpu_count(),
                               "device": args.device, "load_average_at_end": os.getloadavg(), "runs": runs})


if __name__ == "__main__":
    main()
