"""Throughput of training and inference steps (images/s) on random data, for a choice of
encoder, decoder, box and batch size. Training steps are measured in the amortised mode
(encoder on the image and its mirror, symmetric loss, backward, Adam) at a given loss-disc
radius; inference is one no-grad pass with the mirror decision at the full radius.

    python -m cryofire_nb.train.benchmark --d 32 --batch 64 128
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass

import torch

from ..lattice import Lattice
from ..model.decoder import HyperVolumeConfig, VoxelVolumeConfig
from ..model.encoder import EncoderConfig
from ..model.preprocess import Normalization, PreprocessConfig, preprocess
from ..model.schedule import PoseOnlyPhase
from .data import Batch
from .run_model import CryoFireModel, ModelSpec
from .steps import amortised_step


@dataclass(frozen=True)
class Throughput:
    encoder: str
    decoder: str
    d: int
    batch: int
    radius_px: float
    train_images_per_s: float
    infer_images_per_s: float


def make_model(encoder: str, decoder: str, d: int, zdim: int = 8) -> CryoFireModel:
    enc = EncoderConfig(d=d, zdim=zdim, variant=encoder).to_dict()
    dec = (HyperVolumeConfig(d=d, zdim=zdim) if decoder == "hypervolume" else VoxelVolumeConfig(d=d, zdim=zdim))
    return CryoFireModel(ModelSpec(d=d, encoder=enc, decoder_kind=decoder, decoder=dec.to_dict(),
                                   preprocess=PreprocessConfig().to_dict(), normalization={"std": 1.0}))


def _batch(b: int, d: int, g: torch.Generator) -> Batch:
    raw = torch.randn(b, d, d, generator=g)
    pre = preprocess(raw, PreprocessConfig(), Normalization(float(d)))
    ctf = torch.rand(b, d + 1, d + 1, generator=g) * 2 - 1
    return Batch(torch.arange(b), pre.real, pre.hartley, ctf)


def _best_rate(fn, batch: int, steps: int, repeats: int) -> float:
    """Images/s of ``fn`` (one batch per call): the best of ``repeats`` timings of
    ``steps`` calls each (a shared machine only ever slows a timing down)."""
    fn()  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        best = max(best, steps * batch / (time.perf_counter() - t0))
    return best


def measure(encoder: str, decoder: str, d: int, batch: int, radius_px: float, steps: int = 4,
            repeats: int = 3) -> Throughput:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = make_model(encoder, decoder, d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lat = Lattice(d)
    mask = lat.mask(radius_px, exclude_dc=True)
    full = lat.mask(d / 2, exclude_dc=True)
    no_phase = PoseOnlyPhase(0)
    batch_data = _batch(batch, d, g)

    def train_step():
        res = amortised_step(model, batch_data, lat, mask, 0, no_phase, 0.0, g)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    @torch.no_grad()
    def infer_step():
        amortised_step(model, batch_data, lat, full, 0, no_phase, 0.0, None, sample=False)

    return Throughput(encoder, decoder, d, batch, radius_px, _best_rate(train_step, batch, steps, repeats),
                      _best_rate(infer_step, batch, steps, repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    p.add_argument("--radius", type=float, nargs="+", default=None, help="loss-disc radii (default 3 and d/2)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    radii = a.radius or [3.0, a.d / 2]
    print("encoder   decoder      batch radius  train img/s  infer img/s")
    for enc, dec, b, r in itertools.product(("paper", "released"), ("hypervolume", "voxel"), a.batch, radii):
        t = measure(enc, dec, a.d, b, r, steps=a.steps, repeats=a.repeats)
        print(f"{enc:9s} {dec:12s} {b:5d} {r:6.1f} {t.train_images_per_s:12.0f} {t.infer_images_per_s:12.0f}",
              flush=True)


if __name__ == "__main__":
    main()
