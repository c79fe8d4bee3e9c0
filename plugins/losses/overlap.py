"""Region-overlap losses on mask probabilities: soft Dice, soft Jaccard (IoU), Tversky, focal Tversky.

These losses score the predicted region as a whole rather than pixel by
pixel, so a small foreground is not drowned by a large background the way
it is in plain BCE. They all derive from soft confusion counts

.. math::

    TP = \\sum_i p_i t_i, \\quad FP = \\sum_i p_i (1 - t_i), \\quad FN = \\sum_i (1 - p_i) t_i

of the probabilities :math:`p = \\sigma(\\text{logits})` (the engine passes
probabilities, since ``input_kind = "probabilities"``). ``smooth`` is added
to numerator and denominator so an image with an empty mask predicted empty
scores a perfect 0 loss instead of 0/0.

Sums run over the whole batch by default (``per_image=False``: one region
made of all the batch's pixels, the usual choice, stable when some images
have tiny masks); ``per_image=True`` scores each image and averages.

Relations the tests check: Tversky with alpha = beta = 0.5 is Dice, with
alpha = beta = 1 it is Jaccard; focal Tversky with gamma = 1 is Tversky.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def soft_counts(
    probs: torch.Tensor, target: torch.Tensor, per_image: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft (TP, FP, FN): shape ``(B,)`` if ``per_image`` else scalars."""
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    tp = (probs * target).sum(dims)
    fp = (probs * (1 - target)).sum(dims)
    fn = ((1 - probs) * target).sum(dims)
    return tp, fp, fn


def _check_probs(name: str, probs: torch.Tensor, target: torch.Tensor, smooth: float) -> None:
    check_pair(name, probs, target)
    check_positive(name, "smooth", smooth, allow_zero=True)


def tversky_index(
    probs: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
    smooth: float = 1.0, per_image: bool = False,
) -> torch.Tensor:
    r"""Soft Tversky index :math:`\frac{TP + s}{TP + \alpha FP + \beta FN + s}` (in [0, 1]).

    Shape ``(B,)`` if ``per_image`` else a scalar.
    """
    p, t = as_float(probs, target)
    tp, fp, fn = soft_counts(p, t, per_image)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky_loss(
    probs: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
    smooth: float = 1.0, per_image: bool = False,
) -> torch.Tensor:
    r"""Tversky loss :math:`1 - TI` (Salehi et al., 2017).

    .. math::

        TI = \frac{TP + s}{TP + \alpha\, FP + \beta\, FN + s}

    ``alpha`` weighs false positives, ``beta`` false negatives: beta > alpha
    favours recall (fewer missed foreground pixels).

    Args:
        probs: foreground probabilities in [0, 1].
        target: mask in {0, 1}.
        alpha: weight of false positives (>= 0).
        beta: weight of false negatives (>= 0).
        smooth: :math:`s`, added to numerator and denominator (>= 0).
        per_image: score each image and average, instead of one score for the batch.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
        >>> t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        >>> round(tversky_loss(p, t, 0.5, 0.5, smooth=0.0).item(), 4)  # 1 - 1.5 / 2
        0.25
    """
    _check_probs("tversky", probs, target, smooth)
    check_positive("tversky", "alpha", alpha, allow_zero=True)
    check_positive("tversky", "beta", beta, allow_zero=True)
    return (1 - tversky_index(probs, target, alpha, beta, smooth, per_image)).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              per_image: bool = False) -> torch.Tensor:
    r"""Soft Dice loss.

    .. math::

        \ell = 1 - \frac{2\,TP + s}{2\,TP + FP + FN + s} = 1 - \frac{2\sum p t + s}{\sum p + \sum t + s}

    Args:
        probs: foreground probabilities in [0, 1].
        target: mask in {0, 1}.
        smooth: :math:`s` (>= 0); with s > 0 an empty mask predicted empty gives 0.
        per_image: score each image and average, instead of one score for the batch.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
        >>> t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        >>> round(dice_loss(p, t, smooth=0.0).item(), 4)  # 1 - 2 * 1.5 / (2 + 2)
        0.25
    """
    _check_probs("dice", probs, target, smooth)
    p, t = as_float(probs, target)
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    inter = (p * t).sum(dims)
    total = p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def iou_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
             per_image: bool = False) -> torch.Tensor:
    r"""Soft Jaccard (IoU) loss.

    .. math::

        \ell = 1 - \frac{TP + s}{TP + FP + FN + s} = 1 - \frac{\sum p t + s}{\sum p + \sum t - \sum p t + s}

    Args:
        probs: foreground probabilities in [0, 1].
        target: mask in {0, 1}.
        smooth: :math:`s` (>= 0); with s > 0 an empty mask predicted empty gives 0.
        per_image: score each image and average, instead of one score for the batch.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
        >>> t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        >>> round(iou_loss(p, t, smooth=0.0).item(), 4)  # 1 - 1.5 / (2 + 2 - 1.5)
        0.4
    """
    _check_probs("iou", probs, target, smooth)
    p, t = as_float(probs, target)
    dims = (1, 2, 3) if per_image else (0, 1, 2, 3)
    inter = (p * t).sum(dims)
    union = p.sum(dims) + t.sum(dims) - inter
    return (1 - (inter + smooth) / (union + smooth)).mean()


def focal_tversky_loss(
    probs: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7,
    gamma: float = 0.75, smooth: float = 1.0, per_image: bool = False,
) -> torch.Tensor:
    r"""Focal Tversky loss :math:`(1 - TI)^{\gamma}` (Abraham and Khan, 2019).

    With :math:`\gamma < 1` (their 0.75, i.e. 1/γ with γ = 4/3) the loss keeps a
    strong gradient as the overlap improves, focusing on hard, nearly-right
    masks. ``1 - TI`` is clamped at 1e-6 before the power so the gradient stays
    finite where the prediction is perfect.

    Args:
        probs: foreground probabilities in [0, 1].
        target: mask in {0, 1}.
        alpha, beta, smooth, per_image: as in :func:`tversky_loss`.
        gamma: the exponent (> 0); 1 gives the Tversky loss.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: scalar.
    """
    _check_probs("focal-tversky", probs, target, smooth)
    check_positive("focal-tversky", "alpha", alpha, allow_zero=True)
    check_positive("focal-tversky", "beta", beta, allow_zero=True)
    check_positive("focal-tversky", "gamma", gamma)
    gap = 1 - tversky_index(probs, target, alpha, beta, smooth, per_image)
    return gap.clamp_min(1e-6).pow(gamma).mean()


class DiceLoss(Loss):
    """Soft Dice loss on probabilities (see :func:`dice_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "probabilities"

    def __init__(self, smooth: float = 1.0, per_image: bool = False) -> None:
        super().__init__()
        self.smooth = check_positive("dice", "smooth", smooth, allow_zero=True)
        self.per_image = bool(per_image)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(pred, target, self.smooth, self.per_image)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}"


class IoULoss(Loss):
    """Soft Jaccard (IoU) loss on probabilities (see :func:`iou_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "probabilities"

    def __init__(self, smooth: float = 1.0, per_image: bool = False) -> None:
        super().__init__()
        self.smooth = check_positive("iou", "smooth", smooth, allow_zero=True)
        self.per_image = bool(per_image)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return iou_loss(pred, target, self.smooth, self.per_image)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}"


class TverskyLoss(Loss):
    """Tversky loss on probabilities: alpha weighs false positives, beta false negatives (see :func:`tversky_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "probabilities"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0,
                 per_image: bool = False) -> None:
        super().__init__()
        self.alpha = check_positive("tversky", "alpha", alpha, allow_zero=True)
        self.beta = check_positive("tversky", "beta", beta, allow_zero=True)
        self.smooth = check_positive("tversky", "smooth", smooth, allow_zero=True)
        self.per_image = bool(per_image)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tversky_loss(pred, target, self.alpha, self.beta, self.smooth, self.per_image)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, smooth={self.smooth}, per_image={self.per_image}"


class FocalTverskyLoss(Loss):
    """Focal Tversky loss (1 - TI)^gamma on probabilities (see :func:`focal_tversky_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "probabilities"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0,
                 per_image: bool = False) -> None:
        super().__init__()
        self.alpha = check_positive("focal-tversky", "alpha", alpha, allow_zero=True)
        self.beta = check_positive("focal-tversky", "beta", beta, allow_zero=True)
        self.gamma = check_positive("focal-tversky", "gamma", gamma)
        self.smooth = check_positive("focal-tversky", "smooth", smooth, allow_zero=True)
        self.per_image = bool(per_image)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_tversky_loss(pred, target, self.alpha, self.beta, self.gamma, self.smooth,
                                  self.per_image)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, smooth={self.smooth}, "
                f"per_image={self.per_image}")
