"""Training on several processes with ``torchrun`` (PyTorch DistributedDataParallel).

``torchrun --nproc_per_node P -m cryofire_nb train ...`` starts P copies of the command;
each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment torchrun sets,
joins one process group (NCCL on GPUs, gloo on CPUs) and:

* trains on its share of every batch: all ranks draw the same epoch order (a function of
  the seed and the epoch) and rank r takes the r-th of P equal parts of each batch, so the
  global batch is the ``-b`` of a single process; DDP averages the gradients, which for
  equal parts is the gradient of the whole batch;
* takes every decision that depends on a clock or on rank-local numbers together: a stop
  (time limit, SIGINT/SIGTERM on any rank) is agreed every step, and the schedule from
  the throughput probe, the end of the distillation and the pose and latent tables after
  the search and the refinement are rank 0's, sent to the others;
* writes nothing unless it is rank 0 (outputs, checkpoints, config.yaml).

The voxel pose search divides its global search, local rounds and backprojections
between the ranks (each takes a contiguous part of the particles; the parts are joined
with all-gathers and all-reduces, :mod:`cryofire_nb.parallel`). The heterogeneous
refinement still runs on every rank over all particles (its tables are then rank 0's),
so it takes as long as on one process. A single process (no torchrun, or
``WORLD_SIZE=1``) uses none of this.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..parallel import part_bounds

# stop reasons in order of precedence, agreed with an all-reduce of their codes
STOP_CODES = {None: 0, "time_limit": 1, "interrupted": 2}
STOP_NAMES = {v: k for k, v in STOP_CODES.items()}
# the search and refinement can run for hours on one rank while the others wait at the
# next collective; the default timeout of 30 minutes would end the run
TIMEOUT = datetime.timedelta(hours=24)


class _StepModule(nn.Module):
    """Runs one training step function through DDP's forward, so that DDP sees every
    use of the parameters in the step (several encoder and decoder calls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kw):
        res = fn(self.model, *args, **kw)
        return res.loss, res


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun job, or runs alone."""
    return os.environ.get("RANK", "0") == "0"


class Group:
    """This process's place in the run: ``rank`` of ``world`` (0 of 1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = device or torch.device("cpu")  # where collectives' tensors live (NCCL: the GPU)
        self._ddp: DistributedDataParallel | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ set-up

    @classmethod
    def from_env(cls, device: torch.device) -> "Group":
        """Join the process group torchrun describes in the environment (or none). On
        GPUs each process takes its own, ``cuda:LOCAL_RANK``: the group's ``device``."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return cls(rank, world, local, device)

    def wrap(self, model: nn.Module, device: torch.device) -> None:
        """Wrap ``model`` for the gradient loop (DDP also sends rank 0's parameters to all)."""
        if not self.active:
            return
        ids = [device.index] if device.type == "cuda" else None
        # some steps leave parts of the model unused (e.g. the decoder while only poses train)
        self._ddp = DistributedDataParallel(_StepModule(model), device_ids=ids, find_unused_parameters=True)

    def close(self, wait: bool = True) -> None:
        """Leave the process group (after the others reach this point, with ``wait``)."""
        if self.active and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()

    # ------------------------------------------------------------------ the step

    def step(self, fn, model: nn.Module, *args, **kw):
        """``fn(model, *args, **kw)``, through DDP when the run has several processes."""
        if self._ddp is None:
            return fn(model, *args, **kw)
        _, res = self._ddp(fn, *args, **kw)
        return res

    def shard(self, positions):
        """This rank's part of a batch (all of it on one process)."""
        if not self.active:
            return positions
        return positions[self.rank::self.world]

    # ------------------------------------------------------------------ particle-parallel stages

    def part(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part ``lo:hi`` of ``n`` particles."""
        return part_bounds(n, self.rank, self.world)

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's part (rows ``part(n)`` of an (n, ...) array), joined in order."""
        if not self.active:
            return local
        sizes = [hi - lo for lo, hi in (part_bounds(n, r, self.world) for r in range(self.world))]
        buf = local.new_zeros((max(sizes), *local.shape[1:]), device=self.device)
        buf[:len(local)] = local.to(self.device)
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)]).to(local.device)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (the same values on every rank)."""
        if self.active:
            u = t.to(self.device)
            dist.all_reduce(u)
            if u is not t:
                t.copy_(u)
        return t

    def any(self, flag: bool) -> bool:
        """Whether any rank has ``flag`` (the same answer on every rank)."""
        if not self.active:
            return bool(flag)
        f = torch.tensor([int(bool(flag))], dtype=torch.int64, device=self.device)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        return bool(f.item())

    # ------------------------------------------------------------------ agreement

    def agree_stop(self, reason: str | None) -> str | None:
        """The stop every rank takes: the strongest reason any rank has."""
        if not self.active:
            return reason
        code = torch.tensor([STOP_CODES[reason]], dtype=torch.int64, device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return STOP_NAMES[int(code)]

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def tensor_from_main(self, t: torch.Tensor) -> None:
        """Overwrite ``t`` with rank 0's values, in place."""
        if self.active:
            with torch.no_grad():
                dist.broadcast(t.data, src=0)
