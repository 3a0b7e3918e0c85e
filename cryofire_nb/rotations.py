"""Rotations: random draws, the S2S2 (6-D) parametrisation, RELION Euler angles,
cryoSPARC axis-angle vectors, quaternions, and the mirror map used by the symmetric loss.

Convention (cryoDRGN): a rotation ``R`` maps a volume to an image by the Fourier slice
``[kx, ky, 0] @ R`` (row vectors); the projection direction (view direction) is the
third row ``R[2]``. An atom at position ``a`` lands at image position ``(R @ a)[:2]``.

Dimension letters: b batch. All functions take torch tensors of any float dtype and
device, batched over leading dimensions, and are differentiable where that makes sense.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Tensor = torch.Tensor


def _as_tensor(x, dtype=None) -> Tensor:
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float64)


# --------------------------------------------------------------------------- random


def random_rotations(n: int, generator: torch.Generator | None = None,
                     dtype=torch.float32, device=None) -> Tensor:
    """``n`` rotations drawn uniformly (Haar measure) via random unit quaternions."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)  # (b, 4)
    q = q / q.norm(dim=-1, keepdim=True)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- S2S2 (6-D)


def s2s2_to_matrix(v: Tensor) -> Tensor:
    """6-D representation -> rotation (Gram-Schmidt), rows ``[b1, b2, b1 x b2]``.

    ``v`` is (..., 6): two 3-vectors ``a1 = v[..., :3]`` and ``a2 = v[..., 3:]``.
    The output is exactly orthonormal with determinant +1 for any non-degenerate input.
    """
    a1, a2 = v[..., :3], v[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)  # (..., 3, 3)


def matrix_to_s2s2(r: Tensor) -> Tensor:
    """Rotation -> its 6-D representation (first two rows)."""
    return torch.cat([r[..., 0, :], r[..., 1, :]], dim=-1)


# --------------------------------------------------------------------------- elementary


def rot_z(angle_rad: Tensor) -> Tensor:
    """Right-handed rotation matrices about z, (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*c.shape, 3, 3)


def rot_y(angle_rad: Tensor) -> Tensor:
    """Right-handed rotation matrices about y, (..., 3, 3)."""
    c, s = torch.cos(angle_rad), torch.sin(angle_rad)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*c.shape, 3, 3)


# --------------------------------------------------------------------------- RELION


def relion_euler_to_matrix(euler_deg) -> Tensor:
    """RELION (rot, tilt, psi) in degrees, ZYZ, -> our rotation matrices (..., 3, 3).

    Equals cryoDRGN's ``R_from_relion``: ``R = (Rz(rot) Ry(tilt) Rz(psi))^T``, which is
    ``Rz(-psi) Ry(-tilt) Rz(-rot)``. Checked against ``relion_project`` output in the
    tests (``../shared/fixtures/aspire``).
    """
    e = torch.deg2rad(_as_tensor(euler_deg))
    rot, tilt, psi = e[..., 0], e[..., 1], e[..., 2]
    return rot_z(-psi) @ rot_y(-tilt) @ rot_z(-rot)


def matrix_to_relion_euler(r) -> Tensor:
    """Inverse of :func:`relion_euler_to_matrix`: (..., 3, 3) -> (rot, tilt, psi) degrees.

    With ``A = R^T = Rz(rot) Ry(tilt) Rz(psi)``: ``tilt = acos(A[2,2])``,
    ``rot = atan2(A[1,2], A[0,2])``, ``psi = atan2(A[2,1], -A[2,0])``; at the poles
    (tilt 0 or 180) ``psi`` is set to 0 and the whole in-plane angle goes to ``rot``.
    """
    a = _as_tensor(r).transpose(-1, -2)
    tilt = torch.acos(a[..., 2, 2].clamp(-1.0, 1.0))
    rot = torch.atan2(a[..., 1, 2], a[..., 0, 2])
    psi = torch.atan2(a[..., 2, 1], -a[..., 2, 0])
    pole = torch.sin(tilt).abs() < 1e-6
    if pole.any():
        # A = Rz(rot) Ry(0 or pi) Rz(psi): choose psi = 0 and read rot from A's first column,
        # which is (cos rot, sin rot, 0) at tilt 0 and (-cos rot, -sin rot, 0) at tilt 180.
        flip = torch.sign(a[..., 2, 2])
        rot_pole = torch.atan2(a[..., 1, 0] * flip, a[..., 0, 0] * flip)
        rot = torch.where(pole, rot_pole, rot)
        psi = torch.where(pole, torch.zeros_like(psi), psi)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))


# --------------------------------------------------------------------------- axis-angle


def axis_angle_to_matrix(v) -> Tensor:
    """Rodrigues: rotation vector (..., 3) (radians times unit axis) -> exp(hat(v))."""
    v = _as_tensor(v)
    theta = v.norm(dim=-1, keepdim=True)  # (..., 1)
    small = theta < 1e-8
    axis = v / torch.where(small, torch.ones_like(theta), theta)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)
    th = theta[..., None]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(k)
    return eye + torch.sin(th) * k + (1 - torch.cos(th)) * (k @ k)


def cryosparc_pose_to_matrix(pose) -> Tensor:
    """cryoSPARC ``alignments3D/pose`` (axis-angle vector) -> our rotation: exp(hat(v))^T."""
    return axis_angle_to_matrix(pose).transpose(-1, -2)


def matrix_to_axis_angle(r) -> Tensor:
    """Rotation (..., 3, 3) -> rotation vector (..., 3) (via the quaternion)."""
    q = matrix_to_quaternion(_as_tensor(r))  # (..., 4) w, x, y, z with w >= 0
    xyz = q[..., 1:]
    s = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    return torch.where(s > 1e-12, xyz / s.clamp_min(1e-12) * angle, 2 * xyz)


def matrix_to_cryosparc_pose(r) -> Tensor:
    """Inverse of :func:`cryosparc_pose_to_matrix`."""
    return matrix_to_axis_angle(_as_tensor(r).transpose(-1, -2))


# --------------------------------------------------------------------------- quaternions


def quaternion_to_matrix(q) -> Tensor:
    """Unit quaternion (..., 4) as (w, x, y, z) -> rotation matrix (active, column convention)."""
    q = _as_tensor(q)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return m.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(r) -> Tensor:
    """Rotation matrix (..., 3, 3) -> unit quaternion (w, x, y, z) with w >= 0."""
    r = _as_tensor(r)
    m = r.reshape(-1, 3, 3)
    t = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Four candidate formulas; pick the numerically largest denominator per matrix.
    cand = torch.stack([
        torch.stack([1 + t, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], dim=1)  # (b, 4 candidates, 4)
    diag = torch.stack([1 + t, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                        1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    best = diag.argmax(dim=-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*r.shape[:-2], 4)


# --------------------------------------------------------------------------- mirror


# Rotation by pi about y. For the in-plane vector [kx, ky, 0],
# [-kx, ky, 0] = [kx, ky, 0] @ diag(-1, 1, 1) = [kx, ky, 0] @ diag(-1, 1, -1).
_FLIP_Y = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])


def mirror_pose(rot: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Pose of an x-mirrored image <-> pose of the original image (an involution).

    If image ``I`` has pose ``(R, t)``, its mirror ``I'(x, y) = I(-x, y)`` has pose
    ``(diag(-1, 1, -1) @ R, (-t_x, t_y))``: the slice ``[-kx, ky, 0] @ R`` equals
    ``[kx, ky, 0] @ diag(-1, 1, -1) @ R``. In ZXZ Euler angles this is
    ``(a, b, g) -> (-a, pi - b, pi + g)``.
    """
    flip = _FLIP_Y.to(dtype=rot.dtype, device=rot.device)
    rot_m = flip @ rot
    if shift is None:
        return rot_m, None
    shift_m = shift * torch.tensor([-1.0, 1.0], dtype=shift.dtype, device=shift.device)
    return rot_m, shift_m


def quarter_turn_pose(rot: Tensor, shift: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Pose of an image turned by ``k`` (b,) quarter turns in its plane
    (:func:`cryofire_nb.model.preprocess.quarter_turn_real`), from the pose ``rot``
    (b, 3, 3), ``shift`` (b, 2) of the original. One turn is ``I'(x) = I(P x)`` with
    ``P = [[0, -1], [1, 0]]``; its transform is ``F'(k) = F(P k)``, so the slice
    ``[k, 0] @ R'`` with ``R' = Q^T R`` (``Q = diag(P, 1)``), and the shift ``t' = P^T t``.
    The inverse is ``k -> -k``."""
    c = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=rot.dtype, device=rot.device)[k.long() % 4]
    s = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=rot.dtype, device=rot.device)[k.long() % 4]
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    pk = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (b, 2, 2) = P^k
    qk = torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1),
                      torch.stack([zero, zero, one], -1)], -2)
    return qk.transpose(-1, -2) @ rot, (pk.transpose(-1, -2).to(shift.dtype) @ shift[..., None])[..., 0]


# --------------------------------------------------------------------------- distances


def geodesic_distance_deg(r1: Tensor, r2: Tensor) -> Tensor:
    """Rotation angle (degrees) of ``r1^T r2`` for batches of rotations:
    ``2 asin(||r1 - r2||_F / sqrt(8))``. Equals ``acos((tr(r1^T r2) - 1) / 2)`` but stays
    accurate near 0 (float64 gives ~1e-6 deg for identical rotations, where the acos form
    gives ~1e-6 rad at best)."""
    diff = (r1 - r2).flatten(-2).norm(dim=-1)
    return torch.rad2deg(2 * torch.asin((diff / math.sqrt(8.0)).clamp(max=1.0)))


def so3_grid(n_directions: int, n_inplane: int, dtype=torch.float32, device=None) -> Tensor:
    """Near-uniform grid of rotations: Fibonacci-sphere view directions x in-plane angles.

    Returns (n_directions * n_inplane, 3, 3); the view direction (third row) of block
    ``i`` is the i-th Fibonacci point; in-plane angles are ``2 pi j / n_inplane``.
    Angular spacing is about ``sqrt(4 pi / n_directions)`` rad between directions.
    """
    i = torch.arange(n_directions, dtype=torch.float64) + 0.5
    cos_t = 1 - 2 * i / n_directions
    theta = torch.acos(cos_t)
    phi = math.pi * (1 + math.sqrt(5.0)) * i
    # A = Rz(phi) Ry(theta) Rz(psi) has third column = direction (theta, phi); R = A^T.
    psi = 2 * math.pi * torch.arange(n_inplane, dtype=torch.float64) / n_inplane
    a = rot_z(phi)[:, None] @ rot_y(theta)[:, None] @ rot_z(psi)[None, :]  # (nd, ni, 3, 3)
    return a.transpose(-1, -2).reshape(-1, 3, 3).to(dtype=dtype, device=device)
