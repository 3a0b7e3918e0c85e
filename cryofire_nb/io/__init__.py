"""File I/O compatible with cryoDRGN, RELION and cryoSPARC (numpy level).

==============  =========================================================  ==========
what            layout                                                     module
==============  =========================================================  ==========
particles       ``.mrcs`` (n, d, d) float32; ``.txt`` list of stacks;       stack, mrc
                RELION ``.star`` (``NNNNNN@stack.mrcs``, 1-based);
                cryoSPARC ``.cs`` (``blob/path``, ``>`` stripped; 0-based
                ``blob/idx``)
volumes         ``.mrc`` (d, d, d) float32 indexed ``[z, y, x]``, voxel      mrc
                size in the header (0 there -> ``None``)
STAR metadata   RELION 3.0 / 3.1 / 5, optics merged per particle           star
poses ``.pkl``  ``(rots (n,3,3), trans (n,2))``, trans = pixels / d        pkl
CTF ``.pkl``    float32 (n, 9) ``[D, Apix, dfU, dfV, dfAng(deg), kV, Cs,   pkl
                w, phase(deg)]`` of the original stack
latents         float32 (n, k); or ``mu`` then ``logvar`` pickles           pkl
indices         int64 (m,)                                                 pkl
==============  =========================================================  ==========

Geometry: rotation ``R`` takes the volume to the image by the slice ``[kx, ky, 0] @ R``;
a particle is the centred projection translated by **minus** the stored shift. Every
writer is atomic (temporary file in the same folder, then ``os.replace``); bad input
raises :class:`cryofire_nb.errors.InputError` naming the file and the fix.
"""

from .cs import make_cs_table, read_cs, write_cs
from .mrc import MrcData, MrcHeaderInfo, open_stack_writer, read_mrc, read_mrc_header, write_mrc
from .parse import PosesAndCtf, parse_cs_poses_ctf, parse_star_poses_ctf
from .pkl import (read_ctf, read_indices, read_latents, read_poses, write_ctf, write_indices,
                  write_latents, write_poses)
from .records import CtfParams, Latents, Poses
from .stack import ImageSource
from .star import (ParticleOptics, StarTable, image_names_for_stack, read_star, write_relion31_star,
                   write_star)

__all__ = [
    "CtfParams", "ImageSource", "Latents", "MrcData", "MrcHeaderInfo", "ParticleOptics", "Poses",
    "PosesAndCtf", "StarTable", "image_names_for_stack", "make_cs_table", "open_stack_writer", "parse_cs_poses_ctf",
    "parse_star_poses_ctf", "read_cs", "read_ctf", "read_indices", "read_latents", "read_mrc",
    "read_mrc_header", "read_poses", "read_star", "write_cs", "write_ctf", "write_indices",
    "write_latents", "write_mrc", "write_poses", "write_relion31_star", "write_star",
]
