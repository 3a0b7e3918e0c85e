"""Downsample a particle source by Fourier cropping, chunk by chunk, into one ``.mrcs``.

Uses :func:`cryofire_nb.fft.fourier_crop` (centred frequencies ``[-d_new/2, d_new/2)``
kept, values preserved: a constant image stays the same constant). The pixel size grows
to ``Apix * d / d_new``; the CTF table keeps the original D and Apix (rescale on use).
Images are read lazily and written through a memory map, so stacks larger than RAM
work; the output appears only when every image was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .mrc import open_stack_writer
from .stack import ImageSource


def check_new_box(path: str | Path, d: int, d_new: int) -> None:
    """Raise InputError unless ``d_new`` is even, positive and not larger than ``d``."""
    if d_new <= 0 or d_new % 2 or d_new > d:
        raise InputError(path, f"cannot downsample a {d}-pixel box to -D {d_new}",
                         f"choose an even box size between 2 and {d - d % 2}")


def crop_images(images: np.ndarray, d_new: int) -> np.ndarray:
    """Fourier-crop real images (b, d, d) to (b, d_new, d_new), float32 (real space)."""
    import torch

    from ..fft import fourier_crop

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))  # (b, d, d)
        return fourier_crop(x, d_new).numpy().astype(np.float32, copy=False)  # (b, d_new, d_new)


def downsample_source(source: ImageSource, d_new: int, out_path: str | Path, chunk_size: int = 1000,
                      progress: bool = True) -> float | None:
    """Write every image of ``source`` cropped to ``d_new`` into ``out_path`` (.mrcs).

    Returns the new pixel size (``None`` if the source's pixel size is unknown).
    """
    check_new_box(source.path, source.d, d_new)
    if chunk_size <= 0:
        raise InputError(None, f"--chunk must be positive, got {chunk_size}", "pass e.g. --chunk 1000")
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".mrcs":
        raise InputError(out_path, "the output must be a .mrcs stack", "name the output OUT.mrcs")
    apix = source.pixel_size_angstrom
    apix_new = None if apix is None else apix * source.d / d_new
    from tqdm.auto import tqdm

    with open_stack_writer(out_path, len(source), d_new, apix_new) as writer, \
            tqdm(total=len(source), unit="img", desc="downsample", disable=not progress) as bar:
        for start, images in source.iter_chunks(chunk_size):
            writer.write(start, crop_images(images, d_new))
            bar.update(len(images))
    return apix_new
