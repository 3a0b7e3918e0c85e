"""Volume metrics: real-space correlation, alignment of an ab initio volume into the
reference frame (global rotation, hand, offset from the pose alignment), FSC per state,
and CryoBench's per-image FSC.

Volumes are real-space (d, d, d) arrays indexed ``[z, y, x]`` with the centre at
``d // 2``; positions are written (x, y, z) in voxels relative to the centre.

Dimension letters: d box, n images, m sampled images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from .poses import MIRROR_Z

Tensor = torch.Tensor


def _volume(v, name: str) -> Tensor:
    v = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
    if v.dim() != 3 or len(set(v.shape)) != 1:
        raise InputError(None, f"{name} has shape {tuple(v.shape)}, expected a cube (d, d, d)",
                         "pass a real-space volume indexed [z, y, x]")
    return v


def _mask(mask) -> Tensor | None:
    if mask is None:
        return None
    return mask.detach() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))


def volume_correlation(vol_a, vol_b, mask=None, about_mean: bool = True) -> float:
    """Real-space correlation of two volumes over all voxels, or over the voxels where
    ``mask`` (bool, or weights thresholded at 0.5) is set.

    about_mean=True: Pearson ``sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2
    sum (b - mean b)^2)``; False: ``sum a b / sqrt(sum a^2 sum b^2)`` (ChimeraX's
    plain "correlation"). Means are taken over the selected voxels.
    """
    a = _volume(vol_a, "vol_a").double().reshape(-1)
    b = _volume(vol_b, "vol_b").to(a.device).double().reshape(-1)
    if a.shape != b.shape:
        raise InputError(None, f"volumes differ in size ({a.numel()} vs {b.numel()} voxels)",
                         "resample one volume to the other's box first")
    if mask is not None:
        m = _mask(mask)
        m = (m > 0.5 if m.dtype != torch.bool else m).reshape(-1).to(a.device)
        a, b = a[m], b[m]
    if about_mean:
        a, b = a - a.mean(), b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def align_volume(volume, global_rotation, mirrored: bool = False,
                 offset_px=(0.0, 0.0, 0.0)) -> Tensor:
    """Bring a predicted volume into the reference frame of a pose alignment.

    With ``R_true ~ H(R_pred) @ G`` (see :mod:`.poses`; ``H`` the identity or
    ``R -> M R M``, ``M = diag(1, 1, -1)``) and the fitted offset ``delta`` (x, y, z,
    voxels; the aligned map is the truth displaced by ``+delta``), the output is

        ``V_out(a) = V_pred(M^h G (a + delta))``  (``a`` as a column, ``h = mirrored``),

    sampled trilinearly (zero outside the box). Check: projecting ``V_out`` (with
    ``delta = 0``) with ``R_true`` gives, at pixel ``u = (x, y, z)``,
    ``V_pred(M^h G G^T M^h R_pred^T M^h u) = V_pred(R_pred^T (M^h u))``, the projection of
    ``V_pred`` with ``R_pred`` (the z-flip of ``u`` does not change a sum over z).

    ``offset_px`` is in voxels of this volume's box: scale an offset fitted on images of
    size ``D`` by ``d / D``.
    """
    vol = _volume(volume, "volume")
    d = vol.shape[-1]
    dtype = vol.dtype if vol.is_floating_point() else torch.float32
    vol = vol.to(dtype)
    g = torch.as_tensor(np.asarray(global_rotation), dtype=torch.float64)
    m = MIRROR_Z if mirrored else torch.eye(3, dtype=torch.float64)
    delta = torch.as_tensor(np.asarray(offset_px, dtype=np.float64))
    r = torch.arange(d, dtype=torch.float64) - d // 2
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)  # (d^3, 3) rows a, ordered [z][y][x]
    src = (pts + delta) @ g.T @ m + d // 2  # rows (M^h G (a + delta))^T, in voxel indices
    from ..projection import sample_trilinear

    return sample_trilinear(vol[None, None], src.to(dtype=dtype, device=vol.device)[None]).reshape(d, d, d)


@dataclass(frozen=True)
class StateVolumeMetrics:
    """One conformation: real-space correlation (about the mean, inside the mask if one
    was given) and the FSC (:class:`cryofire_nb.fsc.FSCResult`: 0.5 and 0.143 crossings,
    CryoBench AUC) between the aligned predicted and the true volume."""

    state: int
    correlation: float
    fsc: object  # cryofire_nb.fsc.FSCResult

    def to_dict(self) -> dict:
        f = self.fsc

        def cross(c) -> dict:
            return {k: (v if np.isfinite(v) else None) for k, v in
                    (("frequency_px", c.frequency_px),
                     ("resolution_angstrom", c.resolution_angstrom))}

        return {"state": self.state, "correlation": self.correlation, "fsc_auc": f.auc,
                "fsc_0_5": cross(f.at_0_5), "fsc_0_143": cross(f.at_0_143),
                "fsc_curve": [float(v) for v in f.fsc]}


def state_volume_metrics(pred_volumes: Sequence, gt_volumes: Sequence,
                         pixel_size_angstrom: float | None = None, mask=None,
                         align: Callable[[Tensor], Tensor] | None = None
                         ) -> list[StateVolumeMetrics]:
    """Correlation and FSC per state between ``pred_volumes[k]`` (aligned by ``align``,
    e.g. ``functools.partial(align_volume, global_rotation=G, mirrored=h, offset_px=o)``)
    and ``gt_volumes[k]``."""
    from ..fsc import fsc

    if len(pred_volumes) != len(gt_volumes):
        raise InputError(None, f"{len(pred_volumes)} predicted and {len(gt_volumes)} true "
                         "volumes", "pass one predicted volume per true state, in order")
    out = []
    for k, (vp, vt) in enumerate(zip(pred_volumes, gt_volumes)):
        vp, vt = _volume(vp, f"pred_volumes[{k}]"), _volume(vt, f"gt_volumes[{k}]")
        if align is not None:
            vp = align(vp)
        m = None if mask is None else _mask(mask).double().to(vt.device)
        out.append(StateVolumeMetrics(k, volume_correlation(vp, vt, mask),
                                      fsc(vp.double(), vt.double(), pixel_size_angstrom, m)))
    return out


@dataclass(frozen=True)
class PerImageFSC:
    """CryoBench per-image FSC: for sampled images ``i`` (every ``n // n_images``-th
    image, as CryoBench's ``np.arange(0, n, n // n_images)``), the FSC AUC between the
    volume generated at the image's predicted ``z_i`` and the true volume of its state.

    image_indices, labels, auc: (m,) arrays. per_state: state -> (mean, std, count) of
    the AUCs of its sampled images. mean_auc / std_auc: over all sampled images.
    """

    image_indices: np.ndarray
    labels: np.ndarray
    auc: np.ndarray
    per_state: dict[int, tuple[float, float, int]]

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())

    @property
    def std_auc(self) -> float:
        return float(self.auc.std())

    def to_dict(self) -> dict:
        return {"n_images": int(len(self.auc)), "mean_auc": self.mean_auc,
                "std_auc": self.std_auc,
                "per_state": {str(k): {"mean_auc": v[0], "std_auc": v[1], "n_images": v[2]}
                              for k, v in self.per_state.items()}}


def per_image_fsc(z, labels, generator: Callable[[np.ndarray], Tensor],
                  gt_volume: Callable[[int], Tensor] | Sequence, n_images: int = 100,
                  pixel_size_angstrom: float | None = None, mask=None,
                  align: Callable[[Tensor], Tensor] | None = None) -> PerImageFSC:
    """CryoBench's per-image FSC (``metrics/fsc/cdrgn_per_img_fsc.py``).

    generator: ``z_i`` (k,) -> real-space volume (d, d, d), e.g. the decoder at ``z_i``.
    gt_volume: state label -> true volume, or a sequence indexed by label.
    align: applied to each generated volume before the FSC (CryoBench aligns with
        ChimeraX's fitmap, flips allowed; here pass the pose-derived
        :func:`align_volume`). AUC: :func:`cryofire_nb.fsc.cryobench_auc` (max ~0.5).
    """
    from ..fsc import fsc

    z = np.asarray(z.detach().cpu() if isinstance(z, Tensor) else z)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if len(z) != n:
        raise InputError(None, f"{len(z)} latent vectors for {n} labels",
                         "pass one z and one label per image")
    idx = np.arange(0, n, max(1, n // max(1, n_images)))
    lookup = gt_volume if callable(gt_volume) else (lambda k: gt_volume[k])
    m = _mask(mask)
    m = None if m is None else m.double()
    aucs = []
    for i in idx:
        vol = _volume(generator(z[i]), "generated volume")
        if align is not None:
            vol = align(vol)
        ref = _volume(lookup(labels[i].item()), "true volume")
        aucs.append(fsc(vol.double(), ref.double().to(vol.device), pixel_size_angstrom,
                        None if m is None else m.to(vol.device)).auc)
    aucs = np.asarray(aucs)
    per_state = {}
    for k in np.unique(labels[idx]):
        a = aucs[labels[idx] == k]
        per_state[k.item()] = (float(a.mean()), float(a.std()), int(len(a)))
    return PerImageFSC(idx, labels[idx], aucs, per_state)


def volume_radius_of_gyration(volume, pixel_size_angstrom: float = 1.0, top_fraction: float = 0.03) -> float:
    """Radius of gyration (Angstrom) of the densest ``top_fraction`` of the voxels of a
    real-space volume (d, d, d): ``sqrt(sum w |p - c|^2 / sum w)`` with weights ``w`` the
    density of those voxels (0 elsewhere) and ``c`` their weighted centre.

    Keeping only the densest voxels makes it robust to the noise and blur of a
    reconstruction, whose low background would otherwise dominate at large radii; choose
    ``top_fraction`` a little below the molecule's share of the box (a protein of mass
    M Da fills about M / 0.81 cubic Angstrom). Compare volumes with the same fraction:
    the number tracks compaction (e.g. a domain closing) rather than the atomic Rg.
    """
    v = _volume(volume, "volume").detach().cpu().double().numpy()
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    level = np.quantile(v, 1.0 - top_fraction)
    w = np.where(v >= level, v, 0.0)
    w = np.clip(w, 0.0, None)
    if w.sum() <= 0:
        raise InputError(None, "the densest voxels are not positive", "pass a volume with positive density")
    d = v.shape[0]
    r = (np.arange(d) - d // 2) * float(pixel_size_angstrom)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    total = w.sum()
    centre = [(w * a).sum() / total for a in (xx, yy, zz)]
    r2 = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2
    return float(np.sqrt((w * r2).sum() / total))
