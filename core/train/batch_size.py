"""``train.batch_size: auto``: the largest batch whose training step fits in the accelerator's memory.

On CUDA it doubles the batch from 2, running one full forward and backward
(mixed precision as configured, every loss term) on random inputs until the
allocator runs out of memory, then keeps the largest size that fitted, less a
safety margin (a power of two no larger than 90% of it). The search runs the
plain model (no DDP, no ``torch.compile``), so no rank waits in a collective
for another that ran out of memory, and under DDP every rank takes the
smallest size any rank found. Elsewhere (CPU,
MPS) memory is rarely the limit and speed is: ``auto`` means 32 there.
"""

from __future__ import annotations

import torch
from torch import nn

from losslab.core.device import Precision
from losslab.core.train import distributed
from losslab.core.train.distributed import DistInfo
from losslab.core.train.step import model_inputs, run_model

CPU_DEFAULT = 32
UPPER_LIMIT = 4096


def _fits(model: nn.Module, objective: nn.Module, precision: Precision, device: torch.device, size: int,
          batch: int) -> bool:
    x = torch.rand(batch, 6, size, size, device=device)
    targets = {
        "bg": x[:, :3], "fg_bg": x[:, 3:],
        "mask": (torch.rand(batch, 1, size, size, device=device) > 0.5).float(),
        "depth": torch.rand(batch, 1, size, size, device=device),
    }
    try:
        out = run_model(model, model_inputs(targets, precision), precision, device)  # eager, no DDP: no collectives
        total, _ = objective(out, targets)
        total.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del x, targets
        torch.cuda.empty_cache()


def find_batch_size(model: nn.Module, objective: nn.Module, precision: Precision, device: torch.device,
                    image_size: int, dist: DistInfo) -> int:
    """Largest power-of-two global batch that trains ``model`` (the plain module) here (see module docstring)."""
    if device.type != "cuda":
        return CPU_DEFAULT * dist.world_size
    model.train()
    fitted = 0
    batch = 2
    while batch <= UPPER_LIMIT and _fits(model, objective, precision, device, image_size, batch):
        fitted = batch
        batch *= 2
    fitted = min(distributed.gather_objects(fitted))  # every rank trains with the same batch
    if fitted == 0:
        raise RuntimeError(f"not even a batch of 2 fits on {device} at {image_size}px; "
                           "lower data.image_size or choose a smaller model")
    chosen = fitted if batch > UPPER_LIMIT else max(2, 1 << int(0.9 * fitted).bit_length() - 1)
    torch.cuda.reset_peak_memory_stats(device)
    return chosen * dist.world_size
