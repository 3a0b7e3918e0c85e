"""``cryofire-nb infer OUTDIR PARTICLES -o DIR``: poses and z of (unseen) particles in one
encoder pass of a trained run, with the mirror decision made by the decoder's loss.

Writes ``DIR/poses.pkl`` (cryoDRGN format, trans = shift / d) and ``DIR/z.pkl``
((N, k) float32) and prints the throughput in images/s. With ``--search`` the poses come
from a search against the trained decoder at each particle's inferred z instead
(:func:`cryofire_nb.train.infer.search_poses`), and the encoder's go to
``encoder_poses.pkl``. The images are preprocessed
exactly as in training (same contrast inversion, window and normalisation). For a run
trained with known poses the pose heads were never trained: only z.pkl is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "infer poses and z of particles with a trained run's encoder"
CPU_BATCH = 256


def gpu_batch(d: int) -> int:
    """Default GPU batch: 4,096 images at d = 64 (measured on an H200: 22,900 images/s at
    4,096, 20,600 at 1,024), fewer for larger boxes (same number of lattice points)."""
    return max(256, int(4096 * (64 / d) ** 2))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="output folder of `cryofire-nb train` (holds weights.pt)")
    p.add_argument("particles", help="particle stack: .mrcs, .txt, .star or .cs (same box as training)")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    p.add_argument("--ctf", help="CTF parameters (.pkl); needed when the run was trained with a CTF")
    p.add_argument("--ind", help="indices of the particles to use (.pkl)")
    p.add_argument("--datadir", help="folder of the stacks named in a .star/.cs/.txt")
    p.add_argument("--lazy", action="store_true", help="read images from disk on demand")
    p.add_argument("-b", "--batch-size", type=int,
                   help=f"batch size (default {CPU_BATCH} on the CPU; on a GPU 4096 at d = 64, scaled by (64/d)^2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on a GPU too (default: bf16 autocast on a GPU)")
    p.add_argument("--search", action="store_true",
                   help="poses by search against the trained decoder at each particle's inferred z (global "
                        "search + local refinement, as the run's pose table) instead of the encoder's pose heads; "
                        "slower, more accurate. encoder_poses.pkl keeps the encoder's")
    p.add_argument("--search-bins", type=int, default=8, help="z bins (decoder volumes) for --search (default 8)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def main(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io import Latents, Poses, write_latents, write_poses
    from ..train.data import ParticleData
    from ..train.infer import infer_dataset, search_poses
    from ..train.run_model import load_weights
    from ..train.trainer import resolve_device

    if args.search_bins < 1:
        raise InputError(None, f"--search-bins must be >= 1, got {args.search_bins}", "pass e.g. --search-bins 8")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}", "pass e.g. -b 256")
    device = resolve_device(args.device)
    model = load_weights(args.run, device)
    spec = model.spec
    if args.batch_size is None:
        args.batch_size = gpu_batch(spec.d) if device.type == "cuda" else CPU_BATCH
    if spec.has_ctf and args.ctf is None:
        raise InputError(args.run / "weights.pt", "this run was trained with a CTF, so inference needs one",
                         "pass --ctf CTF.pkl for the particles")
    data = ParticleData(args.particles, ctf=args.ctf, ind=args.ind, datadir=args.datadir, lazy=args.lazy,
                        preprocess_config=spec.preprocess_config, normalization=spec.norm, device=device)
    if data.d != spec.d:
        raise InputError(args.particles, f"images are {data.d} px but the run was trained on {spec.d} px",
                         f"downsample the particles to {spec.d} px (cryofire-nb downsample)")
    amp = device.type == "cuda" and not args.no_amp
    result = infer_dataset(model, data, batch_size=args.batch_size, amp=amp, progress=args.progress)
    args.outdir.mkdir(parents=True, exist_ok=True)
    write_latents(args.outdir / "z.pkl", Latents(result.z.reshape(len(result.z), -1)))
    written = ["z.pkl"]
    if spec.known_poses:
        print("note: this run was trained with known poses; its pose heads are untrained, so no poses.pkl")
    else:
        enc = Poses.from_shift_px(result.rots, result.shift_px, spec.d)
        print(f"mirrored path won for {result.mirrored.mean():.1%} of the images")
        if args.search:
            write_poses(args.outdir / "encoder_poses.pkl", enc)
            written.insert(0, "encoder_poses.pkl")
        else:
            write_poses(args.outdir / "poses.pkl", enc)
            written.insert(0, "poses.pkl")
    print(f"inferred {len(result.z)} images in {result.seconds:.2f} s: {result.images_per_s:.0f} images/s "
          f"(device {device}, batch {args.batch_size}{', bf16' if amp else ''})")
    if args.search and not spec.known_poses:
        rots, shifts, seconds = search_poses(model, data, result.z, args.search_bins, progress=args.progress)
        write_poses(args.outdir / "poses.pkl", Poses.from_shift_px(rots, shifts, spec.d))
        written.insert(0, "poses.pkl")
        print(f"pose search against the decoder: {len(rots)} images in {seconds:.1f} s: "
              f"{len(rots) / max(seconds, 1e-9):.0f} images/s")
    print(f"wrote {', '.join(str(args.outdir / w) for w in written)}")
    return 0
