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

from typing import Any

import torch

from losslab.core.train import distributed

CPU_DEFAULT = 32
UPPER_LIMIT = 4096


def _fits(trainer: Any, batch: int) -> bool:
    size = trainer.cfg.data.image_size
    device = trainer.device
    x = torch.rand(batch, 6, size, size, device=device)
    targets = {
        "bg": x[:, :3], "fg_bg": x[:, 3:],
        "mask": (torch.rand(batch, 1, size, size, device=device) > 0.5).float(),
        "depth": torch.rand(batch, 1, size, size, device=device),
    }
    try:
        out = trainer._run_model(trainer._inputs(targets), trainer.model)  # eager, no DDP: no collectives
        total, _ = trainer.objective(out, targets)
        total.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        trainer.model.zero_grad(set_to_none=True)
        del x, targets
        torch.cuda.empty_cache()


def find_batch_size(trainer: Any) -> int:
    """Largest power-of-two batch that trains on this device (see module docstring)."""
    if trainer.device.type != "cuda":
        return CPU_DEFAULT * trainer.dist.world_size
    trainer.model.train()
    fitted = 0
    batch = 2
    while batch <= UPPER_LIMIT and _fits(trainer, batch):
        fitted = batch
        batch *= 2
    fitted = min(distributed.gather_objects(fitted))  # every rank trains with the same batch
    if fitted == 0:
        raise RuntimeError(f"not even a batch of 2 fits on {trainer.device} at {trainer.cfg.data.image_size}px; "
                           "lower data.image_size or choose a smaller model")
    chosen = fitted if batch > UPPER_LIMIT else max(2, 1 << int(0.9 * fitted).bit_length() - 1)
    torch.cuda.reset_peak_memory_stats(trainer.device)
    return chosen * trainer.dist.world_size
