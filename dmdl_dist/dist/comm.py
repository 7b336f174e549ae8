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
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenates `t` from every rank along dim 0; sizes may differ between ranks. No gradient."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather_cat with a gradient: backward sums every rank's gradient and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        sizes = all_gather_cat(torch.tensor([t.shape[0]], device=t.device))
        ctx.start = int(sizes[: rank()].sum())
        ctx.end = ctx.start + t.shape[0]
        return all_gather_cat(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.end]


def gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(rows of every rank, this rank's slice of them); gradients reach each rank's own rows.

    The PartialFC all-gather: each rank scores all gathered rows against its memory shard, and
    the backward pass sums the partial gradients of every rank (each objective term must then
    be counted once across ranks; see memory/sharded_loss.py).
    """
    if not is_distributed():
        return t, slice(0, t.shape[0])
    out = _GatherWithGrad.apply(t)
    sizes = all_gather_cat(torch.tensor([t.shape[0]], device=t.device))
    start = int(sizes[: rank()].sum())
    return out, slice(start, start + t.shape[0])


class _ReplicatedSum(torch.autograd.Function):
    """Sum over ranks whose result every rank uses: backward sums the ranks' upstream gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def replicated_sum(t: torch.Tensor) -> torch.Tensor:
    return _ReplicatedSum.apply(t) if is_distributed() else t
