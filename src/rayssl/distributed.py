"""The one guard of `torch.distributed` and the few collectives rayssl calls outside DDP.

Every module asks `active()` (a process group of more than one rank is up) rather than
testing `torch.distributed` itself; a single process (local mode, a test, `rayssl eval`
in-process) takes the same code paths with the collectives skipped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether this process is one rank of a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(this rank, the number of ranks); (0, 1) outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place; returned for chaining."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Every rank's `tensors` set to rank 0's, in place."""
    if active():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` (picklable) on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank."""
    if active():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks (a new tensor); the backward sums the gradients over
    the ranks as well (global-batch BatchNorm's statistics)."""
    if not active():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s elementwise maximum over the ranks, in place; returned for chaining."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def stack_from_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (equal shapes), stacked along a new first axis in rank order."""
    if not active():
        return tensor[None]
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank concatenated along dim 0, without gradient (momentum keys)."""
    return x if not active() else torch.cat(list(stack_from_ranks(x)))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` of every rank concatenated along dim 0; gradients flow back to each rank's
    slice (the global-batch losses: NT-Xent's negatives, VICReg's statistics, ...)."""
    if not active():
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    # torch 2.13 marks this public autograd all_gather deprecated in favour of a private
    # module (torch.distributed._functional_collectives); until a public successor exists
    # it stays, without its warning on every worker.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.cat(all_gather(x), dim=0)
