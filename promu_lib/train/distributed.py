"""torchrun / DDP support shared by the training loops.

Run any entry point under ``torchrun --nproc_per_node=N``: ``init()`` reads the environment
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), starts a process group (gloo on CPU, nccl on
GPU) and every loop writes files on rank 0 only. Without torchrun everything is a single
process and these helpers are no-ops.

Batches are cut so that N processes and one process with gradient accumulation see the same
data: an optimiser step consumes ``world * accum`` micro-batches of ``batch_size`` posts; rank
r takes micro-batches ``a * world + r`` for a in 0..accum-1. DDP averages gradients over
ranks, accumulation over micro-batches, so both give the same update (for the losses that are
means over pairs). The contrastive loss is the exception: its in-batch negatives are gathered
from all ranks (``promu_lib.models.gather``, as the official code does), so N processes with
batch b contrast N x b pairs, while accumulation contrasts b pairs per micro-batch; it cannot
enlarge that set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init() started the process group (finish() ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(device: torch.device) -> Dist:
    """Join the torchrun process group when launched by torchrun, else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns)


def finish(d: Dist) -> None:
    """The last barrier; then end the process group if ``init`` started it (every rank), so
    no rank tears its connections down at interpreter exit while another still uses them."""
    barrier(d)
    if d.enabled and d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a (detached) tensor over ranks, for logging."""
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / d.world


def step_micro_batches(
    order: list[int], step_in_epoch: int, batch_size: int, accum: int, d: Dist
) -> Iterator[list[int]]:
    """The micro-batches (lists of dataset indices) this rank runs for one optimiser step."""
    per_step = batch_size * accum * d.world
    start = step_in_epoch * per_step
    for a in range(accum):
        offset = start + (a * d.world + d.rank) * batch_size
        yield order[offset : offset + batch_size]


def steps_per_epoch(n: int, batch_size: int, accum: int, d: Dist) -> int:
    """Full optimiser steps in one pass over ``n`` items (the remainder is dropped)."""
    return n // (batch_size * accum * d.world)
