"""Losses for relative depth: scale-and-shift invariant (MiDaS) and its multi-scale gradient matching.

A monocular network trained on data of unknown scale (or a ground truth made
by a relative depth model) can only be asked for depth up to a scale and a
shift per image. MiDaS (Ranftl, Lasinger, Hafner, Schindler and Koltun,
"Towards Robust Monocular Depth Estimation", TPAMI 2020, eqs. 2-4 and 7)
therefore aligns each prediction to its target by least squares before
comparing them:

.. math::

    (s, t) = \\arg\\min_{s,t} \\sum_i (s \\hat d_i + t - d_i)^2, \\qquad
    s = \\frac{\\sum_i (\\hat d_i - \\bar{\\hat d})(d_i - \\bar d)}{\\sum_i (\\hat d_i - \\bar{\\hat d})^2},\\quad
    t = \\bar d - s \\bar{\\hat d}

per image (a prediction constant over its image gets ``s = 0``, ``t = mean(d)``,
its best constant fit). The alignment is part of the graph, as in MiDaS:
the gradient flows through ``s`` and ``t``. The two tensors are compared in
whatever space they are given; MiDaS applied this to disparity (inverse
depth). Both losses compute without reading anything back to the host.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair

ERRORS = ("sq", "abs")


def _check_error(name: str, error: str) -> str:
    if error not in ERRORS:
        raise ValueError(f"loss {name!r}: error must be 'sq' (MiDaS's ssi-MSE) or 'abs' (ssi-MAE), got {error!r}")
    return error


def _check_scales(name: str, scales: int) -> int:
    if isinstance(scales, bool) or not isinstance(scales, int) or scales < 1:
        raise ValueError(f"loss {name!r}: scales must be a whole number >= 1, got {scales!r}")
    return scales


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    r"""``s * pred + t`` per image, ``(s, t)`` the least-squares fit of pred to target (module docstring).

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: :math:`(B, 1, H, W)`, the aligned prediction.

    Example:
        >>> p = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
        >>> align_scale_shift(p, 2 * p + 1).flatten().tolist()
        [1.0, 3.0, 5.0, 7.0]
    """
    p, d = pred.flatten(1), target.flatten(1)
    pc = p - p.mean(dim=1, keepdim=True)
    dm = d.mean(dim=1, keepdim=True)
    var = (pc * pc).sum(dim=1, keepdim=True)
    cov = (pc * (d - dm)).sum(dim=1, keepdim=True)
    scale = torch.where(var > eps, cov / var.clamp_min(eps), torch.zeros_like(var))
    return (scale * pc + dm).view_as(pred)  # = s p + t with t = mean(d) - s mean(p)


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, error: str = "sq") -> torch.Tensor:
    r"""Scale-and-shift-invariant depth loss (MiDaS): align per image, then compare.

    .. math::

        r_i = s \hat d_i + t - d_i, \qquad
        \ell_{sq} = \frac{1}{2M} \sum_i r_i^2, \qquad \ell_{abs} = \frac{1}{M} \sum_i |r_i|

    with :math:`(s, t)` fitted per image by least squares (module docstring)
    and :math:`M` the number of pixels in the batch (MiDaS's batch-based
    reduction; with every pixel valid, the mean). ``sq`` is MiDaS's ssi-MSE
    (eq. 4, with its 1/2), ``abs`` the mean absolute error after the same
    alignment. 0 whenever pred is any positive or negative affine map of the target.

    Args:
        pred: predicted depth (or disparity), any scale.
        target: true depth (or disparity).
        error: ``"sq"`` or ``"abs"``.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
        >>> ssi_loss(p, 10 * p - 4).item()  # an affine map of the target: nothing to pay
        0.0
    """
    check_pair("ssi", pred, target)
    err = _check_error("ssi", error)
    p, d = as_float(pred, target)
    r = align_scale_shift(p, d) - d
    return 0.5 * r.pow(2).mean() if err == "sq" else r.abs().mean()


def ssi_gradient_loss(pred: torch.Tensor, target: torch.Tensor, scales: int = 4) -> torch.Tensor:
    r"""Multi-scale gradient matching of the aligned prediction (MiDaS, eq. 7).

    .. math::

        R = s \hat d + t - d, \qquad
        \ell = \sum_{k=0}^{K-1} \frac{1}{M_k} \sum_i \big(|\partial_x R^k_i| + |\partial_y R^k_i|\big)

    where :math:`R^k` is the residual sampled every :math:`2^k` pixels
    (``R[..., ::2**k, ::2**k]``, MiDaS's sub-sampling), :math:`M_k` its number
    of pixels in the batch, and :math:`\partial` forward differences. It asks
    for sharp, correctly placed depth edges; MiDaS adds it to ``ssi`` with
    weight 0.5.

    Args:
        pred: predicted depth (or disparity), any scale.
        target: true depth (or disparity).
        scales: :math:`K` >= 1; the images need more than :math:`2^{K-1}` pixels a side.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`, H, W > 2**(scales - 1).
        - output: scalar.

    Example:
        >>> p = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
        >>> ssi_gradient_loss(p, 3 * p, scales=1).item()  # aligned exactly: no residual edge
        0.0
    """
    k = _check_scales("ssi-gradient", scales)
    check_pair("ssi-gradient", pred, target, min_hw=2 ** (k - 1) + 1)
    p, d = as_float(pred, target)
    r = align_scale_shift(p, d) - d
    total = r.new_zeros(())
    for scale in range(k):
        step = 2**scale
        rk = r[..., ::step, ::step]
        gx = (rk[..., :, 1:] - rk[..., :, :-1]).abs().sum()
        gy = (rk[..., 1:, :] - rk[..., :-1, :]).abs().sum()
        total = total + (gx + gy) / rk.numel()
    return total


class SSILoss(Loss):
    """MiDaS's scale-and-shift-invariant depth loss (see :func:`ssi_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    needs_partner: ClassVar[str] = ("it aligns each prediction to its target by a free scale and shift, so it leaves "
                                    "the depth in metres free, which every depth metric scores")

    def __init__(self, error: str = "sq") -> None:
        super().__init__()
        self.error = _check_error("ssi", error)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssi_loss(pred, target, self.error)

    def extra_repr(self) -> str:
        return f"error={self.error!r}"


class SSIGradientLoss(Loss):
    """MiDaS's multi-scale gradient matching of the aligned depth (see :func:`ssi_gradient_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    needs_partner: ClassVar[str] = ("it compares gradients of the scale-and-shift-aligned depth, so it leaves the "
                                    "depth in metres free")

    def __init__(self, scales: int = 4) -> None:
        super().__init__()
        self.scales = _check_scales("ssi-gradient", scales)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssi_gradient_loss(pred, target, self.scales)

    def extra_repr(self) -> str:
        return f"scales={self.scales}"
