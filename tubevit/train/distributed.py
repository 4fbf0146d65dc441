"""torchrun / DDP helpers: process-group setup, rank queries, wrapping and all-reduce utilities.

Launch with ``torchrun --nproc_per_node N -m <module> ...``: torchrun sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and :func:`init_distributed` joins the group with
``init_method="env://"`` (gloo on the CPU, nccl on CUDA). Without those variables (or with
``WORLD_SIZE=1``) everything degrades to a single process and no group is created.

DDP uses ``find_unused_parameters=True`` (docs/design.md "Beyond one machine"): an image step leaves the 3D tubes
and the video heads without gradients, and DDP fails at the second step otherwise.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_gather_tensors",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_distributed",
    "is_main",
    "rank",
    "resolve_device",
    "unwrap",
    "world_size",
    "wrap_ddp",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``.

    Raises:
        RuntimeError: ``cuda`` was asked for but CUDA is not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` and pick this rank's device.

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (see :func:`resolve_device`). The backend is nccl for CUDA
            and gloo for the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=global_rank, world_size=world)
        log.info("joined process group: rank %d of %d (%s, %s)", global_rank, world, backend, dev)
    return DistInfo(rank=global_rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs, writes checkpoints and calls callbacks."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model, find_unused_parameters=True)`` in a process group, else ``model``."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers (whose state dict has clean keys)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over ranks (a new tensor; the input is untouched)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over ranks (a new tensor)."""
    return all_reduce_sum(tensor) / world_size()


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``[tensor of rank 0, tensor of rank 1, ...]``: every rank passes one of the same shape and dtype
    (on its device: CUDA under nccl); ``[tensor]`` in a single process."""
    if not is_distributed():
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
