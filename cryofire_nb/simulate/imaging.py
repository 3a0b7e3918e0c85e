"""Image formation after the projection, one step per function, in the order physics
applies them: projection (centred Fourier, :func:`~cryofire_nb.simulate.density.project_atoms`)
-> CTF -> shift -> real space -> noise -> contrast inversion.

Conventions (``/shared/docs/conventions.md``):

* A stored particle equals the centred projection translated by **minus** its stored
  shift ``t`` (pixels, (x, y)); the pose file stores ``t / d``. Re-centring the particle
  by ``+t`` (what cryoDRGN does) gives back the centred image.
* The CTF multiplies the centred 2-D DFT on the DFT frequency grid ``(j - d//2) / d``
  cycles/pixel (:meth:`cryofire_nb.io.CtfParams.evaluate`). With ``CTF(0) = -w`` an
  un-inverted image of positive density is dark at low frequency; ``invert_contrast``
  stores ``-image`` (particles white, like RELION stacks).
* Noise is white Gaussian in real space, drawn for each particle from its own stream
  ``numpy.random.default_rng([seed, NOISE_STREAM, index])``, so a particle's noise does
  not depend on which batch or in which order it is made.

Dimension letters: b batch, d box.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.records import CtfParams
from ..fft import freqs_1d, ifft2_center, translate_fourier
from .density import Scattering, project_atoms

Tensor = torch.Tensor
NOISE_STREAM = 1  # second entry of the noise seed sequence (parameters use PARAMS_STREAM = 0)


def ctf_on_grid(ctf: CtfParams, d: int, bfactor_angstrom2: float = 0.0) -> Tensor:
    """CTF values (b, d, d) [ky, kx] on the centred DFT grid of a box of ``d`` pixels."""
    k = freqs_1d(d, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    grid = torch.stack([kx.flatten(), ky.flatten()], -1)  # (d*d, 2) as (kx, ky), cycles/pixel
    return ctf.to(dtype=torch.float64).evaluate(grid, d, bfactor_angstrom2).reshape(-1, d, d)


def apply_ctf(f_images: Tensor, ctf_values: Tensor | None) -> Tensor:
    """Centred Fourier images (b, d, d) times the CTF (b, d, d); ``None`` = no CTF."""
    return f_images if ctf_values is None else f_images * ctf_values.to(f_images.real.dtype)


def shift_to_stored(f_images: Tensor, shift_px) -> Tensor:
    """Translate centred Fourier images (b, d, d) by **minus** ``shift_px`` (b, 2) (x, y):
    the stored particle of a pose with shift ``t``."""
    t = torch.as_tensor(np.asarray(shift_px), dtype=torch.float64)
    return translate_fourier(f_images, -t).to(f_images.dtype)


def to_real(f_images: Tensor) -> np.ndarray:
    """Centred Fourier images (b, d, d) -> real images (b, d, d) float32."""
    return ifft2_center(f_images).real.to(torch.float32).numpy()


def noise_images(indices, d: int, seed: int) -> np.ndarray:
    """Unit white Gaussian noise (b, d, d) float32, particle ``i`` from its own stream."""
    out = np.empty((len(indices), d, d), dtype=np.float32)
    for j, i in enumerate(np.asarray(indices, dtype=np.int64)):
        out[j] = np.random.default_rng([seed, NOISE_STREAM, int(i)]).standard_normal((d, d), dtype=np.float32)
    return out


def add_noise(images: np.ndarray, noise_std: float, indices, seed: int) -> np.ndarray:
    """Real images (b, d, d) plus white Gaussian noise of standard deviation ``noise_std``."""
    if noise_std == 0:
        return images
    return images + np.float32(noise_std) * noise_images(indices, images.shape[-1], seed)


def invert_contrast(images: np.ndarray, invert: bool = True) -> np.ndarray:
    """Stored contrast: ``-images`` (particles white) when ``invert``."""
    return -images if invert else images


def signal_variance(clean_images: np.ndarray) -> float:
    """Mean over images of the pixel variance over the whole box (the SNR numerator)."""
    x = np.asarray(clean_images, dtype=np.float64)
    return float(x.reshape(x.shape[0], -1).var(axis=1).mean())


def clean_particles(coords_angstrom, scattering: Scattering, rots, shift_px, ctf: CtfParams | None,
                    d: int, pixel_size_angstrom: float, density_bfactor_angstrom2: float = 0.0,
                    ctf_bfactor_angstrom2: float = 0.0) -> np.ndarray:
    """Noise-free, un-inverted particles (b, d, d) float32: projection -> CTF -> shift -> real."""
    f = project_atoms(coords_angstrom, scattering, rots, d, pixel_size_angstrom, density_bfactor_angstrom2)
    f = apply_ctf(f, None if ctf is None else ctf_on_grid(ctf, d, ctf_bfactor_angstrom2))
    return to_real(shift_to_stored(f, shift_px))


def particles(coords_angstrom, scattering: Scattering, rots, shift_px, ctf: CtfParams | None,
              d: int, pixel_size_angstrom: float, *, indices, seed: int, noise_std: float,
              invert: bool = True, density_bfactor_angstrom2: float = 0.0,
              ctf_bfactor_angstrom2: float = 0.0) -> np.ndarray:
    """The full image model: :func:`clean_particles` -> noise -> contrast inversion."""
    clean = clean_particles(coords_angstrom, scattering, rots, shift_px, ctf, d, pixel_size_angstrom,
                            density_bfactor_angstrom2, ctf_bfactor_angstrom2)
    return invert_contrast(add_noise(clean, noise_std, indices, seed), invert)
