"""A 40-step sanity fit: the hypervolume decoder with known poses learns ~200 noiseless
projections of a small smooth random volume (d = 16); random poses do much worse."""

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


def fit(hartley, rots, steps=40):
    torch.manual_seed(0)
    dec = HyperVolume(HyperVolumeConfig(D, zdim=0, hidden=64, n_layers=2))
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    lat = Lattice(D)
    mask = lat.mask(D / 2)
    shift = torch.zeros(len(rots), 2)
    losses = []
    for _ in range(steps):
        loss = slice_loss(dec, rots, shift, None, hartley, None, lat, mask).per_image.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, dec.eval_volume().double()


def test_decoder_fits_projections_with_known_poses():
    g = torch.Generator().manual_seed(0)
    vol = smooth_volume(g)
    rots = random_rotations(N, generator=g, dtype=torch.float64)
    imgs = project_fourier(vol, rots).float()
    cfg = PreprocessConfig(invert_contrast=False, window=False)
    batch = preprocess(imgs, cfg, compute_normalization(imgs, cfg))

    losses, fitted = fit(batch.hartley, rots.float())
    wrong_losses, wrong_fit = fit(batch.hartley, random_rotations(N, generator=g))

    assert losses[0] / losses[-1] > 10
    assert losses[-1] < 0.5 * wrong_losses[-1]

    def corr(v):
        return torch.corrcoef(torch.stack([v.flatten(), vol.flatten()]))[0, 1].item()
    assert corr(fitted) > 0.9
    assert corr(fitted) > corr(wrong_fit)
