"""Images rendered from a run's volumes (cryofire_nb.train.rendered) carry exact labels
and look like the data: the decoder here is fitted with the true poses of a synthetic
set (a known-pose run), so the only differences left are the ones being tested.

* labels: without noise or window, the rendered image translated by its label's shift
  is the decoder's slice at its label's rotation and z, times the CTF (a wrong shift
  sign or a transposed slice would leave a residual of the signal's own size);
* noise: the residual power measured at the true poses is the simulator's white noise,
  and rendered images have the particles' power in every ring of the lattice where the
  volume is well fitted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from types import SimpleNamespace

from cryofire_nb.fft import translate_ht
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.hetero import HeteroRefineConfig, fit_basis
from cryofire_nb.model.decoder import VoxelVolume, VoxelVolumeConfig
from cryofire_nb.io import read_poses
from cryofire_nb.model.preprocess import PreprocessConfig, to_hartley
from cryofire_nb.train import TrainConfig, load_checkpoint
from cryofire_nb.train.data import ParticleData
from cryofire_nb.train.run_model import _torch_load
from cryofire_nb.train.trainer import Trainer
from cryofire_nb.train.rendered import Renderer, ring_index, shell_noise_power, signal_disc
from cryofire_nb.train.synthetic import make_synthetic_set

D = 16
N = 512


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic set (one conformation, SNR 0.5) and a voxel decoder holding the volume
    the pipeline's own solver (:func:`cryofire_nb.hetero.fit_basis`) fits to it at the
    true poses, in the decoder's units (as a pose-table run seeds its decoder)."""
    tmp = tmp_path_factory.mktemp("rendered")
    s = make_synthetic_set(tmp / "data", n=N, d=D, n_levels=1, snr=0.5, max_shift_px=1.0, seed=3)
    data = ParticleData(str(s.particles), ctf=str(s.ctf))
    hd = HartleyData.from_images(data, data.ctf_table, invert=True)
    gt = read_poses(s.poses)
    rots = torch.as_tensor(gt.rots, dtype=hd.dtype)
    shifts = torch.as_tensor(gt.shift_px(D), dtype=hd.dtype)
    basis = fit_basis(hd, rots, shifts, torch.ones(N, 1, dtype=hd.dtype), torch.arange(N),
                      HeteroRefineConfig.for_box(D))
    decoder = VoxelVolume(VoxelVolumeConfig(d=D, zdim=0))
    with torch.no_grad():
        decoder.grids.copy_(basis.float() * (hd.norm_std / data.normalization.std))
    return s, SimpleNamespace(decoder=decoder), data.preprocess_config, data.normalization


def _data(fit, window: bool = True) -> ParticleData:
    s, _, pre, norm = fit
    cfg = PreprocessConfig(**{**pre.to_dict(), "window": window})
    return ParticleData(str(s.particles), ctf=str(s.ctf), preprocess_config=cfg, normalization=norm)


def _ring_power(h: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    p = h.reshape(h.shape[0], -1).double().square().mean(0)
    total = torch.zeros(int(ring.max()) + 1, dtype=torch.float64).index_add_(0, ring, p)
    return total / torch.zeros_like(total).index_add_(0, ring, torch.ones_like(p))


def test_rendered_images_carry_exact_labels(fitted):
    s, model = fitted[:2]
    data = _data(fitted, window=False)
    gt = read_poses(s.poses)
    shifts = gt.shift_px(D).astype(np.float32)
    r = Renderer(data, np.arange(N), shifts, None, torch.zeros(int(ring_index(data.lattice).max()) + 1))  # no noise
    g = torch.Generator().manual_seed(0)
    out = r.draw(model, 64, g)
    assert out.real.shape == (64, D, D) and out.z is None
    assert shifts.min() - 1e-6 <= float(out.shift_px.min()) and float(out.shift_px.max()) <= shifts.max() + 1e-6
    h = to_hartley(out.real.double() / D)  # the rendered image on the lattice (normalised units)
    lat = data.lattice
    centred = translate_ht(h.reshape(64, -1), lat.coords_xy.double(), out.shift_px.double())
    with torch.no_grad():
        slc = model.decoder(lat.slice_coords(out.rots), None).double() * signal_disc(lat)
    expected = slc * data.ctf_on_lattice(out.ctf_from.numpy()).reshape(64, -1).double()
    err = (centred - expected).square().mean() / expected.square().mean()
    assert float(err) < 1e-8, float(err)  # nothing outside the disc either: expected is 0 there


def test_rendered_images_have_the_datas_noise_and_power(fitted):
    s, model = fitted[:2]
    data = _data(fitted)
    gt = read_poses(s.poses)
    rots, shifts = gt.rots.astype(np.float32), gt.shift_px(D).astype(np.float32)
    pos = np.arange(N)
    power = shell_noise_power(model, data, pos, rots, shifts, None)
    ring = ring_index(data.lattice)
    # the simulator adds white noise: the same power in every ring where the volume is fitted
    # well (the low rings also hold the trilinear slice's own error on a 16-px box)
    high = power[D // 4:D // 2 + 1]
    assert float(high.max() / high.min()) < 1.15, power
    r = Renderer(data, pos, shifts, None, power)
    out = r.draw(model, 512, torch.Generator().manual_seed(1))
    real = data.batch(pos).real
    pr, ps = _ring_power(to_hartley(real.double() / D), ring), _ring_power(to_hartley(out.real.double() / D), ring)
    # from ring 3 out; below it the trilinear slice of an unpadded 16-px grid loses part of
    # the signal (measured: 0.63 and 0.85 of the data's power in rings 1 and 2)
    ratio = ps[3:] / pr[3:]
    assert float((ratio - 1).abs().max()) < 0.1, ratio


def _table_run(s, outdir, epochs: int, hetero_at: float, **kw) -> TrainConfig:
    return TrainConfig(particles=str(s.particles), ctf=str(s.ctf), distill_poses=str(s.poses), outdir=str(outdir),
                       n_basis=1, epochs=epochs, hetero_global=False, hetero_at_fraction=hetero_at,
                       encoder_channels=[8, 16, 32], encoder_hidden=32, batch_size=32, rendered_per_image=0.5,
                       progress=False, command_line="pytest", **kw)


def test_a_table_run_renders_after_the_refinement_and_resumes_exactly(tmp_path, monkeypatch):
    """Rendered images join the encoder's batches only once the table is refined (half as
    many as particles here); the noise they carry is measured once and kept in the
    checkpoint, so a run resumed after the refinement ends with the same weights as one
    that was not stopped."""
    s = make_synthetic_set(tmp_path / "data", n=256, d=D, n_levels=2, snr=2.0, seed=4)
    drawn = []
    draw = Renderer.draw

    def spy(self, model, b, generator):
        drawn.append((b, bool(trainer.cfg.resolved.get("hetero_done"))))
        return draw(self, model, b, generator)

    monkeypatch.setattr(Renderer, "draw", spy)
    trainer = Trainer(_table_run(s, tmp_path / "straight", epochs=4, hetero_at=0.25))
    trainer.run()
    assert drawn and all(done for _, done in drawn)  # never before the refinement
    assert {b for b, _ in drawn} == {16, 4}  # half of each batch: 231 training particles = 7 x 32 + 7
    # the steps before the refinement rendered nothing: about a quarter of the run
    steps = trainer.state.step
    assert 0.6 * steps <= len(drawn) <= 0.8 * steps, (len(drawn), steps)
    straight = _torch_load(tmp_path / "straight" / "weights.pt")["state_dict"]

    trainer = Trainer(_table_run(s, tmp_path / "split", epochs=2, hetero_at=0.5))  # refined after one epoch too
    trainer.run()
    ck = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    noise = np.asarray(ck.extra["noise_power"])
    assert noise.shape == (int(ring_index(trainer.data.lattice).max()) + 1,) and (noise > 0).all()
    trainer = Trainer(_table_run(s, tmp_path / "split", epochs=4, hetero_at=0.5,
                                 load=str(tmp_path / "split" / "checkpoint.pt")))
    trainer.run()
    np.testing.assert_array_equal(np.asarray(trainer._noise_power), noise)  # taken from the checkpoint
    split = _torch_load(tmp_path / "split" / "weights.pt")["state_dict"]
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)
