"""Losses: translation/CTF convention, DC exclusion, exact mirror mapping, winner takes
all, KL sign, and gradient flow through the whole model."""

import pytest
import torch

from cryofire_nb.io import CtfParams
from cryofire_nb.fft import translate_ht
from cryofire_nb.lattice import Lattice
from cryofire_nb.model.decoder import HyperVolume, HyperVolumeConfig
from cryofire_nb.model.encoder import Encoder, EncoderConfig, Pose, sample_z
from cryofire_nb.model.losses import kl_divergence, slice_loss, symmetric_loss
from cryofire_nb.model.preprocess import mirror_hartley, mirror_real, to_hartley
from cryofire_nb.rotations import mirror_pose, random_rotations

D = 16
DT = torch.float64


def _ctf(b, lattice, g):
    """Astigmatic CTF (b, m, m) with an oblique axis, so the x-flip changes it."""
    u = torch.rand(b, generator=g, dtype=DT)
    full = lambda v: torch.full((b,), float(v), dtype=DT)  # noqa: E731
    # columns: D, Apix, defocus U, V, angle, kV, Cs, w, phase shift
    p = CtfParams(torch.stack([full(D), full(3.0), 15000 + 5000 * u, 12000 + 3000 * u, 30 + 20 * u,
                               full(300.0), full(2.7), full(0.1), full(0.0)], -1))
    c = p.evaluate(lattice.coords_xy, D)  # (b, n)
    assert not torch.allclose(c.reshape(b, D + 1, D + 1), c.reshape(b, D + 1, D + 1).flip(-1))
    return c.reshape(b, D + 1, D + 1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    lat = Lattice(D, dtype=DT)
    dec = HyperVolume(HyperVolumeConfig(D, zdim=2, hidden=32, n_layers=1)).double()
    b = 6
    rots = random_rotations(b, generator=g, dtype=DT)
    shift = (torch.rand(b, 2, generator=g, dtype=DT) - 0.5) * 4
    z = torch.randn(b, 2, generator=g, dtype=DT)
    ctf = _ctf(b, lat, g)
    with torch.no_grad():
        clean = dec(lat.slice_coords(rots), z) * ctf.reshape(b, -1)  # (b, n)
        # a stored particle is the centred image translated by -shift
        h_obs = translate_ht(clean, lat.coords_xy, -shift).reshape(b, D + 1, D + 1)
    return dict(lat=lat, dec=dec, rots=rots, shift=shift, z=z, ctf=ctf, h=h_obs, g=g)


def test_true_pose_gives_zero_loss(setup):
    s = setup
    mask = s["lat"].mask(D / 2)
    with torch.no_grad():
        right = slice_loss(s["dec"], s["rots"], s["shift"], s["z"], s["h"], s["ctf"], s["lat"], mask)
        wrong_t = slice_loss(s["dec"], s["rots"], -s["shift"], s["z"], s["h"], s["ctf"], s["lat"], mask)
        no_ctf = slice_loss(s["dec"], s["rots"], s["shift"], s["z"], s["h"], None, s["lat"], mask)
    assert right.per_image.max() < 1e-20
    assert wrong_t.per_image.min() > 1e-6
    assert no_ctf.per_image.min() > 1e-6


def test_dc_term_excluded(setup):
    s = setup
    mask = s["lat"].mask(D / 2)
    h2 = s["h"].clone()
    h2[:, D // 2, D // 2] += 100.0
    zero = torch.zeros_like(s["shift"])  # translation leaves the DC value unchanged
    with torch.no_grad():
        a = slice_loss(s["dec"], s["rots"], zero, s["z"], s["h"], s["ctf"], s["lat"], mask)
        b = slice_loss(s["dec"], s["rots"], zero, s["z"], h2, s["ctf"], s["lat"], mask)
        h3 = s["h"].clone()
        h3[:, D // 2, D // 2 + 1] += 100.0  # a neighbour of the DC term does count
        c = slice_loss(s["dec"], s["rots"], zero, s["z"], h3, s["ctf"], s["lat"], mask)
    assert torch.equal(a.per_image, b.per_image)
    assert torch.all(c.per_image > a.per_image)


def test_mirror_pose_maps_paths_exactly(setup):
    """For any pose (not only the true one), the original path at (R, t) and the
    mirrored path (flipped image and CTF) at mirror_pose(R, t) give the same loss."""
    s = setup
    g = s["g"]
    lat, mask = s["lat"], s["lat"].mask(6)
    rots = random_rotations(6, generator=g, dtype=DT)
    shift = torch.randn(6, 2, generator=g, dtype=DT)
    r_m, t_m = mirror_pose(rots, shift)
    h_m, c_m = mirror_hartley(s["h"]), mirror_hartley(s["ctf"])
    with torch.no_grad():
        orig = slice_loss(s["dec"], rots, shift, s["z"], s["h"], s["ctf"], lat, mask).per_image
        mirr = slice_loss(s["dec"], r_m, t_m, s["z"], h_m, c_m, lat, mask).per_image
        unmapped = slice_loss(s["dec"], rots, shift, s["z"], h_m, c_m, lat, mask).per_image
        ctf_unflipped = slice_loss(s["dec"], r_m, t_m, s["z"], h_m, s["ctf"], lat, mask).per_image
        res = symmetric_loss(s["dec"], Pose(rots, shift), Pose(r_m, t_m), s["z"], s["z"],
                             s["h"], s["ctf"], lat, mask)
    assert torch.allclose(mirr, orig, rtol=1e-12, atol=0)
    assert torch.all((unmapped - orig).abs() > 1e-3 * orig)  # the mapping matters
    assert torch.all((ctf_unflipped - orig).abs() > 1e-2 * orig)  # so does the CTF flip
    assert torch.allclose(res.per_image, orig, rtol=1e-12, atol=0)
    # whichever path wins, the returned pose is the original one
    assert torch.allclose(res.rots, rots, atol=1e-14)
    assert torch.allclose(res.shift_px, shift, atol=1e-14)


def test_symmetric_loss_picks_mirror_and_maps_back(setup):
    s = setup
    lat, mask = s["lat"], s["lat"].mask(D / 2)
    wrong = random_rotations(6, generator=s["g"], dtype=DT)
    r_m, t_m = mirror_pose(s["rots"], s["shift"])
    with torch.no_grad():
        res = symmetric_loss(s["dec"], Pose(wrong, s["shift"]), Pose(r_m, t_m), s["z"], s["z"],
                             s["h"], s["ctf"], lat, mask)
        res_o = symmetric_loss(s["dec"], Pose(s["rots"], s["shift"]), Pose(mirror_pose(wrong)[0], t_m),
                               s["z"], s["z"], s["h"], s["ctf"], lat, mask)
    assert torch.all(res.mirrored) and not torch.any(res_o.mirrored)
    assert res.per_image.max() < 1e-20
    assert torch.allclose(res.rots, s["rots"], atol=1e-14)
    assert torch.allclose(res.shift_px, s["shift"], atol=1e-14)
    assert torch.allclose(res_o.rots, s["rots"], atol=1e-14)


def test_winner_takes_all_over_hypotheses(setup):
    s = setup
    lat, mask = s["lat"], s["lat"].mask(D / 2)
    k_true = torch.tensor([0, 2, 1, 2, 0, 1])
    hyp = random_rotations(18, generator=s["g"], dtype=DT).reshape(6, 3, 3, 3)
    hyp[torch.arange(6), k_true] = s["rots"]
    r_m = mirror_pose(random_rotations(6, generator=s["g"], dtype=DT))[0]
    with torch.no_grad():
        res = slice_loss(s["dec"], hyp, s["shift"], s["z"], s["h"], s["ctf"], lat, mask)
        sym = symmetric_loss(s["dec"], Pose(hyp, s["shift"]), Pose(r_m, s["shift"]), s["z"], s["z"],
                             s["h"], s["ctf"], lat, mask)
    assert res.per_hypothesis.shape == (6, 3)
    assert torch.equal(res.hypothesis, k_true)
    assert res.per_image.max() < 1e-20
    assert torch.equal(sym.hypothesis, k_true) and not torch.any(sym.mirrored)
    assert torch.allclose(sym.rots, s["rots"])


def test_kl_sign_and_zero():
    mu, lv = torch.zeros(4, 3), torch.zeros(4, 3)
    assert torch.equal(kl_divergence(mu, lv), torch.zeros(4))
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(100, 3, generator=g), torch.randn(100, 3, generator=g)
    kl = kl_divergence(mu, lv)
    assert torch.all(kl > 0)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * lv).exp()), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl, ref, atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_gradients_reach_encoder_and_decoder(variant):
    torch.manual_seed(0)
    d = 16
    lat = Lattice(d)
    enc = Encoder(EncoderConfig(d, zdim=4, variant=variant, variational=True, n_pose_hypotheses=2))
    dec = HyperVolume(HyperVolumeConfig(d, zdim=4, hidden=32, n_layers=2))
    x = torch.randn(8, d, d)
    out, out_m = enc(x), enc(mirror_real(x))
    z, z_m = sample_z(out.z_mu, out.z_logvar), sample_z(out_m.z_mu, out_m.z_logvar)
    res = symmetric_loss(dec, out.pose, out_m.pose, z, z_m, to_hartley(x), None, lat, lat.mask(d / 2))
    loss = res.loss + 1e-3 * kl_divergence(out.z_mu, out.z_logvar).mean()
    loss.backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_quarter_turn_pose_maps_turned_images_exactly(setup):
    """An image turned by k quarter turns in real space (exact pixel permutation about
    the centre pixel) fits the volume at quarter_turn_pose(R, t, k) as the original fits
    it at (R, t); its CTF turns with it. Used to augment the encoder's pose targets."""
    from cryofire_nb.fft import iht2_center
    from cryofire_nb.model.preprocess import quarter_turn_hartley, quarter_turn_real
    from cryofire_nb.rotations import quarter_turn_pose
    s = setup
    lat, mask = s["lat"], s["lat"].mask(D / 2 - 1)  # inside the disc: the setup's Nyquist edge is not symmetric
    b = s["h"].shape[0]
    real = iht2_center(s["h"][:, :-1, :-1])  # (b, d, d)
    with torch.no_grad():
        assert slice_loss(s["dec"], s["rots"], s["shift"], s["z"], to_hartley(real), s["ctf"], lat,
                          mask).per_image.max() < 1e-20
    for k in (torch.zeros(b), torch.ones(b), torch.arange(b) % 4, torch.full((b,), 3)):
        k = k.long()
        h_k = to_hartley(quarter_turn_real(real, k))
        assert torch.allclose(quarter_turn_hartley(to_hartley(real), k), h_k, atol=1e-12)
        c_k = quarter_turn_hartley(s["ctf"], k)
        r_k, t_k = quarter_turn_pose(s["rots"], s["shift"], k)
        with torch.no_grad():
            fit = slice_loss(s["dec"], r_k, t_k, s["z"], h_k, c_k, lat, mask).per_image
            wrong = slice_loss(s["dec"], s["rots"], s["shift"], s["z"], h_k, c_k, lat, mask).per_image
        assert fit.max() < 1e-20, (k, fit)
        moved = k % 4 != 0
        assert torch.all(wrong[moved] > 1e-6)
        back_r, back_t = quarter_turn_pose(r_k, t_k, -k)
        assert torch.allclose(back_r, s["rots"], atol=1e-14) and torch.allclose(back_t, s["shift"], atol=1e-14)
    four = quarter_turn_real(quarter_turn_real(real, torch.full((b,), 2)), torch.full((b,), 2))
    assert torch.equal(four, real)
