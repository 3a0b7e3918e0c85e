"""``cryofire-nb downsample``: Fourier-crop particle images to a smaller box.

Example::

    cryofire-nb downsample particles.star -D 128 --datadir stacks/ -o particles.128.mrcs

Reads ``.mrcs``/``.txt``/``.star``/``.cs`` lazily in chunks (stacks larger than RAM),
writes one ``.mrcs`` in particle order with pixel size ``Apix * D / D_new``. The CTF
table keeps the original D and Apix (no change needed).
"""

from __future__ import annotations

HELP = "Downsample particle images by Fourier cropping into one .mrcs stack"


def add_args(parser) -> None:
    parser.add_argument("particles", help="particles: .mrcs, .txt, .star or .cs")
    parser.add_argument("-D", type=int, dest="d", required=True, metavar="NEW", help="new box size in pixels (even)")
    parser.add_argument("-o", dest="out", required=True, metavar="OUT.mrcs", help="output stack")
    parser.add_argument("--datadir", help="folder holding the stacks named in a .star/.cs/.txt")
    parser.add_argument("--chunk", type=int, default=1000, help="images per chunk (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output stack")


def main(args) -> None:
    from ..io.downsample import check_new_box, downsample_source
    from ..io.outputs_guard import guard_files
    from ..io.stack import ImageSource

    with ImageSource(args.particles, datadir=args.datadir, lazy=True) as source:
        check_new_box(args.particles, source.d, args.d)
        # the stacks a .star/.txt names are inputs too: writing one while reading it would destroy it
        guard_files([args.out], [args.particles, *source.stack_paths], overwrite=args.overwrite)
        apix_new = downsample_source(source, args.d, args.out, chunk_size=args.chunk, progress=not args.no_progress)
    size = "unknown pixel size" if apix_new is None else f"{apix_new:.4f} A/px"
    print(f"wrote {len(source)} images of {args.d}x{args.d} px ({size}) to {args.out}")
