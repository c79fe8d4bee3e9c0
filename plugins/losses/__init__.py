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

from losslab.core.plugin.markers import hookimpl
from losslab.core.plugin.registry import Registry
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
    "lab_register_losses", "lovasz_hinge_loss", "ms_ssim", "ms_ssim_loss", "mse_loss", "silog_loss",
    "smoothness_loss", "ssi_gradient_loss", "ssi_loss", "ssim_loss", "tversky_loss",
]

#: name -> (class, one-line summary); task and input_kind come from the class.
BUILTIN_LOSSES: dict[str, tuple[type, str]] = {
    # mask
    "bce": (BCELoss, "binary cross-entropy on logits, pos_weight for the foreground"),
    "dice": (DiceLoss, "soft Dice loss 1 - 2|P∩T| / (|P| + |T|) on probabilities"),
    "iou": (IoULoss, "soft Jaccard loss 1 - |P∩T| / |P∪T| on probabilities"),
    "tversky": (TverskyLoss, "Tversky loss: alpha weighs false positives, beta false negatives"),
    "focal": (FocalLoss, "focal loss on logits: down-weights easy pixels by (1 - p_t)^gamma"),
    "focal-tversky": (FocalTverskyLoss, "focal Tversky loss (1 - Tversky index)^gamma"),
    "lovasz": (LovaszHingeLoss, "Lovasz hinge on logits: a convex surrogate of the Jaccard loss"),
    "boundary-bce": (BoundaryBCELoss, "BCE on logits with extra weight on a band around the mask's edge"),
    # depth
    "l1": (L1Loss, "mean absolute depth error"),
    "mse": (MSELoss, "mean squared depth error"),
    "huber": (HuberLoss, "Huber depth loss (quadratic below delta, linear above)"),
    "berhu": (BerHuLoss, "reverse Huber depth loss (linear below c, quadratic above)"),
    "ssim": (SSIMLoss, "(1 - SSIM) / 2 of the depth maps (kornia)"),
    "ms-ssim": (MSSSIMLoss, "(1 - multi-scale SSIM) / 2 of the depth maps"),
    "gradient": (GradientLoss, "L1 difference of the depth maps' x and y gradients"),
    "smoothness": (SmoothnessLoss, "edge-aware smoothness of the prediction, edges from the target depth"),
    "silog": (SILogLoss, "scale-invariant log depth loss (Eigen et al.)"),
    "ssi": (SSILoss, "scale-and-shift-invariant depth loss: per-image least-squares alignment, then MSE (MiDaS)"),
    "ssi-gradient": (SSIGradientLoss, "multi-scale gradient matching of the scale-and-shift-aligned depth (MiDaS)"),
}


@hookimpl
def lab_register_losses(registry: Registry) -> None:
    """Register the built-in loss terms."""
    for name, (cls, summary) in BUILTIN_LOSSES.items():
        registry.add(name, cls, summary=summary, task=cls.task, input_kind=cls.input_kind)
