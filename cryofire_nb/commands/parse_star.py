"""``cryofire-nb parse-star``: poses and/or CTF parameters from a RELION .star file.

Example::

    cryofire-nb parse-star particles.star -D 300 --Apix 1.035 -w 0.1 \\
        --poses pose.pkl --ctf ctf.pkl

Works with RELION 3.0 (one data block; give ``-D`` and ``--Apix``, and ``-w``/``--kv``/
``--cs`` when the file lacks them), 3.1 and 5 (optics values per particle). Values given
on the command line override those in the file for every particle.
"""

from __future__ import annotations

from ..errors import InputError

HELP = "Parse poses (.pkl) and/or CTF parameters (.pkl) from a RELION .star file"


def add_args(parser) -> None:
    parser.add_argument("star", help="RELION particle .star file (3.0, 3.1 or 5)")
    parser.add_argument("-D", type=int, dest="d", metavar="BOX",
                        help="box size in pixels of the images the shifts refer to (default: _rlnImageSize)")
    parser.add_argument("--Apix", type=float, dest="apix", help="pixel size in Angstrom (default: from the file)")
    parser.add_argument("-w", type=float, dest="w", help="amplitude contrast (default: from the file)")
    parser.add_argument("--kv", type=float, help="voltage in kV (default: from the file)")
    parser.add_argument("--cs", type=float, help="spherical aberration in mm (default: from the file)")
    parser.add_argument("--ps", type=float, help="phase shift in degrees (default: from the file, else 0)")
    parser.add_argument("--poses", metavar="OUT.pkl", help="output pose pickle (rots, trans)")
    parser.add_argument("--ctf", metavar="OUT.pkl", help="output CTF pickle (n, 9)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def main(args) -> None:
    from ..io.parse import parse_star_poses_ctf
    from ..io.outputs_guard import guard_files
    from ..io.pkl import write_ctf, write_poses

    if not args.poses and not args.ctf:
        raise InputError(args.star, "no output requested", "pass --poses OUT.pkl and/or --ctf OUT.pkl")
    guard_files([args.poses, args.ctf], [args.star], overwrite=args.overwrite)
    result = parse_star_poses_ctf(args.star, d=args.d, pixel_size_angstrom=args.apix, amplitude_contrast=args.w,
                                  voltage_kv=args.kv, cs_mm=args.cs, phase_shift_deg=args.ps)
    if args.poses and result.poses is None:
        raise InputError(args.star, "has no Euler angles (_rlnAngleRot/_rlnAngleTilt/_rlnAnglePsi)",
                         "omit --poses (this file holds no alignments) or use the STAR from a 3-D refinement")
    if args.ctf and result.ctf is None:
        raise InputError(args.star, "has no defocus columns (_rlnDefocusU/_rlnDefocusV/_rlnDefocusAngle)",
                         "omit --ctf or use a STAR file with CTF parameters")
    # Everything parsed: only now write (poses first, then CTF).
    if args.poses:
        write_poses(args.poses, result.poses)
        print(f"wrote {len(result.poses)} poses to {args.poses}")
    if args.ctf:
        write_ctf(args.ctf, result.ctf)
        print(f"wrote CTF parameters of {len(result.ctf)} particles to {args.ctf}")
