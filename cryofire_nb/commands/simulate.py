"""``cryofire-nb simulate CONFIG.yaml -o DIR``: simulate a particle dataset with ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "simulate particles (projection, CTF, shifts, noise) from atomic models with two or more states"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="simulation settings (YAML), e.g. data_demo/demo_sim.yaml")
    parser.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--n-particles", type=int, help="override n_particles")
    parser.add_argument("--seed", type=int, help="override seed")
    parser.add_argument("--box", type=int, help="render at this box size (even) with the same physical box: the "
                                                "pixel size and the maximum shift in pixels are scaled by d / box")
    parser.add_argument("--chunk-size", type=int, default=256, help="particles rendered at a time (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io.outputs_guard import guard_folder
    from ..simulate import SimConfig, simulate_dataset

    for flag, value, minimum in (("--n-particles", args.n_particles, 1), ("--seed", args.seed, 0),
                                 ("--chunk-size", args.chunk_size, 1), ("--box", args.box, 8)):
        if value is not None and value < minimum:
            raise InputError(None, f"{flag} must be >= {minimum}, got {value}", f"pass a valid {flag}")
    if args.box is not None and args.box % 2:
        raise InputError(None, f"--box must be even, got {args.box}", "pass an even box size, e.g. --box 64")
    config = SimConfig.from_yaml(args.config)
    # the whole folder is replaced: none of the inputs may live anywhere inside it
    guard_folder(args.outdir, [args.config, *config.structures], overwrite=args.overwrite, replaces_folder=True)
    changes = {k: v for k, v in (("n_particles", args.n_particles), ("seed", args.seed)) if v is not None}
    if args.box is not None and args.box != config.d:
        scale = config.d / args.box
        changes.update(d=args.box, pixel_size_angstrom=config.pixel_size_angstrom * scale,
                       max_shift_px=config.max_shift_px / scale)
    if changes:
        config = config.replace(**changes)
    result = simulate_dataset(config, args.outdir, chunk_size=args.chunk_size, overwrite=args.overwrite)
    print(f"wrote {result.n_particles} particles ({config.d} px, {config.pixel_size_angstrom} A/px) to "
          f"{result.out_dir} in {result.seconds:.1f} s; noise std {result.noise_std:.4g}, "
          f"signal variance {result.signal_variance:.4g}")
    return 0
