"""Compare ``cryofire-nb backproject`` with cryoDRGN 4.3.1's ``cryodrgn backproject_voxel``
on the same particle stack, poses and CTF.

The dataset is made analytically, independently of both programs: the volume is a sum of
Gaussian blobs whose Fourier transform is known in closed form, so each particle's 2-D DFT
is that transform on the slice ``[kx, ky, 0] @ R``, times the CTF, translated by
``-shift`` and contrast-inverted (as RELION/cryoSPARC stacks are). Files follow
cryoDRGN's formats (``poses.pkl`` = (rots, trans / D), ``ctf.pkl`` (N, 9)).

What cryoDRGN's backproject_voxel does (read from its 4.3.1 source,
``cryodrgn/commands/backproject_voxel.py``, ``dataset.py``, ``pose.py``, ``lattice.py``):

* images are windowed by a soft circle (radius 0.85-0.99 of the half box), inverted
  unless ``--uninvert-data``, Hartley transformed on the (D+1)^2 symmetric lattice and
  divided by their standard deviation (a global scale);
* shifts are applied with ``lattice.translate_ht`` by ``+trans * (D + 1)`` pixels:
  ``PoseTracker.load`` is given the lattice size ``data.D = D + 1``, not the box D, so
  cryoDRGN's shifts are (D + 1) / D too large (0.03 px per px of shift at D = 32);
* values go to the 8 neighbouring voxels of a (D+1)^3 Hartley grid (no oversampling)
  with weights ``1 - distance``, CTF-multiplied (``--ctf-alg mul``), and the volume is
  ``sum / (counts + reg_weight * mean(counts))`` (reg_weight 1), cropped to D^3 and
  inverse Hartley transformed with the centre at D // 2;
* so its output is indexed [z, y, x] in the same frame as ours: no flip, transpose or
  re-centring is needed to compare like with like (the script checks this by also
  scoring the flipped and transposed alternatives).

Usage::

    .venv/bin/python bench/compare_backproject_cryodrgn.py [-D 48] [-n 4000] [--noise 1.0] [--max-shift 3]
        [-o bench/out/backproject_cryodrgn]

Needs ``.venv-cryodrgn`` (``make cryodrgn-venv``). Prints a table and writes
``comparison.json`` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CRYODRGN = REPO / ".venv-cryodrgn" / "bin" / "cryodrgn"


@dataclass
class Comparison:
    d: int
    n_particles: int
    noise_rel: float
    seconds_ours: float
    seconds_cryodrgn: float
    corr_ours_vs_cryodrgn: float  # inside the soft sphere mask
    corr_ours_vs_cryodrgn_unmasked: float
    corr_ours_vs_truth: float
    corr_cryodrgn_vs_truth: float
    corr_cryodrgn_flipped_z_vs_ours: float  # other hand: should be low
    corr_cryodrgn_transposed_xy_vs_ours: float  # swapped x/y: should be low
    offset_cryodrgn_minus_ours_voxels: list  # sub-voxel shift (x, y, z) maximising the correlation


# --------------------------------------------------------------------------- dataset


def blob_volume_and_spectrum(d: int, seed: int):
    """Blob parameters and a function giving the 3-D Fourier transform at frequencies q (..., 3)."""
    g = torch.Generator().manual_seed(seed)
    n = 14
    centres = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * d * 0.45  # (x, y, z) voxels
    widths = d / 32 * (1.5 + torch.rand(n, generator=g, dtype=torch.float64))
    amps = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    r = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([x, y, z], -1)
    vol = sum(a * torch.exp(-((pts - c) ** 2).sum(-1) / (2 * s ** 2)) for c, s, a in zip(centres, widths, amps))

    def spectrum(q: torch.Tensor) -> torch.Tensor:
        q2 = (q * q).sum(-1, keepdim=True)
        amp = amps * (2 * math.pi * widths ** 2) ** 1.5 * torch.exp(-2 * math.pi ** 2 * widths ** 2 * q2)
        phase = -2 * math.pi * (q @ centres.T)
        return (amp * torch.polar(torch.ones_like(phase), phase)).sum(-1)

    return vol, spectrum


def make_dataset(folder: Path, d: int = 48, n: int = 4000, noise_rel: float = 1.0, seed: int = 0,
                 apix: float = 2.5, max_shift_px: float = 3.0) -> torch.Tensor:
    """Write particles.mrcs, poses.pkl, ctf.pkl and truth.mrc to ``folder``; return the truth."""
    from cryofire_nb.io import CtfParams
    from cryofire_nb.fft import freqs_1d, ifft2_center, translate_fourier
    from cryofire_nb.io.mrc import write_mrc
    from cryofire_nb.rotations import random_rotations

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed + 1)
    vol, spectrum = blob_volume_and_spectrum(d, seed)
    rots = random_rotations(n, generator=g, dtype=torch.float64)
    shift_px = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * max_shift_px
    dfu = 8000 + 17000 * torch.rand(n, generator=g, dtype=torch.float64)
    table = torch.stack([torch.full((n,), float(d)), torch.full((n,), apix), dfu,
                         dfu - 600 * torch.rand(n, generator=g, dtype=torch.float64),
                         180 * torch.rand(n, generator=g, dtype=torch.float64), torch.full((n,), 300.0),
                         torch.full((n,), 2.7), torch.full((n,), 0.1), torch.zeros(n)], -1).double()
    ctf = CtfParams(table)
    k = freqs_1d(d, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    freqs = torch.stack([kx.flatten(), ky.flatten()], -1)
    plane = torch.cat([freqs, torch.zeros(d * d, 1, dtype=torch.float64)], -1)
    images = torch.empty(n, d, d, dtype=torch.float32)
    for i in range(0, n, 500):
        sl = slice(i, min(i + 500, n))
        f = spectrum(plane @ rots[sl]).reshape(-1, d, d)
        f = f * ctf.subset(sl).evaluate(freqs, d).reshape(-1, d, d)
        images[sl] = ifft2_center(translate_fourier(f, -shift_px[sl])).real.float()
    signal_std = float(images.std())
    noise = torch.randn(images.shape, generator=g) * signal_std * noise_rel
    stored = -(images + noise)  # inverted contrast, as in RELION/cryoSPARC particle stacks
    write_mrc(folder / "particles.mrcs", stored.numpy(), pixel_size_angstrom=apix)
    write_mrc(folder / "truth.mrc", vol.float().numpy(), pixel_size_angstrom=apix)
    with open(folder / "poses.pkl", "wb") as fh:
        pickle.dump((rots.float().numpy(), (shift_px / d).float().numpy()), fh)
    with open(folder / "ctf.pkl", "wb") as fh:
        pickle.dump(table.float().numpy(), fh)
    return vol


# --------------------------------------------------------------------------- runs


def run_ours(folder: Path) -> tuple[torch.Tensor, float]:
    from cryofire_nb.cli import main
    from cryofire_nb.io.mrc import read_mrc

    t0 = time.time()
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
               "--ctf", str(folder / "ctf.pkl"), "-o", str(folder / "ours" / "backproject.mrc")])
    seconds = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"cryofire-nb backproject exited {rc}")
    return torch.as_tensor(read_mrc(folder / "ours" / "backproject.mrc").data, dtype=torch.float64), seconds


def run_cryodrgn(folder: Path, cryodrgn: Path = CRYODRGN) -> tuple[torch.Tensor, float]:
    from cryofire_nb.io.mrc import read_mrc

    if not cryodrgn.exists():
        raise FileNotFoundError(f"{cryodrgn} not found; run `make cryodrgn-venv`")
    out = folder / "cryodrgn"
    cmd = [str(cryodrgn), "backproject_voxel", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
           "--ctf", str(folder / "ctf.pkl"), "-o", str(out)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cryodrgn backproject_voxel failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return torch.as_tensor(read_mrc(out / "backproject.mrc").data, dtype=torch.float64), seconds


# --------------------------------------------------------------------------- comparison


def corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask > 0.5], b[mask > 0.5]
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def best_offset(ref: torch.Tensor, moving: torch.Tensor) -> list:
    """Sub-voxel shift (x, y, z) of ``moving`` relative to ``ref`` from the peak of their
    cross-correlation (parabolic interpolation around the integer peak)."""
    from cryofire_nb.fft import fft3_center, ifft3_center

    d = ref.shape[-1]
    cc = ifft3_center(fft3_center(moving) * fft3_center(ref).conj()).real
    iz, iy, ix = np.unravel_index(int(torch.argmax(cc)), cc.shape)
    out = []
    for axis, i in ((2, ix), (1, iy), (0, iz)):
        idx = [iz, iy, ix]
        vals = []
        for di in (-1, 0, 1):
            idx[axis] = (i + di) % d
            vals.append(float(cc[tuple(idx)]))
        den = vals[0] - 2 * vals[1] + vals[2]
        frac = 0.5 * (vals[0] - vals[2]) / den if den != 0 else 0.0
        out.append(float(i - d // 2 + frac))
    return out


def compare(folder: Path, d: int, n: int, noise_rel: float, seed: int = 0,
            max_shift_px: float = 3.0) -> Comparison:
    from cryofire_nb.reconstruct import soft_sphere_mask

    truth = make_dataset(folder, d=d, n=n, noise_rel=noise_rel, seed=seed, max_shift_px=max_shift_px)
    ours, t_ours = run_ours(folder)
    theirs, t_theirs = run_cryodrgn(folder)
    mask = soft_sphere_mask(d, radius_px=0.4 * d, edge_px=0.05 * d, dtype=torch.float64)
    return Comparison(
        d=d, n_particles=n, noise_rel=noise_rel, seconds_ours=t_ours, seconds_cryodrgn=t_theirs,
        corr_ours_vs_cryodrgn=corr(ours, theirs, mask), corr_ours_vs_cryodrgn_unmasked=corr(ours, theirs),
        corr_ours_vs_truth=corr(ours, truth, mask), corr_cryodrgn_vs_truth=corr(theirs, truth, mask),
        corr_cryodrgn_flipped_z_vs_ours=corr(ours, theirs.flip(0), mask),
        corr_cryodrgn_transposed_xy_vs_ours=corr(ours, theirs.transpose(1, 2), mask),
        offset_cryodrgn_minus_ours_voxels=best_offset(ours, theirs),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-D", "--box", type=int, default=48)
    parser.add_argument("-n", "--n-particles", type=int, default=4000)
    parser.add_argument("--noise", type=float, default=1.0, help="noise std relative to the clean particles' std")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=float, default=3.0, help="shifts drawn uniformly in +-this many pixels")
    parser.add_argument("-o", "--outdir", type=Path, default=REPO / "bench" / "out" / "backproject_cryodrgn")
    args = parser.parse_args(argv)
    if not CRYODRGN.exists():
        print(f"{CRYODRGN} not found; run `make cryodrgn-venv` first", file=sys.stderr)
        return 2
    result = compare(args.outdir, args.box, args.n_particles, args.noise, args.seed, args.max_shift)
    for key, value in asdict(result).items():
        print(f"{key:40s} {value}")
    (args.outdir / "comparison.json").write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
