"""Binary cross-entropy on mask logits, with a weight for the foreground class.

The foreground is usually a small part of a composed image, so an unweighted
BCE is content with a slightly-too-small mask; ``pos_weight`` > 1 makes a
missed foreground pixel cost more. Computed from logits with
``binary_cross_entropy_with_logits`` (log-sum-exp form), which stays finite
for logits of any size where ``log(sigmoid(x))`` would underflow.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    r"""Mean binary cross-entropy with a foreground weight, from logits.

    .. math::

        \ell = -\frac{1}{N}\sum_i \big[w_+\, t_i \log \sigma(x_i) + (1 - t_i) \log(1 - \sigma(x_i))\big]

    Args:
        logits: raw mask logits :math:`x`.
        target: mask :math:`t` in {0, 1} (soft values in [0, 1] also work).
        pos_weight: :math:`w_+`, the weight of foreground pixels (1 = plain BCE).

    Shape:
        - logits, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> x = torch.zeros(1, 1, 2, 2)
        >>> round(bce_loss(x, torch.ones(1, 1, 2, 2)).item(), 4)  # -log(0.5)
        0.6931
    """
    check_pair("bce", logits, target)
    check_positive("bce", "pos_weight", pos_weight)
    x, t = as_float(logits, target)
    weight = x.new_full((), float(pos_weight))  # a fill on the device: no copy from the host
    return F.binary_cross_entropy_with_logits(x, t, pos_weight=weight)


class BCELoss(Loss):
    """Binary cross-entropy on logits, with ``pos_weight`` for the foreground (see :func:`bce_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "logits"

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight = check_positive("bce", "pos_weight", pos_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_loss(pred, target, self.pos_weight)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"
