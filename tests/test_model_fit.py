"""A 40-step sanity fit: the hypervolume decoder with known poses learns ~200 noiseless
projections of a small smooth random volume (d = 16)."""

import torch

from cryofire_nb.lattice import Lattice
from cryofire_nb.model.decoder import HyperVolume, HyperVolumeConfig
from cryofire_nb.model.losses import slice_loss
from cryofire_nb.model.preprocess import PreprocessConfig, compute_normalization, preprocess
from cryofire_nb.projection import project_fourier
from cryofire_nb.rotations import random_rotations

D = 16
N = 200


def smooth_volume(g: torch.Generator) -> torch.Tensor:
    """Sum of six Gaussian blobs (sigma 1.5 px) within 0.2 d of the centre, (d, d, d) [z, y, x]."""
    r = torch.arange(D, dtype=torch.float64) - D // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1)
    vol = torch.zeros(D, D, D, dtype=torch.float64)
    for _ in range(6):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * D * 0.4
        vol += torch.exp(-((pts - c) ** 2).sum(-1) / (2 * 1.5 ** 2))
    return vol


def test_decoder_fits_projections_with_known_poses():
    g = torch.Generator().manual_seed(0)
    vol = smooth_volume(g)
    rots = random_rotations(N, generator=g)
    imgs = project_fourier(vol, rots.double()).float()
    cfg = PreprocessConfig(invert_contrast=False, window=False)
    h = preprocess(imgs, cfg, compute_normalization(imgs, cfg)).hartley  # (N, d+1, d+1)

    torch.manual_seed(0)
    dec = HyperVolume(HyperVolumeConfig(D, zdim=0, hidden=64, n_layers=2))
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    lat = Lattice(D)
    mask = lat.mask(D / 2)
    shift = torch.zeros(N, 2)
    losses = []
    for _ in range(40):
        loss = slice_loss(dec, rots, shift, None, h, None, lat, mask).per_image.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] / losses[-1] > 10

    with torch.no_grad():  # the fit is specific to the poses: other poses score badly
        other = slice_loss(dec, random_rotations(N, generator=g), shift, None, h, None, lat, mask)
    assert other.per_image.mean().item() > 5 * losses[-1]
    fitted = dec.eval_volume().double()
    assert torch.corrcoef(torch.stack([fitted.flatten(), vol.flatten()]))[0, 1] > 0.9
