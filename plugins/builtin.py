"""The built-in plugins' registrations: every built-in component by name, registered lazily.

Eight plugins (``losslab.generators`` ... ``losslab.baselines``), one per kind, go
through the same hooks as any third party's. Each names its factories as
import strings (``"losslab.plugins.losses.bce:BCELoss"``) and states their
metadata here, so building the catalog imports neither torch nor the
component modules: ``lab plugins`` and ``lab --help`` start fast, and a module
is imported only when one of its components is built. The registry checks the
stated ``task``/``input_kind``/``target``/``higher_is_better`` against the class
when it is imported, and ``tests/test_builtin_catalog.py`` imports every one.

This module must stay free of heavy imports (torch, numpy, cv2, kornia).
"""

from __future__ import annotations

from types import SimpleNamespace

from losslab.core.plugin.markers import hookimpl
from losslab.core.plugin.registry import Registry

_P = "losslab.plugins"


@hookimpl
def _generators(registry: Registry) -> None:
    registry.add("grid", f"{_P}.generators:GridGenerator",
                 summary="documented 4x5 grid, sizes 90/80/70/60 px, bases rising by row")
    registry.add("random", f"{_P}.generators:RandomPlacementGenerator",
                 summary="free placement, size tied to the base row")


#: name -> (class in plugins/ground_truth.py, target, summary)
GROUND_TRUTH: dict[str, tuple[str, str, str]] = {
    "alpha": ("AlphaMask", "mask", "mask from the fg's alpha channel (default)"),
    "diff": ("DiffMask", "mask", "documented differencing mask (noisy; for label-noise studies)"),
    "ground-plane": ("GroundPlaneDepth", "depth", "camera-geometry depth: ground plane, fg at its base"),
    "layers": ("LayerDepth", "depth", "documented per-row depth layers"),
    "model": ("ModelDepth", "depth",
              "monocular depth network from local files (transformers, torch.hub, TorchScript), aligned"),
}


@hookimpl
def _ground_truth(registry: Registry) -> None:
    for name, (cls, target, summary) in GROUND_TRUTH.items():
        registry.add(name, f"{_P}.ground_truth:{cls}", summary=summary, target=target)


@hookimpl
def _augmentations(registry: Registry) -> None:
    registry.add("geometric", f"{_P}.augmentations:Geometric",
                 summary="flip and affine, identical on bg, fg_bg, mask and depth")
    registry.add("photometric", f"{_P}.augmentations:Photometric",
                 summary="colour jitter and optional noise, on images only")
    registry.add("channel-mix", f"{_P}.augmentations:ChannelMix",
                 summary="random channel order and inversion per sample, the same on bg and fg_bg")
    registry.add("horizon-zoom", f"{_P}.augmentations:HorizonZoom",
                 summary="zoom in by s about the horizon row, depth divided by s (Eigen et al.'s scale)")


@hookimpl
def _architectures(registry: Registry) -> None:
    registry.add("unet", f"{_P}.architectures.unet:UNet",
                 summary="small UNet, shared encoder, mask and depth decoders; the default")
    registry.add("resnet-unet", f"{_P}.architectures.resnet_unet:ResNetUNet",
                 summary="residual (ResNet-style) encoder with two UNet decoders")
    registry.add("nested-unet", f"{_P}.architectures.nested_unet:NestedUNet",
                 summary="light UNet++, nested skips, a mask and a depth head")


#: name -> ("module:class" under plugins/losses, task, input kind, summary)
LOSSES: dict[str, tuple[str, str, str, str]] = {
    # mask
    "bce": ("bce:BCELoss", "mask", "logits", "binary cross-entropy on logits, pos_weight for the foreground"),
    "dice": ("overlap:DiceLoss", "mask", "probabilities", "soft Dice loss 1 - 2|P∩T| / (|P| + |T|) on probabilities"),
    "iou": ("overlap:IoULoss", "mask", "probabilities", "soft Jaccard loss 1 - |P∩T| / |P∪T| on probabilities"),
    "tversky": ("overlap:TverskyLoss", "mask", "probabilities",
                "Tversky loss: alpha weighs false positives, beta false negatives"),
    "focal": ("focal:FocalLoss", "mask", "logits", "focal loss on logits: down-weights easy pixels by (1 - p_t)^gamma"),
    "focal-tversky": ("overlap:FocalTverskyLoss", "mask", "probabilities",
                      "focal Tversky loss (1 - Tversky index)^gamma"),
    "lovasz": ("lovasz:LovaszHingeLoss", "mask", "logits",
               "Lovasz hinge on logits: a convex surrogate of the Jaccard loss"),
    "boundary-bce": ("boundary:BoundaryBCELoss", "mask", "logits",
                     "BCE on logits with extra weight on a band around the mask's edge"),
    # depth
    "l1": ("regression:L1Loss", "depth", "depth", "mean absolute depth error"),
    "mse": ("regression:MSELoss", "depth", "depth", "mean squared depth error"),
    "huber": ("regression:HuberLoss", "depth", "depth", "Huber depth loss (quadratic below delta, linear above)"),
    "berhu": ("regression:BerHuLoss", "depth", "depth", "reverse Huber depth loss (linear below c, quadratic above)"),
    "ssim": ("ssim:SSIMLoss", "depth", "depth", "(1 - SSIM) / 2 of the depth maps (kornia)"),
    "ms-ssim": ("ssim:MSSSIMLoss", "depth", "depth", "(1 - multi-scale SSIM) / 2 of the depth maps"),
    "gradient": ("gradient:GradientLoss", "depth", "depth", "L1 difference of the depth maps' x and y gradients"),
    "smoothness": ("gradient:SmoothnessLoss", "depth", "depth",
                   "edge-aware smoothness of the prediction, edges from the target depth"),
    "silog": ("silog:SILogLoss", "depth", "depth", "scale-invariant log depth loss (Eigen et al.)"),
    "ssi": ("relative_depth:SSILoss", "depth", "depth",
            "scale-and-shift-invariant depth loss: per-image least-squares alignment, then MSE (MiDaS)"),
    "ssi-gradient": ("relative_depth:SSIGradientLoss", "depth", "depth",
                     "multi-scale gradient matching of the scale-and-shift-aligned depth (MiDaS)"),
}


@hookimpl
def _losses(registry: Registry) -> None:
    for name, (where, task, input_kind, summary) in LOSSES.items():
        registry.add(name, f"{_P}.losses.{where}", summary=summary, task=task, input_kind=input_kind)


#: name -> (class in plugins/metrics.py, task, higher is better, summary)
METRICS: dict[str, tuple[str, str, bool, str]] = {
    "iou": ("MaskIoU", "mask", True,
            "Intersection over union TP / (TP + FP + FN) of the binarised mask; both empty -> 1."),
    "dice": ("MaskDice", "mask", True, "Dice (F1) 2 TP / (2 TP + FP + FN) of the binarised mask; both empty -> 1."),
    "precision": ("MaskPrecision", "mask", True,
                  "Precision TP / (TP + FP); no predicted foreground -> 1 if the target is empty too, else 0."),
    "recall": ("MaskRecall", "mask", True,
               "Recall TP / (TP + FN); empty target -> 1 if the prediction is empty too, else 0."),
    "accuracy": ("MaskAccuracy", "mask", True, "Pixel accuracy (TP + TN) / N of the binarised mask."),
    "boundary-f": ("BoundaryF", "mask", True,
                   "Boundary F-score: boundary pixels matched within ``tolerance`` px, as DAVIS's F measure."),
    "hd95": ("HD95", "mask", False,
             "95th-percentile symmetric Hausdorff distance between the mask contours, pixels."),
    "nsd": ("SurfaceDice", "mask", True,
            "Normalized surface Dice (NSD) at ``tolerance`` px: the share of contour within tolerance of the other."),
    "rmse": ("RMSE", "depth", False, "Root mean squared error sqrt(mean((p - t)^2)), metres."),
    "mae": ("MAE", "depth", False, "Mean absolute error mean(|p - t|), metres."),
    "absrel": ("AbsRel", "depth", False, "Mean absolute relative error mean(|p - t| / t)."),
    "sqrel": ("SqRel", "depth", False, "Mean squared relative error mean((p - t)^2 / t), metres."),
    "log10": ("Log10", "depth", False, "Mean absolute log10 error mean(|log10 p - log10 t|)."),
    "rmse-log": ("RMSELog", "depth", False, "Root mean squared log error sqrt(mean((ln p - ln t)^2))."),
    "delta1": ("Delta1", "depth", True, "Share of pixels with max(p / t, t / p) < 1.25."),
    "delta2": ("Delta2", "depth", True, "Share of pixels with max(p / t, t / p) < 1.25^2."),
    "delta3": ("Delta3", "depth", True, "Share of pixels with max(p / t, t / p) < 1.25^3."),
    "ssim": ("DepthSSIM", "depth", True,
             "Mean SSIM of the depth maps, each image scaled by its true depth's maximum (range 1)."),
}


@hookimpl
def _metrics(registry: Registry) -> None:
    for name, (cls, task, higher, summary) in METRICS.items():
        registry.add(name, f"{_P}.metrics:{cls}", summary=summary, task=task, higher_is_better=higher)


#: name -> (class in plugins/weightings, summary)
WEIGHTINGS: dict[str, tuple[str, str]] = {
    "static": ("loss_based:Static", "the config's weighted sum of the terms, unchanged; the default"),
    "uncertainty": ("loss_based:Uncertainty", "learned homoscedastic uncertainty per task (Kendall 2018)"),
    "dwa": ("loss_based:DWA", "dynamic weight average of the tasks' loss ratios (Liu 2019)"),
    "gradnorm": ("gradnorm:GradNorm", "weights that equalize the tasks' gradient norms (Chen 2018)"),
    "pcgrad": ("gradient:PCGrad", "projects away conflicting task gradients (Yu 2020)"),
    "imtl-g": ("gradient:IMTLG", "equal projection onto every task's gradient direction (Liu 2021)"),
    "aligned-mtl": ("gradient:AlignedMTL", "aligns the task gradients' principal components (Senushkin 2023)"),
}


@hookimpl
def _weightings(registry: Registry) -> None:
    for name, (where, summary) in WEIGHTINGS.items():
        registry.add(name, f"{_P}.weightings.{where}", summary=summary)


#: name -> (class in plugins/baselines.py, task, summary); every built-in floor runs by default
BASELINES: dict[str, tuple[str, str, str]] = {
    "image-difference": ("ImageDifference", "mask", "max over channels |fg_bg - bg| > t, t best on the training split"),
    "prior": ("MaskPrior", "mask", "per-pixel frequency of the training masks, thresholded at the best level"),
    "median-map": ("MedianMap", "depth", "per-pixel median of the training depths; ignores the input"),
    "global-median": ("GlobalMedian", "depth", "one depth everywhere: the median of every training depth"),
}


@hookimpl
def _baselines(registry: Registry) -> None:
    for name, (cls, task, summary) in BASELINES.items():
        registry.add(name, f"{_P}.baselines:{cls}", summary=summary, task=task, default=True)


# One plugin object per kind, so each can be blocked by name (LAB_DISABLE_PLUGINS=losslab.losses).
GENERATORS = SimpleNamespace(lab_register_generators=_generators)
GROUND_TRUTH_PLUGIN = SimpleNamespace(lab_register_ground_truth=_ground_truth)
AUGMENTATIONS = SimpleNamespace(lab_register_augmentations=_augmentations)
ARCHITECTURES = SimpleNamespace(lab_register_architectures=_architectures)
LOSSES_PLUGIN = SimpleNamespace(lab_register_losses=_losses)
METRICS_PLUGIN = SimpleNamespace(lab_register_metrics=_metrics)
WEIGHTINGS_PLUGIN = SimpleNamespace(lab_register_weightings=_weightings)
BASELINES_PLUGIN = SimpleNamespace(lab_register_baselines=_baselines)
