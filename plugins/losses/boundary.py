"""Boundary-weighted BCE on mask logits: extra weight on a band around the target mask's edge.

Mask errors concentrate on the object's outline (the interior and the far
background are easy), and a plain BCE averages those few pixels away. This
loss multiplies the per-pixel BCE by ``1 + weight`` inside a band of
``width`` pixels on either side of the target's edge, found with max-pooling
(dilation minus erosion; the image border does not count as an edge), and
normalises by the total weight so its scale stays that of a BCE.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def boundary_band(target: torch.Tensor, width: int = 2) -> torch.Tensor:
    """1 on pixels within ``width`` px (Chebyshev distance) of the mask's edge, on either side; else 0.

    Dilation minus erosion with a ``(2 * width + 1)`` square; padding is
    ``-inf`` for max-pooling, so pixels outside the image are ignored and a
    mask touching the border has no edge there.
    """
    if int(width) != width or width < 1:
        raise ValueError(f"loss 'boundary-bce': width must be an integer >= 1 (pixels), got {width}")
    k = 2 * int(width) + 1
    dilated = F.max_pool2d(target, k, stride=1, padding=int(width))
    eroded = -F.max_pool2d(-target, k, stride=1, padding=int(width))
    return dilated - eroded


def boundary_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: float = 4.0,
                      width: int = 2) -> torch.Tensor:
    r"""Boundary-weighted BCE from logits.

    .. math::

        \ell = \frac{\sum_i w_i\, \text{BCE}(x_i, t_i)}{\sum_i w_i}, \quad
        w_i = 1 + \text{weight} \cdot \text{band}_i

    where :math:`\text{band}` is :func:`boundary_band` of the target and
    :math:`\text{BCE}(x, t) = -t \log\sigma(x) - (1 - t)\log(1 - \sigma(x))`
    (computed with BCE-with-logits). ``weight = 0`` gives plain BCE.

    Args:
        logits: raw mask logits.
        target: mask in {0, 1}.
        weight: extra weight of band pixels (>= 0).
        width: half-width of the band in pixels (>= 1).

    Shape:
        - logits, target: :math:`(B, 1, H, W)`.
        - output: scalar.
    """
    check_pair("boundary-bce", logits, target)
    weight = check_positive("boundary-bce", "weight", weight, allow_zero=True)
    x, t = as_float(logits, target)
    w = 1 + weight * boundary_band(t, width)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    return (w * ce).sum() / w.sum()


class BoundaryBCELoss(Loss):
    """BCE on logits, weighted ``1 + weight`` within ``width`` px of the mask's edge.

    See :func:`boundary_bce_loss`.
    """

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "logits"

    def __init__(self, weight: float = 4.0, width: int = 2) -> None:
        super().__init__()
        self.weight = check_positive("boundary-bce", "weight", weight, allow_zero=True)
        if int(width) != width or width < 1:
            raise ValueError(f"loss 'boundary-bce': width must be an integer >= 1 (pixels), got {width}")
        self.width = int(width)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return boundary_bce_loss(pred, target, self.weight, self.width)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, width={self.width}"
