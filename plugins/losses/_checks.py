"""Input checks and dtype handling shared by every loss.

Every loss receives ``(B, 1, H, W)`` tensors from the engine. A shape slip
(a channel-less ``(B, H, W)`` target, a transposed depth map) otherwise
surfaces as a broadcasting warning or a deep convolution error; these checks
turn it into one line that names the loss, the shape expected and the shape
found. Losses compute in float32 whatever the inputs' dtype, so they are safe
under autocast (float16 sums overflow, and ``log`` of a float16 sigmoid loses
most of its bits); float64 inputs stay float64, so ``gradcheck`` works.
"""

from __future__ import annotations

import torch


def check_pair(name: str, pred: torch.Tensor, target: torch.Tensor, *, min_hw: int = 1) -> None:
    """Raise a clear error unless ``pred`` and ``target`` are matching ``(B, 1, H, W)`` tensors.

    ``min_hw`` is the smallest height and width the loss can work with (e.g. 2
    for finite differences).
    """
    for label, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"loss {name!r}: {label} must be a torch.Tensor of shape (B, 1, H, W), "
                            f"got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(
                f"loss {name!r}: {label} must have shape (B, 1, H, W), got {tuple(t.shape)}; "
                "add the channel axis with .unsqueeze(1) if it is (B, H, W)"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"loss {name!r}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same "
            "shape (B, 1, H, W); resize the prediction to the target's size first"
        )
    if pred.device != target.device:
        raise ValueError(f"loss {name!r}: pred is on {pred.device} but target on {target.device}; "
                         "move both to the same device")
    h, w = pred.shape[-2:]
    if h < min_hw or w < min_hw:
        raise ValueError(f"loss {name!r}: images must be at least {min_hw}x{min_hw} pixels, got {h}x{w}")


def as_float(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors in float32, or float64 when either already is (for gradcheck).

    The cast is differentiable, so gradients flow back to a float16 prediction
    made under autocast.
    """
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    return pred.to(dtype), target.to(dtype)


def check_positive(name: str, param: str, value: float, *, allow_zero: bool = False) -> float:
    """A positive (or non-negative) float parameter, or an error naming the loss and the parameter."""
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"loss {name!r}: parameter {param} must be {bound}, got {value}")
    return value
