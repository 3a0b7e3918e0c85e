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

from torch import Tensor


def part_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of ``n`` items split as evenly as possible."""
    return n * rank // world, n * (rank + 1) // world


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
