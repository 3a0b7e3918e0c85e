"""Metrics of a run against ground truth (cryoFIRE paper, CryoBench), defined exactly.

* Poses (:mod:`.poses`): predicted rotations are known only up to one global rotation
  ``G`` and a hand flip; :func:`align_poses` finds ``R_true ~ H(R_pred) @ G`` by anchor
  search over both hands plus Procrustes refinement. Errors after alignment: view
  direction (angle between third rows), in-plane (twist about the view axis) and
  geodesic, in degrees; translations in pixels of the image size ``d`` (not d + 1), raw
  and after removing a fitted global 3-D offset; :func:`errors_by_bin` groups per-image
  errors by another quantity (defocus, ...) to see where they concentrate.
* Conformations (:mod:`.conformation`): PC1 of z, the confusion error for discrete
  states (optimal thresholds on PC1), the error of cluster labels (k-means, GMM) after the
  best label matching, |Spearman(PC1, truth)|, an oracle linear probe.
* Images (:mod:`.images`): per-image correlation of two stacks.
* Volumes (:mod:`.volumes`): real-space correlation, FSC per state (0.5 / 0.143
  crossings, CryoBench AUC) after bringing the predicted map into the reference frame,
  CryoBench's per-image FSC, and the radius of gyration of the densest voxels.
* :func:`evaluate_run` does all of it in one call and returns :class:`RunMetrics`
  (``to_dict()`` for JSON, ``summary_lines()`` for rounded numbers).

Rotation convention (cryoDRGN): pixel (x, y) integrates the volume along z at
``[x, y, z] @ R``; the view direction is ``R[2]``; an atom at ``a`` lands at
``(R @ a)[:2]``. Pose files store shifts as fractions of the box.
"""

from .conformation import (PC1, ClusterMatch, ConfusionResult, ConformationMetrics, cluster_label_error,
                           conformation_metrics, confusion_error, linear_probe_r2, pca_pc1, spearman_pc1)
from .images import image_correlation
from .poses import (MIRROR_Z, AlignmentConfig, AngularSummary, BinnedErrors, PoseAlignment, RotationErrors,
                    TranslationErrors, align_poses, errors_by_bin, fit_global_offset, geodesic_error_deg,
                    in_plane_error_deg, mirror_rotations, project_to_so3, rotation_errors,
                    translation_errors, view_error_deg)
from .report import RunMetrics, evaluate_run
from .volumes import (PerImageFSC, StateVolumeMetrics, align_volume, per_image_fsc,
                      state_volume_metrics, volume_correlation, volume_radius_of_gyration)

__all__ = [
    "MIRROR_Z", "PC1", "AlignmentConfig", "AngularSummary", "BinnedErrors", "ClusterMatch", "ConfusionResult",
    "ConformationMetrics", "PerImageFSC", "PoseAlignment", "RotationErrors", "RunMetrics",
    "StateVolumeMetrics", "TranslationErrors", "align_poses", "align_volume",
    "cluster_label_error", "conformation_metrics", "confusion_error", "errors_by_bin", "evaluate_run", "fit_global_offset",
    "geodesic_error_deg", "image_correlation", "in_plane_error_deg", "linear_probe_r2",
    "mirror_rotations",
    "pca_pc1", "per_image_fsc", "project_to_so3", "rotation_errors", "spearman_pc1",
    "state_volume_metrics", "translation_errors", "view_error_deg", "volume_correlation",
    "volume_radius_of_gyration",
]
