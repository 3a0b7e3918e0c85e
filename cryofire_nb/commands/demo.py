"""``cryofire-nb demo -o demo_out``: simulate the bundled demo data, reconstruct it with the
true poses, train ab initio for a few minutes, evaluate, and write ``demo_out/REPORT.md``
(see :mod:`cryofire_nb.train.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole pipeline on the bundled demo data (simulate, reconstruct, train, evaluate)"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--minutes", type=float, help="training time limit (default 6 on cpu, 3 with --no-init-search, 8 on cuda)")
    p.add_argument("--config", type=Path, help="simulation config (default data_demo/demo_sim.yaml)")
    p.add_argument("--no-init-search", dest="init_search", action="store_false",
                   help="skip the voxel pose search (cryofire_nb.abinit) that initialises the encoder: plain "
                        "amortised training, which needs far more images than the CPU demo sees")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier demo in the folder (its simulated data/ is reused)")


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io.outputs_guard import guard_folder
    from ..train.demo import DemoSettings, run_demo

    if args.minutes is not None and not args.minutes > 0:
        raise InputError(None, f"--minutes must be > 0, got {args.minutes}", "pass e.g. --minutes 3")
    # data/ (the simulation) is a cache the demo reuses; its other products are results
    guard_folder(args.outdir, [args.config], overwrite=args.overwrite,
                 products=["REPORT.md", "train", "eval", "known_pose_*"])
    settings = DemoSettings(args.outdir, device=args.device, minutes=args.minutes, config=args.config,
                            init_search=args.init_search, seed=args.seed, progress=args.progress)
    report = run_demo(settings)
    print(report.read_text())
    print(f"wrote {report}")
    return 0
