"""Depth-gradient losses: gradient matching and edge-aware smoothness.

Per-pixel losses barely notice a blurred depth edge (few pixels are off by
much); comparing finite differences makes edges and slopes count. Both use
forward differences along x and y, :math:`\\partial_x d_{r,c} = d_{r,c+1} - d_{r,c}`.

``smoothness`` is the edge-aware smoothness term of self-supervised depth
(Godard et al., 2017), which penalises the prediction's gradients except
where the *image* has an edge. ``Loss.forward`` only gets the prediction and
the target, so here the edges come from the **target depth** instead of the
RGB image: the prediction may change sharply where the true depth does, and
is pushed to be flat elsewhere. Its minimum is therefore any flat
prediction (not the target itself); use it with a small weight next to a
data term such as ``l1``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair, check_positive


def _dx(d: torch.Tensor) -> torch.Tensor:
    return d[..., :, 1:] - d[..., :, :-1]


def _dy(d: torch.Tensor) -> torch.Tensor:
    return d[..., 1:, :] - d[..., :-1, :]


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean L1 difference of the depth maps' forward-difference gradients.

    .. math::

        \ell = \overline{|\partial_x \hat d - \partial_x d|} + \overline{|\partial_y \hat d - \partial_y d|}

    each bar a mean over the ``B x H x (W-1)`` (resp. ``B x (H-1) x W``) differences.
    It is 0 whenever pred and target differ by a constant.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`, H, W >= 2.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> gradient_loss(p, torch.zeros_like(p)).item()  # x: |1| twice, y: 0
        1.0
    """
    check_pair("gradient", pred, target, min_hw=2)
    p, t = as_float(pred, target)
    return (_dx(p) - _dx(t)).abs().mean() + (_dy(p) - _dy(t)).abs().mean()


def smoothness_loss(pred: torch.Tensor, target: torch.Tensor, edge_weight: float = 10.0) -> torch.Tensor:
    r"""Edge-aware smoothness of the prediction, with edges taken from the target depth.

    .. math::

        \ell = \overline{|\partial_x \hat d|\, e^{-\beta |\partial_x d|}}
             + \overline{|\partial_y \hat d|\, e^{-\beta |\partial_y d|}}

    (kornia's ``inverse_depth_smoothness_loss`` with the target depth, times
    :math:`\beta`, as the guide image). Minimum 0 for a flat prediction.

    Args:
        pred: predicted depth (normalised).
        target: true depth normalised to [0, 1]; only its edges are used.
        edge_weight: :math:`\beta` (>= 0): how strongly a target edge frees the
            prediction to change; 0 gives plain total variation.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`, H, W >= 2.
        - output: scalar.
    """
    check_pair("smoothness", pred, target, min_hw=2)
    beta = check_positive("smoothness", "edge_weight", edge_weight, allow_zero=True)
    p, t = as_float(pred, target)
    sx = (_dx(p).abs() * torch.exp(-beta * _dx(t).abs())).mean()
    sy = (_dy(p).abs() * torch.exp(-beta * _dy(t).abs())).mean()
    return sx + sy


class GradientLoss(Loss):
    """L1 difference of the depth maps' x and y gradients (see :func:`gradient_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    needs_partner: ClassVar[str] = ("it compares only differences between neighbouring pixels, so it leaves the "
                                    "depth's level free")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return gradient_loss(pred, target)


class SmoothnessLoss(Loss):
    """Edge-aware smoothness of the prediction; edges from the target depth (see :func:`smoothness_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    needs_partner: ClassVar[str] = ("it only asks the prediction to be smooth, which a constant map satisfies "
                                    "best")

    def __init__(self, edge_weight: float = 10.0) -> None:
        super().__init__()
        self.edge_weight = check_positive("smoothness", "edge_weight", edge_weight, allow_zero=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return smoothness_loss(pred, target, self.edge_weight)

    def extra_repr(self) -> str:
        return f"edge_weight={self.edge_weight}"
