"""``cryofire-nb parse-cs``: poses and/or CTF parameters from a cryoSPARC .cs table.

Example::

    cryofire-nb parse-cs cryosparc_P12_J24_001_particles.cs -D 180 --poses pose.pkl --ctf ctf.pkl

Rotations from ``alignments3D/pose`` (axis-angle, matrix = exp(hat(v))^T), translations
``alignments3D/shift / D``; D defaults to ``blob/shape`` and Apix to ``blob/psize_A``.
"""

from __future__ import annotations

from ..errors import InputError

HELP = "Parse poses (.pkl) and/or CTF parameters (.pkl) from a cryoSPARC .cs file"


def add_args(parser) -> None:
    parser.add_argument("cs", help="cryoSPARC particle .cs file")
    parser.add_argument("-D", type=int, dest="d", metavar="BOX",
                        help="box size in pixels of the images the shifts refer to (default: blob/shape)")
    parser.add_argument("--Apix", type=float, dest="apix", help="pixel size in Angstrom (default: blob/psize_A)")
    parser.add_argument("--poses", metavar="OUT.pkl", help="output pose pickle (rots, trans)")
    parser.add_argument("--ctf", metavar="OUT.pkl", help="output CTF pickle (n, 9)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def main(args) -> None:
    from ..io.parse import parse_cs_poses_ctf
    from ..io.outputs_guard import guard_files
    from ..io.pkl import write_ctf, write_poses

    if not args.poses and not args.ctf:
        raise InputError(args.cs, "no output requested", "pass --poses OUT.pkl and/or --ctf OUT.pkl")
    guard_files([args.poses, args.ctf], [args.cs], overwrite=args.overwrite)
    result = parse_cs_poses_ctf(args.cs, d=args.d, pixel_size_angstrom=args.apix)
    if args.poses and result.poses is None:
        raise InputError(args.cs, "has no alignments3D/pose field",
                         "omit --poses or export particles from a 3-D refinement")
    if args.ctf and result.ctf is None:
        raise InputError(args.cs, "has no ctf/* fields", "omit --ctf or export particles with CTF estimates")
    if args.poses:
        write_poses(args.poses, result.poses)
        print(f"wrote {len(result.poses)} poses to {args.poses}")
    if args.ctf:
        write_ctf(args.ctf, result.ctf)
        print(f"wrote CTF parameters of {len(result.ctf)} particles to {args.ctf}")
