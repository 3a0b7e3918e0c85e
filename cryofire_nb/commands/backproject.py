"""``cryofire-nb backproject PARTICLES --poses P.pkl [--ctf C.pkl] -o VOL.mrc``: known-pose
voxel reconstruction (cryoDRGN ``backproject_voxel`` equivalent).

Writes ``VOL.mrc`` (voxel size set), the half-maps ``VOL.half_a.mrc`` / ``VOL.half_b.mrc``
(even / odd particles), and the half-map FSC as ``VOL.fsc.csv`` and ``VOL.fsc.png``. All
outputs appear together or not at all. See :mod:`cryofire_nb.reconstruct` for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import numpy as np

HELP = "reconstruct a volume from particles with known poses (and CTF) by Fourier backprojection"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("particles", type=Path, help="particle images (.mrcs, .txt, .star or .cs)")
    parser.add_argument("--poses", type=Path, required=True, help="poses .pkl: (rots (N,3,3), trans (N,2) fraction of box)")
    parser.add_argument("--ctf", type=Path, help="CTF parameters .pkl (N, 9); Wiener-filtered by default")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output volume .mrc")
    parser.add_argument("--uninvert-data", action="store_true",
                        help="do not multiply the images by -1 (default inverts, as cryoDRGN does)")
    parser.add_argument("--datadir", type=Path, help="folder holding the stacks named in a .star/.cs/.txt")
    parser.add_argument("--ind", type=Path, help="indices .pkl of the particles to use")
    parser.add_argument("--first", type=int, help="use only the first N particles (after --ind)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--wiener-snr", type=float,
                       help="per-image SNR for the Wiener term 1/snr (default: estimated per shell from the half-maps)")
    group.add_argument("--phase-flip", action="store_true", help="phase-flip the images instead of multiplying by the CTF")
    parser.add_argument("--lazy", action="store_true", help="read images from disk batch by batch")
    parser.add_argument("-b", "--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--oversample", type=int, choices=(1, 2), default=2,
                        help="Fourier grid of oversample*D voxels per side (default 2; 1 needs 8x less memory)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def output_paths(out: Path) -> dict[str, Path]:
    """The files one backprojection writes: the volume, two half-maps and the FSC."""
    stem = out.with_suffix("")
    return {"volume": out, "half_a": Path(f"{stem}.half_a.mrc"), "half_b": Path(f"{stem}.half_b.mrc"),
            "csv": Path(f"{stem}.fsc.csv"), "png": Path(f"{stem}.fsc.png")}


def _load_inputs(args):
    """Validate every input before any computation. Returns (source, selection, poses, ctf)."""
    from ..errors import InputError
    from ..io.outputs_guard import guard_files
    from ..io.pkl import read_ctf, read_indices, read_poses
    from ..io.stack import ImageSource
    from ..validate import check_ctf_matches_stack, check_device

    if args.output.suffix.lower() != ".mrc":
        raise InputError(args.output, "the output volume must be an .mrc file", "pass e.g. -o backproject.mrc")
    if args.batch_size < 1:
        raise InputError(None, f"--batch-size must be positive, got {args.batch_size}", "pass e.g. --batch-size 256")
    if args.wiener_snr is not None and not (args.wiener_snr > 0):
        raise InputError(None, f"--wiener-snr must be > 0, got {args.wiener_snr}", "pass e.g. --wiener-snr 0.1, or omit it")
    args.device = str(check_device(args.device))
    src = ImageSource(args.particles, datadir=args.datadir, lazy=args.lazy)
    n_total = len(src)
    if src.d % 2:
        raise InputError(args.particles, f"images are {src.d}x{src.d} pixels: an odd box size",
                         "crop or downsample the particles to an even box (e.g. cryofire-nb downsample -D "
                         f"{src.d - 1})")
    sel = np.arange(n_total) if args.ind is None else read_indices(args.ind, n_total=n_total)

    def rows(path: Path, n: int, what: str) -> np.ndarray:
        """Rows of a per-particle table that belong to the selection."""
        if n == n_total:
            return sel
        if args.ind is not None and n == len(sel):
            return np.arange(len(sel))
        extra = f" (or {len(sel)} for the --ind selection)" if args.ind is not None else ""
        raise InputError(path, f"{what} has {n} entries but {args.particles} has {n_total} images{extra}",
                         "pass the file made for this particle stack (same particles, same order)")

    poses = read_poses(args.poses)
    pose_rows = rows(args.poses, len(poses), "the pose file")
    ctf = None
    ctf_rows = None
    if args.ctf is not None:
        ctf = read_ctf(args.ctf)
        ctf_rows = rows(args.ctf, len(ctf), "the CTF file")
        check_ctf_matches_stack(ctf.table, args.ctf, src.d, src.pixel_size_angstrom, args.particles)
    if args.first is not None:
        if args.first < 1:
            raise InputError(None, f"--first must be positive, got {args.first}", "pass e.g. --first 10000")
        sel, pose_rows = sel[:args.first], pose_rows[:args.first]
        ctf_rows = None if ctf_rows is None else ctf_rows[:args.first]
    if len(sel) < 2:
        raise InputError(args.particles, f"only {len(sel)} particle(s) selected", "half-maps need at least 2 particles")
    guard_files(output_paths(args.output).values(),
                [args.particles, args.poses, args.ctf, args.ind, *src.stack_paths], overwrite=args.overwrite)
    return src, sel, poses, pose_rows, ctf, ctf_rows


def _write_fsc_csv(path: Path, fsc) -> None:
    per_a = fsc.frequency_per_angstrom
    with open(path, "w") as f:
        f.write("shell_px,frequency_per_px,frequency_per_angstrom,resolution_angstrom,fsc\n")
        for j in range(len(fsc.fsc)):
            fa = float(per_a[j]) if per_a is not None else math.nan
            res = 1 / fa if fa > 0 else math.nan
            f.write(f"{float(fsc.shell_px[j]):g},{float(fsc.frequency_per_px[j]):.6g},{fa:.6g},{res:.6g},"
                    f"{float(fsc.fsc[j]):.6f}\n")


def _write_fsc_png(path: Path, fsc) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_a = fsc.frequency_per_angstrom
    x = (per_a if per_a is not None else fsc.frequency_per_px).numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, fsc.fsc.numpy(), "-o", ms=3, label="half-map FSC")
    for c, style in ((fsc.at_0_5, ":"), (fsc.at_0_143, "--")):
        ax.axhline(c.threshold, color="grey", ls=style, lw=0.8)
        if c.crossed and math.isfinite(c.resolution_angstrom):
            ax.axvline(c.frequency_per_angstrom, color="grey", ls=style, lw=0.8,
                       label=f"FSC={c.threshold:g}: {c.resolution_angstrom:.2f} A")
    ax.set_xlabel("spatial frequency (1/A)" if per_a is not None else "spatial frequency (1/pixel)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def _describe(c) -> str:
    if not c.crossed:
        return "not reached (Nyquist or better)"
    if math.isfinite(c.resolution_angstrom):
        return f"{c.resolution_angstrom:.2f} A ({c.frequency_px:.2f} px)"
    return f"{c.frequency_px:.2f} px of frequency"


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..io._atomic import atomic_path
    from ..io.mrc import write_mrc
    from ..reconstruct import BackprojectConfig, FourierAccumulator

    src, sel, poses, pose_rows, ctf, ctf_rows = _load_inputs(args)
    d = src.d
    pixel_size = src.pixel_size_angstrom
    if pixel_size is None and ctf is not None:
        pixel_size = float(ctf.pixel_size_angstrom[0] * ctf.image_size[0] / d)
    config = BackprojectConfig(
        ctf_mode="phase_flip" if args.phase_flip else "wiener", wiener_snr=args.wiener_snr,
        invert_contrast=not args.uninvert_data, oversample=args.oversample, batch_size=args.batch_size,
        device=args.device)
    acc = FourierAccumulator(d, config)
    rots = torch.as_tensor(poses.rots)
    shift_px = torch.as_tensor(poses.shift_px(d))
    for start in tqdm(range(0, len(sel), args.batch_size), desc="backproject", unit="batch"):
        stop = min(start + args.batch_size, len(sel))
        pr = pose_rows[start:stop]
        acc.add(torch.as_tensor(src.images(sel[start:stop])), rots[pr], shift_px[pr],
                None if ctf is None else ctf.subset(ctf_rows[start:stop]),
                torch.arange(start, stop))
    result = acc.finish(pixel_size)

    out = args.output
    names = output_paths(out)
    del names["volume"]
    with contextlib.ExitStack() as stack:  # every file is renamed into place only if all succeed
        tmp = {key: stack.enter_context(atomic_path(path)) for key, path in names.items()}
        tmp_vol = stack.enter_context(atomic_path(out))
        write_mrc(tmp_vol, result.volume.cpu().numpy(), pixel_size_angstrom=pixel_size, is_stack=False)
        write_mrc(tmp["half_a"], result.half_a.cpu().numpy(), pixel_size_angstrom=pixel_size, is_stack=False)
        write_mrc(tmp["half_b"], result.half_b.cpu().numpy(), pixel_size_angstrom=pixel_size, is_stack=False)
        _write_fsc_csv(tmp["csv"], result.fsc)
        _write_fsc_png(tmp["png"], result.fsc)

    f = result.fsc
    print(f"backprojected {result.n_images} particles ({d} px, "
          f"{'unknown' if pixel_size is None else f'{pixel_size:.4g} A/px'}) -> {out}")
    print(f"half-map FSC=0.5: {_describe(f.at_0_5)}; FSC=0.143: {_describe(f.at_0_143)}; AUC {f.auc:.3f}")
    return 0
