"""``cryofire-nb infer OUTDIR PARTICLES -o DIR``: poses and z of (unseen) particles in one
encoder pass of a trained run, with the mirror decision made by the decoder's loss.

Writes ``DIR/poses.pkl`` (cryoDRGN format, trans = shift / d), ``DIR/z.pkl``
((N, k) float32) and ``DIR/infer.yaml`` (the run, the particles, the throughput; lets
``cryofire-nb evaluate DIR`` score the output against a ground truth) and prints the
throughput in images/s. With ``--search`` the poses
and z come from a search against the trained decoder, as the run's own tables were made
(:func:`cryofire_nb.train.infer.search_poses`: each particle's z read off its image
through the decoder, its pose refined against its own volume), and the encoder's go to
``encoder_poses.pkl`` and ``encoder_z.pkl``. ``--refine`` (semi-amortised) starts from
the encoder's poses and z instead and refines them locally against the decoder
(:func:`cryofire_nb.train.infer.refine_poses`), keeping for each particle whichever answer
the decoder fits better: near the encoder's speed when its poses are close, never worse
by the decoder's loss. The images are preprocessed
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
    p.add_argument("--quarter-turns", action="store_true",
                   help="test-time hypotheses: also encode each image turned by 1-3 quarter turns (exact) and keep "
                        "the pose the decoder fits best (4x the work; measured: median view error on unseen "
                        "particles 28.9 -> 19.0 deg on the d=32 benchmark)")
    p.add_argument("--search", action="store_true",
                   help="poses and z by search against the trained decoder (global search per z bin, then local "
                        "rounds that re-read each particle's z through the decoder, as the run's pose table) "
                        "instead of the encoder's heads; slower, more accurate. encoder_poses.pkl and "
                        "encoder_z.pkl keep the encoder's")
    p.add_argument("--refine", action="store_true",
                   help="semi-amortised: the encoder's poses and z refined locally against the decoder (each "
                        "particle against its own volume); per particle the answer the decoder fits better is kept. "
                        "encoder_poses.pkl and encoder_z.pkl keep the encoder's")
    p.add_argument("--search-bins", type=int, default=8, help="z bins (decoder volumes) for --search (default 8)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (shown by default: a pass over a large stack takes minutes)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier infer in the folder")


def main(args: argparse.Namespace) -> int:
    import yaml

    from ..errors import InputError
    from ..io import Latents, Poses, read_latents, write_latents, write_poses
    from ..io._atomic import atomic_path
    from ..io.outputs_guard import guard_folder
    from ..train.data import ParticleData
    from ..train.infer import infer_dataset, refine_poses, search_poses
    from ..train.run_model import load_weights
    from ..train.trainer import resolve_device

    if args.search and args.refine:
        raise InputError(None, "--search and --refine both given", "pass one: --refine starts from the encoder, "
                         "--search searches globally")
    if args.search_bins < 1:
        raise InputError(None, f"--search-bins must be >= 1, got {args.search_bins}", "pass e.g. --search-bins 8")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {args.batch_size}", "pass e.g. -b 256")
    guard_folder(args.outdir, [args.run, args.particles, args.ctf, args.ind], overwrite=args.overwrite,
                 products=["poses.pkl", "z.pkl", "encoder_poses.pkl", "encoder_z.pkl", "infer.yaml"])
    device = resolve_device(args.device)
    model = load_weights(args.run, device)
    spec = model.spec
    if args.batch_size is None:
        args.batch_size = gpu_batch(spec.d) if device.type == "cuda" else CPU_BATCH
    z_ref = None  # --search: the run's own z table defines the conformation coordinates
    if (args.search or args.refine) and spec.zdim and (args.run / "z.pkl").is_file():
        z_ref = read_latents(args.run / "z.pkl").mu
        z_ref = z_ref.reshape(len(z_ref), -1)
        if z_ref.shape[1] != spec.zdim:
            raise InputError(args.run / "z.pkl", f"has {z_ref.shape[1]} columns but the run's zdim is {spec.zdim}",
                             "use the z.pkl that `cryofire-nb train` wrote to this folder")
    if spec.has_ctf and args.ctf is None:
        raise InputError(args.run / "weights.pt", "this run was trained with a CTF, so inference needs one",
                         "pass --ctf CTF.pkl for the particles")
    data = ParticleData(args.particles, ctf=args.ctf, ind=args.ind, datadir=args.datadir, lazy=args.lazy,
                        preprocess_config=spec.preprocess_config, normalization=spec.norm, device=device)
    if data.d != spec.d:
        raise InputError(args.particles, f"images are {data.d} px but the run was trained on {spec.d} px",
                         f"downsample the particles to {spec.d} px (cryofire-nb downsample)")
    amp = device.type == "cuda" and not args.no_amp
    result = infer_dataset(model, data, batch_size=args.batch_size, amp=amp, progress=args.progress,
                           turns=4 if args.quarter_turns else 1)
    args.outdir.mkdir(parents=True, exist_ok=True)
    search = args.search and not spec.known_poses
    refine = args.refine and not spec.known_poses
    z_name = "encoder_z.pkl" if search or refine else "z.pkl"  # with --search / --refine, z.pkl is theirs
    write_latents(args.outdir / z_name, Latents(result.z.reshape(len(result.z), -1)))
    written = [z_name]
    if spec.known_poses:
        print("note: this run was trained with known poses; its pose heads are untrained, so no poses.pkl")
    else:
        enc = Poses.from_shift_px(result.rots, result.shift_px, spec.d)
        print(f"mirrored path won for {result.mirrored.mean():.1%} of the images")
        if search or refine:
            write_poses(args.outdir / "encoder_poses.pkl", enc)
            written.insert(0, "encoder_poses.pkl")
        else:
            write_poses(args.outdir / "poses.pkl", enc)
            written.insert(0, "poses.pkl")
    print(f"inferred {len(result.z)} images in {result.seconds:.2f} s: {result.images_per_s:.0f} images/s "
          f"(device {device}, batch {args.batch_size}{', bf16' if amp else ''})")
    if search:
        rots, shifts, z_new, seconds = search_poses(model, data, result.z, args.search_bins,
                                                    progress=args.progress, z_ref=z_ref)
        write_poses(args.outdir / "poses.pkl", Poses.from_shift_px(rots, shifts, spec.d))
        written.insert(0, "poses.pkl")
        write_latents(args.outdir / "z.pkl", Latents(z_new.reshape(len(z_new), -1)))
        written.insert(1, "z.pkl")
        search_rate = len(rots) / max(seconds, 1e-9)
        print(f"pose search against the decoder: {len(rots)} images in {seconds:.1f} s: {search_rate:.0f} images/s")
    if refine:
        rots, shifts, z_new, seconds, kept = refine_poses(model, data, result, progress=args.progress, z_ref=z_ref)
        write_poses(args.outdir / "poses.pkl", Poses.from_shift_px(rots, shifts, spec.d))
        write_latents(args.outdir / "z.pkl", Latents(z_new))
        written[:0] = ["poses.pkl", "z.pkl"]
        refine_rate = len(rots) / max(seconds + result.seconds, 1e-9)
        print(f"local refinement against the decoder: {len(rots)} images in {seconds:.1f} s (with the encoder pass "
              f"{refine_rate:.0f} images/s); refined answer kept for {kept:.1%} of the particles")
    record = {"run": str(args.run.resolve()), "particles": str(args.particles), "ctf": args.ctf,
              "ind": None if args.ind is None else str(Path(args.ind).resolve()), "search": search,
              "quarter_turns": bool(args.quarter_turns), "encoder_images_per_s": round(result.images_per_s, 1),
              "device": str(device)}
    if search:
        record["search_images_per_s"] = round(search_rate, 2)
    if refine:
        record.update(refine=True, refine_images_per_s=round(refine_rate, 2), refined_kept_fraction=round(kept, 4))
    with atomic_path(args.outdir / "infer.yaml") as tmp:  # lets `cryofire-nb evaluate DIR` find the run
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    written.append("infer.yaml")
    print(f"wrote {', '.join(str(args.outdir / w) for w in written)}")
    return 0
