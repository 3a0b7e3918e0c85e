"""``cryofire-nb train PARTICLES -o OUTDIR``: ab initio heterogeneous reconstruction.

With no method flags it runs the best measured pipeline (``--method table``): voxel pose
search, a pose and latent table refined against a conformation-dependent volume, and an
amortised encoder distilled from the tables; the model and optimiser settings come from a
preset chosen from the box size and the device (:mod:`cryofire_nb.train.presets`), printed
and saved in ``config.yaml``. ``--method amortised`` runs the published recipe alone.

Examples::

    cryofire-nb train particles.mrcs --ctf ctf.pkl -o run1 --time-limit 20
    cryofire-nb train particles.mrcs --ctf ctf.pkl -o run_paper --method amortised --time-limit 10
    cryofire-nb train particles.star --ctf ctf.pkl --poses poses.pkl --zdim 8 -o run_known --epochs 20
    cryofire-nb train particles.mrcs --ctf ctf.pkl -o run1 --load run1/checkpoint.pt --epochs 40
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

HELP = "ab initio heterogeneous reconstruction: pose and latent tables, an amortised encoder and a decoder"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("particles", help="particle stack: .mrcs, .txt list of stacks, RELION .star or cryoSPARC .cs")
    p.add_argument("-o", "--outdir", required=True, help="output folder")
    g = p.add_argument_group("data")
    g.add_argument("--ctf", help="CTF parameters (.pkl, cryoDRGN format, from parse-star / parse-cs)")
    g.add_argument("--poses", help="known poses (.pkl): the encoder then predicts z only (like train_vae)")
    g.add_argument("--ind", help="indices of the particles to use (.pkl)")
    g.add_argument("--datadir", help="folder of the stacks named in a .star/.cs/.txt")
    g.add_argument("--lazy", action="store_true", help="read images from disk on demand instead of into memory")
    g.add_argument("--half", action="store_true",
                   help="keep the particles in memory in float16: half the memory of the stack and of the pose "
                        "search's Fourier rows (rounding 5e-4 of a value, far below the noise); values must lie "
                        "within +-65,504")
    g.add_argument("--uninvert-data", dest="invert_contrast", action="store_false",
                   help="do not invert contrast (data with dark particles, e.g. EMPIAR-10076)")
    g = p.add_argument_group("method (defaults: the preset for the method, the box and the device)")
    g.add_argument("--method", choices=("table", "amortised"),
                   help="table: pose search, pose and latent tables refined against the conformation-dependent "
                        "volume, encoder distilled from them (default without --poses); amortised: the published "
                        "recipe alone (encoder poses from the start)")
    g.add_argument("--n-basis", type=int, dest="n_basis",
                   help="table method: conformational components of the volume basis (= columns of z; preset 2)")
    g.add_argument("--max-shift", type=float, dest="max_shift_px",
                   help="largest particle shift searched and predicted, pixels (default: 3/64 of the box for "
                        "the search, 1/8 for the encoder)")
    g = p.add_argument_group("model")
    g.add_argument("--zdim", type=int,
                   help="latent dimension (0: homogeneous; table method: follows --n-basis; otherwise 8)")
    g.add_argument("--variational", action="store_true", help="variational z (adds the KL term)")
    g.add_argument("--encoder", choices=("paper", "released"),
                   help="encoder variant: the paper's VGG-like CNN + MLP, or the released code's "
                        "(preset: released for the table method, paper otherwise)")
    g.add_argument("--encoder-hidden", type=int, help="encoder MLP / head width (preset: 128 table, 256 otherwise)")
    g.add_argument("--encoder-channels", type=int, nargs="+", help="conv widths, one per block")
    g.add_argument("--n-pose-hypotheses", type=int, default=1, help="rotation hypotheses per image (winner takes all)")
    g.add_argument("--decoder", choices=("hypervolume", "voxel"),
                   help="hypervolume MLP (paper) or an explicit voxel grid V0 + sum z_k U_k "
                        "(preset: voxel for the table method, hypervolume otherwise)")
    g.add_argument("--decoder-hidden", type=int, default=256, help="hypervolume width (default 256)")
    g.add_argument("--decoder-layers", type=int, default=3, help="hypervolume residual layers (default 3)")
    g.add_argument("--pe-dim", type=int, help="Fourier features per axis (default d/2)")
    g = p.add_argument_group("optimisation and budget")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="passes over the data (default 20 without other budget)")
    budget.add_argument("--max-images", type=int, help="images to see in total")
    g.add_argument("--time-limit", type=float, help="minutes of wall time for this invocation (outputs included)")
    g.add_argument("-b", "--batch-size", type=int, help="batch size (preset: table 16 on CPU, 128 on GPU; otherwise 64)")
    g.add_argument("--lr", type=float, help="Adam learning rate (preset: table 1e-3; otherwise 1e-4)")
    g.add_argument("--decoder-lr", type=float, help="decoder learning rate (preset: table 3e-2; otherwise --lr, "
                                                    "1e-2 for voxel)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda when present)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--load", help="resume from OUTDIR/checkpoint.pt")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in OUTDIR (not needed to resume with --load "
                        "OUTDIR/checkpoint.pt)")
    g = p.add_argument_group("schedules (images seen)")
    g.add_argument("--pose-only-images", type=int,
                   help="length of the pose-only phase (default 40%% of the planned images)")
    g.add_argument("--march-images", type=int, dest="march_images_per_step",
                   help="images per 1-px step of the loss disc (default: reach d/2 at 60%% of the plan)")
    g.add_argument("--march-start", type=float, default=3.0, help="initial loss-disc radius, px (default 3)")
    g = p.add_argument_group("pose initialisation")
    g.add_argument("--init-search", action="store_true",
                   help="same as --method table (the default without --poses)")
    g.add_argument("--distill-poses", help="distil these poses (.pkl) into the encoder instead of a search")
    g.add_argument("--distill-images", type=int, help="length of the distillation phase (default 60%% of the plan)")
    g.add_argument("--distill-until", type=float, default=10.0, dest="distill_until_deg",
                   help="end distillation once the encoder is within this median angle of the targets "
                        "(degrees, default 10; 0 disables)")
    g.add_argument("--search-starts", dest="search_starts", type=int, default=4, metavar="K",
                   help="the consensus search's EM from K random starts, keeping the one whose poses fit a sample "
                        "of the particles best (a start can settle in a wrong volume; default 4, fewer when a "
                        "--time-limit leaves no room; 1: one start)")
    g.add_argument("--no-hetero-refine", dest="hetero_refine", action="store_false",
                   help="with --init-search / --distill-poses: no heterogeneous refinement and no pose table; "
                        "distil the targets for --distill-images, then train amortised (the encoder's poses)")
    g.add_argument("--hetero-at", type=float, default=0.15, dest="hetero_at_fraction",
                   help="fraction of the planned images after which the pose table is refined (default 0.15)")
    g.add_argument("--no-hetero-global", dest="hetero_global", action="store_false",
                   help="pose table: local refinement only, no repeated global search per z bin (small boxes)")
    g.add_argument("--refine-cycles", dest="hetero_cycles", type=int, default=3, metavar="K",
                   help="pose table, under --time-limit: at most K further cycles of global search and local "
                        "rounds in the time the refinement's share leaves (default 3; 0: one cycle)")
    g.add_argument("--quarter-turns", action="store_true",
                   help="pose table: the encoder learns the table from images turned by random quarter turns, "
                        "targets turned to match (exact augmentation against memorising the training set; "
                        "measured in 20 CPU minutes: smaller train/unseen gap, larger errors on both)")
    g.add_argument("--rendered", dest="rendered_per_image", type=float, default=None, metavar="R",
                   help="pose table: R images rendered from the run's own volumes at random exactly known pose, z "
                        "and shift (the data's CTFs and measured noise) join each particle image the encoder "
                        "learns from once the table is refined (default 1; 0: the particles only)")
    g = p.add_argument_group("ground truth (metrics logged during training)")
    g.add_argument("--gt-poses", help="true poses (.pkl)")
    conf = g.add_mutually_exclusive_group()
    conf.add_argument("--gt-conf", help="true continuous conformation per particle (.pkl, (N,))")
    conf.add_argument("--gt-labels", help="true discrete state per particle (.pkl, (N,))")
    g.add_argument("--eval-every", type=int, dest="eval_every_images", help="images between metric evaluations")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=10, dest="log_every_steps", help="steps per history entry")
    g.add_argument("--checkpoint-every", type=int, dest="checkpoint_every_images",
                   help="images between checkpoints (also every 10 minutes)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from ..train import TrainConfig

    return TrainConfig(
        method=args.method or "auto", n_basis=args.n_basis, max_shift_px=args.max_shift_px,
        particles=args.particles, outdir=args.outdir, ctf=args.ctf, poses=args.poses, ind=args.ind,
        datadir=args.datadir, lazy=args.lazy, half=args.half, invert_contrast=args.invert_contrast, zdim=args.zdim,
        variational=args.variational, encoder=args.encoder, encoder_hidden=args.encoder_hidden,
        encoder_channels=args.encoder_channels, n_pose_hypotheses=args.n_pose_hypotheses, decoder=args.decoder,
        decoder_hidden=args.decoder_hidden, decoder_layers=args.decoder_layers, pe_dim=args.pe_dim,
        batch_size=args.batch_size, lr=args.lr, decoder_lr=args.decoder_lr, seed=args.seed, device=args.device,
        epochs=args.epochs, max_images=args.max_images, time_limit_min=args.time_limit,
        pose_only_images=args.pose_only_images, march_start_px=args.march_start,
        march_images_per_step=args.march_images_per_step, init_search=args.init_search,
        distill_poses=args.distill_poses, distill_images=args.distill_images,
        distill_until_deg=args.distill_until_deg if args.distill_until_deg > 0 else None,
        search_starts=args.search_starts, hetero_refine=args.hetero_refine, hetero_at_fraction=args.hetero_at_fraction,
        hetero_global=args.hetero_global, hetero_cycles=args.hetero_cycles, quarter_turns=args.quarter_turns,
        **({} if args.rendered_per_image is None else {"rendered_per_image": args.rendered_per_image}),
        gt_poses=args.gt_poses,
        gt_conf=args.gt_conf, gt_labels=args.gt_labels, eval_every_images=args.eval_every_images,
        log_every_steps=args.log_every_steps, checkpoint_every_images=args.checkpoint_every_images,
        load=args.load, progress=args.progress,
        command_line=" ".join(shlex.quote(a) for a in ["cryofire-nb", *sys.argv[1:]]))


def main(args: argparse.Namespace) -> int:
    from ..io.outputs_guard import guard_folder
    from ..stopping import StageStopped
    from ..train import train
    from ..train.distributed import is_main_process
    from ..train.interrupt import stop_on_signals
    from ..train.outputs import RUN_FILES
    from ..train.trainer import WARMUP_STEPS

    main_process = is_main_process()
    if not main_process:  # under torchrun rank 0 speaks for all (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    # under torchrun only rank 0 writes, so only rank 0 checks the folder (another rank
    # could otherwise see rank 0's first file as an earlier run's)
    inputs = [args.particles, args.ctf, args.poses, args.ind, args.distill_poses, args.gt_poses, args.gt_conf,
              args.gt_labels, args.load]
    if main_process and guard_folder(args.outdir, inputs, products=RUN_FILES, overwrite=args.overwrite,
                                     resume_from=args.load):
        print(f"resuming in {args.outdir}: its outputs will be replaced", flush=True)
    with stop_on_signals() as stop:
        cfg = config_from_args(args)
        try:
            result = train(cfg)
        except StageStopped:
            print(f"cryofire-nb train: interrupted by {stop.name} during the {stop.stage or 'pose search'}, before "
                  f"any training: the checkpoint is in {args.outdir}; start again with: "
                  f"{resume_command(cfg.command_line, args.outdir)}", file=sys.stderr, flush=True)
            return stop.exit_code
    if result.outputs is None:  # a torchrun process other than rank 0: rank 0 reports and writes
        return stop.exit_code if result.stopped_by == "interrupted" else 0
    st = result.state
    steady = "" if result.steady_images_per_s is None else \
        f" ({result.steady_images_per_s:.0f} after the first {WARMUP_STEPS} steps)"
    print(f"trained {st.step} steps, {st.images_seen} images ({st.epoch} full epochs) at "
          f"{result.train_images_per_s:.0f} images/s{steady}; stopped by {result.stopped_by}")
    if result.final_metrics is not None:
        print("\n".join(result.final_metrics.summary_lines()))
    print(f"wrote {result.outputs.outdir}/: poses.pkl z.pkl weights.pt volume.mrc history.json "
          f"training_curve.png config.yaml checkpoint.pt")
    if result.stopped_by == "interrupted":
        late = f" (it came during the {stop.stage}, which finished first)" if stop.stage else ""
        print(f"cryofire-nb train: interrupted by {stop.name}{late} after {st.images_seen} images: the checkpoint "
              f"and the outputs so far are in {args.outdir}; resume with: "
              f"{resume_command(result.config.command_line, args.outdir)}", file=sys.stderr, flush=True)
        return stop.exit_code
    return 0


def resume_command(command_line: str, outdir: str) -> str:
    """The run's command line with ``--load OUTDIR/checkpoint.pt`` in place of any ``--load``."""
    words = shlex.split(command_line) if command_line else ["cryofire-nb", "train"]
    kept, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w == "--load":
            skip = True
        elif not w.startswith("--load="):
            kept.append(w)
    return shlex.join([*kept, "--load", os.path.join(outdir, "checkpoint.pt")])
