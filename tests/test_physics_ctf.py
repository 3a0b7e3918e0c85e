"""CTF physics (cryofire_nb.ctf) against textbook values: the electron wavelength, zeros
where theory puts them, CTF(0) = -w, the astigmatism angle convention, the table's
pixel-size rescaling after downsampling, and a float64 gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryofire_nb.ctf import compute_ctf, ctf_zero_frequencies, electron_wavelength_angstrom
from cryofire_nb.io import CtfParams

DTYPES = [torch.float32, torch.float64]


def _ray(s: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Frequencies (n, 2) as (kx, ky) 1/A along a direction at ``angle_deg`` from +x toward +y."""
    a = math.radians(angle_deg)
    return torch.stack([s * math.cos(a), s * math.sin(a)], -1)


def test_electron_wavelength_textbook_values():
    # Relativistic wavelengths: 0.02508 A at 200 kV, 0.01969 A at 300 kV.
    assert float(electron_wavelength_angstrom(200.0)) == pytest.approx(0.025079, abs=2e-6)
    assert float(electron_wavelength_angstrom(300.0)) == pytest.approx(0.019687, abs=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [0.0, 0.07, 0.1, 0.3])
def test_ctf_at_zero_frequency_is_minus_w(dtype, w):
    k = torch.zeros(1, 2, dtype=dtype)
    c = compute_ctf(k, 15000.0, 12000.0, 33.0, 300.0, 2.7, w)
    assert float(c) == pytest.approx(-w, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ctf_zeros_without_cs_or_amplitude_contrast(dtype):
    """Cs = 0, w = 0: ctf = sin(-pi df lambda s^2), zero at s_n = sqrt(n / (df lambda))."""
    df, kv = 20000.0, 300.0
    lam = float(electron_wavelength_angstrom(kv))
    n = torch.arange(1, 6, dtype=torch.float64)
    s_n = torch.sqrt(n / (df * lam))
    for angle in (0.0, 70.0):
        c = compute_ctf(_ray(s_n, angle).to(dtype), df, df, 0.0, kv, 0.0, 0.0)
        assert c.abs().max() < (1e-3 if dtype == torch.float32 else 1e-9)
        mid = torch.sqrt((n - 0.5) / (df * lam))  # half-way: |ctf| = 1, alternating sign
        c_mid = compute_ctf(_ray(mid, angle).to(dtype), df, df, 0.0, kv, 0.0, 0.0)
        torch.testing.assert_close(c_mid.double(), -((-1.0) ** (n - 1)), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ctf_zeros_with_cs_and_amplitude_contrast(dtype):
    df, kv, cs, w = 12000.0, 300.0, 2.7, 0.1
    zeros = ctf_zero_frequencies(df, kv, cs, w, n_zeros=6)
    assert torch.all(zeros[1:] > zeros[:-1]) and float(zeros[0]) > 0
    # First zero: with w = 0.1 it comes slightly before the w = 0 zero sqrt(1/(df lambda)).
    lam = float(electron_wavelength_angstrom(kv))
    assert float(zeros[0]) < math.sqrt(1 / (df * lam))
    eps = 1e-4 * zeros
    c0 = compute_ctf(_ray(zeros, 25.0).to(dtype), df, df, 0.0, kv, cs, w)
    before = compute_ctf(_ray(zeros - eps, 25.0).to(dtype), df, df, 0.0, kv, cs, w)
    after = compute_ctf(_ray(zeros + eps, 25.0).to(dtype), df, df, 0.0, kv, cs, w)
    assert c0.abs().max() < (2e-3 if dtype == torch.float32 else 1e-8)
    assert torch.all(torch.sign(before) != torch.sign(after))  # a true crossing, not a touch


def test_astigmatism_angle_convention():
    """Along the direction at ``defocus_angle`` (from +x toward +y, i.e. from the column axis
    toward increasing rows) the defocus is DefocusU; 90 degrees further it is DefocusV."""
    dfu, dfv, angle = 18000.0, 14000.0, 30.0
    s = torch.linspace(0.01, 0.3, 40, dtype=torch.float64)
    args = (300.0, 2.7, 0.1)
    along_u = compute_ctf(_ray(s, angle), dfu, dfv, angle, *args)
    along_v = compute_ctf(_ray(s, angle + 90), dfu, dfv, angle, *args)
    torch.testing.assert_close(along_u, compute_ctf(_ray(s, 0.0), dfu, dfu, 0.0, *args))
    torch.testing.assert_close(along_v, compute_ctf(_ray(s, 0.0), dfv, dfv, 0.0, *args))
    # The CTF is point-symmetric (depends on 2 theta) and differs between the two axes.
    torch.testing.assert_close(compute_ctf(_ray(s, angle + 180), dfu, dfv, angle, *args), along_u)
    assert (along_u - along_v).abs().max() > 0.5
    # The other sense of rotation (-angle) is not the U axis.
    wrong = compute_ctf(_ray(s, -angle), dfu, dfv, angle, *args)
    assert (wrong - along_u).abs().max() > 0.1


def test_ctf_table_rescales_pixel_size_after_downsampling():
    """Row [D=64, Apix=1] evaluated on a 32-px box equals row [D=32, Apix=2]."""
    def params(d, apix):
        row = torch.tensor([[d, apix, 15000.0, 14000.0, 20.0, 300.0, 2.7, 0.1, 0.0]], dtype=torch.float64)
        return CtfParams(row)
    k = torch.linspace(-0.5, 0.5, 11, dtype=torch.float64)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    freqs = torch.stack([kx.flatten(), ky.flatten()], -1)  # cycles/pixel
    torch.testing.assert_close(params(64, 1.0).evaluate(freqs, 32), params(32, 2.0).evaluate(freqs, 32))
    assert (params(64, 1.0).evaluate(freqs, 64) - params(64, 1.0).evaluate(freqs, 32)).abs().max() > 0.1


def test_ctf_batched_parameters():
    b = 3
    s = torch.linspace(0, 0.2, 7, dtype=torch.float64)
    freqs = _ray(s, 10.0)
    dfu = torch.tensor([10000.0, 15000.0, 20000.0], dtype=torch.float64)
    batched = compute_ctf(freqs, dfu, dfu - 100, torch.zeros(b), 300.0, 2.7, 0.1)
    assert batched.shape == (b, 7)
    for i in range(b):
        torch.testing.assert_close(batched[i], compute_ctf(freqs, float(dfu[i]), float(dfu[i]) - 100, 0.0, 300.0, 2.7, 0.1))


def test_gradcheck_ctf_wrt_defocus():
    s = torch.linspace(0.01, 0.25, 9, dtype=torch.float64)
    freqs = _ray(s, 40.0)[None].expand(2, -1, -1)
    dfu = torch.tensor([12000.0, 18000.0], dtype=torch.float64, requires_grad=True)
    dfv = torch.tensor([11000.0, 17500.0], dtype=torch.float64, requires_grad=True)
    fn = lambda u, v: compute_ctf(freqs, u, v, torch.tensor([15.0, 60.0], dtype=torch.float64),  # noqa: E731
                                  300.0, 2.7, 0.1)
    assert torch.autograd.gradcheck(fn, (dfu, dfv), eps=1e-3, atol=1e-5)


def test_ctf_record_numpy_and_tensor_tables_agree():
    """The same rows as a float32 numpy table (as read from ctf.pkl) or as a tensor
    (as a training loop keeps it), selected by slice or by index, give the same CTF."""
    table = CtfParams.from_columns(image_size=64, pixel_size_angstrom=1.5, defocus_u_angstrom=[12000.0, 15000.0, 18000.0],
                                   defocus_v_angstrom=[11500.0, 14000.0, 17900.0], defocus_angle_deg=[10.0, 50.0, 170.0],
                                   voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    k = torch.linspace(-0.5, 0.5, 9)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    freqs = torch.stack([kx.flatten(), ky.flatten()], -1)
    as_tensor = table.to(dtype=torch.float32)
    assert isinstance(as_tensor.table, torch.Tensor) and len(as_tensor) == len(table) == 3
    for rows in (slice(1, 3), [2, 0], np.array([2, 0]), torch.tensor([2, 0])):
        a, b = table.subset(rows).evaluate(freqs, 32), as_tensor.subset(rows).evaluate(freqs, 32)
        assert a.dtype == torch.float32 and a.shape == (2, 81)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(as_tensor.numpy(), table.table)
    assert table.to(dtype=torch.float64).evaluate(freqs.double(), 32).dtype == torch.float64
