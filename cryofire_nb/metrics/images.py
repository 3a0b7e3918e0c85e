"""Image metrics: per-image Pearson correlation of two image stacks.

Images are real-space arrays ``[y, x]``; stacks are (n, h, w). Used to compare our
projections with projections made by other programs (cryoDRGN, RELION) and simulated
particles with their clean versions.

Dimension letters: n images, h / w image height / width.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def _stack(x, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(torch.float64)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise InputError(None, f"{name} has shape {tuple(t.shape)}, expected images (n, h, w)",
                         "pass a stack of 2-D images")
    return t


def image_correlation(images_a, images_b) -> np.ndarray:
    """Pearson correlation of each pair of images, (n,) float64.

    ``images_a`` and ``images_b``: (n, h, w) or (h, w) arrays or tensors of the same
    shape. Each image's mean is removed first, so a constant offset or a positive scale
    factor does not change the result; a constant image gives NaN.
    """
    a, b = _stack(images_a, "images_a"), _stack(images_b, "images_b")
    if a.shape != b.shape:
        raise InputError(None, f"image stacks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}",
                         "compare stacks of the same number and size of images")
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    num = (a * b).sum((-1, -2))
    den = a.norm(dim=(-1, -2)) * b.norm(dim=(-1, -2))
    return (num / den).numpy()
