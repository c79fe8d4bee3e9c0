"""Per-pixel depth regression losses: L1, MSE, Huber and berHu (reverse Huber).

All take the raw depth prediction and the target depth normalised to [0, 1]
(metres / ``data.max_depth``), and average over every pixel of the batch.
Because depths are normalised, errors lie roughly in [-1, 1]; the Huber and
berHu thresholds are therefore in normalised units (Huber's default
``delta = 0.1`` is 10% of the depth range, where torch's default 1.0 would
make Huber a halved MSE everywhere).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean absolute error :math:`\frac{1}{N}\sum_i |\hat d_i - d_i|`.

    Shape:
        - pred, target: :math:`(B, 1, H, W)` depth (normalised).
        - output: scalar.

    Example:
        >>> l1_loss(torch.tensor([[[[0.5, 0.0]]]]), torch.tensor([[[[0.0, 0.0]]]])).item()
        0.25
    """
    check_pair("l1", pred, target)
    p, t = as_float(pred, target)
    return (p - t).abs().mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error :math:`\frac{1}{N}\sum_i (\hat d_i - d_i)^2`.

    Shape:
        - pred, target: :math:`(B, 1, H, W)` depth (normalised).
        - output: scalar.

    Example:
        >>> mse_loss(torch.tensor([[[[0.5, 0.0]]]]), torch.tensor([[[[0.0, 0.0]]]])).item()
        0.125
    """
    check_pair("mse", pred, target)
    p, t = as_float(pred, target)
    return (p - t).pow(2).mean()


def huber_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 0.1) -> torch.Tensor:
    r"""Huber loss: quadratic for small errors, linear for large ones.

    .. math::

        \ell(x) = \begin{cases} \tfrac12 x^2 & |x| \le \delta \\
                                \delta (|x| - \tfrac12 \delta) & |x| > \delta \end{cases},
        \quad x = \hat d - d

    Args:
        pred: predicted depth (normalised).
        target: true depth (normalised).
        delta: :math:`\delta` > 0, in normalised depth units.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar.
    """
    check_pair("huber", pred, target)
    delta = check_positive("huber", "delta", delta)
    p, t = as_float(pred, target)
    return F.huber_loss(p, t, delta=delta)


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    r"""berHu (reverse Huber) loss (Laina et al., 2016): linear for small errors, quadratic for large ones.

    .. math::

        \ell(x) = \begin{cases} |x| & |x| \le c \\ \frac{x^2 + c^2}{2c} & |x| > c \end{cases},
        \quad c = \text{threshold} \cdot \max_{\text{batch}} |x|

    ``c`` is taken from the batch's largest error (detached, as in the
    paper) and floored at 1e-12, so a perfect prediction gives 0 rather than
    0/0. The two branches meet continuously at ``|x| = c``.

    Args:
        pred: predicted depth (normalised).
        target: true depth (normalised).
        threshold: fraction of the largest error where the loss turns quadratic, in (0, 1].

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar.
    """
    check_pair("berhu", pred, target)
    threshold = check_positive("berhu", "threshold", threshold)
    p, t = as_float(pred, target)
    err = (p - t).abs()
    c = (threshold * err.detach().max()).clamp_min(1e-12)
    quadratic = (err.pow(2) + c.pow(2)) / (2 * c)
    return torch.where(err <= c, err, quadratic).mean()


class L1Loss(Loss):
    """Mean absolute depth error (see :func:`l1_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return l1_loss(pred, target)


class MSELoss(Loss):
    """Mean squared depth error (see :func:`mse_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_loss(pred, target)


class HuberLoss(Loss):
    """Huber depth loss with threshold ``delta`` in normalised units (see :func:`huber_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"

    def __init__(self, delta: float = 0.1) -> None:
        super().__init__()
        self.delta = check_positive("huber", "delta", delta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return huber_loss(pred, target, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


class BerHuLoss(Loss):
    """Reverse Huber depth loss, threshold relative to the batch's largest error (see :func:`berhu_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"

    def __init__(self, threshold: float = 0.2) -> None:
        super().__init__()
        self.threshold = check_positive("berhu", "threshold", threshold)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return berhu_loss(pred, target, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
