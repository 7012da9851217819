"""Gathering a batch from all DDP ranks, for the in-batch negatives of CIT (Eq. 5) and ITM.

Under ``torchrun`` (``promu_lib.train.distributed`` starts the process group) every rank holds
its own micro-batch; the contrastive losses gather the embeddings of all ranks, as the official
code does, so that N processes with batch b contrast N x b pairs. With no process group, or a
single process, every function here returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


class _GatherWithGrad(torch.autograd.Function):
    """cat(x of rank 0, ..., x of rank N-1) along dim 0; every rank's x must have one shape.

    Backward: each rank's loss may read every slice, so the gradient of this rank's slice is
    the sum over ranks (an all-reduce), exactly as if one process had computed all the losses.
    DDP then averages parameter gradients over ranks, which gives the gradient of the mean of
    the ranks' losses. Every rank must run the same graph (it calls one collective in backward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (dist.get_rank() * x.shape[0], (dist.get_rank() + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0] : ctx.rows[1]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(world x B, ...) from each rank's (B, ...), gradients flowing back to every rank's own
    part; ``x`` itself in a single process."""
    return x if world_size() <= 1 else _GatherWithGrad.apply(x)


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """(world x B, ...) from each rank's (B, ...), no gradient (labels, ids); ``x`` alone."""
    if world_size() <= 1:
        return x
    send = x.detach().contiguous()
    wire = send.to(torch.uint8) if send.dtype == torch.bool else send  # gloo has no bool
    parts = [torch.empty_like(wire) for _ in range(world_size())]
    dist.all_gather(parts, wire)
    return torch.cat(parts).to(x.dtype)


def pad_to_longest(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``x`` zero-padded along ``dim`` to the longest such size over ranks (token sequences of
    different micro-batches), so that it can be gathered; ``x`` alone in a single process."""
    if world_size() <= 1:
        return x
    longest = torch.tensor([x.shape[dim]], device=x.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    extra = int(longest) - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def rank_offset(batch_size: int) -> int:
    """The row of this rank's first item in a gathered batch."""
    return _rank() * batch_size
