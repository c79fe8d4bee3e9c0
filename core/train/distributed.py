"""Distributed data parallel training under torchrun: ranks, reductions, and who talks to MLflow.

``torchrun --nproc-per-node N -m losslab.core.cli.main run EXP.yaml`` (or
``lab run EXP.yaml --nproc N``, which launches exactly that) sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; every rank trains on its shard of each
batch, gradients are averaged by DDP, metrics are reduced across ranks, and
only rank 0 logs to MLflow and writes checkpoints. ``train.batch_size`` is
the global batch: each rank takes ``batch_size / world_size`` samples, so a
run on N processes follows the same schedule as on one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Ranks as torchrun sets them; a plain process is rank 0 of 1."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise RuntimeError("RANK, WORLD_SIZE or LOCAL_RANK is not an integer; launch with torchrun") from None


def init(device_type: str) -> DistInfo:
    """Join the process group (NCCL on CUDA, gloo otherwise) when launched by torchrun."""
    info = from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of scalars over ranks (the identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-item list in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
