"""``cryofire-nb write-subset``: keep the particles listed in an index file.

Examples::

    cryofire-nb write-subset particles.star --ind kept.pkl -o kept.star
    cryofire-nb write-subset particles.cs --ind kept.pkl -o kept.cs
    cryofire-nb write-subset particles.mrcs --ind kept.pkl -o kept_ind.pkl

A ``.star``/``.cs`` output repeats the selected rows of the input table with the same
columns (and the optics block of a STAR file); a ``.pkl`` output is the checked int64
index array. Indices are 0-based rows of PARTICLES.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

HELP = "Write the particles selected by --ind as a .star/.cs subset or an index .pkl"


def add_args(parser) -> None:
    parser.add_argument("particles", help="particles: .star, .cs (or .mrcs/.txt for a .pkl output)")
    parser.add_argument("--ind", required=True, metavar="IND.pkl", help="int64 indices of the particles to keep")
    parser.add_argument("-o", dest="out", required=True, metavar="OUT", help="output .star, .cs or .pkl")
    parser.add_argument("--datadir", help="folder holding the stacks (only to count images of a .txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _count(path: Path, datadir) -> int:
    from ..io.cs import read_cs
    from ..io.star import read_star
    from ..io.stack import ImageSource

    suffix = path.suffix.lower()
    if suffix == ".star":
        return len(read_star(path))
    if suffix == ".cs":
        return len(read_cs(path))
    return len(ImageSource(path, datadir=datadir))


def main(args) -> None:
    from ..io.cs import read_cs, write_cs
    from ..io.outputs_guard import guard_files
    from ..io.pkl import read_indices, write_indices
    from ..io.star import read_star, write_star

    src, out = Path(args.particles), Path(args.out)
    in_kind, out_kind = src.suffix.lower(), out.suffix.lower()
    if out_kind not in (".star", ".cs", ".pkl"):
        raise InputError(out, f"unsupported output type '{out_kind}'", "name the output .star, .cs or .pkl")
    if out_kind in (".star", ".cs") and in_kind != out_kind:
        raise InputError(src, f"cannot write a {out_kind} subset of a {in_kind or 'suffix-less'} file",
                         f"give a {out_kind} input, or write an index .pkl")
    guard_files([out], [src, args.ind], overwrite=args.overwrite)
    if out_kind == ".star":
        table = read_star(src)
        ind = read_indices(args.ind, n_total=len(table))
        write_star(out, table.subset(ind))
    elif out_kind == ".cs":
        table = read_cs(src)
        ind = read_indices(args.ind, n_total=len(table))
        write_cs(out, table[ind])
    else:
        ind = read_indices(args.ind, n_total=_count(src, args.datadir))
        write_indices(out, ind)
    print(f"wrote {len(ind)} particles to {out}")
