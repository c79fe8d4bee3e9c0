"""Parameter and FLOP counts for any ``nn.Module``, to compare architectures on cost.

A loss study reports what a variant costs next to how well it does; these
numbers go into run params so that two architectures can be compared at
equal budget. FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`,
which traces the real forward pass, so any module works without per-layer
formulas. Its convention, kept here: a multiply-add is 2 FLOPs, and only
matmul/conv-like ops count (bias adds, normalisation, activations and
resampling are not counted; they are a few percent in a conv net).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d | nn.Linear):
            return m.in_channels if not isinstance(m, nn.Linear) else m.in_features
    raise ValueError(
        f"profile_model: cannot tell the input channels of {type(model).__name__} (it has no conv or "
        "linear layer); pass in_channels=... explicitly"
    )


def profile_model(
    model: nn.Module, image_size: int, batch: int = 1, in_channels: int | None = None
) -> dict[str, int]:
    """Parameters and forward FLOPs of ``model`` on a ``(batch, C, image_size, image_size)`` input.

    ``C`` defaults to the model's ``in_channels`` attribute, else its first
    conv's input channels (6 for losslab's networks). The forward runs in eval mode under ``torch.no_grad`` on the
    model's own device and dtype, and the model's training mode is restored.

    Returns ``{"params": int, "flops": int}`` (forward pass, 2 FLOPs per multiply-add).
    """
    if image_size < 1 or batch < 1:
        raise ValueError(f"profile_model: image_size and batch must be positive, got {image_size}, {batch}")
    if in_channels is None:  # a network that widens its input inside says what it takes
        in_channels = getattr(model, "in_channels", None) or _input_channels(model)
    channels = in_channels
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.rand(batch, channels, image_size, image_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return {"params": count_params(model), "flops": int(counter.get_total_flops())}
