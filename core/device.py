"""Device choice, the per-device training settings (AMP, channels_last, determinism) and host-to-device copies."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.device is 'mps' but MPS is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How the step runs: autocast dtype (None: float32) and whether a GradScaler is needed."""

    autocast_dtype: torch.dtype | None
    scaler: bool
    channels_last: bool


def precision_for(device: torch.device, amp: bool | str, channels_last: bool | str) -> Precision:
    """AMP and channels_last default on for CUDA (bf16 where supported), off elsewhere."""
    use_amp = device.type == "cuda" if amp == "auto" else bool(amp)
    use_cl = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    if not use_amp:
        return Precision(None, False, use_cl)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, False, use_cl)
        return Precision(torch.float16, True, use_cl)
    return Precision(torch.bfloat16, False, use_cl)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels (CPU runs repeat exactly)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``, without making the host wait for the device.

    A plain ``.to("cuda")`` from ordinary (pageable) host memory synchronises
    the stream: the host waits until every kernel queued so far has run, so
    the CPU can no longer prepare the next step while the GPU computes this
    one. A copy from pinned memory with ``non_blocking=True`` is queued like a
    kernel instead; PyTorch's caching host allocator keeps the pinned block
    alive until the copy has run, so the caller may drop ``tensor`` at once.
    Elsewhere (CPU, MPS) this is ``tensor.to(device)``.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
