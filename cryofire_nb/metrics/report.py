"""One-call evaluation of a run against ground truth: :func:`evaluate_run`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .conformation import ConformationMetrics, conformation_metrics
from .poses import (AlignmentConfig, PoseAlignment, RotationErrors, TranslationErrors,
                    align_poses, rotation_errors, translation_errors)
from .volumes import (PerImageFSC, StateVolumeMetrics, align_volume, per_image_fsc,
                      state_volume_metrics)


@dataclass(frozen=True)
class RunMetrics:
    """Everything :func:`evaluate_run` measured; None where the inputs did not allow it.

    image_size_px: ``d``, the box that turns pose-file shift fractions into pixels.
    alignment: global rotation and hand (:class:`PoseAlignment`, aligned rotations inside).
    rotations: per-image view / in-plane / geodesic errors after alignment.
    translations: shift errors in pixels, raw and with the fitted 3-D offset removed.
    """

    n_images: int
    image_size_px: int
    alignment: PoseAlignment
    rotations: RotationErrors
    translations: TranslationErrors | None = None
    conformation: ConformationMetrics | None = None
    volumes: list[StateVolumeMetrics] | None = None
    per_image_fsc: PerImageFSC | None = None

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-image arrays; NaN becomes None)."""
        out = {"n_images": self.n_images, "image_size_px": self.image_size_px,
               "alignment": self.alignment.to_dict(), "rotations": self.rotations.to_dict(),
               "translations": None if self.translations is None else self.translations.to_dict(),
               "conformation": None if self.conformation is None else self.conformation.to_dict(),
               "volumes": None if self.volumes is None else [v.to_dict() for v in self.volumes],
               "per_image_fsc": (None if self.per_image_fsc is None
                                 else self.per_image_fsc.to_dict())}
        return _clean(out)

    def summary_lines(self) -> list[str]:
        """Rounded headline numbers, one per line (``print("\\n".join(m.summary_lines()))``)."""
        a, v, ip = self.alignment, self.rotations.view, self.rotations.in_plane
        lines = [
            f"images: {self.n_images}, box {self.image_size_px} px",
            f"hand: {a.hand} (median geodesic error {a.median_geodesic_same_hand_deg:.1f} deg "
            f"same hand, {a.median_geodesic_mirrored_deg:.1f} deg mirrored; G fitted on "
            f"{a.criterion} error)",
            f"view error: median {v.median_deg:.2f} deg, mean {v.mean_deg:.2f} deg; within "
            f"5/10/20 deg: {v.frac_within_5deg:.3f} / {v.frac_within_10deg:.3f} / "
            f"{v.frac_within_20deg:.3f}",
            f"in-plane error: median {ip.median_deg:.2f} deg, mean {ip.mean_deg:.2f} deg",
            f"geodesic error: median {self.rotations.geodesic.median_deg:.2f} deg, "
            f"mean {self.rotations.geodesic.mean_deg:.2f} deg",
        ]
        t = self.translations
        if t is not None:
            lines.append(f"translation error: median {t.median_px:.3f} px, mean "
                         f"{t.mean_px:.3f} px; offset removed: median "
                         f"{t.median_offset_removed_px:.3f} px, mean "
                         f"{t.mean_offset_removed_px:.3f} px; offset (x, y, z) "
                         f"({t.offset_px[0]:.2f}, {t.offset_px[1]:.2f}, {t.offset_px[2]:.2f}) px")
        c = self.conformation
        if c is not None:
            lines.append(f"PC1 explains {c.pc1_explained_variance_ratio:.3f} of the variance of z")
            if c.confusion is not None:
                lines.append(f"confusion error ({c.confusion.n_classes} states): "
                             f"{c.confusion.error_fraction:.4f}")
            for name, val in (("|Spearman(PC1, state)|", c.spearman_pc1_labels),
                              ("|Spearman(PC1, truth)|", c.spearman_pc1_conf),
                              ("linear probe R^2", c.linear_probe_r2)):
                if val is not None:
                    lines.append(f"{name}: {val:.3f}")
        for s in self.volumes or []:
            lines.append(f"state {s.state}: correlation {s.correlation:.3f}, FSC AUC "
                         f"{s.fsc.auc:.3f}, FSC=0.5 at {_res(s.fsc.at_0_5)}, FSC=0.143 at "
                         f"{_res(s.fsc.at_0_143)}")
        p = self.per_image_fsc
        if p is not None:
            lines.append(f"per-image FSC AUC: {p.mean_auc:.3f} +/- {p.std_auc:.3f} "
                         f"({len(p.auc)} images)")
        return lines


def _res(c) -> str:
    if not math.isfinite(c.frequency_px):
        return "Nyquist or better"
    if math.isfinite(c.resolution_angstrom):
        return f"{c.resolution_angstrom:.2f} A"
    return f"{c.frequency_px:.2f} px^-1 (shell)"


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate_run(pred_rots, pred_trans, gt_rots, gt_trans, d: int, z=None, gt_conf=None,
                 gt_labels=None, *, alignment_config: AlignmentConfig | None = None,
                 pred_volumes: Sequence | None = None, gt_volumes: Sequence | None = None,
                 pixel_size_angstrom: float | None = None, volume_mask=None,
                 volume_generator: Callable | None = None, per_image_n: int = 100
                 ) -> RunMetrics:
    """Evaluate predicted poses (rotations (n, 3, 3), shifts (n, 2) as fractions of the
    box, or None), latents ``z`` (n, k) and volumes against the ground truth.

    gt_conf: continuous truth (n,); gt_labels: discrete state per image (n,).
    pred_volumes / gt_volumes: one (d_v, d_v, d_v) volume per state, compared after
    :func:`align_volume` with the pose alignment and the fitted offset (scaled by d_v / d).
    volume_generator: ``z_i -> volume``; with ``gt_labels`` and ``gt_volumes`` it enables
    CryoBench's per-image FSC on ``per_image_n`` images.
    """
    align = align_poses(pred_rots, gt_rots, alignment_config)
    rot = rotation_errors(align.aligned_rots, gt_rots)
    trans = None
    if pred_trans is not None and gt_trans is not None:
        trans = translation_errors(pred_trans, gt_trans, gt_rots, d)
    conf = None
    if z is not None:
        conf = conformation_metrics(z, gt_conf=gt_conf, gt_labels=gt_labels)
    vols = pimg = None
    if gt_volumes is not None and (pred_volumes is not None or volume_generator is not None):
        d_vol = int(gt_volumes[0].shape[-1])
        offset = np.zeros(3) if trans is None else np.asarray(trans.offset_px) * d_vol / d
        aligner = functools.partial(align_volume, global_rotation=align.global_rotation,
                                    mirrored=align.mirrored, offset_px=offset)
        if pred_volumes is not None:
            vols = state_volume_metrics(pred_volumes, gt_volumes, pixel_size_angstrom,
                                        volume_mask, aligner)
        if volume_generator is not None and z is not None and gt_labels is not None:
            pimg = per_image_fsc(z, gt_labels, volume_generator, gt_volumes, per_image_n,
                                 pixel_size_angstrom, volume_mask, aligner)
    return RunMetrics(int(rot.view_deg.shape[0]), int(d), align, rot, trans, conf, vols, pimg)
