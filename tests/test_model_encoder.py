"""Encoder: S2S2 rotations, output shapes for both variants, config validation."""

import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.model.encoder import Encoder, EncoderConfig, sample_z
from cryofire_nb.rotations import s2s2_to_matrix


def assert_rotations(r, atol=1e-5):
    eye = torch.eye(3, dtype=r.dtype).expand_as(r)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=atol)
    assert torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_s2s2_orthonormal_det_one(dtype):
    v = torch.randn(1000, 6, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 10
    assert_rotations(s2s2_to_matrix(v), atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("k_hyp,variational", [(1, False), (3, True)])
def test_encoder_shapes(d, variant, k_hyp, variational):
    torch.manual_seed(0)
    cfg = EncoderConfig(d, zdim=8, variant=variant, variational=variational, n_pose_hypotheses=k_hyp)
    out = Encoder(cfg)(torch.randn(5, d, d))
    rot_shape = (5, 3, 3) if k_hyp == 1 else (5, k_hyp, 3, 3)
    assert out.rots.shape == rot_shape
    assert_rotations(out.rots)
    assert out.shift_px.shape == (5, 2)
    assert out.shift_px.abs().max() <= cfg.max_shift_px
    assert out.z_mu.shape == (5, 8)
    assert (out.z_logvar is not None) == variational
    if variational:
        assert out.z_logvar.shape == (5, 8)
    assert cfg.pose_conditioned_on_z == (variant == "paper")


def test_encoder_zdim_zero_and_float64():
    enc = Encoder(EncoderConfig(16, zdim=0)).double()
    out = enc(torch.randn(2, 16, 16, dtype=torch.float64))
    assert out.z_mu.shape == (2, 0) and out.rots.dtype == torch.float64


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_pose_sees_z_only_in_paper_variant(variant):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(32, variant=variant))
    x = torch.randn(4, 32, 32)
    before = enc(x)
    with torch.no_grad():
        for p in enc.heads.z_mu.parameters():
            p.add_(torch.randn_like(p))
    after = enc(x)
    assert not torch.allclose(before.z_mu, after.z_mu)
    changed = not torch.allclose(before.rots, after.rots)
    assert changed == (variant == "paper")


def test_config_validation_and_roundtrip():
    cfg = EncoderConfig(64, variant="released")
    assert cfg.conv_channels == (16, 32, 64, 128, 256)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert EncoderConfig(128).conv_channels == (32, 64, 128, 256, 256, 256)
    for bad in [dict(d=32, variant="nope"), dict(d=31), dict(d=32, conv_channels=(8, 8)),
                dict(d=32, variant="released", pose_conditioned_on_z=True),
                dict(d=32, zdim=0, variational=True), dict(d=32, max_shift_px=0.0)]:
        with pytest.raises(InputError):
            EncoderConfig(**bad)
    with pytest.raises(ValueError):
        Encoder(EncoderConfig(32))(torch.randn(2, 16, 16))


def test_sample_z_statistics():
    g = torch.Generator().manual_seed(0)
    mu = torch.full((20000, 2), 1.5)
    logvar = torch.log(torch.tensor([0.25, 4.0])).expand(20000, 2)
    z = sample_z(mu, logvar, generator=g)
    assert torch.allclose(z.mean(0), torch.tensor([1.5, 1.5]), atol=0.05)
    assert torch.allclose(z.var(0), torch.tensor([0.25, 4.0]), rtol=0.05)
    assert sample_z(mu, None) is mu
