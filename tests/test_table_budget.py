"""A set too large for its time limit: the pose table covers a random subset sized from the
measured search rate, the other particles get the encoder's poses, and every output says so.

The machine's rate is replaced by a stub, so that a test-sized set is "too large": the
plan is then a function of the limit and the stub's rate only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.io import read_latents, read_poses
from cryofire_nb.io.pkl import read_indices
from cryofire_nb.train import TrainConfig, load_checkpoint, train
from cryofire_nb.train import trainer as trainer_mod
from cryofire_nb.train.data import ParticleData
from cryofire_nb.train.synthetic import make_synthetic_set

D = 16
N = 300
SMALL = dict(encoder="released", encoder_channels=[8, 16, 32], encoder_hidden=32, decoder="voxel", decoder_lr=1e-2,
             batch_size=32, lr=3e-3, progress=False, command_line="pytest", zdim=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=N, d=D, n_levels=2, snr=3.0, seed=3)


@pytest.mark.parametrize("lazy", [False, True], ids=["resident", "streaming"])
def test_a_view_serves_the_rows_of_its_particles(synth, lazy):
    data = ParticleData(synth.particles, ctf=synth.ctf, lazy=lazy)
    hd = HartleyData.from_images(data, data.ctf_table, lazy=lazy)
    index = np.array([3, 7, 8, 150, 299])
    v = hd.view(index)
    assert v.n_particles == len(index) and v.norm_std == hd.norm_std
    for sel in (slice(None), slice(1, 4), np.array([4, 0]), torch.tensor([2])):
        x, c = v.rows(sel)
        want = index[np.arange(len(index))[sel] if isinstance(sel, slice) else np.asarray(sel)]
        x0, c0 = hd.rows(want)
        assert torch.equal(x, x0) and torch.equal(c, c0)
    vv = v.view(np.array([1, 3]))  # a view of a view reads the original's rows 7 and 150
    assert torch.equal(vv.rows(slice(None))[0], hd.rows(np.array([7, 150]))[0])
    with pytest.raises(IndexError):
        hd.view(np.array([0, N]))


def test_a_table_on_a_subset_leaves_the_encoder_the_rest(synth, tmp_path, monkeypatch):
    """The search itself is replaced by one returning the true poses of the particles it is
    given (its cost is not what is tested); the refinement, training and outputs are real."""
    import cryofire_nb.abinit as abinit

    limit_min = 0.5
    m = 120
    monkeypatch.setattr(trainer_mod, "TABLE_MIN_PARTICLES", 50)
    # a search rate at which the refinement's share of the limit fits exactly m particles
    # a search rate at which the refinement's share of the limit, beside the search's share and
    # the final pass (5 s + 1.25 x 300 x 10 ms), fits exactly m particles
    monkeypatch.setattr(trainer_mod.Trainer, "_infer_seconds_per_image", lambda self: 0.01)
    cfg0 = TrainConfig(particles="p", outdir="o")
    free = (1 - cfg0.search_time_fraction) * limit_min * 60 - (5.0 + 1.25 * N * 0.01)
    # (m + 0.5: the plan's int() of exactly m could round down to m - 1 in floating point)
    per = cfg0.hetero_time_fraction * free / (trainer_mod.HETERO_COST * (m + 0.5))
    monkeypatch.setattr(abinit, "global_search_seconds", lambda hd, cfg: per)
    gt = read_poses(synth.poses)
    searched = {}

    pd = ParticleData(synth.particles, ctf=synth.ctf)
    x_all = HartleyData.from_images(pd, pd.ctf_table).rows(slice(None))[0]

    def run_abinit(data, cfg, time_limit_s=None, progress=True):
        # which particles it was given: their rows are those of the whole set at the table's positions
        index = torch.cdist(data.rows(slice(None))[0], x_all).argmin(1).numpy()
        searched["index"] = index
        return SimpleNamespace(rots=torch.as_tensor(gt.rots[index]), shifts_px=torch.as_tensor(gt.shift_px(D)[index]),
                               volume_hartley=None, history=[])

    monkeypatch.setattr(abinit, "run_abinit", run_abinit)
    out = tmp_path / "run"
    res = train(TrainConfig(particles=str(synth.particles), ctf=str(synth.ctf), outdir=str(out),
                            time_limit_min=limit_min, init_search=True, gt_poses=str(synth.poses),
                            hetero_at_fraction=0.05, hetero_global=False, **SMALL))
    assert res.stopped_by == "time_limit"
    ind = read_indices(out / "table_ind.pkl")
    assert len(ind) in (m, m + 1) and np.all(np.diff(ind) > 0) and ind.max() < N  # int() of the planned count
    assert np.array_equal(searched["index"], ind)
    assert np.allclose(read_poses(out / "init_search_poses.pkl").rots, gt.rots[ind], atol=1e-6)
    poses, enc = read_poses(out / "poses.pkl"), read_poses(out / "encoder_poses.pkl")
    z, enc_z = read_latents(out / "z.pkl").mu, read_latents(out / "encoder_z.pkl").mu
    assert len(poses.rots) == len(z) == N
    outside = np.setdiff1d(np.arange(N), ind)
    assert np.allclose(poses.rots[outside], enc.rots[outside]) and np.allclose(z[outside], enc_z[outside])
    ck = load_checkpoint(out / "checkpoint.pt")
    assert np.array_equal(np.asarray(ck.extra["table_index"]), ind)
    assert np.allclose(poses.rots[ind], ck.targets[0][ind], atol=1e-6)  # the table's particles: the table
    assert ck.targets[2].shape == (N, 1) and np.allclose(z[ind], ck.targets[2][ind], atol=1e-6)
    assert any(f"covers {len(ind)} of {N} particles" in w for w in res.history.warnings)
    # the encoder is scored on held-out particles of the table only
    assert res.history.holdout and res.history.events  # the refinement ran, on the table's particles
    trainer = trainer_mod.Trainer(TrainConfig(particles=str(synth.particles), ctf=str(synth.ctf), outdir=str(out),
                                              load=str(out / "checkpoint.pt"), epochs=10 ** 6, **SMALL))
    assert np.array_equal(trainer.table_index, ind)  # a resumed run keeps the table's particles
    assert set(trainer.holdout) <= set(ind) and set(trainer.train_positions) <= set(ind)
    assert len(trainer.holdout) and not set(trainer.holdout) & set(trainer.train_positions)


def test_the_plan_follows_the_limit_and_says_when_it_is_too_short(synth, tmp_path, monkeypatch):
    """With time for all: no subset. Too little for the smallest table beside the final
    pass: the smallest table, and a warning that names the limit that would fit."""
    import cryofire_nb.abinit as abinit

    monkeypatch.setattr(trainer_mod, "TABLE_MIN_PARTICLES", 50)
    monkeypatch.setattr(trainer_mod.Trainer, "_infer_seconds_per_image", lambda self: 0.01)
    rate = {"per": 1e-6}
    monkeypatch.setattr(abinit, "global_search_seconds", lambda hd, cfg: rate["per"])
    trainer = trainer_mod.Trainer(TrainConfig(particles=str(synth.particles), ctf=str(synth.ctf),
                                              outdir=str(tmp_path / "run"), time_limit_min=0.5, **SMALL))
    assert trainer._plan_table(lambda: None, None, 30.0) is None
    assert trainer.table_index is None and len(trainer.train_positions) + len(trainer.holdout) == N
    assert not trainer.history.warnings
    rate["per"] = 1.0  # a second per particle: not even 50 fit in 30 s
    index = trainer._plan_table(lambda: None, None, 30.0)
    assert len(index) == 50 and len(np.unique(index)) == 50
    refine, search = trainer.history.warnings
    assert "no time on this machine for the heterogeneous refinement" in refine and trainer._skip_hetero
    assert "final pass over all 300" in refine and "table is the search's poses, not refined" in refine
    assert "too short on this machine for the search" in search and "will end after its limit" in search
    # the search's share must hold 50 s of global search: 0.5 x 0.4 x T >= 50 s, so T >= 4.2 min
    assert float(search.split("(about ")[1].split(" min")[0]) >= 4
    # and the refinement's: 0.65 x (0.6 T - final) >= 50 x 5 s
    assert float(refine.split("(about ")[1].split(" min")[0]) >= 10


def test_the_refinement_skipped_for_the_limit_stays_skipped_on_resume(synth, tmp_path, monkeypatch):
    import cryofire_nb.abinit as abinit

    monkeypatch.setattr(trainer_mod, "TABLE_MIN_PARTICLES", 50)
    monkeypatch.setattr(trainer_mod.Trainer, "_infer_seconds_per_image", lambda self: 0.01)
    monkeypatch.setattr(abinit, "global_search_seconds", lambda hd, cfg: 0.03)  # search fits, refinement not
    out = tmp_path / "run"
    res = train(TrainConfig(particles=str(synth.particles), ctf=str(synth.ctf), outdir=str(out), time_limit_min=0.3,
                            init_search=True, hetero_at_fraction=0.01, **SMALL))
    assert res.stopped_by == "time_limit" and not res.history.events  # no refinement ran
    assert any("not refined" in w for w in res.history.warnings)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck.extra.get("hetero_skipped") is True
    trainer = trainer_mod.Trainer(TrainConfig(particles=str(synth.particles), ctf=str(synth.ctf), outdir=str(out),
                                              load=str(out / "checkpoint.pt"), **SMALL))
    assert trainer._skip_hetero
