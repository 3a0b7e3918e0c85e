"""``cryofire-nb eval-vol OUTDIR (--z Z... | --zfile Z.pkl) -o DIR``: decoder volumes at given
conformations.

Each volume is the real-space decoder output (d, d, d) indexed [z, y, x], written as
``DIR/vol_NNN.mrc`` (float32, voxel size in the header) in the order of the z values
(rows of ``--zfile``). Units are those of the normalised training images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generate volumes from a trained run's decoder at given z"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="output folder of `cryofire-nb train` (holds weights.pt)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--z", type=float, nargs="*", help="one latent vector (zdim numbers; none for zdim 0)")
    src.add_argument("--zfile", help="latent vectors (.pkl, (n, zdim)): one volume per row")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    p.add_argument("--prefix", default="vol_", help="file name prefix (default vol_)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace volumes of the same names in the output folder")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..errors import InputError
    from ..io import read_latents, write_mrc
    from ..io.outputs_guard import guard_folder
    from ..train.run_model import load_weights
    from ..train.trainer import resolve_device

    model = load_weights(args.run, resolve_device(args.device))
    k = model.spec.zdim
    if args.z is not None:
        zs = np.asarray(args.z, dtype=np.float32)[None]
        source = "--z"
    else:
        zs = read_latents(args.zfile).mu
        source = args.zfile
    if zs.shape[1] != k:
        raise InputError(source, f"gives {zs.shape[1]} numbers per latent vector, the run has zdim {k}",
                         f"pass {k} values" + (" (or none: the run is homogeneous)" if k == 0 else ""))
    if not np.isfinite(zs).all():  # float() takes "nan" and "inf": the volume would be NaN throughout
        raise InputError(source, "has NaN/inf values", "pass finite numbers")
    guard_folder(args.outdir, [args.run, args.zfile], overwrite=args.overwrite,
                 products=[f"{args.prefix}{i:03d}.mrc" for i in range(len(zs))])
    dev = next(model.parameters()).device
    args.outdir.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(zs):
        zt = torch.as_tensor(z, device=dev) if k else None
        vol = model.decoder.eval_volume(zt).float().cpu().numpy()
        write_mrc(args.outdir / f"{args.prefix}{i:03d}.mrc", vol, model.spec.pixel_size_angstrom)
    print(f"wrote {len(zs)} volume(s) of {model.spec.d}^3 to {args.outdir}")
    return 0
