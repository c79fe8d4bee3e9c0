"""The log-cosh depth loss: a smooth Huber loss with no kink.

``scale**2 * log(cosh(d / scale))`` with ``d = pred - target`` behaves like
``d**2 / 2`` for errors well below ``scale`` and like ``scale * |d| -
scale**2 * log 2`` far above it: robust to the large errors at depth
discontinuities (the edge of a pasted foreground) like Huber, but with
continuous second derivatives everywhere.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from losslab.core import InputKind, Loss, Task


def log_cosh_loss(pred: torch.Tensor, target: torch.Tensor, scale: float = 0.1) -> torch.Tensor:
    r"""Mean of :math:`c^2 \log\cosh((p - t) / c)` over all pixels.

    Computed without overflow or cancellation: ``log1p(2 sinh²(x/2))`` for
    :math:`|x| < 10` (exact for tiny errors, where ``log(cosh x)`` rounds
    ``cosh x`` to 1 in float32) and :math:`|x| + \operatorname{softplus}(-2|x|)
    - \log 2` beyond (where ``torch.cosh`` would overflow, past
    :math:`|x| \approx 89` in float32). Always in float32 (float64 if given
    float64), so it is safe under autocast.

    Args:
        pred: predicted depth, the network's raw depth output.
        target: true depth, normalised to [0, 1] by the experiment's ``data.max_depth``.
        scale: :math:`c` > 0, where the loss turns from quadratic to linear (in target units).

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[0.0, 2.0]]]])
        >>> t = torch.zeros(1, 1, 1, 2)
        >>> round(log_cosh_loss(p, t, scale=1.0).item(), 4)  # (log cosh 0 + log cosh 2) / 2
        0.6625
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(
            f"loss 'log-cosh': pred and target must both have shape (B, 1, H, W); "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if not scale > 0:
        raise ValueError(f"loss 'log-cosh': scale must be > 0, got {scale}")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    x = ((pred.to(dtype) - target.to(dtype)) / scale).abs()
    near = x.clamp(max=10.0)  # clamped so the unused branch stays finite, and so do its gradients
    small = torch.log1p(2 * torch.sinh(near / 2) ** 2)
    large = x + F.softplus(-2 * x) - math.log(2.0)
    return scale**2 * torch.where(x < 10.0, small, large).mean()


class LogCoshLoss(Loss):
    """log-cosh depth loss (see :func:`log_cosh_loss`); ``scale`` is its YAML parameter."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"

    def __init__(self, scale: float = 0.1) -> None:
        super().__init__()
        if not float(scale) > 0:
            raise ValueError(f"loss 'log-cosh': scale must be > 0, got {scale}")
        self.scale = float(scale)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return log_cosh_loss(pred, target, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
