"""Data-parallel ZO: every process runs the same ZO step on its share of the global batch.

Launched by `accelerate launch` or `torchrun` (both set RANK / WORLD_SIZE / LOCAL_RANK). Per step,
all ranks draw the same step seed (same optimizer seed), so z is identical everywhere and only two
scalars cross the network: each perturbed loss, all-reduced as an example-weighted sum, so that every
rank sees exactly the loss of the global batch and applies the same update. Weights therefore stay
identical without ever being broadcast. The estimator and the sigma policies know nothing of this:
the recipe wraps its loss function (`weighted_mean_loss`) and shards its batches (`shard`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

# Rank 0 alone runs dev evaluations while the others wait at the next all-reduce: be patient.
DEFAULT_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this module created the torch.distributed group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(device: torch.device) -> ProcessGroup:
    """Join the launcher's process group (gloo for CPU, nccl for CUDA); a single process needs none."""
    world = launched_world_size()
    if world <= 1:
        return ProcessGroup()
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=DEFAULT_TIMEOUT, **kwargs)
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def shard(items: Sequence[T], rank: int, world_size: int) -> tuple[list[T], int]:
    """(this rank's items, how many of them count): contiguous, balanced slices of the global batch.

    A rank whose slice would be empty (a short last batch) gets the first item with a count of 0: it
    still runs the forward (every block must be reached) but carries no weight in the mean.
    """
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    mine = list(items[start:start + base + (rank < extra)])
    return (mine, len(mine)) if mine else ([items[0]], 0)


def weighted_mean_loss(loss_fn: Callable[[], torch.Tensor | float], weight: float,
                       group: ProcessGroup, device: torch.device) -> float:
    """sum_r weight_r * loss_r / sum_r weight_r over all ranks (one all-reduce of two numbers).

    With weight = the rank's number of examples (or loss tokens), this is the loss of the global batch.
    """
    local = float(loss_fn()) if weight > 0 else 0.0
    if not group.enabled:
        return local
    import torch.distributed as dist

    comm_device = device if device.type == "cuda" else torch.device("cpu")  # gloo reduces CPU tensors
    pair = torch.tensor([local * weight, float(weight)], dtype=torch.float64, device=comm_device)
    dist.all_reduce(pair)
    total, weights = pair.tolist()
    return total / weights


def barrier(group: ProcessGroup) -> None:
    if group.enabled:
        import torch.distributed as dist

        dist.barrier()


def destroy(group: ProcessGroup) -> None:
    if group.enabled and group.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
