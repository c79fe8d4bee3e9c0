"""Lovasz hinge on mask logits (Berman, Triki and Blaschko, 2018): a convex surrogate of the Jaccard loss.

The Jaccard (IoU) loss is a set function; its Lovasz extension is a
piecewise-linear function of the per-pixel hinge errors that can be
optimised directly. Sorting the errors gives the extension's gradient, so the
loss targets the IoU itself rather than a per-pixel proxy. It works on
logits through a hinge, so it is stable for any logit.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair


def _lovasz_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge of each row of ``(R, N)`` logits and {0, 1} labels, shape (R,)."""
    signs = 2 * labels - 1
    errors = 1 - logits * signs
    errors_sorted, order = errors.sort(dim=1, descending=True)
    gt_sorted = labels.gather(1, order)
    positives = gt_sorted.sum(dim=1, keepdim=True)
    intersection = positives - gt_sorted.cumsum(dim=1)
    union = positives + (1 - gt_sorted).cumsum(dim=1)
    jaccard = 1 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (errors_sorted.relu() * grad).sum(dim=1)


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    r"""Lovasz hinge loss from logits.

    .. math::

        \ell = \sum_{k} \max(e_{\pi(k)}, 0)\; g_k, \quad e_i = 1 - x_i (2 t_i - 1), \quad
        g_k = J(\pi_{1..k}) - J(\pi_{1..k-1})

    where :math:`\pi` sorts the hinge errors :math:`e` in decreasing order and
    :math:`J(S)` is the Jaccard loss :math:`1 - |T \setminus S| / |T \cup S|`
    when the pixels in :math:`S` are the mispredicted ones (Berman et al., Alg. 1).
    The loss is 0 once every logit has the right sign with a margin of 1.

    Args:
        logits: raw mask logits :math:`x`.
        target: mask :math:`t` in {0, 1}.
        per_image: one Jaccard surrogate per image, averaged (the paper's choice);
            False treats the whole batch as one image.

    Shape:
        - logits, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> t = torch.tensor([[[[1.0, 0.0]]]])
        >>> lovasz_hinge_loss(3 * (2 * t - 1), t).item()
        0.0
    """
    check_pair("lovasz", logits, target)
    x, t = as_float(logits, target)
    rows = x.shape[0] if per_image else 1
    return _lovasz_flat(x.reshape(rows, -1), t.reshape(rows, -1)).mean()


class LovaszHingeLoss(Loss):
    """Lovasz hinge on logits, per image by default (see :func:`lovasz_hinge_loss`)."""

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "logits"

    def __init__(self, per_image: bool = True) -> None:
        super().__init__()
        self.per_image = bool(per_image)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_hinge_loss(pred, target, self.per_image)

    def extra_repr(self) -> str:
        return f"per_image={self.per_image}"
