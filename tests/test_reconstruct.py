"""Known-pose reconstruction (cryofire_nb.reconstruct), FSC (cryofire_nb.fsc) and the
``backproject`` command.

The test particles are made analytically, independently of ``project_fourier``: the volume
is a sum of Gaussian blobs, whose Fourier transform is known in closed form, so the 2-D DFT
of a projection is that transform sampled on the slice ``[kx, ky, 0] @ R``. CTF, shift
(particle = projection translated by -shift) and contrast inversion follow
``docs/conventions.md``.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from cryofire_nb.cli import main
from cryofire_nb.io import CtfParams
from cryofire_nb.fft import freqs_1d, ifft2_center, translate_fourier
from cryofire_nb.fsc import FSCCrossing, crossing, fsc
from cryofire_nb.io.mrc import read_mrc, write_mrc
from cryofire_nb.reconstruct import (BackprojectConfig, FourierAccumulator, reconstruct,
                                     soft_sphere_mask)
from cryofire_nb.rotations import random_rotations

D = 32
APIX = 3.0


# --------------------------------------------------------------------------- simulation


def _blobs(seed: int = 1, n: int = 12):
    """Blob centres (n, 3) as (x, y, z) voxels from the centre, widths (n,), amplitudes (n,)."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 14
    widths = 1.5 + torch.rand(n, generator=g, dtype=torch.float64)
    amps = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return centres, widths, amps


def blob_volume(d: int, blobs) -> torch.Tensor:
    """The blobs sampled on the voxel grid, (d, d, d) [z, y, x], centre d // 2."""
    c, s, a = blobs
    r = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([x, y, z], -1)  # (d, d, d, 3)
    out = torch.zeros(d, d, d, dtype=torch.float64)
    for j in range(c.shape[0]):
        out += a[j] * torch.exp(-((pts - c[j]) ** 2).sum(-1) / (2 * s[j] ** 2))
    return out


def blob_projections(d: int, blobs, rots: torch.Tensor) -> torch.Tensor:
    """Centred 2-D DFTs (b, d, d) of the projections: the blobs' 3-D Fourier transform
    ``sum a (2 pi s^2)^1.5 exp(-2 pi^2 s^2 |q|^2 - 2 pi i q.c)`` at ``q = [kx, ky, 0] @ R``."""
    c, s, a = blobs
    k = freqs_1d(d, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    plane = torch.stack([kx.flatten(), ky.flatten(), torch.zeros(d * d, dtype=torch.float64)], -1)
    q = plane @ rots.double()  # (b, n, 3)
    q2 = (q * q).sum(-1, keepdim=True)  # (b, n, 1)
    amp = a * (2 * math.pi * s ** 2) ** 1.5 * torch.exp(-2 * math.pi ** 2 * s ** 2 * q2)  # (b, n, m)
    phase = -2 * math.pi * (q @ c.T)  # (b, n, m)
    return (amp * torch.polar(torch.ones_like(phase), phase)).sum(-1).reshape(-1, d, d)


def random_ctf(n: int, d: int, generator) -> CtfParams:
    dfu = 8000 + 12000 * torch.rand(n, generator=generator, dtype=torch.float64)
    dfv = dfu - 500 * torch.rand(n, generator=generator, dtype=torch.float64)
    ang = 180 * torch.rand(n, generator=generator, dtype=torch.float64)
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return CtfParams(torch.stack([full(d), full(APIX), dfu, dfv, ang, full(300), full(2.7), full(0.1), full(0)], -1))


def simulate(n: int, seed: int, noise_rel: float = 0.0, with_ctf: bool = True):
    """Stored (inverted) particles (n, d, d), rotations, shifts (px), CTF, truth volume."""
    g = torch.Generator().manual_seed(seed)
    blobs = _blobs()
    rots = random_rotations(n, generator=g, dtype=torch.float64)
    f = blob_projections(D, blobs, rots)  # (n, d, d) Fourier
    ctf = random_ctf(n, D, g) if with_ctf else None
    if ctf is not None:
        k = freqs_1d(D, dtype=torch.float64)
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        f = f * ctf.evaluate(torch.stack([kx.flatten(), ky.flatten()], -1), D).reshape(n, D, D)
    shift_px = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 8
    clean = ifft2_center(translate_fourier(f, -shift_px)).real  # particle = projection moved by -shift
    noise = torch.randn(clean.shape, generator=g, dtype=torch.float64) * clean.std() * noise_rel
    stored = -(clean + noise)  # inverted contrast, as in RELION/cryoSPARC stacks
    return stored, rots, shift_px, ctf, blob_volume(D, blobs)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def clean_data():
    return simulate(2000, seed=3)


@pytest.fixture(scope="module")
def noisy_data():
    return simulate(2000, seed=4, noise_rel=4.0)


# --------------------------------------------------------------------------- reconstruction


def test_reconstruct_with_ctf_and_shifts(clean_data):
    stored, rots, shift_px, ctf, truth = clean_data
    res = reconstruct(stored.float(), rots.float(), shift_px.float(), ctf,
                      pixel_size_angstrom=APIX)
    assert res.volume.shape == (D, D, D) and res.volume.dtype == torch.float32
    c = corr(res.volume, truth)
    c_hand = corr(res.volume, truth.flip(0))  # mirror image (z -> -z): the other hand
    assert c >= 0.9, c
    assert c_hand < 0.5 and c - c_hand > 0.4, (c, c_hand)
    # Amplitude is preserved (the images carry CTF * projection of the truth).
    scale = float((res.volume.double() * truth).sum() / (truth * truth).sum())
    assert 0.8 < scale < 1.1, scale
    assert res.n_images == 2000 and res.half_a.shape == (D, D, D)
    # Noise-free half-maps agree where the blobs have signal (their spectrum falls below
    # float32 rounding near Nyquist).
    assert not res.fsc.at_0_5.crossed
    assert float(res.fsc.fsc[1:D // 4].min()) > 0.99


def test_reconstruct_wrong_choices_are_worse(clean_data):
    """Each convention matters: shift sign, contrast sign, the CTF, the pose transpose."""
    stored, rots, shift_px, ctf, truth = clean_data
    sub = slice(0, 500)
    args = (stored[sub].float(), rots[sub].float())
    ctf_sub = ctf.subset(sub)
    good = corr(reconstruct(*args, shift_px[sub].float(), ctf_sub).volume, truth)
    wrong_shift = corr(reconstruct(*args, -shift_px[sub].float(), ctf_sub).volume, truth)
    no_invert = corr(reconstruct(*args, shift_px[sub].float(), ctf_sub,
                                 BackprojectConfig(invert_contrast=False)).volume, truth)
    no_ctf = corr(reconstruct(*args, shift_px[sub].float(), None).volume, truth)
    transposed = corr(reconstruct(stored[sub].float(), rots[sub].transpose(1, 2).float(),
                                  shift_px[sub].float(), ctf_sub).volume, truth)
    assert good > 0.85
    assert no_invert < -0.8  # the sign flips, nothing else
    for name, value in (("shift sign", wrong_shift), ("no CTF", no_ctf), ("transposed", transposed)):
        assert value < good - 0.2, (name, value, good)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["wiener", "phase_flip"])
def test_reconstruct_modes_and_dtypes(clean_data, dtype, mode):
    stored, rots, shift_px, ctf, truth = clean_data
    sub = slice(0, 300)
    res = reconstruct(stored[sub].to(dtype), rots[sub].to(dtype), shift_px[sub].to(dtype),
                      ctf.subset(sub),
                      BackprojectConfig(ctf_mode=mode, dtype=dtype, batch_size=128))
    assert res.volume.dtype == dtype and res.half_b.dtype == dtype
    assert corr(res.volume, truth) > 0.8


def test_reconstruct_without_ctf_odd_box():
    """No CTF, un-inverted images, odd box size, plain division (snr = inf)."""
    d = 31
    blobs = _blobs(seed=5)
    rots = random_rotations(600, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    images = ifft2_center(blob_projections(d, blobs, rots)).real
    res = reconstruct(images.float(), rots.float(), config=BackprojectConfig(invert_contrast=False,
                                                                            wiener_snr=math.inf))
    assert res.volume.shape == (d, d, d)
    assert corr(res.volume, blob_volume(d, blobs)) > 0.95


def test_noisy_half_maps_give_a_finite_resolution(noisy_data):
    stored, rots, shift_px, ctf, truth = noisy_data
    acc = FourierAccumulator(D, BackprojectConfig(batch_size=500))
    acc.add(stored.float(), rots.float(), shift_px.float(), ctf)
    res = acc.finish(pixel_size_angstrom=APIX)  # SNR estimated from the half-maps
    f = res.fsc
    assert f.at_0_5.crossed and 1 < f.at_0_5.frequency_px < D // 2, f.at_0_5
    assert math.isfinite(f.at_0_5.resolution_angstrom)
    assert f.at_0_5.resolution_angstrom == pytest.approx(D * APIX / f.at_0_5.frequency_px)
    if f.at_0_143.crossed:
        assert f.at_0_143.frequency_px >= f.at_0_5.frequency_px
    # The full map beats each half, and the estimated regularisation beats none.
    c_full, c_half = corr(res.volume, truth), corr(res.half_a, truth)
    assert c_full > c_half and c_full > 0.8, (c_full, c_half)
    plain = acc.finish(wiener_snr=math.inf)
    assert c_full > corr(plain.volume, truth) + 0.02
    # 1/snr grows from low to high frequency as the signal fades.
    inv = res.inv_snr_per_shell
    assert inv[-1] > 10 * inv[2]


def test_accumulator_batches_and_half_assignment(clean_data):
    """Batch size does not matter; half-maps are decided by particle index parity."""
    stored, rots, shift_px, ctf, truth = clean_data
    sub = slice(0, 120)
    imgs, r, t = stored[sub].double(), rots[sub].double(), shift_px[sub].double()
    table = ctf.table[sub]
    cfg = BackprojectConfig(dtype=torch.float64, wiener_snr=10.0)
    one = reconstruct(imgs, r, t, CtfParams(table), BackprojectConfig(dtype=torch.float64, wiener_snr=10.0, batch_size=120))
    acc = FourierAccumulator(D, cfg)
    for i, j in ((90, 120), (0, 7), (7, 90)):  # uneven batches, out of order
        acc.add(imgs[i:j], r[i:j], t[i:j], CtfParams(table[i:j]), torch.arange(i, j))
    many = acc.finish()
    torch.testing.assert_close(many.volume, one.volume, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(many.half_b, one.half_b, rtol=1e-9, atol=1e-9)
    # Half A alone equals a reconstruction of the even particles.
    even = reconstruct(imgs[0::2], r[0::2], t[0::2], CtfParams(table[0::2]),
                       BackprojectConfig(dtype=torch.float64, wiener_snr=10.0))
    torch.testing.assert_close(many.half_a, even.volume, rtol=1e-9, atol=1e-9)


def test_single_view_reprojects_to_its_image():
    """One noise-free view, no regularisation: projecting the reconstruction along the same
    view returns the image (slice placement and scatter weights agree with the slice
    operator of ``project_fourier``)."""
    from cryofire_nb.projection import project_fourier

    blobs = _blobs(seed=8)
    rots = random_rotations(1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    img = ifft2_center(blob_projections(D, blobs, rots)).real
    res = reconstruct(img, rots, config=BackprojectConfig(invert_contrast=False, wiener_snr=math.inf,
                                                          dtype=torch.float64))
    assert corr(project_fourier(res.volume, rots), img) > 0.98
    other = random_rotations(1, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    assert corr(project_fourier(res.volume, other), img) < 0.9


def test_config_validation():
    with pytest.raises(ValueError):
        BackprojectConfig(ctf_mode="multiply")
    with pytest.raises(ValueError):
        BackprojectConfig(wiener_snr=0.0)
    with pytest.raises(ValueError):
        BackprojectConfig(oversample=3)
    with pytest.raises(ValueError):
        reconstruct(torch.zeros(3, 8, 8), torch.eye(3).expand(2, 3, 3))


def test_soft_sphere_mask():
    m = soft_sphere_mask(20, radius_px=5, edge_px=4)
    c = 10
    assert m[c, c, c] == 1 and m[c, c, c + 5] == 1
    assert 0 < m[c, c, c + 7] < 1 and m[c, c, c + 9] == 0
    assert torch.equal(m, m.flip(0).roll(1, 0))  # symmetric about d // 2 (even box)
    hard = soft_sphere_mask(21, radius_px=5, edge_px=0)
    assert int(hard.sum()) == int(((torch.arange(21) - 10.0) ** 2)[:, None, None].add(
        ((torch.arange(21) - 10.0) ** 2)[None, :, None]).add(((torch.arange(21) - 10.0) ** 2)[None, None, :]).le(25).sum())


# --------------------------------------------------------------------------- FSC


@pytest.mark.parametrize("d", [16, 17])
def test_fsc_identical_and_independent(d):
    g = torch.Generator().manual_seed(d)
    v = torch.randn(d, d, d, generator=g, dtype=torch.float64)
    same = fsc(v, 3 * v, pixel_size_angstrom=2.0)
    assert same.shell_px.shape == (d // 2 + 1,)
    torch.testing.assert_close(same.fsc, torch.ones(d // 2 + 1, dtype=torch.float64))
    assert not same.at_0_5.crossed and math.isnan(same.at_0_143.resolution_angstrom)
    assert same.auc == pytest.approx((d // 2 - 1) / d)  # CryoBench: trapezoid to (D/2-1)/D
    assert float(same.frequency_per_angstrom[-1]) == pytest.approx((d // 2) / (d * 2.0))
    other = fsc(v, torch.randn(d, d, d, generator=g, dtype=torch.float64))
    assert float(other.fsc[2:].abs().max()) < 0.35
    assert other.at_0_5.crossed and other.at_0_5.frequency_px <= 1.0
    assert abs(other.auc) < 0.3 * same.auc  # only FSC(0) := 1 and chance remain
    neg = fsc(v, -v)
    assert neg.auc == pytest.approx(-(d // 2 - 1) / d + 1 / d)  # FSC(0) forced to 1 as in CryoBench


def test_fsc_of_filtered_copy_crosses_where_the_filter_does():
    """Noise vs a copy low-passed with a Gaussian: FSC(j) = 1 exactly (filter is real
    positive), so add independent noise whose power rises with frequency instead."""
    d = 32
    g = torch.Generator().manual_seed(0)
    from cryofire_nb.fft import fft3_center, ifft3_center
    from cryofire_nb.fsc import shell_index
    signal = fft3_center(torch.randn(d, d, d, generator=g, dtype=torch.float64))
    shells = shell_index(d).double()
    # Signal-to-noise amplitude ratio falls off so that FSC = 1 / (1 + (r/8)^4).
    ratio = (shells / 8) ** 2
    n1 = fft3_center(torch.randn(d, d, d, generator=g, dtype=torch.float64)) * ratio
    n2 = fft3_center(torch.randn(d, d, d, generator=g, dtype=torch.float64)) * ratio
    a = ifft3_center(signal + n1).real
    b = ifft3_center(signal + n2).real
    res = fsc(a, b, pixel_size_angstrom=1.5)
    assert res.at_0_5.frequency_px == pytest.approx(8.0, abs=0.6)
    expected_0143 = 8 * (1 / 0.143 - 1) ** 0.25
    assert res.at_0_143.frequency_px == pytest.approx(expected_0143, abs=0.8)
    assert res.at_0_5.resolution_angstrom == pytest.approx(d * 1.5 / res.at_0_5.frequency_px)
    # The masked FSC uses the mask; a mask of ones changes nothing.
    same = fsc(a, b, 1.5, mask=torch.ones(d, d, d))
    torch.testing.assert_close(same.fsc, res.fsc)


def test_crossing_interpolates_linearly():
    shells = torch.arange(5, dtype=torch.float64)
    curve = torch.tensor([1.0, 0.9, 0.7, 0.3, 0.1], dtype=torch.float64)
    c = crossing(shells, curve, 0.5, d=8, pixel_size_angstrom=2.0)
    assert isinstance(c, FSCCrossing) and c.crossed
    assert c.frequency_px == pytest.approx(2.5)
    assert c.frequency_per_angstrom == pytest.approx(2.5 / 16)
    assert c.resolution_angstrom == pytest.approx(16 / 2.5)
    none = crossing(shells, curve, 0.05, d=8, pixel_size_angstrom=None)
    assert not none.crossed and math.isnan(none.resolution_angstrom)


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def particle_files(tmp_path_factory, clean_data):
    """A small dataset on disk: stack, poses (trans = px / D), CTF table."""
    folder = tmp_path_factory.mktemp("bp")
    stored, rots, shift_px, ctf, truth = clean_data
    n = 400
    write_mrc(folder / "particles.mrcs", stored[:n].float().numpy(), pixel_size_angstrom=APIX)
    with open(folder / "poses.pkl", "wb") as f:
        pickle.dump((rots[:n].float().numpy(), (shift_px[:n] / D).float().numpy()), f)
    with open(folder / "ctf.pkl", "wb") as f:
        pickle.dump(ctf.table[:n].float().numpy(), f)
    return folder, truth


def test_backproject_cli(particle_files, out_dir):
    folder, truth = particle_files
    out = out_dir / "vol.mrc"
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
               "--ctf", str(folder / "ctf.pkl"), "-o", str(out)])
    assert rc == 0
    vol = read_mrc(out)
    assert vol.pixel_size_angstrom == pytest.approx(APIX)
    assert corr(torch.as_tensor(vol.data), truth) > 0.9
    for name in ("vol.half_a.mrc", "vol.half_b.mrc", "vol.fsc.csv", "vol.fsc.png"):
        assert (out_dir / name).is_file(), name
    lines = (out_dir / "vol.fsc.csv").read_text().splitlines()
    assert lines[0].startswith("shell_px,") and len(lines) == 1 + D // 2 + 1
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_backproject_cli_ind_first_and_flip(particle_files, out_dir):
    folder, truth = particle_files
    ind = np.arange(0, 400, 2)
    with open(folder / "ind.pkl", "wb") as f:
        pickle.dump(ind, f)
    out = out_dir / "sub.mrc"
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
               "--ctf", str(folder / "ctf.pkl"), "--ind", str(folder / "ind.pkl"), "--first", "150",
               "--phase-flip", "--lazy", "-o", str(out)])
    assert rc == 0
    assert corr(torch.as_tensor(read_mrc(out).data), truth) > 0.8
    # Without inversion the map is the negative of the truth.
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
               "--ctf", str(folder / "ctf.pkl"), "--uninvert-data", "--first", "300",
               "--wiener-snr", "1", "-o", str(out_dir / "neg.mrc")])
    assert rc == 0
    assert corr(torch.as_tensor(read_mrc(out_dir / "neg.mrc").data), truth) < -0.8


def test_backproject_cli_bad_input(particle_files, out_dir, capsys):
    folder, _ = particle_files
    with open(folder / "short_poses.pkl", "wb") as f:
        pickle.dump((np.tile(np.eye(3, dtype=np.float32), (10, 1, 1)), np.zeros((10, 2), np.float32)), f)
    out = out_dir / "bad.mrc"
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "short_poses.pkl"),
               "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "short_poses.pkl" in err and "particles.mrcs" in err and "10" in err and "400" in err
    assert not out.exists() and list(out_dir.iterdir()) == []
    # Odd box: a clear error naming the stack.
    write_mrc(folder / "odd.mrcs", np.zeros((4, 9, 9), np.float32), pixel_size_angstrom=1.0)
    with open(folder / "poses4.pkl", "wb") as f:
        pickle.dump(np.tile(np.eye(3, dtype=np.float32), (4, 1, 1)), f)
    rc = main(["backproject", str(folder / "odd.mrcs"), "--poses", str(folder / "poses4.pkl"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "odd.mrcs" in err and "odd" in err and "9" in err
    assert list(out_dir.iterdir()) == []
    # Output must be an .mrc path.
    rc = main(["backproject", str(folder / "particles.mrcs"), "--poses", str(folder / "poses.pkl"),
               "-o", str(out_dir / "vol.txt")])
    assert rc == 2 and ".mrc" in capsys.readouterr().err
