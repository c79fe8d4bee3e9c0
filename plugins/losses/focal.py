"""Focal loss on mask logits (Lin et al., 2017): BCE that down-weights pixels already classified well.

Most background pixels are easy; the modulating factor :math:`(1 - p_t)^\\gamma`
shrinks their share of the loss so training concentrates on hard pixels
(edges, thin parts). Computed from logits with log-sigmoid, and
:math:`1 - p_t` from ``sigmoid(-x)`` / ``sigmoid(x)`` directly (no ``1 - p``
cancellation), so it is finite for saturated logits.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def _check_alpha(alpha: float | None) -> float | None:
    if alpha is None:
        return None
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"loss 'focal': alpha must be in [0, 1] or null (no class weighting), got {alpha}")
    return alpha


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    r"""Mean binary focal loss from logits.

    .. math::

        \ell_i = -\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t, \quad
        p_t = \begin{cases} \sigma(x_i) & t_i = 1 \\ 1 - \sigma(x_i) & t_i = 0 \end{cases}, \quad
        \alpha_t = \begin{cases} \alpha & t_i = 1 \\ 1 - \alpha & t_i = 0 \end{cases}

    (for soft targets both branches are mixed linearly in :math:`t_i`).
    ``gamma = 0`` and ``alpha = None`` give plain BCE.

    Args:
        logits: raw mask logits :math:`x`.
        target: mask :math:`t` in {0, 1}.
        alpha: weight of the foreground class in [0, 1], or None for no class weighting.
        gamma: focusing exponent (>= 0).

    Shape:
        - logits, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> x = torch.zeros(1, 1, 1, 1)
        >>> round(focal_loss(x, torch.ones(1, 1, 1, 1), alpha=None, gamma=2.0).item(), 4)  # 0.25*log 2
        0.1733
    """
    check_pair("focal", logits, target)
    alpha = _check_alpha(alpha)
    gamma = check_positive("focal", "gamma", gamma, allow_zero=True)
    x, t = as_float(logits, target)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = t * torch.sigmoid(-x) + (1 - t) * torch.sigmoid(x)
    loss = one_minus_pt.clamp_min(1e-12).pow(gamma) * ce if gamma > 0 else ce
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean()


class FocalLoss(Loss):
    """Binary focal loss on logits: ``alpha`` weighs the foreground, ``gamma`` focuses (see :func:`focal_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "logits"

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.gamma = check_positive("focal", "gamma", gamma, allow_zero=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(pred, target, self.alpha, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
