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


class VolumeAccumulator:
    """Running sums for ``K`` Hartley voxel volumes fitted to backprojected slices by
    per-voxel least squares, ``V(a) = sum_k a_k V_k`` with per-image coefficients ``a``:
    sums of ``w a_k c x`` (``num``, (m^3, K)) and ``w a_k a_l c^2`` over the pairs
    ``k <= l`` (``den``, (m^3, P)), for images ``x`` with CTF ``c`` and weight ``w``.

    ``K = 1`` with ``a = 1`` is the consensus: the Wiener backprojection
    ``num / (den + lam)`` of the pose search (several weighted pose hypotheses per image);
    ``K > 1`` is the conformational basis of the pose table (:mod:`cryofire_nb.hetero`).
    """

    def __init__(self, d: int, k: int = 1, dtype=torch.float32, device=None):
        m = d + 1
        self.d, self.k, self.m = d, k, m
        self.pairs = [(i, j) for i in range(k) for j in range(i, k)]
        self.num = torch.zeros(m ** 3, k, dtype=dtype, device=device)
        self.den = torch.zeros(m ** 3, len(self.pairs), dtype=dtype, device=device)

    def decay(self, rho: float) -> None:
        """Forget old slices geometrically (the stochastic EM of the pose search)."""
        self.num.mul_(rho)
        self.den.mul_(rho)

    def add(self, x: Tensor, ctf: Tensor, lat: Lattice, index: Tensor, rots: Tensor, shifts_px: Tensor,
            weights: Tensor | None = None, coef: Tensor | None = None) -> None:
        """Backproject images ``x`` (b, N_full) at poses ``rots`` (b, 3, 3), or at ``h``
        hypotheses each, ``rots`` (b, h, 3, 3) and ``shifts_px`` (b, h, 2) with
        ``weights`` (b, h) (default 1); ``coef`` (b, K) the basis coefficients (default 1,
        only for K = 1)."""
        if rots.dim() == 3:
            rots, shifts_px = rots[:, None], shifts_px[:, None]
        b, h = rots.shape[:2]
        if coef is None:
            if self.k != 1:
                raise ValueError(f"{self.k} basis volumes need the images' coefficients")
            coef = torch.ones(b, 1, dtype=x.dtype, device=x.device)
        w = torch.ones(b, h, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
        xs = shifted_images(x, lat, shifts_px, index)  # (b, h, n)
        c = ctf[:, index][:, None]  # (b, 1, n)
        pos = slice_positions(lat.coords[index], rots.reshape(-1, 3, 3), lat.d).reshape(1, -1, 3)  # (1, b h n, 3)
        a = coef.to(x.dtype)
        prod = torch.stack([a[:, i] * a[:, j] for i, j in self.pairs], -1)  # (b, P)
        cx, cc = w[..., None] * c * xs, (w[..., None] * c * c).expand(b, h, -1)  # (b, h, n)
        # numerator and denominator channels in one scatter: the corners are computed once
        vals = torch.cat([cx[..., None] * a[:, None, None, :], cc[..., None] * prod[:, None, None, :]], -1)
        vals = vals.reshape(-1, vals.shape[-1]).T  # (K + P, b h n)
        sums = scatter_trilinear(vals[None], pos, self.m)[0].reshape(vals.shape[0], -1)  # (K + P, m^3)
        self.num += sums[:self.k].T
        self.den += sums[self.k:].T

    def regulariser(self, reg_fraction: float) -> Tensor:
        """``reg_fraction`` x the mean CTF^2 weight of the voxels of V_0 that slices reached."""
        d0 = self.den[:, 0]
        return reg_fraction * d0[d0 > 0].mean() if (d0 > 0).any() else torch.tensor(1.0, dtype=d0.dtype)

    def solve(self, reg_fraction: float, support: Tensor | None = None, positivity: bool = False) -> Tensor:
        """The volumes (K, m, m, m), regularised by :meth:`regulariser`, restricted to the
        real-space ``support`` (d, d, d) and, with ``positivity``, clamped at 0 there."""
        k, m, lam = self.k, self.m, self.regulariser(reg_fraction)
        if k == 1:
            vols = (self.num / (self.den + lam)).T.reshape(1, m, m, m)
        else:
            a = torch.zeros(m ** 3, k, k, dtype=self.den.dtype, device=self.den.device)
            for p, (i, j) in enumerate(self.pairs):
                a[:, i, j] = self.den[:, p]
                a[:, j, i] = self.den[:, p]
            eye = torch.eye(k, dtype=torch.float64, device=a.device)
            sol = torch.linalg.solve(a.double() + float(lam) * eye, self.num.double()[..., None])[..., 0]
            vols = sol.to(self.num.dtype).T.reshape(k, m, m, m)
        if support is None and not positivity:
            return vols
        out = []
        for v in vols:
            r = hartley_volume_to_real(v)
            r = r if support is None else r * support
            out.append(real_to_hartley_volume(r.clamp_min(0) if positivity else r))
        return torch.stack(out)
