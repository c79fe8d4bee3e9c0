"""Scale-invariant log depth loss (Eigen, Puhrsch and Fergus, 2014).

Log-depth differences make an error relative (10 cm matters more at 1 m
than at 20 m), and subtracting part of their mean forgives a global scale
error, which a single image cannot pin down. Depths are clamped at ``eps``
before the log, so a prediction at or below zero (the network's raw output
can be) gives a finite loss; note that the clamp also stops this term's
gradient for such pixels, so pair it with a term that is not clamped
(``l1``) if the prediction may go negative. The term declares
``positive_depth``, so the config check gives the built-in architectures a
depth head that cannot reach zero (``depth_output: log``); with a plain linear
head, silog alone drove every pixel below ``eps`` and the depth collapsed.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def _check_focus(variance_focus: float) -> float:
    variance_focus = float(variance_focus)
    if not 0.0 <= variance_focus <= 1.0:
        raise ValueError(f"loss 'silog': variance_focus must be in [0, 1], got {variance_focus}")
    return variance_focus


def silog_loss(pred: torch.Tensor, target: torch.Tensor, variance_focus: float = 0.85, eps: float = 1e-3,
               root: bool = True) -> torch.Tensor:
    r"""Scale-invariant log loss, per image, averaged over the batch.

    .. math::

        g_i = \log\max(\hat d_i, \epsilon) - \log\max(d_i, \epsilon), \quad
        \ell = \sqrt{\tfrac{1}{n}\textstyle\sum_i g_i^2 - \lambda \big(\tfrac{1}{n}\sum_i g_i\big)^2}

    :math:`\lambda` = ``variance_focus``: 0 is a plain log-MSE, 1 fully scale
    invariant, 0.5 Eigen's original, 0.85 the BTS/AdaBins choice. With
    ``root=False`` the square root is left out. The root's gradient at 0 is
    taken as 0 (not infinite), so a perfect prediction has finite gradients.

    Args:
        pred: predicted depth (normalised; may be <= 0, see ``eps``).
        target: true depth normalised to [0, 1].
        variance_focus: :math:`\lambda` in [0, 1].
        eps: :math:`\epsilon` > 0, the floor of both depths before the log.
        root: take the square root (the usual form) or not.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar; 0 where pred equals target.
    """
    check_pair("silog", pred, target)
    lam = _check_focus(variance_focus)
    eps = check_positive("silog", "eps", eps)
    p, t = as_float(pred, target)
    g = (torch.log(p.clamp_min(eps)) - torch.log(t.clamp_min(eps))).flatten(1)
    var = (g.pow(2).mean(dim=1) - lam * g.mean(dim=1).pow(2)).clamp_min(0)
    if not root:
        return var.mean()
    positive = var > 0
    safe = torch.where(positive, var, torch.ones_like(var))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(var)).mean()


class SILogLoss(Loss):
    """Scale-invariant log depth loss with variance focus lambda (see :func:`silog_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    positive_depth: ClassVar[bool] = True  # its log needs depth > 0: the head gives it (depth_output: log)

    def __init__(self, variance_focus: float = 0.85, eps: float = 1e-3, root: bool = True) -> None:
        super().__init__()
        self.variance_focus = _check_focus(variance_focus)
        self.eps = check_positive("silog", "eps", eps)
        self.root = bool(root)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return silog_loss(pred, target, self.variance_focus, self.eps, self.root)

    def extra_repr(self) -> str:
        return f"variance_focus={self.variance_focus}, eps={self.eps}, root={self.root}"
