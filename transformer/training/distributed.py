"""Distributed data parallel (DDP) context, read from the variables `torchrun` sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (a no-op when training alone)."""
        if self.enabled:
            dist.barrier()

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's value of `flag`, on every rank, so that all ranks decide alike."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def broadcast_number(self, value: float, device: torch.device) -> float:
        """Rank 0's value of `value`, on every rank (float64: every rank gets it exactly)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def broadcast_object(self, value: T) -> T:
        """Rank 0's `value` (a picklable object: a path, a name), on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on any rank; every rank must call this at the same point."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())


def context_from_environment() -> DistributedContext:
    """Rank, world size and local rank from torchrun's RANK, WORLD_SIZE, LOCAL_RANK."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_process_group(context: DistributedContext, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs."""
    if context.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)


def destroy_process_group(context: DistributedContext) -> None:
    """Leave the process group, if we joined one."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
