"""Frequency marching and the pose-only phase."""

import json

import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.lattice import Lattice
from cryofire_nb.model.schedule import FrequencyMarching, PoseOnlyPhase


def test_frequency_marching_radius_and_mask():
    d = 32
    fm = FrequencyMarching(d, start_radius_px=3, step_px=2, images_per_step=1000)
    assert fm.max_radius_px == 16
    assert [fm.radius_px(n) for n in (0, 999, 1000, 2500, 10**9)] == [3, 3, 5, 7, 16]
    lat = Lattice(d)
    counts = [int(fm.mask(lat, n).sum()) for n in range(0, 9001, 1000)]  # radius 3, 5, ..., 15, 16, 16
    assert all(a < b for a, b in zip(counts[:8], counts[1:8]))
    assert counts[7] == counts[8] == counts[9] == int((lat.radius_px <= 16 + 1e-6).sum()) - 1
    m0 = fm.mask(lat, 0)
    assert not m0[lat.center_index]
    assert int(m0.sum()) == int((lat.radius_px <= 3 + 1e-6).sum()) - 1
    assert torch.all(lat.radius_px[m0] <= 3 + 1e-6)


def test_schedules_serialise():
    fm = FrequencyMarching(64, images_per_step=5000)
    assert FrequencyMarching.from_dict(json.loads(json.dumps(fm.to_dict()))) == fm
    ph = PoseOnlyPhase(images=300)
    assert PoseOnlyPhase.from_dict(json.loads(json.dumps(ph.to_dict()))) == ph
    with pytest.raises(InputError):
        FrequencyMarching(32, start_radius_px=20)
    with pytest.raises(InputError):
        PoseOnlyPhase(images=-1)


def test_pose_only_phase_replaces_z_with_noise():
    ph = PoseOnlyPhase(images=1000)
    z = torch.full((4000, 3), 5.0)
    noise = ph.decoder_z(z, 999, generator=torch.Generator().manual_seed(0))
    assert ph.active(999) and not ph.active(1000)
    assert noise.shape == z.shape
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    assert ph.decoder_z(z, 1000) is z
    assert ph.decoder_z(None, 0) is None
