"""Metrics: pose alignment with the hand test, angular and translation errors, confusion
error, Spearman, volume alignment consistent with the projector, FSC per state and per
image, and the one-call evaluation."""

from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.fft import translate_images
from cryofire_nb.metrics import (MIRROR_Z, AlignmentConfig, align_poses, align_volume,
                                 confusion_error, evaluate_run, in_plane_error_deg,
                                 linear_probe_r2, per_image_fsc, rotation_errors,
                                 spearman_pc1, state_volume_metrics, translation_errors,
                                 volume_correlation)
from cryofire_nb.projection import project_real
from cryofire_nb.rotations import axis_angle_to_matrix, random_rotations, rot_z

F64 = torch.float64


def _rots(n, seed):
    return random_rotations(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _pred_from_true(r_true, g, mirrored):
    """Predicted rotations with ``R_true = H(R_pred) @ G`` exactly."""
    r = r_true @ g.T
    return MIRROR_Z @ r @ MIRROR_Z if mirrored else r


def _perturb(r, deg, seed):
    """Right-multiply by rotations of exactly ``deg`` degrees about random axes."""
    axis = torch.randn(len(r), 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    return r @ axis_angle_to_matrix(axis * math.radians(deg))


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("mirrored", [False, True])
def test_alignment_recovers_global_rotation_and_hand_exactly(mirrored):
    r_true = _rots(500, 0)
    g = _rots(1, 1)[0]
    res = align_poses(_pred_from_true(r_true, g, mirrored), r_true)
    assert res.mirrored == mirrored
    torch.testing.assert_close(res.global_rotation, g, atol=1e-10, rtol=0)
    err = rotation_errors(res.aligned_rots, r_true)
    assert err.geodesic_deg.max() < 1e-6 and err.view_deg.max() < 1e-6
    assert err.in_plane_deg.max() < 1e-6
    # the other hand cannot explain the poses
    other = res.median_geodesic_same_hand_deg if mirrored else res.median_geodesic_mirrored_deg
    assert other > 30 and res.hand_margin_deg > 30


@pytest.mark.parametrize("mirrored", [False, True])
def test_alignment_with_noise_and_outliers(mirrored):
    n = 1000
    r_true = _rots(n, 2)
    g = _rots(1, 3)[0]
    pred = _perturb(_pred_from_true(r_true, g, mirrored), 2.0, seed=4)
    out = np.random.default_rng(5).random(n) < 0.3  # 30 % wrong poses
    pred[torch.as_tensor(out)] = _rots(int(out.sum()), 6)
    res = align_poses(pred, r_true, AlignmentConfig(n_anchors=64, n_score=500))
    assert res.mirrored == mirrored
    dg = rotation_errors(res.global_rotation[None], g[None]).geodesic_deg[0]
    assert dg < 0.5, dg
    err = rotation_errors(res.aligned_rots, r_true)
    assert abs(np.median(err.geodesic_deg[~out]) - 2.0) < 0.3
    # "view" criterion finds the same alignment; view directions fit both hands equally
    # well (the third row of M R M is R[2] rotated by pi about z), so the hand is decided
    # by the geodesic error, where the wrong hand is 180 deg off in-plane
    res_v = align_poses(pred, r_true, AlignmentConfig(criterion="view", n_anchors=64))
    assert res_v.mirrored == mirrored
    assert rotation_errors(res_v.global_rotation[None], g[None]).geodesic_deg[0] < 1.0
    assert res_v.median_view_same_hand_deg == pytest.approx(res_v.median_view_mirrored_deg,
                                                             abs=0.05)
    assert res_v.hand_margin_deg > 90


def test_random_poses_give_random_direction_errors():
    # Independent uniform directions: P(angle <= t) = (1 - cos t) / 2, so the median and
    # the mean are 90 deg and the fraction within 20 deg is (1 - cos 20) / 2 = 0.030.
    # (60 deg would be the median of min(t, 180 - t), ignoring the sign of the direction.)
    # The in-plane twist of a Haar relative rotation is uniform on [0, 180]: median 90.
    n = 2000
    res = align_poses(_rots(n, 7), _rots(n, 8))
    err = rotation_errors(res.aligned_rots, _rots(n, 8))
    assert abs(err.view.median_deg - 90) < 6
    assert abs(err.view.mean_deg - 90) < 4
    assert abs(err.view.frac_within_20deg - (1 - math.cos(math.radians(20))) / 2) < 0.015
    assert abs(err.in_plane.median_deg - 90) < 8


def test_in_plane_error_definition():
    r = _rots(50, 9)
    ang = torch.linspace(-170, 170, 50, dtype=F64)
    # a pure in-plane rotation on the image side: error = |angle|, view error 0
    rp = rot_z(torch.deg2rad(ang)) @ r
    torch.testing.assert_close(in_plane_error_deg(rp, r), ang.abs(), atol=1e-9, rtol=0)
    # a tilt of the view direction alone (about the image x axis) has no twist
    rx = axis_angle_to_matrix(torch.tensor([[0.3, 0.0, 0.0]], dtype=F64))
    assert in_plane_error_deg(rx @ r, r).abs().max() < 1e-9
    assert abs(rotation_errors(rx @ r, r).view_deg - math.degrees(0.3)).max() < 1e-9


def test_alignment_rejects_bad_shapes():
    with pytest.raises(InputError):
        align_poses(np.zeros((5, 3)), np.zeros((5, 3, 3)))
    with pytest.raises(InputError):
        align_poses(_rots(5, 0), _rots(6, 0))


# --------------------------------------------------------------------------- translations


def test_translation_offset_recovered():
    n, d = 800, 64
    r_true = _rots(n, 10)
    rng = np.random.default_rng(11)
    t_true = rng.uniform(-0.05, 0.05, (n, 2))  # fraction of the box
    delta = np.array([1.5, -2.0, 0.7])  # px
    noise = rng.normal(0, 0.1, (n, 2))  # px
    t_pred = t_true + (r_true.numpy()[:, :2, :] @ delta + noise) / d
    te = translation_errors(t_pred, t_true, r_true, d)
    np.testing.assert_allclose(te.offset_px, delta, atol=0.03)
    expected_raw = np.linalg.norm(r_true.numpy()[:, :2, :] @ delta + noise, axis=1)
    np.testing.assert_allclose(te.raw_px, expected_raw, rtol=1e-9)
    # offset removed: the noise is left, |N(0, 0.1^2 I2)| has median 0.1 sqrt(2 ln 2)
    assert abs(te.median_offset_removed_px - 0.1 * math.sqrt(2 * math.log(2))) < 0.015
    assert te.median_px > 1.0
    # no offset and no noise: zero error in pixels of d
    te0 = translation_errors(t_true, t_true, r_true, d)
    assert te0.median_px == 0 and np.abs(te0.offset_px).max() < 1e-12


# --------------------------------------------------------------------------- conformations


def test_confusion_error_separable_two_and_three_states():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    z = rng.normal(0, 0.1, (500, 4)) + labels[:, None] * np.array([3.0, 1.0, 0, 0])
    assert confusion_error(z, labels).error_fraction == 0
    # three states in PC1 order 2 < 0 < 1, labels as strings of arbitrary ids
    lab3 = rng.integers(0, 3, 600)
    pos = np.array([0.0, 2.0, -2.0])[lab3]
    z3 = np.stack([pos + rng.normal(0, 0.1, 600), rng.normal(0, 0.1, 600)], 1)
    res = confusion_error(z3, np.array([10, 20, 30])[lab3])
    assert res.error_fraction == 0 and res.exhaustive and len(res.thresholds) == 2
    assert res.class_order in ((30, 10, 20), (20, 10, 30))
    json.dumps(res.to_dict(), allow_nan=False)
    with pytest.raises(InputError):
        confusion_error(z3, lab3[:-1])


def _apply(x, thresholds, order):
    return np.asarray(order)[np.searchsorted(np.asarray(thresholds), x, side="right")]


def _brute_force_three(x, y):
    """Fewest errors over all pairs of thresholds between distinct values, all orders."""
    u = np.unique(x)
    cands = np.concatenate([[-np.inf], (u[1:] + u[:-1]) / 2, [np.inf]])
    best = len(x)
    for order in itertools.permutations(range(3)):
        for i, t1 in enumerate(cands):
            for t2 in cands[i:]:
                best = min(best, int((_apply(x, [t1, t2], order) != y).sum()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_dynamic_program_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 40)
    x = np.round(y * 0.7 + rng.normal(0, 0.8, 40), 1)  # overlapping classes, with ties
    res = confusion_error(x, y)
    assert res.n_misclassified == _brute_force_three(x, y)
    # the reported thresholds and order reproduce the reported error
    assert int((_apply(x, res.thresholds, res.class_order) != y).sum()) == res.n_misclassified


def test_confusion_error_random_balanced_matches_theory():
    # Random PC1 order of n/2 + n/2 labels: with S_j = (#class 1 - #class 0) among the j
    # lowest, the best single threshold misclassifies n/2 - max_j |S_j| (both
    # orientations), and E max|S_j| ~ sqrt(n) sqrt(pi/2) ln 2 (Kolmogorov: sup of a
    # Brownian bridge). One orientation only would give sqrt(n) sqrt(pi/8) instead.
    # Sd of max|S_j| / sqrt(n) is 0.26, so the mean of 200 draws has sd 0.0004 here.
    n, reps = 2000, 200
    errs = []
    for s in range(reps):
        rng = np.random.default_rng(100 + s)
        labels = rng.permutation(np.repeat([0, 1], n // 2))
        errs.append(confusion_error(rng.normal(size=(n, 3)), labels).error_fraction)
    expected = 0.5 - math.sqrt(math.pi / 2) * math.log(2) / math.sqrt(n)  # 0.4806
    one_sided = 0.5 - math.sqrt(math.pi / 8) / math.sqrt(n)  # 0.4860
    assert abs(np.mean(errs) - expected) < 0.0018, (np.mean(errs), expected, one_sided)
    assert max(errs) < 0.5


def test_confusion_error_many_states_uses_mean_order():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 8, 800)
    place = rng.permutation(8)  # state s sits at PC1 position place[s]
    z = place[y][:, None] + rng.normal(0, 0.05, (800, 1))
    res = confusion_error(np.concatenate([z, rng.normal(0, 0.01, (800, 1))], 1), y)
    assert not res.exhaustive and res.error_fraction == 0
    assert [place[c] for c in res.class_order] in (list(range(8)), list(range(7, -1, -1)))


def test_spearman_sign_invariant_and_probe():
    rng = np.random.default_rng(4)
    t = rng.uniform(0, 1, 1000)
    z = np.stack([np.exp(2 * t) + rng.normal(0, 0.02, 1000), rng.normal(0, 0.02, 1000)], 1)
    s = spearman_pc1(z, t)
    assert s > 0.95
    assert spearman_pc1(-z, t) == pytest.approx(s) and spearman_pc1(z, -t) == pytest.approx(s)
    assert spearman_pc1(rng.normal(size=(1000, 3)), t) < 0.1
    zl = np.stack([2 * t - 1, rng.normal(0, 1, 1000)], 1) @ np.array([[1.0, 0.5], [0.2, 1.0]])
    assert linear_probe_r2(zl, t) > 0.999
    assert linear_probe_r2(rng.normal(size=(1000, 3)), t) < 0.02


# --------------------------------------------------------------------------- volumes

D_VOL = 32
SIGMA = 2.0


def _blobs(centres, d=D_VOL):
    """Sum of Gaussian blobs at ``centres`` (k, 3) as (x, y, z) px from the centre,
    float32 (d, d, d) [z, y, x]."""
    r = torch.arange(d, dtype=F64) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([x, y, z], -1)  # (d, d, d, 3)
    c = torch.as_tensor(centres, dtype=F64)
    d2 = ((pts[..., None, :] - c) ** 2).sum(-1)  # (d, d, d, k)
    return torch.exp(-d2 / (2 * SIGMA ** 2)).sum(-1).float()


def _atoms(seed, k=6):
    return np.random.default_rng(seed).uniform(-3.5, 3.5, (k, 3))


def _moved(atoms, g, mirrored, delta):
    """Atoms of the predicted map: b = M^h G (a + delta)."""
    m = MIRROR_Z.numpy() if mirrored else np.eye(3)
    return (atoms + delta) @ g.numpy().T @ m


@pytest.mark.parametrize("mirrored", [False, True])
def test_aligned_volume_projects_like_predicted_poses(mirrored):
    # Projections of the aligned volume with the true poses equal projections of the
    # predicted volume with the predicted poses (the exact test of the transform).
    atoms = _atoms(0)
    g = _rots(1, 20)[0]
    r_true = _rots(2, 21)
    r_pred = _pred_from_true(r_true, g, mirrored)
    v_pred = _blobs(_moved(atoms, g, mirrored, 0.0))
    ref = project_real(v_pred, r_pred)
    got = project_real(align_volume(v_pred, g, mirrored), r_true)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.03, rel  # trilinear resampling error of the blob map
    wrong = project_real(align_volume(v_pred, g.T, mirrored), r_true[:1])
    assert ((wrong - ref[:1]).norm() / ref[:1].norm()).item() > 0.3
    flipped = project_real(align_volume(v_pred, g, not mirrored), r_true[:1])
    assert ((flipped - ref[:1]).norm() / ref[:1].norm()).item() > 0.3


@pytest.mark.parametrize("mirrored", [False, True])
def test_offset_convention_chain(mirrored):
    """Images of (truth, true poses, true shifts) equal images of (displaced, rotated,
    mirrored map, predicted poses, shifts + (R_true delta)[:2]); the fitted offset is
    delta; align_volume with it recovers the truth."""
    atoms, delta = _atoms(1), np.array([2.0, -1.5, 2.5])
    g = _rots(1, 30)[0]
    n = 40
    r_true = _rots(n, 31)
    r_pred = _pred_from_true(r_true, g, mirrored)
    t_true_px = torch.as_tensor(np.random.default_rng(2).uniform(-1.5, 1.5, (n, 2)))
    t_pred_px = t_true_px + r_true[:, :2, :] @ torch.as_tensor(delta)
    v_true, v_pred = _blobs(atoms), _blobs(_moved(atoms, g, mirrored, delta))
    img_true = translate_images(project_real(v_true, r_true[:2]), -t_true_px[:2])
    img_pred = translate_images(project_real(v_pred, r_pred[:2]), -t_pred_px[:2])
    assert ((img_pred - img_true).norm() / img_true.norm()).item() < 0.02
    te = translation_errors(t_pred_px / D_VOL, t_true_px / D_VOL, r_true, D_VOL)
    np.testing.assert_allclose(te.offset_px, delta, atol=1e-9)
    assert te.median_offset_removed_px < 1e-9
    aligned = align_volume(v_pred, g, mirrored, te.offset_px)
    assert volume_correlation(aligned, v_true) > 0.995
    assert volume_correlation(align_volume(v_pred, g, mirrored), v_true) < 0.7
    mask = v_true > 0.1
    assert volume_correlation(aligned, v_true, mask) > 0.99
    assert volume_correlation(v_true, -v_true, about_mean=False) == pytest.approx(-1)


def test_state_fsc_and_per_image_fsc():
    states = [_blobs(_atoms(5)), _blobs(_atoms(6))]
    g = _rots(1, 40)[0]
    preds = [_blobs(_moved(_atoms(s), g, True, 0.0)) for s in (5, 6)]
    aligner = functools.partial(align_volume, global_rotation=g, mirrored=True)
    res = state_volume_metrics(preds, states, pixel_size_angstrom=2.0, align=aligner)
    swapped = state_volume_metrics(preds[::-1], states, pixel_size_angstrom=2.0, align=aligner)
    for good, bad in zip(res, swapped):
        assert good.correlation > 0.99 and good.fsc.auc > bad.fsc.auc + 0.1
        assert good.to_dict()["fsc_auc"] == good.fsc.auc
    # per-image: z encodes the state; a generator that reads it right beats one that
    # reads it backwards
    labels = np.repeat([0, 1], 50)
    z = labels[:, None] + np.random.default_rng(0).normal(0, 0.1, (100, 1))

    def gen(zi):
        return preds[int(round(float(zi[0])))]

    def gen_bad(zi):
        return preds[1 - int(round(float(zi[0])))]

    p = per_image_fsc(z, labels, gen, states, n_images=4, align=aligner)
    np.testing.assert_array_equal(p.image_indices, [0, 25, 50, 75])  # CryoBench's sampling
    p_bad = per_image_fsc(z, labels, gen_bad, states, n_images=4, align=aligner)
    assert p.mean_auc > p_bad.mean_auc + 0.1 and set(p.per_state) == {0, 1}
    assert p.per_state[0][2] == 2
    np.testing.assert_allclose(p.auc, [res[k].fsc.auc for k in p.labels])


# --------------------------------------------------------------------------- one call


def test_evaluate_run_end_to_end():
    n, d = 600, D_VOL
    rng = np.random.default_rng(7)
    r_true = _rots(n, 50)
    g = _rots(1, 51)[0]
    r_pred = _perturb(_pred_from_true(r_true, g, True), 1.0, seed=52)
    delta = np.array([0.5, 1.0, -0.5])
    t_true = rng.uniform(-0.05, 0.05, (n, 2))
    t_pred = t_true + (r_true.numpy()[:, :2, :] @ delta) / d
    labels = rng.integers(0, 2, n)
    z = rng.normal(0, 0.1, (n, 3)) + labels[:, None]
    atoms = [_atoms(8), _atoms(9)]
    gt_vols = [_blobs(a) for a in atoms]
    pred_vols = [_blobs(_moved(a, g, True, delta)) for a in atoms]
    m = evaluate_run(r_pred.numpy(), t_pred, r_true.numpy(), t_true, d, z=z, gt_labels=labels,
                     pred_volumes=pred_vols, gt_volumes=gt_vols, pixel_size_angstrom=3.0,
                     volume_generator=lambda zi: pred_vols[int(zi.mean() > 0.5)], per_image_n=4)
    assert m.alignment.mirrored and m.n_images == n
    assert abs(m.rotations.geodesic.median_deg - 1.0) < 0.1
    assert m.rotations.view.median_deg < 1.0 and m.rotations.view.frac_within_5deg == 1
    np.testing.assert_allclose(m.translations.offset_px, delta, atol=1e-9)
    assert m.conformation.confusion.error_fraction == 0
    assert all(v.correlation > 0.99 for v in m.volumes)
    # the generator returns the state's own map, so each image's AUC is its state's AUC
    for i, lab in zip(m.per_image_fsc.image_indices, m.per_image_fsc.labels):
        assert labels[i] == lab
    np.testing.assert_allclose(m.per_image_fsc.auc,
                               [m.volumes[lab].fsc.auc for lab in m.per_image_fsc.labels])
    text = json.dumps(m.to_dict(), allow_nan=False)
    assert '"hand": "mirrored"' in text
    lines = m.summary_lines()
    assert any(line.startswith("hand: mirrored") for line in lines)
    assert any("confusion error (2 states): 0.0000" in line for line in lines)
