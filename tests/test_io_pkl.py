"""Pickle formats (poses, CTF, latents, indices) and the typed records."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cryofire_nb.errors import InputError
from cryofire_nb.io.pkl import (read_ctf, read_indices, read_latents, read_poses, write_ctf,
                                write_indices, write_latents, write_poses)
from cryofire_nb.io.records import CtfParams, Latents, Poses
from cryofire_nb.rotations import random_rotations


def _poses(n=5, seed=0):
    import torch

    rots = random_rotations(n, generator=torch.Generator().manual_seed(seed)).numpy()
    trans = np.random.default_rng(seed).uniform(-0.1, 0.1, (n, 2))
    return Poses(rots, trans)


def test_poses_round_trip_and_cryodrgn_layout(tmp_path):
    poses = _poses()
    write_poses(tmp_path / "p.pkl", poses)
    with open(tmp_path / "p.pkl", "rb") as f:
        raw = pickle.load(f)
    assert isinstance(raw, tuple) and raw[0].shape == (5, 3, 3) and raw[1].shape == (5, 2)
    got = read_poses(tmp_path / "p.pkl", n_expected=5)
    np.testing.assert_allclose(got.rots, poses.rots)
    np.testing.assert_allclose(got.trans_frac, poses.trans_frac)
    np.testing.assert_allclose(got.shift_px(64), poses.trans_frac * 64, rtol=1e-6)


def test_rotations_only_pickle(tmp_path):
    rots = _poses().rots
    with open(tmp_path / "r.pkl", "wb") as f:
        pickle.dump(rots, f)
    got = read_poses(tmp_path / "r.pkl")
    assert got.trans_frac is None
    np.testing.assert_array_equal(got.shift_px(30), np.zeros((5, 2)))


def test_pose_count_mismatch_names_file(tmp_path):
    write_poses(tmp_path / "p.pkl", _poses(5))
    with pytest.raises(InputError) as err:
        read_poses(tmp_path / "p.pkl", n_expected=6)
    msg = str(err.value)
    assert str(tmp_path / "p.pkl") in msg and "--ind" in msg and "5" in msg and "6" in msg


def test_nan_poses_and_ctf_rejected(tmp_path):
    p = _poses()
    rots = p.rots.copy()
    rots[2, 0, 0] = np.nan
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump((rots, p.trans_frac), f)
    with pytest.raises(InputError, match="NaN"):
        read_poses(tmp_path / "p.pkl")
    table = np.ones((3, 9), np.float32)
    table[1, 4] = np.inf
    with open(tmp_path / "c.pkl", "wb") as f:
        pickle.dump(table, f)
    with pytest.raises(InputError, match="NaN or inf"):
        read_ctf(tmp_path / "c.pkl")


def test_ctf_round_trip_and_named_columns(tmp_path):
    ctf = CtfParams.from_columns(image_size=128, pixel_size_angstrom=1.5,
                                 defocus_u_angstrom=[10000, 12000], defocus_v_angstrom=[9000, 11000],
                                 defocus_angle_deg=[10, 20], voltage_kv=300, cs_mm=2.7,
                                 amplitude_contrast=0.1, phase_shift_deg=0)
    write_ctf(tmp_path / "c.pkl", ctf)
    with open(tmp_path / "c.pkl", "rb") as f:
        raw = pickle.load(f)
    assert raw.dtype == np.float32 and raw.shape == (2, 9)
    np.testing.assert_array_equal(raw[:, 3], [9000, 11000])  # column 3 = DefocusV
    got = read_ctf(tmp_path / "c.pkl", n_expected=2)
    np.testing.assert_array_equal(got.defocus_angle_deg, [10, 20])
    np.testing.assert_array_equal(got.voltage_kv, [300, 300])
    with pytest.raises(InputError, match="CTF file has 2 entries"):
        read_ctf(tmp_path / "c.pkl", n_expected=3)


def test_latents_one_and_two_pickle_forms(tmp_path):
    rng = np.random.default_rng(0)
    mu, logvar = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    # cryoDRGN train_vae: mu then logvar, two pickles in one file
    with open(tmp_path / "z2.pkl", "wb") as f:
        pickle.dump(mu, f)
        pickle.dump(logvar, f)
    got = read_latents(tmp_path / "z2.pkl", n_expected=6)
    np.testing.assert_allclose(got.mu, mu, rtol=1e-6)
    np.testing.assert_allclose(got.logvar, logvar, rtol=1e-6)
    with open(tmp_path / "z1.pkl", "wb") as f:
        pickle.dump(mu.astype(np.float32), f)
    got1 = read_latents(tmp_path / "z1.pkl")
    assert got1.logvar is None and got1.zdim == 3
    write_latents(tmp_path / "w.pkl", Latents(mu, logvar))
    back = read_latents(tmp_path / "w.pkl")
    assert back.mu.dtype == np.float32
    np.testing.assert_allclose(back.logvar, logvar, rtol=1e-6)
    with pytest.raises(InputError, match="latent file has 6 entries"):
        read_latents(tmp_path / "w.pkl", n_expected=7)


def test_indices(tmp_path):
    write_indices(tmp_path / "i.pkl", [4, 0, 2])
    ind = read_indices(tmp_path / "i.pkl", n_total=5)
    assert ind.dtype == np.int64 and ind.tolist() == [4, 0, 2]
    with pytest.raises(InputError, match="out of range"):
        read_indices(tmp_path / "i.pkl", n_total=4)
    with open(tmp_path / "f.pkl", "wb") as f:
        pickle.dump(np.array([0.5, 1.0]), f)
    with pytest.raises(InputError, match="integer"):
        read_indices(tmp_path / "f.pkl")


def test_not_a_pickle(tmp_path):
    (tmp_path / "x.pkl").write_text("not a pickle")
    with pytest.raises(InputError) as err:
        read_poses(tmp_path / "x.pkl")
    assert "x.pkl" in str(err.value)


def test_records_validate_shapes():
    with pytest.raises(ValueError):
        Poses(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        Poses(np.zeros((2, 3, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        CtfParams(np.zeros((2, 8)))
    sub = _poses(5).subset([4, 1])
    assert len(sub) == 2 and np.allclose(sub.rots[0], _poses(5).rots[4])
