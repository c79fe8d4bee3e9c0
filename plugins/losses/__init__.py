"""Built-in loss terms: the catalog a loss-function study chooses from.

One module per family (kornia's layout): a functional form with the formula
in its docstring, and a thin :class:`~losslab.core.plugin.contracts.Loss` subclass
whose constructor keyword arguments are the term's YAML ``params``.

Mask losses take ``input_kind = "logits"`` (bce, focal, lovasz, boundary-bce:
computed with log-sigmoid / BCE-with-logits, so they are stable for any
logit) or ``"probabilities"`` (dice, iou, tversky, focal-tversky: the engine
applies the sigmoid). Depth losses take the raw depth prediction and the
target normalised to [0, 1]. Every loss computes in float32 (float64 when
given float64), so it is safe under autocast, and runs on any device.
"""

from __future__ import annotations

from losslab.plugins.losses.bce import BCELoss, bce_loss
from losslab.plugins.losses.boundary import BoundaryBCELoss, boundary_band, boundary_bce_loss
from losslab.plugins.losses.focal import FocalLoss, focal_loss
from losslab.plugins.losses.gradient import GradientLoss, SmoothnessLoss, gradient_loss, smoothness_loss
from losslab.plugins.losses.lovasz import LovaszHingeLoss, lovasz_hinge_loss
from losslab.plugins.losses.overlap import (
    DiceLoss,
    FocalTverskyLoss,
    IoULoss,
    TverskyLoss,
    dice_loss,
    focal_tversky_loss,
    iou_loss,
    tversky_loss,
)
from losslab.plugins.losses.regression import (
    BerHuLoss,
    HuberLoss,
    L1Loss,
    MSELoss,
    berhu_loss,
    huber_loss,
    l1_loss,
    mse_loss,
)
from losslab.plugins.losses.relative_depth import (
    SSIGradientLoss,
    SSILoss,
    align_scale_shift,
    ssi_gradient_loss,
    ssi_loss,
)
from losslab.plugins.losses.silog import SILogLoss, silog_loss
from losslab.plugins.losses.ssim import MSSSIMLoss, SSIMLoss, ms_ssim, ms_ssim_loss, ssim_loss

__all__ = [
    "BCELoss", "BerHuLoss", "BoundaryBCELoss", "DiceLoss", "FocalLoss", "FocalTverskyLoss", "GradientLoss",
    "HuberLoss", "IoULoss", "L1Loss", "LovaszHingeLoss", "MSELoss", "MSSSIMLoss", "SILogLoss", "SSIGradientLoss",
    "SSILoss", "SSIMLoss", "SmoothnessLoss", "TverskyLoss", "align_scale_shift", "bce_loss", "berhu_loss",
    "boundary_band", "boundary_bce_loss",
    "dice_loss", "focal_loss", "focal_tversky_loss", "gradient_loss", "huber_loss", "iou_loss", "l1_loss",
    "lovasz_hinge_loss", "ms_ssim", "ms_ssim_loss", "mse_loss", "silog_loss",
    "smoothness_loss", "ssi_gradient_loss", "ssi_loss", "ssim_loss", "tversky_loss",
]
