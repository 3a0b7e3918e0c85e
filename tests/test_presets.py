"""Presets: what a run with no method flags resolves to, and the run's own warnings."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
import yaml

from cryofire_nb.cli import build_parser
from cryofire_nb.commands.train import config_from_args
from cryofire_nb.errors import InputError
from cryofire_nb.train import TrainConfig
from cryofire_nb.train.monitor import History
from cryofire_nb.train.presets import PRESET_FIELDS, apply_preset, resolve_preset
from cryofire_nb.train.synthetic import make_synthetic_set
from cryofire_nb.train.trainer import Trainer, holdout_positions

D = 16


@pytest.mark.parametrize("method", ["table", "amortised", "known"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_presets_resolve_deterministically_from_box_and_device(d, device, method):
    name, values = resolve_preset(d, device, method)
    assert (name, values) == resolve_preset(d, device, method)
    assert set(values) == set(PRESET_FIELDS)
    if method == "table":
        assert name == f"table-{'gpu' if device == 'cuda' else 'cpu'}-d{d}"
        assert values["zdim"] == values["n_basis"] == 2 and values["decoder"] == "voxel"
        # one encoder width per halving block of a d-px image
        assert len(values["encoder_channels"]) == int(math.log2(d)) - 1
    else:
        assert values["encoder"] == "paper" and values["zdim"] == 8 and values["n_basis"] is None
    other_device = resolve_preset(d, "cuda" if device == "cpu" else "cpu", method)[1]
    if method == "table":
        assert other_device["batch_size"] != values["batch_size"]


def test_the_command_with_no_method_flags_is_the_table_method():
    args = build_parser().parse_args(["train", "p.mrcs", "--ctf", "c.pkl", "-o", "run"])
    cfg = config_from_args(args)
    assert cfg.method == "table" and cfg.init_search and cfg.pose_table and cfg.device == "auto"
    assert all(getattr(cfg, f) is None for f in PRESET_FIELDS)  # left for the preset
    paper = config_from_args(build_parser().parse_args(["train", "p.mrcs", "-o", "r", "--method", "amortised"]))
    assert paper.method == "amortised" and not paper.init_search and not paper.pose_table
    known = config_from_args(build_parser().parse_args(["train", "p.mrcs", "-o", "r", "--poses", "x.pkl"]))
    assert known.method == "known" and not known.init_search
    assert cfg.hetero_cycles == 3  # further refinement cycles under a time limit, by default
    one = config_from_args(build_parser().parse_args(["train", "p.mrcs", "-o", "r", "--refine-cycles", "0"]))
    assert one.hetero_cycles == 0
    with pytest.raises(InputError, match="refinement cycles"):
        TrainConfig(particles="p", outdir="o", hetero_cycles=-1)
    assert cfg.search_starts == 4  # the consensus search from several EM starts, by default
    assert config_from_args(build_parser().parse_args(["train", "p.mrcs", "-o", "r", "--search-starts", "1"])
                            ).search_starts == 1
    with pytest.raises(InputError, match="search starts"):
        TrainConfig(particles="p", outdir="o", search_starts=0)


def test_explicit_settings_win_over_the_preset_and_zdim_follows_n_basis():
    cfg = apply_preset(TrainConfig(particles="p", outdir="o", batch_size=48, n_basis=3), 32, "cpu")
    assert cfg.preset == "table-cpu-d32" and cfg.batch_size == 48 and cfg.n_basis == 3 and cfg.zdim == 3
    assert cfg.lr == resolve_preset(32, "cpu", "table")[1]["lr"]
    with pytest.raises(InputError, match="n_basis"):
        apply_preset(TrainConfig(particles="p", outdir="o", zdim=8, n_basis=2), 32, "cpu")
    # the paper encoder keeps its own widths when only the encoder is changed
    cfg = apply_preset(TrainConfig(particles="p", outdir="o", encoder="paper"), 32, "cpu")
    assert cfg.encoder == "paper" and cfg.encoder_channels is None


def test_a_run_records_its_preset_and_resolved_settings(tmp_path, capsys):
    s = make_synthetic_set(tmp_path / "data", n=32, d=D, n_levels=1, snr=2.0, seed=3)
    trainer = Trainer(TrainConfig(particles=str(s.particles), ctf=str(s.ctf), outdir=str(tmp_path / "run"),
                                  device="auto", progress=False))
    out = capsys.readouterr().out
    assert trainer.cfg.method == "table" and trainer.cfg.preset == "table-cpu-d16"
    assert "preset table-cpu-d16" in out and "basis components 2" in out
    assert trainer.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(trainer.holdout) == 3 and not set(trainer.holdout) & set(trainer.train_positions)


def test_holdout_positions_are_a_fixed_tenth():
    a = holdout_positions(1000, 5)
    assert len(a) == 100 and len(set(a)) == 100 and np.array_equal(a, holdout_positions(1000, 5))
    assert not np.array_equal(a, holdout_positions(1000, 6))
    assert len(holdout_positions(9, 0)) == 0


def test_a_table_run_scores_its_encoder_on_held_out_particles(tmp_path):
    s = make_synthetic_set(tmp_path / "data", n=200, d=D, n_levels=1, snr=2.0, seed=4)
    cfg = TrainConfig(particles=str(s.particles), ctf=str(s.ctf), distill_poses=str(s.poses),
                      outdir=str(tmp_path / "run"), n_basis=0, epochs=3, hetero_global=False, hetero_at_fraction=0.3,
                      encoder_channels=[8, 16, 32], batch_size=32, progress=False, command_line="pytest")
    trainer = Trainer(cfg)
    seen = []
    step = trainer._step
    trainer._step = lambda pos: (seen.append(np.asarray(pos).copy()), step(pos))[1]
    trainer.run()
    assert len(trainer.holdout) == 20
    # the encoder's training steps never see a held-out particle; every other one is seen
    trained_on = set(np.concatenate(seen).tolist())
    assert not trained_on & set(trainer.holdout.tolist()) and len(trained_on) == 180
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist["holdout"], "no held-out score written"
    last = hist["holdout"][-1]
    for key in ("held_out_rotation_median_deg", "training_rotation_median_deg", "held_out_shift_median_px"):
        assert math.isfinite(last[key])
    assert last["table"] == "refined"
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["method"] == "table"


def _fake_trainer(method: str, holdout: list[dict]):
    t = types.SimpleNamespace(cfg=types.SimpleNamespace(method=method), history=History(holdout=holdout))
    t._warn = lambda text: Trainer._warn(t, text)
    return t


def test_warnings_for_collapsed_views_and_a_far_encoder(capsys):
    theta = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    c, s_ = torch.cos(theta), torch.sin(theta)
    planar = torch.zeros(200, 3, 3, dtype=torch.float64)  # rotations about y: views on one great circle
    planar[:, 0, 0], planar[:, 0, 2], planar[:, 1, 1], planar[:, 2, 0], planar[:, 2, 2] = c, -s_, 1, s_, c
    t = _fake_trainer("amortised", [])
    Trainer._final_warnings(t, planar.numpy())
    assert len(t.history.warnings) == 1 and "great circle" in t.history.warnings[0]
    assert "warning: the view directions" in capsys.readouterr().err
    far = [{"held_out_rotation_median_deg": 40.0, "training_rotation_median_deg": 12.0}]
    from cryofire_nb.rotations import random_rotations
    spread = random_rotations(500, generator=torch.Generator().manual_seed(0)).double().numpy()
    t = _fake_trainer("table", far)
    Trainer._final_warnings(t, spread, encoder=object())
    assert len(t.history.warnings) == 1 and "40.0 deg" in t.history.warnings[0]
    t = _fake_trainer("table", [{"held_out_rotation_median_deg": 5.0, "training_rotation_median_deg": 4.0}])
    Trainer._final_warnings(t, spread, encoder=object())
    assert t.history.warnings == []
