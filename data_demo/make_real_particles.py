#!/usr/bin/env python3
"""Cut a small stack of real particles out of the FEI test micrograph shipped in mrcfile.

Usage (see README.md in this folder for provenance and licence)::

    pip download mrcfile==1.5.4 --no-deps --no-binary :all: -d /tmp/mrcfile
    python data_demo/make_real_particles.py /tmp/mrcfile/mrcfile-1.5.4.tar.gz

Steps, each deterministic:

1. read ``mrcfile-1.5.4/tests/test_data/fei-extended.mrc`` straight from the source
   distribution after checking the tarball's SHA-256; pixel size, voltage and the
   microscope's recorded defocus come from the file's FEI1 extended header;
2. pick particles on a copy of the micrograph binned 8x (6.8 A/px): subtract a smooth
   background (Gaussian, sigma 16 binned px), low-pass (sigma 2.5 px), take local minima
   (the particles are dark in the raw image) at least 24 binned px apart and at least a
   box away from the edges, keep the ``N_PARTICLES`` darkest;
3. extract a ``BOX_RAW``-px window around each pick from the full-resolution micrograph,
   Fourier-crop it to ``BOX`` px, invert the contrast (particles white, as RELION's
   extraction with ``--invert_contrast`` stores them) and normalise each particle to mean 0
   and standard deviation 1 outside a circle of radius 0.8 of the half box (RELION's
   background normalisation);
4. write ``fei_particles.mrcs`` (float32, pixel size in the header) and
   ``fei_particles.star`` (RELION 3.1: an optics group with the pixel size, box, voltage,
   an assumed Cs of 2.7 mm and amplitude contrast 0.1; per particle the micrograph name,
   the pick's coordinates in raw pixels and the recorded defocus, no astigmatism).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

SHA256 = "8fa9eb2e237d87d99b301c61bf02854dd85a451db25eefcbe142c09b36d8d601"  # mrcfile-1.5.4.tar.gz
MEMBER = "mrcfile-1.5.4/tests/test_data/fei-extended.mrc"
N_PARTICLES = 100
BIN_PICK = 8  # binning for picking
BOX_RAW = 256  # extraction window on the raw micrograph (219 A)
BOX = 40  # stored box after Fourier cropping (5.46 A/px)
MIN_DISTANCE_BINNED = 24
CS_MM_ASSUMED = 2.7  # not in the header; a Titan Krios's usual value
AMPLITUDE_CONTRAST = 0.1


def read_micrograph(tarball: Path):
    data = tarball.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{tarball}: SHA-256 {digest}, expected {SHA256}")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        raw = tar.extractfile(MEMBER).read()
    from mrcfile.mrcinterpreter import MrcInterpreter

    with MrcInterpreter(io.BytesIO(raw), permissive=True) as mrc:
        image = mrc.data.astype(np.float64)  # (rows, cols)
        ext = mrc.indexed_extended_header
        meta = dict(pixel_size_angstrom=float(ext["Pixel size X"][0]) * 1e10,
                    voltage_kv=float(ext["HT"][0]) / 1e3,
                    defocus_angstrom=-float(ext["Defocus"][0]) * 1e10,  # FEI: negative = underfocus
                    microscope=ext["Microscope type"][0].decode(), camera=ext["Camera name"][0].decode())
    return image, meta


def pick(image: np.ndarray) -> np.ndarray:
    """(N_PARTICLES, 2) pick centres (row, col) in raw pixels, darkest first."""
    from scipy import ndimage

    b = BIN_PICK
    rows, cols = (image.shape[0] // b) * b, (image.shape[1] // b) * b
    small = image[:rows, :cols].reshape(rows // b, b, cols // b, b).mean((1, 3))
    flat = small - ndimage.gaussian_filter(small, 16.0)
    smooth = ndimage.gaussian_filter(flat, 2.5)
    minima = smooth == ndimage.minimum_filter(smooth, size=MIN_DISTANCE_BINNED)
    margin = BOX_RAW // (2 * b) + 1
    minima[:margin] = minima[-margin:] = False
    minima[:, :margin] = minima[:, -margin:] = False
    r, c = np.nonzero(minima)
    order = np.argsort(smooth[r, c], kind="stable")[:N_PARTICLES]  # darkest first
    return np.stack([r[order], c[order]], 1) * b + b // 2


def fourier_crop(window: np.ndarray, box: int) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fft2(window))
    c, h = window.shape[0] // 2, box // 2
    f = f[c - h:c + h, c - h:c + h]
    return np.fft.ifft2(np.fft.ifftshift(f)).real * (box / window.shape[0]) ** 2


def extract(image: np.ndarray, centres: np.ndarray) -> np.ndarray:
    h = BOX_RAW // 2
    out = np.empty((len(centres), BOX, BOX), dtype=np.float32)
    yy, xx = np.mgrid[0:BOX, 0:BOX] - BOX // 2
    background = np.hypot(yy, xx) > 0.8 * BOX / 2
    for i, (r, c) in enumerate(centres):
        p = -fourier_crop(image[r - h:r + h, c - h:c + h], BOX)  # inverted: particles white
        out[i] = (p - p[background].mean()) / p[background].std()
    return out


def write_star(path: Path, names, centres, meta, apix_new: float) -> None:
    lines = ["", "# version 30001", "", "data_optics", "", "loop_", "_rlnOpticsGroup #1", "_rlnOpticsGroupName #2",
             "_rlnAmplitudeContrast #3", "_rlnSphericalAberration #4", "_rlnVoltage #5", "_rlnImagePixelSize #6",
             "_rlnImageSize #7", "_rlnImageDimensionality #8",
             f"1 opticsGroup1 {AMPLITUDE_CONTRAST:.2f} {CS_MM_ASSUMED:.2f} {meta['voltage_kv']:.1f} "
             f"{apix_new:.6f} {BOX} 2", "", "", "# version 30001", "", "data_particles", "", "loop_",
             "_rlnCoordinateX #1", "_rlnCoordinateY #2", "_rlnImageName #3", "_rlnMicrographName #4",
             "_rlnOpticsGroup #5", "_rlnDefocusU #6", "_rlnDefocusV #7", "_rlnDefocusAngle #8", "_rlnPhaseShift #9"]
    df = meta["defocus_angstrom"]
    for name, (r, c) in zip(names, centres):
        lines.append(f"{c:.1f} {r:.1f} {name} fei-extended.mrc 1 {df:.1f} {df:.1f} 0.0 0.0")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import mrcfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tarball", type=Path, help="mrcfile-1.5.4.tar.gz (source distribution)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    image, meta = read_micrograph(args.tarball)
    centres = pick(image)
    particles = extract(image, centres)
    apix_new = meta["pixel_size_angstrom"] * BOX_RAW / BOX
    stack = args.out / "fei_particles.mrcs"
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(particles)
        mrc.voxel_size = apix_new
    names = [f"{i + 1:06d}@fei_particles.mrcs" for i in range(len(particles))]
    write_star(args.out / "fei_particles.star", names, centres, meta, apix_new)
    print(f"{len(particles)} particles of {BOX} px at {apix_new:.3f} A/px from a {image.shape[1]} x {image.shape[0]} "
          f"micrograph ({meta['microscope']}, {meta['camera']}, {meta['voltage_kv']:.0f} kV, "
          f"recorded defocus {meta['defocus_angstrom']:.0f} A, {meta['pixel_size_angstrom']:.4f} A/px)")


if __name__ == "__main__":
    main()
