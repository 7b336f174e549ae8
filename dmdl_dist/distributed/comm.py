"""The one place that knows about ranks.

Every helper falls back to world size 1 when no process group exists, so the per-worker
training function runs unchanged in local mode (fast-reid's utils/comm.py pattern).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def all_gather_sizes(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Every rank's n (e.g. its batch size), as a 1-D long tensor in rank order."""
    local = torch.tensor([n], device=device)
    if not is_distributed():
        return local
    out = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.cat(out)


@torch.no_grad()
def all_gather_cat(t: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenates `t` from every rank along dim 0; sizes may differ between ranks. No gradient.

    `sizes` (all_gather_sizes of the row counts) saves the gather of the sizes when the caller has them.
    """
    if not is_distributed():
        return t
    sizes = [int(s) for s in (all_gather_sizes(t.shape[0], t.device) if sizes is None else sizes)]
    pad = max(sizes) - t.shape[0]
    padded = torch.cat([t, t.new_zeros((pad, *t.shape[1:]))]) if pad else t
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)])


def broadcast_object(obj):
    """Sends a picklable object from rank 0 to every rank and returns it everywhere."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Contiguous [start, end) slice of n items owned by a rank (PartialFC's split)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    per, extra = divmod(n, world)
    start = rank_ * per + min(rank_, extra)
    return start, start + per + (1 if rank_ < extra else 0)


def fault_point(tag: str) -> None:
    """Fault injection for the fault-tolerance test: DMDL_FAULT=<tag>:<rank>:<marker file>.

    The named rank SIGKILLs its own process at this point, once (the marker file remembers),
    as a crashed worker or a lost node would die. Unset, this does nothing.
    """
    spec = os.environ.get("DMDL_FAULT")
    if not spec:
        return
    want_tag, want_rank, marker = spec.split(":", 2)
    if want_tag == tag and int(want_rank) == rank() and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _sum_gradient(grad: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(grad.contiguous().clone())


class _GatherWithGrad(torch.autograd.Function):
    """all_gather_cat with a gradient: backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: torch.Tensor, mine: slice) -> torch.Tensor:
        ctx.mine = mine
        return all_gather_cat(t, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _sum_gradient(grad)[ctx.mine], None, None


def rank_rows(sizes: torch.Tensor) -> slice:
    """This rank's rows in a concatenation of every rank's rows, given all_gather_sizes."""
    start = int(sizes[: rank()].sum())
    return slice(start, start + int(sizes[rank()]))


def gather_with_grad(t: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, slice]:
    """(rows of every rank, this rank's slice of them); gradients reach each rank's own rows.

    The PartialFC all-gather: each rank scores all gathered rows against its memory shard, and
    the backward pass sums the partial gradients of every rank (each objective term must then
    be counted once across ranks; see memory/sharded_loss.py).
    """
    if not is_distributed():
        return t, slice(0, t.shape[0])
    sizes = all_gather_sizes(t.shape[0], t.device) if sizes is None else sizes
    mine = rank_rows(sizes)
    return _GatherWithGrad.apply(t, sizes, mine), mine


class _ReplicatedSum(torch.autograd.Function):
    """Sum over ranks whose result every rank uses: backward sums the ranks' upstream gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _sum_gradient(grad)


def replicated_sum(t: torch.Tensor) -> torch.Tensor:
    return _ReplicatedSum.apply(t) if is_distributed() else t


@torch.no_grad()
def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks of a 1-D tensor (on the rank's device): one all-reduce for many scalars."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics), so that all extract alike."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
