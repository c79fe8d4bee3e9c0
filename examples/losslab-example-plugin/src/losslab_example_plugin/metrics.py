"""The F-beta score of a thresholded mask, one value per image.

With ``beta = 2`` recall counts four times as much as precision, the right
emphasis when a missed foreground pixel costs more than a spurious one (the
mask feeds a compositor that must not cut the object). losslab averages the
per-image values over the held-out images.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from losslab.core import Metric, Task


def fbeta_score(
    probs: torch.Tensor, target: torch.Tensor, beta: float = 2.0, threshold: float = 0.5
) -> torch.Tensor:
    r"""Per-image :math:`F_\beta = \frac{(1+\beta^2)\,TP}{(1+\beta^2)\,TP + \beta^2 FN + FP}`.

    The prediction is ``probs >= threshold``. An image whose mask and
    prediction are both empty scores 1 (nothing to find, nothing found).

    Args:
        probs: foreground probabilities in [0, 1].
        target: mask in {0, 1}.
        beta: weight of recall relative to precision (> 0).
        threshold: probability at which a pixel counts as foreground.

    Shape:
        - probs, target: :math:`(B, 1, H, W)`.
        - output: :math:`(B,)`.

    Example:
        >>> p = torch.tensor([[[[0.9, 0.8, 0.1, 0.2]]]])
        >>> t = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
        >>> round(fbeta_score(p, t).item(), 4)  # TP=1, FP=1, FN=1: 5 / (5 + 4 + 1)
        0.5
    """
    if probs.shape != target.shape or probs.ndim != 4:
        raise ValueError(
            f"metric 'f2-score': probs and target must both have shape (B, 1, H, W); "
            f"got {tuple(probs.shape)} and {tuple(target.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"metric 'f2-score': beta must be > 0, got {beta}")
    pred = probs >= threshold
    truth = target >= 0.5
    tp = (pred & truth).sum(dim=(1, 2, 3)).double()
    fp = (pred & ~truth).sum(dim=(1, 2, 3)).double()
    fn = (~pred & truth).sum(dim=(1, 2, 3)).double()
    b2 = beta**2
    denom = (1 + b2) * tp + b2 * fn + fp
    score = torch.where(denom > 0, (1 + b2) * tp / denom.clamp_min(1), torch.ones_like(denom))
    return score.float()


class FBetaScore(Metric):
    """Per-image F-beta (beta = 2 by default) of the mask thresholded at 0.5."""

    task: ClassVar[Task] = "mask"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, beta: float = 2.0, threshold: float = 0.5) -> None:
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fbeta_score(pred, target, self.beta, self.threshold)
