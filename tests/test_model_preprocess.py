"""Preprocessing: window, contrast sign, symmetric Hartley images, normalisation, mirror."""

import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.fft import iht2_center, unsymmetrize_ht
from cryofire_nb.model.preprocess import (Normalization, PreprocessConfig, compute_normalization,
                                          mirror_hartley, mirror_real, preprocess,
                                          real_space_window, to_hartley)


@pytest.mark.parametrize("d", [16, 32])
def test_window_profile(d):
    w = real_space_window(d, 0.85, 0.99, dtype=torch.float64)
    c = (torch.arange(d, dtype=torch.float64) - d // 2) / (d / 2)
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    assert w[d // 2, d // 2] == 1
    assert torch.all(w[r <= 0.85] == 1)
    assert torch.all(w[r >= 0.99] == 0)
    ramp = (r > 0.85) & (r < 0.99)
    assert torch.allclose(w[ramp], (0.99 - r[ramp]) / 0.14)
    assert torch.allclose(w, w.flip(-1).roll(1, -1))  # symmetric under the x-mirror


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mirror_real_is_kx_flip_on_odd_lattice(dtype):
    x = torch.randn(3, 16, 16, dtype=dtype)
    assert torch.allclose(to_hartley(mirror_real(x)), mirror_hartley(to_hartley(x)),
                          atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.equal(mirror_real(mirror_real(x)), x)


def test_to_hartley_inverts():
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    h = to_hartley(x)
    assert h.shape == (2, 17, 17)
    assert torch.allclose(iht2_center(unsymmetrize_ht(h)), x)


def test_contrast_flag_and_normalisation():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(64, 32, 32, generator=g) + 0.3
    cfg = PreprocessConfig()
    norm = compute_normalization(imgs, cfg)
    out = preprocess(imgs, cfg, norm)
    out_plain = preprocess(imgs, PreprocessConfig(invert_contrast=False), norm)
    assert torch.allclose(out.real, -out_plain.real)
    assert torch.allclose(out.hartley, -out_plain.hartley)
    assert out.hartley.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    # Parseval scaling keeps the real-space encoder input on the same (unit RMS) scale.
    assert out.real.square().mean().sqrt().item() == pytest.approx(1.0, rel=0.1)
    # window applied: corners are zero
    assert torch.all(out.real[:, 0, 0] == 0)


def test_normalization_roundtrip_and_validation():
    n = Normalization(2.5)
    assert Normalization.from_dict(n.to_dict()) == n
    with pytest.raises(InputError):
        Normalization(0.0)
    with pytest.raises(InputError):
        PreprocessConfig(window_inner=0.9, window_outer=0.8)
    with pytest.raises(InputError):
        compute_normalization(torch.randn(2, 15, 15), PreprocessConfig())
