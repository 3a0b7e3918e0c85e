"""Several EM starts of the consensus search (``AbinitConfig.n_starts``): each start is
scored by how well its poses explain a sample of the particles, the best one is kept, one
start is the search as it always was, and a time limit lets only the starts that fit run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cryofire_nb.abinit as abinit
from cryofire_nb.abinit import AbinitConfig, _index, _VolumeModel, run_abinit, start_score
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.io import read_ctf, read_poses
from cryofire_nb.rotations import random_rotations
from cryofire_nb.train.data import ParticleData
from cryofire_nb.train.synthetic import make_synthetic_set

D = 16
SMALL = dict(n_iterations=6, batch_size=64, batch_size_full=128, refine_rounds=0, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    s = make_synthetic_set(tmp_path_factory.mktemp("starts"), n=300, d=D, n_levels=1, snr=3.0, seed=5)
    hd = HartleyData.from_images(ParticleData(s.particles, ctf=s.ctf), read_ctf(s.ctf).table)
    return s, hd


def _volume(hd, rots, shifts):
    cfg = AbinitConfig()
    model = _VolumeModel(D, cfg, hd.dtype, hd.device)
    model.acc.add(*hd.rows(torch.arange(hd.n_particles)), hd.lattice, _index(hd.lattice, D / 2, dc=True),
                  rots[:, None], shifts[:, None])
    return model.volume()


def test_the_score_prefers_the_volume_of_the_true_poses(small):
    """A volume backprojected at the true poses explains the particles better than one
    backprojected at random poses (the failure a wrong start ends in)."""
    s, hd = small
    gt = read_poses(s.poses)
    rots, shifts = torch.as_tensor(gt.rots).float(), torch.as_tensor(gt.shift_px(D)).float()
    right = _volume(hd, rots, shifts)
    wrong = _volume(hd, random_rotations(hd.n_particles, torch.Generator().manual_seed(1)), shifts)
    cfg = AbinitConfig(**SMALL)
    sample = torch.arange(0, 300, 2)
    good, bad = start_score(hd, cfg, right, 1.0, sample), start_score(hd, cfg, wrong, 1.0, sample)
    assert good < 0.95 * bad, (good, bad)  # measured: 65.7 against 76.8


def test_the_best_scoring_start_is_kept(small, monkeypatch):
    _, hd = small
    one = run_abinit(hd, AbinitConfig(**SMALL), progress=False)
    assert not any(h["stage"] == "starts" for h in one.history)

    def run(scores):
        it = iter(scores)
        monkeypatch.setattr(abinit, "start_score", lambda *a, **k: next(it))
        return run_abinit(hd, AbinitConfig(n_starts=3, **SMALL), progress=False)

    first = run([1.0, 2.0, 3.0])
    starts = next(h for h in first.history if h["stage"] == "starts")
    assert [s["start"] for s in starts["starts"]] == [0, 1, 2] and starts["kept"] == 0
    assert sorted({h["start"] for h in first.history if h["stage"] == "em"}) == [0, 1, 2]
    # start 0 is the one-start search: same poses when it is kept
    torch.testing.assert_close(first.rots, one.rots)
    torch.testing.assert_close(first.volume, one.volume)
    second = run([3.0, 1.0, 2.0])
    assert next(h for h in second.history if h["stage"] == "starts")["kept"] == 1
    assert not torch.equal(second.volume, one.volume)  # another start's volume, then its poses


def test_a_time_limit_runs_only_the_starts_that_fit(small):
    _, hd = small
    res = run_abinit(hd, AbinitConfig(n_starts=4, **SMALL), time_limit_s=1e-3, progress=False)
    starts = next(h for h in res.history if h["stage"] == "starts")
    assert len(starts["starts"]) == 1 and starts["kept"] == 0
    assert np.isfinite(starts["starts"][0]["score"])


def test_bad_start_settings_are_refused():
    with pytest.raises(ValueError, match="n_starts"):
        AbinitConfig(n_starts=0)
    with pytest.raises(ValueError, match="start_sample"):
        AbinitConfig(start_sample=0)
