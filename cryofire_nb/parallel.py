"""How a particle-parallel stage shares its work between processes.

The pose search's global and local stages and the heterogeneous refinement treat each
particle on its own against one volume (or its own combination of basis volumes), and
the volumes are sums over particles. Under ``torchrun`` every process takes a
contiguous part of the particles, sums its part of the backprojection, and the parts are
joined with collectives (:class:`cryofire_nb.train.distributed.Group`). A stage written
against this interface runs the same on one process, where :class:`Alone` makes every
call a no-op over all the particles.

Methods a group provides:

``part(n) -> (lo, hi)``      this process's particles ``lo:hi`` of ``n``
``gather(local, n)``        the rows of every process's part, in order: (n, ...)
``sum_(t)``                 ``t`` summed over the processes, in place
``any(flag) -> bool``       whether any process has ``flag``: decisions taken on a
                            process's own clock (time limits) or signals (stop requests)
                            are taken together, so no process waits at a collective the
                            others skipped
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import stopping


def part_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of ``n`` items split as evenly as possible."""
    return n * rank // world, n * (rank + 1) // world


def own_positions(group, members: Tensor, n: int) -> Tensor:
    """Positions in ``members`` (indices of ``n`` particles) of the particles in this
    process's part."""
    lo, hi = group.part(n)
    return torch.nonzero((members >= lo) & (members < hi)).squeeze(1)


def join_rows(group, rows: Tensor) -> None:
    """Every process's part of the (n, ...) array ``rows`` (the rows it updated), copied
    in place into all processes' arrays."""
    if group.active:
        n = rows.shape[0]
        lo, hi = group.part(n)
        rows.copy_(group.gather(rows[lo:hi].contiguous(), n))


def stop_together(group, stopped: bool) -> None:
    """Raise :class:`cryofire_nb.stopping.StageStopped` on every process if any has
    ``stopped`` (a stop request it saw), so no process waits at a collective the others
    skipped."""
    if group.any(stopped):
        raise stopping.StageStopped()


class Alone:
    """One process: every particle is its own, and nothing is exchanged."""

    rank, world, active = 0, 1, False

    def part(self, n: int) -> tuple[int, int]:
        return 0, n

    def gather(self, local: Tensor, n: int) -> Tensor:
        return local

    def sum_(self, t: Tensor) -> Tensor:
        return t

    def any(self, flag: bool) -> bool:
        return bool(flag)
