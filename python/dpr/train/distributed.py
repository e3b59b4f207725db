"""The little that training needs to run unchanged under `torchrun` (DDP) or in one process."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_environment(device: torch.device) -> bool:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    import os

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel under torchrun, the module itself otherwise."""
    if world()[1] == 1:
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def shard(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """This rank's batches: the same global order cut into batches, every world-size-th one.

    Every rank gets the same number of batches (a trailing remainder is dropped under DDP) so
    gradient all-reduces stay in step.
    """
    return shard_batches([order[i:i + batch_size] for i in range(0, len(order), batch_size)])


def shard_batches(batches: list[np.ndarray]) -> list[np.ndarray]:
    """This rank's share of a list of batches that is the same on every rank."""
    rank, size = world()
    if size == 1:
        return batches
    usable = len(batches) - len(batches) % size
    return batches[rank:usable:size]


def broadcast_state(module: nn.Module) -> None:
    """Make every rank's parameters equal to rank 0's."""
    if world()[1] > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def main_value(value: float) -> float:
    """Rank 0's `value` on every rank (`value` itself in one process)."""
    if world()[1] == 1:
        return value
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world()[1] > 1:
        dist.barrier()
