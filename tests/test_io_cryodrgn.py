"""Side by side with cryoDRGN 4.3.1 (``.venv-cryodrgn``; skipped when absent).

cryoDRGN must read the RELION 3.1 STAR we write back to the same poses and CTF, and its
``downsample`` must agree with ours up to its intensity scale: cryoDRGN keeps the
Hartley coefficients and divides by the new pixel count, so its images are ours times
``(D / D_new)^2`` (ours keep values: a constant image stays the same constant), apart
from the Nyquist row/column, which Hartley and Fourier cropping keep differently.
"""

from __future__ import annotations

import pickle
import subprocess

import numpy as np
import pytest
import torch

from cryofire_nb.cli import main
from cryofire_nb.io.mrc import read_mrc
from cryofire_nb.io.records import CtfParams, Poses
from cryofire_nb.io.star import image_names_for_stack, write_relion31_star
from cryofire_nb.rotations import random_rotations

pytestmark = pytest.mark.cryodrgn

SCRIPT = """
import argparse, sys
from cryodrgn.commands import downsample, parse_ctf_star, parse_pose_star

def run(mod, argv):
    parser = argparse.ArgumentParser()
    mod.add_args(parser)
    mod.main(parser.parse_args(argv))

star, mrcs, out = sys.argv[1:4]
run(parse_pose_star, [star, "-o", out + "/pose.pkl"])
run(parse_ctf_star, [star, "-o", out + "/ctf.pkl"])
run(downsample, [mrcs, "-D", "16", "-o", out + "/ds_cryodrgn.mrcs"])
"""


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_cryodrgn_reads_our_star_and_matches_our_downsample(out_dir, fixtures_dir, cryodrgn_python):
    n, d, apix = 12, 96, 1.7
    rots = random_rotations(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    rng = np.random.default_rng(5)
    poses = Poses(rots, rng.uniform(-0.05, 0.05, (n, 2)))
    ctf = CtfParams.from_columns(image_size=d, pixel_size_angstrom=apix,
                                 defocus_u_angstrom=rng.uniform(9000, 25000, n),
                                 defocus_v_angstrom=rng.uniform(9000, 25000, n),
                                 defocus_angle_deg=rng.uniform(-90, 90, n), voltage_kv=300.0, cs_mm=2.7,
                                 amplitude_contrast=0.07, phase_shift_deg=0.0)
    star = out_dir / "ours.star"
    write_relion31_star(star, image_names_for_stack("stack.mrcs", n), poses=poses, ctf=ctf)
    toy = fixtures_dir / "cryodrgn" / "toy_projections.mrcs"
    assert main(["downsample", str(toy), "-D", "16", "-o", str(out_dir / "ds_ours.mrcs"), "--no-progress"]) == 0

    proc = subprocess.run([str(cryodrgn_python), "-c", SCRIPT, str(star), str(toy), str(out_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    their_rots, their_trans = _load(out_dir / "pose.pkl")
    np.testing.assert_allclose(their_rots, poses.rots, atol=1e-5)
    np.testing.assert_allclose(their_trans, poses.trans_frac, atol=1e-6)
    np.testing.assert_allclose(_load(out_dir / "ctf.pkl"), ctf.table, rtol=1e-6, atol=1e-4)

    ours = read_mrc(out_dir / "ds_ours.mrcs")
    theirs = read_mrc(out_dir / "ds_cryodrgn.mrcs")
    assert ours.pixel_size_angstrom == pytest.approx(1.0 * 30 / 16)  # cryoDRGN's header value is not comparable
    # Away from the unpaired Nyquist row/column (Hartley and Fourier cropping treat it
    # differently) the two agree up to cryoDRGN's (D / D_new)^2 scale.
    np.testing.assert_allclose(_drop_nyquist(theirs.data), _drop_nyquist(ours.data) * (30 / 16) ** 2,
                               atol=1e-4 * np.abs(theirs.data).max())


def _drop_nyquist(images: np.ndarray) -> np.ndarray:
    """Zero the frequency -d/2 row and column (index 0 of the centred spectrum)."""
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))
    f[:, 0, :] = 0
    f[:, :, 0] = 0
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(f, axes=(-2, -1))), axes=(-2, -1)).real
