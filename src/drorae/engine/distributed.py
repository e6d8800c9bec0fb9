"""Devices and data parallelism: one process per device under ``torchrun``, PyTorch's own DDP.

``setup_distributed`` reads the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``),
joins the process group (NCCL on GPUs, gloo on CPUs) and picks the device. :meth:`Distributed.wrap`
puts a module under :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the
gradients of its trainable parameters in buckets that overlap with the backward pass. A trainer
wraps only what it trains: a frozen backbone stays outside the wrapper, so it is neither
broadcast nor hooked.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_DDP_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this object joined the process group, so it leaves it in shutdown()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` under DDP when several processes train, else ``module`` itself.

        Buffers are not broadcast at every forward: the trained
        modules' buffers are constants (position embeddings) or evolve identically on every rank
        from identical weights (spectral-norm vectors).
        """
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        # torch >= 2.14 names the switch forward_sync_buffers (broadcast_buffers is deprecated there)
        no_sync = {"forward_sync_buffers": False} if _DDP_HAS_FORWARD_SYNC else {"broadcast_buffers": False}
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters, **no_sync)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        """Leave the process group this object joined (before the process exits: a live gloo group
        at interpreter exit can abort the process)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small: counters and RNG states), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device_kind(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is visible (set train.device=cpu or auto)")
    return device


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the ``torchrun`` process group if there is one; one device per process."""
    kind = resolve_device_kind(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank, owns = 0, 0, False
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if kind == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
            owns = True
        rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(f"cuda:{local_rank}" if kind == "cuda" else "cpu")
    if kind == "cuda":
        torch.cuda.set_device(dev)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)
