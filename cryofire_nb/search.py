"""Pose search against an explicit Hartley voxel volume: global grid search, local
refinement and the backprojection that turns pose assignments into a volume.

Everything lives on the odd symmetric Hartley lattice of an even box ``d``
(:mod:`cryofire_nb.lattice`): images are (b, n) vectors of Hartley coefficients with
``n = (d+1)^2``; the volume is a real Hartley grid ``(d+1)^3`` indexed [z, y, x] whose
voxel ``(i, j, l)`` holds frequency ``((l, j, i) - d/2) / d`` cycles/pixel. A pose is a
rotation ``R`` (slice ``[kx, ky, 0] @ R``) and a shift ``t`` in pixels such that the
observed image translated by ``+t`` matches the centred projection (a stored particle is
the projection translated by ``-t``).

The score of a pose is the Gaussian log-likelihood of the image given the CTF-modulated
slice, ``-|x_t - c * s_R|^2 / (2 sigma^2)``, summed over the lattice points inside the
current frequency mask (DC excluded). For a batch it is computed for all rotations and
shifts at once with two matrix products:
``|x_t|^2 - 2 <x_t * c, s_R> + <c^2, s_R^2>``.

Dimension letters: b images, s shifts, r rotations, n lattice points in the mask, k top
poses kept per image, m = d + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fft import ht3_center, iht3_center
from .lattice import Lattice
from .projection import sample_trilinear, scatter_trilinear, slice_positions

Tensor = torch.Tensor


# --------------------------------------------------------------------------- volume helpers


def hartley_volume_to_real(vol_h: Tensor) -> Tensor:
    """Symmetric Hartley grid (m, m, m) -> real-space volume (d, d, d) [z, y, x]."""
    return iht3_center(vol_h[:-1, :-1, :-1])


def real_to_hartley_volume(vol: Tensor) -> Tensor:
    """Real-space volume (d, d, d) -> symmetric Hartley grid (d+1)^3 (index 0 copied to d)."""
    h = ht3_center(vol)
    h = torch.cat([h, h[:1]], 0)
    h = torch.cat([h, h[:, :1]], 1)
    return torch.cat([h, h[:, :, :1]], 2)


def spherical_support(d: int, radius: float, dtype=torch.float32, device=None) -> Tensor:
    """Real-space mask (d, d, d): 1 within ``radius * d`` voxels of the box centre, else 0."""
    r = torch.arange(d, dtype=dtype, device=device) - d // 2
    zz, yy, xx = torch.meshgrid(r, r, r, indexing="ij")
    return ((xx ** 2 + yy ** 2 + zz ** 2).sqrt() <= radius * d).to(dtype)


def shift_grid(max_shift_px: float, step_px: float, dtype=torch.float32) -> Tensor:
    """Square grid of shifts (s, 2) in pixels covering [-max, max] with the given step."""
    n = int(math.floor(max_shift_px / step_px + 1e-6))
    v = torch.arange(-n, n + 1, dtype=dtype) * step_px
    sy, sx = torch.meshgrid(v, v, indexing="ij")
    return torch.stack([sx.flatten(), sy.flatten()], -1)


def shifted_images(x: Tensor, lat: Lattice, shifts: Tensor, index: Tensor) -> Tensor:
    """Images (b, N_full) translated by each shift (s, 2) (or per image (b, s, 2)),
    restricted to ``index``: (b, s, n). ``H'(k) = cos(2 pi k.t) H(k) + sin(2 pi k.t) H(-k)``."""
    k = lat.coords_xy[index].to(x.dtype)  # (n, 2)
    if shifts.dim() == 2:
        phase = 2 * math.pi * (shifts.to(x.dtype) @ k.T)[None]  # (1, s, n)
    else:
        phase = 2 * math.pi * torch.einsum("bsc,nc->bsn", shifts.to(x.dtype), k)
    xp = x[:, index][:, None]  # (b, 1, n)
    xm = x.flip(-1)[:, index][:, None]  # H(-k)
    return torch.cos(phase) * xp + torch.sin(phase) * xm


# --------------------------------------------------------------------------- scoring


@dataclass
class SearchResult:
    """Best poses per image and the posterior over the top ``k`` candidates."""

    rots: Tensor  # (b, k, 3, 3), best first
    shifts_px: Tensor  # (b, k, 2)
    log_post: Tensor  # (b, k) unnormalised log posterior (temperature applied)
    weights: Tensor  # (b, k) normalised over the k candidates
    sq_err: Tensor  # (b,) squared error of the best pose


# Scores held at once by a global search, (batch x shifts x rotations): 2^24 float32 values
# are 64 MiB per temporary, a few hundred MiB in all, whatever the box and the grid.
SCORE_ELEMENTS = 1 << 24


def global_search(x: Tensor, ctf: Tensor, vol_h: Tensor, lat: Lattice, index: Tensor,
                  rots: Tensor, shifts: Tensor, sigma2: float, top_k: int = 1,
                  beta: float = 1.0, rot_chunk: int = 8192) -> SearchResult:
    """Exhaustive search over ``rots`` (r, 3, 3) x ``shifts`` (s, 2) for images ``x``
    (b, N_full) with CTF ``ctf`` (b, N_full), using lattice points ``index`` (n,)."""
    xs = shifted_images(x, lat, shifts, index)  # (b, s, n)
    c = ctf[:, index]  # (b, n)
    b, s, n = xs.shape
    x2 = (xs * xs).sum(-1)  # (b, s)
    xc = (xs * c[:, None]).reshape(b * s, n)  # (b*s, n)
    c2 = c * c  # (b, n)
    best_val = torch.full((b, top_k), -float("inf"), dtype=x.dtype, device=x.device)
    best_idx = torch.zeros((b, top_k), dtype=torch.long, device=x.device)
    # the (b, s, r) scores and their temporaries dominate memory: bound r by the batch's b * s
    rot_chunk = max(64, min(rot_chunk, SCORE_ELEMENTS // max(b * s, 1)))
    for r0 in range(0, rots.shape[0], rot_chunk):
        r = rots[r0:r0 + rot_chunk]
        pos = slice_positions(lat.coords[index], r, lat.d)  # (r, n, 3)
        sl = sample_trilinear(vol_h[None, None], pos.reshape(1, -1, 3)).reshape(r.shape[0], -1)  # (r, n)
        cross = (xc @ sl.T).reshape(b, s, -1)  # (b, s, r)
        pw = c2 @ (sl * sl).T  # (b, r)
        err = x2[:, :, None] - 2 * cross + pw[:, None, :]  # (b, s, r)
        logp = (-beta / (2 * sigma2)) * err
        flat = logp.reshape(b, -1)
        val, idx = flat.topk(min(top_k, flat.shape[1]), dim=1)
        # global flat index = s_idx * R_total + (r0 + r_idx)
        s_idx, r_idx = idx // r.shape[0], idx % r.shape[0]
        gidx = s_idx * rots.shape[0] + r0 + r_idx
        cat_v = torch.cat([best_val, val], 1)
        cat_i = torch.cat([best_idx, gidx], 1)
        best_val, sel = cat_v.topk(top_k, dim=1)
        best_idx = cat_i.gather(1, sel)
    s_best, r_best = best_idx // rots.shape[0], best_idx % rots.shape[0]
    w = torch.softmax(best_val, dim=1)
    sq_err = -best_val[:, 0] * 2 * sigma2 / beta
    return SearchResult(rots[r_best], shifts[s_best], best_val, w, sq_err)


def local_search(x: Tensor, ctf: Tensor, vol_h: Tensor, lat: Lattice, index: Tensor,
                 rots0: Tensor, shifts0: Tensor, rot_perturb: Tensor, shift_offsets: Tensor,
                 sigma2: float) -> SearchResult:
    """Search around each image's pose: ``rots0 (b,3,3) @ ... `` perturbed by ``rot_perturb``
    (p, 3, 3) (applied on the left: ``P @ R``) and ``shifts0 (b, 2) + shift_offsets (s, 2)``."""
    b = x.shape[0]
    cand = rot_perturb[None] @ rots0[:, None]  # (b, p, 3, 3)
    p = cand.shape[1]
    sh = shifts0[:, None] + shift_offsets[None].to(shifts0.dtype)  # (b, s, 2)
    xs = shifted_images(x, lat, sh, index)  # (b, s, n)
    c = ctf[:, index]  # (b, n)
    pos = slice_positions(lat.coords[index], cand.reshape(-1, 3, 3), lat.d)  # (b p, n, 3)
    sl = sample_trilinear(vol_h[None, None], pos.reshape(1, -1, 3)).reshape(b, p, -1)  # (b, p, n)
    cross = torch.einsum("bsn,bpn->bsp", xs * c[:, None], sl)  # (b, s, p)
    pw = torch.einsum("bn,bpn->bp", c * c, sl * sl)  # (b, p)
    err = (xs * xs).sum(-1)[:, :, None] - 2 * cross + pw[:, None, :]  # (b, s, p)
    flat = err.reshape(b, -1)
    e, i = flat.min(dim=1)
    si, pi = i // p, i % p
    ar = torch.arange(b, device=x.device)
    return SearchResult(cand[ar, pi][:, None], sh[ar, si][:, None], (-e / (2 * sigma2))[:, None],
                        torch.ones(b, 1, dtype=x.dtype, device=x.device), e)


def perturbation_grid(step_deg: float, n: int = 1, dtype=torch.float32) -> Tensor:
    """Small rotations (p, 3, 3): axis-angle offsets on a (2n+1)^3 cube with the given step."""
    from .rotations import axis_angle_to_matrix

    v = torch.arange(-n, n + 1, dtype=torch.float64) * math.radians(step_deg)
    a, b_, c = torch.meshgrid(v, v, v, indexing="ij")
    aa = torch.stack([a.flatten(), b_.flatten(), c.flatten()], -1)
    return axis_angle_to_matrix(aa).to(dtype)


# --------------------------------------------------------------------------- backprojection


@dataclass
class Accumulator:
    """Running sums for a Hartley voxel reconstruction ``num / (den + lam)``."""

    num: Tensor  # (m, m, m)
    den: Tensor  # (m, m, m)

    @classmethod
    def zeros(cls, d: int, dtype=torch.float32, device=None) -> "Accumulator":
        z = torch.zeros((d + 1,) * 3, dtype=dtype, device=device)
        return cls(z, z.clone())

    def decay(self, rho: float) -> None:
        self.num.mul_(rho)
        self.den.mul_(rho)

    def add(self, x: Tensor, ctf: Tensor, lat: Lattice, index: Tensor, rots: Tensor,
            shifts_px: Tensor, weights: Tensor | None = None) -> None:
        """Backproject images ``x`` (b, N_full) at poses ``rots`` (b, k, 3, 3),
        ``shifts_px`` (b, k, 2) with weights (b, k) (default 1)."""
        b, k = rots.shape[:2]
        w = torch.ones(b, k, dtype=x.dtype, device=x.device) if weights is None else weights
        xs = shifted_images(x, lat, shifts_px, index)  # (b, k, n)
        c = ctf[:, index][:, None]  # (b, 1, n)
        pos = slice_positions(lat.coords[index], rots.reshape(-1, 3, 3), lat.d).reshape(1, -1, 3)  # (1, b k n, 3)
        vals = torch.stack([(w[..., None] * c * xs).reshape(-1), (w[..., None] * c * c).expand(b, k, -1).reshape(-1)])
        sums = scatter_trilinear(vals[None], pos, lat.d + 1)[0]  # (2, m, m, m): one pass over the corners
        self.num += sums[0]
        self.den += sums[1]

    def volume(self, lam: float | Tensor) -> Tensor:
        return self.num / (self.den + lam)
