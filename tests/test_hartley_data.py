"""Particles on the Hartley lattice (:mod:`cryofire_nb.hartley_data`): a streaming set keeps
nothing of size N and serves the same rows as a resident one, so the pose search and the
refinement give the same answers from either; a resident set that would not fit in memory
is refused with a message that names --lazy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cryofire_nb.hartley_data as hartley_data
from cryofire_nb.abinit import AbinitConfig, run_abinit
from cryofire_nb.errors import InputError
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.hetero import HeteroRefineConfig, fit_basis, pc_map
from cryofire_nb.io import read_ctf, read_poses
from cryofire_nb.train.data import ParticleData
from cryofire_nb.train.synthetic import make_synthetic_set

D = 16


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("hd"), n=300, d=D, n_levels=3, snr=3.0, motion_px=4, seed=5)


@pytest.fixture(scope="module")
def both(small_set):
    lazy = ParticleData(small_set.particles, ctf=small_set.ctf, lazy=True)
    table = read_ctf(small_set.ctf).table
    streaming = HartleyData.from_images(lazy, table, lazy=True)
    resident = HartleyData.from_images(lazy, table, chunk=64)  # chunks unlike any batch below
    return streaming, resident


def test_streaming_rows_equal_resident_rows(both):
    streaming, resident = both
    assert streaming.streaming and not resident.streaming
    assert streaming.norm_std == resident.norm_std and streaming.pixel_size_angstrom == resident.pixel_size_angstrom
    g = torch.Generator().manual_seed(0)
    for sel in (slice(0, 7), slice(290, 300), torch.randperm(300, generator=g)[:33], np.array([5, 5, 0, 299])):
        xs, cs = streaming.rows(sel)
        xr, cr = resident.rows(sel)
        assert xs.shape == xr.shape == (len(xr), (D + 1) ** 2)
        torch.testing.assert_close(xs, xr, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cs, cr, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="rows"):
        streaming.x  # noqa: B018 - a streaming set has no resident array to hand out


def test_norm_std_is_that_of_the_hartley_values(both):
    _, resident = both
    x = resident.x * resident.norm_std  # undo the normalisation
    assert abs(float(x.double().std()) - resident.norm_std) < 1e-6 * resident.norm_std
    assert abs(float(resident.x.double().std()) - 1.0) < 1e-5


def test_pose_search_and_basis_fit_agree_streaming_and_resident(both, small_set):
    streaming, resident = both
    cfg = AbinitConfig(n_iterations=6, batch_size=64, batch_size_full=128, refine_rounds=1, seed=2)
    a = run_abinit(streaming, cfg, progress=False)
    b = run_abinit(resident, cfg, progress=False)
    torch.testing.assert_close(a.rots, b.rots, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.shifts_px, b.shifts_px, rtol=1e-4, atol=1e-4)
    gt = read_poses(small_set.poses)
    rots = torch.as_tensor(gt.rots).float()
    shifts = torch.as_tensor(gt.shift_px(D)).float()
    coef = pc_map(np.linspace(-1, 1, 300)[:, None], 1).coefficients(np.linspace(-1, 1, 300)[:, None])
    members = torch.arange(300)
    hcfg = HeteroRefineConfig(n_components=1, batch_size=50)
    torch.testing.assert_close(fit_basis(streaming, rots, shifts, coef, members, hcfg),
                               fit_basis(resident, rots, shifts, coef, members, hcfg), rtol=1e-4, atol=1e-5)


def test_resident_set_that_does_not_fit_names_lazy(small_set, monkeypatch):
    data = ParticleData(small_set.particles, ctf=small_set.ctf, lazy=True)
    monkeypatch.setattr(hartley_data, "available_memory_bytes", lambda device: 10_000)
    with pytest.raises(InputError, match="--lazy") as err:
        HartleyData.from_images(data, data.ctf_table, source=small_set.particles)
    assert str(small_set.particles) in str(err.value)
    HartleyData.from_images(data, data.ctf_table, lazy=True)  # streaming needs no such room


def test_in_memory_stack_that_does_not_fit_names_lazy(small_set, monkeypatch):
    import cryofire_nb.train.data as train_data

    monkeypatch.setattr(train_data, "available_memory_bytes", lambda device: 10_000)
    with pytest.raises(InputError, match="--lazy"):
        ParticleData(small_set.particles, ctf=small_set.ctf)
    assert not ParticleData(small_set.particles, ctf=small_set.ctf, lazy=True).in_memory


def test_half_storage_halves_the_memory_and_keeps_the_answers(both, small_set):
    """float16 rows (``--half``): half the bytes of float32, each value within float16's
    rounding (2^-11 of its size), and the pose search finds the same poses to within a
    small fraction of its grid step."""
    _, resident = both
    data = ParticleData(small_set.particles, ctf=small_set.ctf, half=True)
    assert data.half and data._memory.dtype == np.float16 and data._memory.nbytes == 300 * D * D * 2
    exact = ParticleData(small_set.particles, ctf=small_set.ctf)
    diff = np.abs(data.images(np.arange(300)) - exact.images(np.arange(300)))
    assert (diff <= np.abs(exact.images(np.arange(300))) * 2.0 ** -11 + 1e-7).all()
    half = HartleyData.from_images(data, data.ctf_table, lazy=True).resident(half=True)
    assert half._x.dtype == torch.float16 and half._x.element_size() * half._x.numel() == 300 * (D + 1) ** 2 * 2
    xh, ch = half.rows(slice(None))
    xr, cr = resident.rows(slice(None))
    torch.testing.assert_close(ch, cr)  # the CTF comes from the table either way
    # the stack's own rounding, then the rows' (scaled to the rows' typical size)
    assert float((xh - xr).abs().max()) < 4e-3 * float(xr.abs().max())
    cfg = AbinitConfig(n_iterations=6, batch_size=64, batch_size_full=128, refine_rounds=1, seed=2)
    a, b = run_abinit(half, cfg, progress=False), run_abinit(resident, cfg, progress=False)
    from cryofire_nb.rotations import geodesic_distance_deg
    assert float(geodesic_distance_deg(a.rots, b.rots).median()) < 1.0


def test_half_storage_refuses_values_beyond_its_range(tmp_path):
    from cryofire_nb.io.mrc import write_mrc

    images = np.random.default_rng(0).normal(size=(4, D, D)).astype(np.float32)
    images[2, 3, 3] = 1e5
    write_mrc(tmp_path / "big.mrcs", images, 1.0)
    with pytest.raises(InputError, match="float16") as err:
        ParticleData(tmp_path / "big.mrcs", half=True)
    assert "big.mrcs" in str(err.value) and "--half" in str(err.value)
    assert not ParticleData(tmp_path / "big.mrcs").half
