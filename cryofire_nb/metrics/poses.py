"""Pose metrics: global alignment of predicted to reference rotations (with the hand
test), angular errors after alignment, and translation errors with a fitted 3-D offset.

Why an alignment is needed. An ab initio reconstruction is determined only up to one
global rotation and a mirror (hand) flip. With our convention (pixel (x, y) integrates
the volume along z at ``[x, y, z] @ R``; an atom at ``a`` lands at ``(R @ a)[:2]``):

* if the reconstruction is the truth rotated, ``V_pred(p) = V_true(G^T p)`` for a proper
  rotation ``G``, and the images are explained by ``R_true = R_pred @ G`` (right
  multiplication: ``G`` acts in the volume frame);
* if it is the mirror image, ``V_pred(p) = V_true(G^T M p)`` with ``M = diag(1, 1, -1)``,
  and ``R_true = (M @ R_pred @ M) @ G``: the projection integrates over z, so the
  z-flip ``M`` on the image side (left) changes nothing, and ``M R_pred M`` is proper.

The hand lives in the in-plane angles only: the third row of ``M R M`` is
``R[2] @ diag(-1, -1, 1)``, a proper rotation (by pi about z) of the view direction, so
view directions alone fit both hands equally well; the two hands then differ by an
in-plane turn of 180 degrees in every image. The hand is therefore always decided by the
geodesic error (which includes the in-plane angle); if in-plane angles are random the
two hands tie and the poses cannot tell the hand (see ``PoseAlignment.hand_margin_deg``).

Shifts are unaffected by ``G`` and the hand (``M`` on the left keeps the first two
components). An off-centre reconstruction, the truth displaced by ``delta`` (pixels,
x y z, in the reference frame), adds ``(R_true @ delta)[:2]`` to every image's shift.

Dimension letters: n images, s scored images, c candidate alignments.
All computations run in float64 on the CPU; inputs may be numpy arrays or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..rotations import geodesic_distance_deg

Tensor = torch.Tensor

# z-flip: the hand (mirror) map, M = diag(1, 1, -1).
MIRROR_Z = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def _rots(x, name: str) -> Tensor:
    r = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x),
                        dtype=torch.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise InputError(None, f"{name} has shape {tuple(r.shape)}, expected (n, 3, 3)",
                         "pass a stack of 3x3 rotation matrices")
    return r


def mirror_rotations(rots: Tensor) -> Tensor:
    """``M @ R @ M`` with ``M = diag(1, 1, -1)``: the pose of the mirrored reconstruction."""
    m = MIRROR_Z.to(rots.dtype)
    return m @ rots @ m


def project_to_so3(a: Tensor) -> Tensor:
    """Closest proper rotation (Frobenius) to a 3x3 matrix: ``U diag(1, 1, det(U V^T)) V^T``
    from the SVD ``a = U S V^T`` (Kabsch / orthogonal Procrustes)."""
    u, _, vh = torch.linalg.svd(a)
    s = torch.ones(3, dtype=a.dtype)
    s[2] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag(s) @ vh


# --------------------------------------------------------------------------- distances

#: Rotation angle (degrees) of ``r1^T r2`` (one definition for the package).
geodesic_error_deg = geodesic_distance_deg


def view_error_deg(r1: Tensor, r2: Tensor) -> Tensor:
    """Angle (degrees) between view directions, the third rows:
    ``2 atan2(|v1 - v2|, |v1 + v2|)`` (exact over [0, 180])."""
    v1, v2 = r1[..., 2, :], r2[..., 2, :]
    return torch.rad2deg(2 * torch.atan2((v1 - v2).norm(dim=-1), (v1 + v2).norm(dim=-1)))


def in_plane_error_deg(r_pred: Tensor, r_true: Tensor) -> Tensor:
    """In-plane error (degrees, in [0, 180]): the twist about the image z axis of the
    relative rotation ``D = r_true @ r_pred^T`` (image frame, ``r_true = D r_pred``).

    With ``D``'s quaternion ``(w, x, y, z)`` the twist is ``2 atan2(|z|, |w|)``; in ZYZ
    Euler angles ``D = Rz(a) Ry(b) Rz(c)`` this is ``|a + c|`` wrapped to [0, 180], and
    when the view directions agree (``b = 0``) it is the in-plane angle difference.
    """
    d = r_true @ r_pred.transpose(-1, -2)
    # 4 w z = D[1,0] - D[0,1], 4 w^2 = 1 + tr(D) (up to a common positive factor):
    # twist = 2 atan2(|z|, |w|) = atan2 form below, accurate everywhere.
    wz = d[..., 1, 0] - d[..., 0, 1]          # 4 w z
    ww = 1 + d[..., 0, 0] + d[..., 1, 1] + d[..., 2, 2]  # 4 w^2
    zz = 1 - d[..., 0, 0] - d[..., 1, 1] + d[..., 2, 2]  # 4 z^2
    # tan(twist/2) = |z| / |w| = |4 w z| / (4 w^2) = (4 z^2) / |4 w z|; use the
    # better-conditioned one.
    half = torch.where(ww >= zz, torch.atan2(wz.abs(), ww), torch.atan2(zz, wz.abs()))
    return torch.rad2deg(2 * half)


# --------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class AlignmentConfig:
    """Options of :func:`align_poses`.

    criterion: ``"geodesic"`` scores a candidate by the median rotation angle of
        ``(R_h G)^T R_true``; ``"view"`` by the median angle between third rows (use it
        when in-plane angles are unreliable). Either way the hand is then chosen by the
        median geodesic error of each hand's best alignment.
    n_anchors: images whose exact alignment ``G_i = R_h_i^T R_true_i`` is a candidate.
    n_score: images (random subset) on which candidates are scored; 0 = all.
    inlier_deg: Procrustes refinement uses images with error below
        ``max(inlier_deg, median error)``.
    refine_iters: at most this many refinement rounds; a round is kept only if it
        lowers the median error over all images.
    seed: seeds the anchor and scoring subsets.
    """

    criterion: str = "geodesic"
    n_anchors: int = 128
    n_score: int = 20000
    inlier_deg: float = 10.0
    refine_iters: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.criterion not in ("geodesic", "view"):
            raise ValueError(f"criterion must be 'geodesic' or 'view', not {self.criterion!r}")
        if self.n_anchors < 1 or self.n_score < 0 or self.refine_iters < 0:
            raise ValueError("n_anchors >= 1, n_score >= 0 and refine_iters >= 0 are required")


@dataclass(frozen=True)
class PoseAlignment:
    """Result of :func:`align_poses`.

    global_rotation: ``G`` (3, 3), proper, with ``R_true ~ H(R_pred) @ G``.
    mirrored: True when the hand flip won, i.e. ``H(R) = M R M`` (``M = diag(1,1,-1)``);
        otherwise ``H(R) = R``. Decided by the lower median geodesic error.
    median_geodesic_same_hand_deg / median_geodesic_mirrored_deg: median geodesic error
        over all images of the best alignment found for each hand (the hand test).
    median_view_same_hand_deg / median_view_mirrored_deg: the same for the view error.
    criterion: the score used to find ``G`` for each hand.
    aligned_rots: (n, 3, 3) ``H(R_pred) @ G``, comparable with ``R_true`` directly.
    """

    global_rotation: Tensor
    mirrored: bool
    median_geodesic_same_hand_deg: float
    median_geodesic_mirrored_deg: float
    median_view_same_hand_deg: float
    median_view_mirrored_deg: float
    criterion: str
    aligned_rots: Tensor

    @property
    def hand(self) -> str:
        return "mirrored" if self.mirrored else "same"

    @property
    def hand_margin_deg(self) -> float:
        """Median geodesic error of the losing hand minus the winner's: near 0 means the
        poses cannot tell the hand (e.g. random in-plane angles)."""
        return abs(self.median_geodesic_same_hand_deg - self.median_geodesic_mirrored_deg)

    def apply(self, rots) -> Tensor:
        """Map other predicted rotations (n, 3, 3) into the reference frame."""
        r = _rots(rots, "rots")
        if self.mirrored:
            r = mirror_rotations(r)
        return r @ self.global_rotation

    def to_dict(self) -> dict:
        return {
            "hand": self.hand,
            "criterion": self.criterion,
            "global_rotation": self.global_rotation.tolist(),
            "hand_margin_deg": self.hand_margin_deg,
            "median_geodesic_same_hand_deg": self.median_geodesic_same_hand_deg,
            "median_geodesic_mirrored_deg": self.median_geodesic_mirrored_deg,
            "median_view_same_hand_deg": self.median_view_same_hand_deg,
            "median_view_mirrored_deg": self.median_view_mirrored_deg,
        }


def _pair_weights(r_h: Tensor, r_true: Tensor, criterion: str) -> Tensor:
    """Per-image matrices W (n, 3, 3) with score ``<G, W>_F`` linear in ``G``:
    ``tr((R_h G)^T R_true) = <G, R_h^T R_true>`` (geodesic) and
    ``(R_h G)[2] . R_true[2] = <G, outer(R_h[2], R_true[2])>`` (view)."""
    if criterion == "geodesic":
        return r_h.transpose(-1, -2) @ r_true
    return r_h[:, 2, :, None] * r_true[:, 2, None, :]


def _score_to_deg(score: Tensor, criterion: str) -> Tensor:
    cos = (score - 1) / 2 if criterion == "geodesic" else score
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def _align_one_hand(r_h: Tensor, r_true: Tensor, cfg: AlignmentConfig,
                    anchors: np.ndarray, scored: np.ndarray) -> Tensor:
    w_all = _pair_weights(r_h, r_true, cfg.criterion)  # (n, 3, 3)
    cand = r_h[anchors].transpose(-1, -2) @ r_true[anchors]  # (c, 3, 3)
    w_s = w_all[torch.as_tensor(scored)]  # (s, 3, 3)
    # The error is a decreasing function of the score, so the candidate with the lowest
    # median error has the highest median score (no acos over (c, s) needed).
    cand9, w9 = cand.reshape(-1, 9), w_s.reshape(-1, 9)
    med_score = torch.cat([(cand9[i:i + 64] @ w9.T).median(dim=1).values  # (c, s) -> (c,)
                           for i in range(0, cand9.shape[0], 64)])
    g = cand[int(med_score.argmax())]

    def median_all(g_: Tensor) -> tuple[float, Tensor]:
        err = _score_to_deg(w_all.reshape(-1, 9) @ g_.reshape(9), cfg.criterion)
        return float(err.median()), err

    best, err = median_all(g)
    for _ in range(cfg.refine_iters):
        inl = err <= max(cfg.inlier_deg, best)
        g_new = project_to_so3(w_all[inl].sum(0))
        med, err_new = median_all(g_new)
        if not med < best:
            break
        g, best, err = g_new, med, err_new
    return g


def align_poses(pred_rots, gt_rots, config: AlignmentConfig | None = None) -> PoseAlignment:
    """Find the global rotation and hand aligning predicted to reference rotations.

    For each hand ``H`` (identity, or ``R -> M R M``), every anchor image ``i`` gives a
    candidate ``G_i = H(R_pred_i)^T R_true_i``; each candidate is scored by the median
    error over the scored images; the best is refined by orthogonal Procrustes
    (``G = argmax sum <G, W_j>`` over inliers, solved by SVD, see
    :func:`project_to_so3`). The hand whose alignment has the lower median geodesic
    error over all images wins (view directions cannot tell the hands apart).
    """
    cfg = config or AlignmentConfig()
    r_pred, r_true = _rots(pred_rots, "pred_rots"), _rots(gt_rots, "gt_rots")
    n = r_pred.shape[0]
    if r_true.shape[0] != n or n == 0:
        raise InputError(None, f"pred_rots has {n} rotations and gt_rots {r_true.shape[0]}",
                         "pass the same non-empty set of images in the same order")
    rng = np.random.default_rng(cfg.seed)
    anchors = rng.choice(n, size=min(cfg.n_anchors, n), replace=False)
    scored = (np.arange(n) if cfg.n_score == 0 or cfg.n_score >= n
              else rng.choice(n, size=cfg.n_score, replace=False))
    hands = []
    for r_h in (r_pred, mirror_rotations(r_pred)):
        g = _align_one_hand(r_h, r_true, cfg, anchors, scored)
        aligned = r_h @ g
        hands.append((g, aligned, float(np.median(geodesic_error_deg(aligned, r_true).numpy())),
                      float(np.median(view_error_deg(aligned, r_true).numpy()))))
    mirrored = hands[1][2] < hands[0][2]
    g, aligned = hands[int(mirrored)][:2]
    return PoseAlignment(g, bool(mirrored), hands[0][2], hands[1][2], hands[0][3],
                         hands[1][3], cfg.criterion, aligned)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class AngularSummary:
    """Summary of per-image angular errors (degrees): median, mean and the fractions of
    images with error <= 5, 10 and 20 degrees."""

    median_deg: float
    mean_deg: float
    frac_within_5deg: float
    frac_within_10deg: float
    frac_within_20deg: float

    @classmethod
    def from_errors(cls, err_deg) -> "AngularSummary":
        e = np.asarray(err_deg, dtype=np.float64)
        return cls(float(np.median(e)), float(e.mean()), float((e <= 5).mean()),
                   float((e <= 10).mean()), float((e <= 20).mean()))


@dataclass(frozen=True)
class RotationErrors:
    """Errors of aligned rotations against the reference, per image (degrees, numpy
    arrays (n,)) and summarised. view: angle between third rows; in_plane: see
    :func:`in_plane_error_deg`; geodesic: angle of ``R_aligned^T R_true``."""

    view_deg: np.ndarray
    in_plane_deg: np.ndarray
    geodesic_deg: np.ndarray

    @property
    def view(self) -> AngularSummary:
        return AngularSummary.from_errors(self.view_deg)

    @property
    def in_plane(self) -> AngularSummary:
        return AngularSummary.from_errors(self.in_plane_deg)

    @property
    def geodesic(self) -> AngularSummary:
        return AngularSummary.from_errors(self.geodesic_deg)

    def to_dict(self) -> dict:
        return {"view": vars(self.view), "in_plane": vars(self.in_plane),
                "geodesic": vars(self.geodesic)}


def rotation_errors(aligned_rots, gt_rots) -> RotationErrors:
    """Per-image errors of rotations already in the reference frame (see
    :func:`align_poses`, ``PoseAlignment.aligned_rots``)."""
    r, t = _rots(aligned_rots, "aligned_rots"), _rots(gt_rots, "gt_rots")
    return RotationErrors(view_error_deg(r, t).numpy(), in_plane_error_deg(r, t).numpy(),
                          geodesic_error_deg(r, t).numpy())


@dataclass(frozen=True)
class TranslationErrors:
    """Translation errors in pixels of the image size ``d`` (not d + 1).

    Shifts are pose-file fractions of the box times ``d``. raw: ``|t_pred - t_true|``
    per image. offset_px: the least-squares 3-D offset ``delta`` (x, y, z, pixels, in the
    reference frame) in ``t_pred - t_true ~ (R_true @ delta)[:2]``: the aligned
    reconstruction is the truth displaced by ``+delta``. offset_removed:
    ``|t_pred - t_true - (R_true @ delta)[:2]|``.
    """

    raw_px: np.ndarray
    offset_removed_px: np.ndarray
    offset_px: tuple[float, float, float]

    @property
    def median_px(self) -> float:
        return float(np.median(self.raw_px))

    @property
    def mean_px(self) -> float:
        return float(self.raw_px.mean())

    @property
    def median_offset_removed_px(self) -> float:
        return float(np.median(self.offset_removed_px))

    @property
    def mean_offset_removed_px(self) -> float:
        return float(self.offset_removed_px.mean())

    def to_dict(self) -> dict:
        return {"median_px": self.median_px, "mean_px": self.mean_px,
                "median_offset_removed_px": self.median_offset_removed_px,
                "mean_offset_removed_px": self.mean_offset_removed_px,
                "offset_px": list(self.offset_px)}


def fit_global_offset(shift_diff_px, gt_rots) -> np.ndarray:
    """Least-squares ``delta`` (3,) minimising ``sum_i |diff_i - (R_i @ delta)[:2]|^2``
    for shift differences ``diff`` (n, 2) in pixels and rotations ``R`` (n, 3, 3).
    Needs at least two distinct view directions to be determined (lstsq otherwise
    returns the minimum-norm solution)."""
    r = _rots(gt_rots, "gt_rots").numpy()
    a = r[:, :2, :].reshape(-1, 3)  # (2n, 3): rows of R that give x and y
    b = np.asarray(shift_diff_px, dtype=np.float64).reshape(-1)  # (2n,)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def translation_errors(pred_trans, gt_trans, gt_rots, d: int) -> TranslationErrors:
    """Translation errors for shifts given as fractions of the box (cryoDRGN pose files),
    converted to pixels by multiplying by the image size ``d``."""
    tp = np.asarray(pred_trans, dtype=np.float64) * d  # (n, 2) px
    tt = np.asarray(gt_trans, dtype=np.float64) * d
    if tp.shape != tt.shape or tp.ndim != 2 or tp.shape[1] != 2:
        raise InputError(None, f"pred_trans {tp.shape} and gt_trans {tt.shape} differ or are "
                         "not (n, 2)", "pass (n, 2) shifts as fractions of the box")
    diff = tp - tt
    delta = fit_global_offset(diff, gt_rots)
    r = _rots(gt_rots, "gt_rots").numpy()
    resid = diff - r[:, :2, :] @ delta
    return TranslationErrors(np.linalg.norm(diff, axis=1), np.linalg.norm(resid, axis=1),
                             tuple(float(x) for x in delta))


# --------------------------------------------------------------------------- where errors sit


@dataclass(frozen=True)
class BinnedErrors:
    """Per-image errors grouped by another per-image quantity (defocus, tilt, ...).

    edges: (b + 1,) bin edges of the quantity (quantiles by default, so bins hold about
    equal numbers of images); count: (b,) images per bin; median, q25, q75, mean: (b,)
    of the errors in each bin (NaN for an empty bin).
    """

    edges: np.ndarray
    count: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    mean: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])


def errors_by_bin(values, errors, n_bins: int = 8, equal_count: bool = True) -> BinnedErrors:
    """Group per-image ``errors`` (n,) by ``values`` (n,) into ``n_bins`` bins: quantile
    bins (``equal_count``) or equal-width bins over the range. Every image falls in
    exactly one bin (the last bin includes its upper edge)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if v.shape != e.shape or v.size == 0:
        raise InputError(None, f"{v.size} values for {e.size} errors", "pass one value per image")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = (np.quantile(v, np.linspace(0, 1, n_bins + 1)) if equal_count
             else np.linspace(v.min(), v.max(), n_bins + 1))
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, n_bins - 1)  # (n,)
    stats = np.full((5, n_bins), np.nan)
    count = np.bincount(which, minlength=n_bins).astype(np.int64)
    for b in range(n_bins):
        eb = e[which == b]
        if eb.size:
            stats[:, b] = (np.median(eb), np.quantile(eb, 0.25), np.quantile(eb, 0.75), eb.mean(), 0)
    return BinnedErrors(edges, count, stats[0], stats[1], stats[2], stats[3])
