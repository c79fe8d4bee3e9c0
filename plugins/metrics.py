"""Built-in evaluation metrics for the mask and depth tasks, one value per image.

Every built-in metric is written as *sufficient statistics* plus a *reduce*
step: :meth:`StatMetric.stats` returns per-image sums (e.g. TP, FP, FN
counts, or the sum of squared errors and the pixel count) and
:meth:`StatMetric.reduce` turns sums into the metric. That one definition
gives both aggregations a study may want:

- **per image, then averaged** (the engine's default): ``metric(pred, target)``
  returns a ``(B,)`` tensor, one value per image, and the engine averages
  those values over the held-out set. Every image counts the same, whatever
  the size of its foreground; an image with a tiny mask can swing IoU a lot.
- **global** (:class:`GlobalAggregator`, :func:`global_metric`): the sums
  are added over *all pixels of the set* first and reduced once, as a
  segmentation benchmark's "dataset IoU" is. Large objects weigh more; an
  empty image hardly counts. For metrics that are plain pixel means (MAE,
  AbsRel, accuracy, delta) and images of one size both agree; for ratios
  and roots (IoU, Dice, RMSE) they differ.

Conventions
-----------

Mask metrics get the foreground *probability* map and binarise it with
``pred > threshold`` (0.5 by default, as torchmetrics does); the target is
binarised with ``target > 0.5``. When a ratio's denominator is zero the
metric takes the value that says "nothing was wrong":

- IoU and Dice: prediction and target both empty -> 1 (one empty, the other
  not -> 0 as the formula gives).
- precision: no predicted foreground -> 1 if the target is empty too, else 0;
  recall: empty target -> 1 if the prediction is empty too, else 0.
- boundary-f: no boundary in either -> 1; in only one of them -> 0.
- hd95: both masks empty -> 0 px; one empty -> the image diagonal (px).
- nsd: both masks empty -> 1; one empty -> 0.

Depth metrics get depths in metres. Both depths are clamped below at
``eps`` (1e-3 m by default) before any division or logarithm, so a zero or
negative predicted depth gives a large but finite error instead of
inf/NaN, and a zero target depth cannot divide by zero.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import kornia
import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import Metric, Task

Stats = dict[str, torch.Tensor]


def _check_pair(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    for label, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"metric {name!r}: {label} must be a (B, 1, H, W) tensor, got {shape}")
    if pred.shape != target.shape:
        raise ValueError(f"metric {name!r}: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must have the same shape (B, 1, H, W)")


def _safe_div(num: torch.Tensor, den: torch.Tensor, when_zero: torch.Tensor) -> torch.Tensor:
    """num / den, and ``when_zero`` where den == 0 (no NaN, no inf, also in gradients)."""
    zero = den == 0
    return torch.where(zero, when_zero.to(num.dtype), num / torch.where(zero, torch.ones_like(den), den))


class StatMetric(Metric, ABC):
    """A metric defined by per-image sufficient statistics and a reduction.

    ``forward`` = ``reduce(stats(pred, target))`` per image; the global
    aggregation reduces the statistics summed over every image instead.
    """

    name: ClassVar[str] = ""
    #: False for a metric whose statistics do not add up over images (a percentile): no global aggregation.
    aggregable: ClassVar[bool] = True

    @abstractmethod
    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        """Per-image sums, each of shape ``(B,)`` (float64)."""

    @abstractmethod
    def reduce(self, stats: Stats) -> torch.Tensor:
        """The metric from sums (any shape, elementwise)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, pred, target)
        return self.reduce(self.stats(pred, target))


# -- mask ------------------------------------------------------------------------------------------


class _MaskMetric(StatMetric):
    """A mask metric on the binarised prediction.

    Args:
        threshold: probability above which a predicted pixel counts as foreground, in [0, 1].
    """

    task: ClassVar[Task] = "mask"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"metric {self.name!r}: threshold must be a probability in [0, 1], "
                             f"got {threshold}")
        self.threshold = float(threshold)

    def binarise(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (pred.detach() > self.threshold).double(), (target.detach() > 0.5).double()

    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        p, t = self.binarise(pred, target)
        tp = (p * t).sum(dim=(1, 2, 3))
        fp = (p * (1 - t)).sum(dim=(1, 2, 3))
        fn = ((1 - p) * t).sum(dim=(1, 2, 3))
        n = torch.full_like(tp, float(t[0].numel()))
        return {"tp": tp, "fp": fp, "fn": fn, "tn": n - tp - fp - fn}

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class MaskIoU(_MaskMetric):
    """Intersection over union TP / (TP + FP + FN) of the binarised mask; both empty -> 1."""

    name = "iou"

    def reduce(self, stats: Stats) -> torch.Tensor:
        den = stats["tp"] + stats["fp"] + stats["fn"]
        return _safe_div(stats["tp"], den, torch.ones_like(den))


class MaskDice(_MaskMetric):
    """Dice (F1) 2 TP / (2 TP + FP + FN) of the binarised mask; both empty -> 1."""

    name = "dice"

    def reduce(self, stats: Stats) -> torch.Tensor:
        den = 2 * stats["tp"] + stats["fp"] + stats["fn"]
        return _safe_div(2 * stats["tp"], den, torch.ones_like(den))


class MaskPrecision(_MaskMetric):
    """Precision TP / (TP + FP); no predicted foreground -> 1 if the target is empty too, else 0."""

    name = "precision"

    def reduce(self, stats: Stats) -> torch.Tensor:
        den = stats["tp"] + stats["fp"]
        return _safe_div(stats["tp"], den, (stats["fn"] == 0).double())


class MaskRecall(_MaskMetric):
    """Recall TP / (TP + FN); empty target -> 1 if the prediction is empty too, else 0."""

    name = "recall"

    def reduce(self, stats: Stats) -> torch.Tensor:
        den = stats["tp"] + stats["fn"]
        return _safe_div(stats["tp"], den, (stats["fp"] == 0).double())


class MaskAccuracy(_MaskMetric):
    """Pixel accuracy (TP + TN) / N of the binarised mask."""

    name = "accuracy"

    def reduce(self, stats: Stats) -> torch.Tensor:
        n = stats["tp"] + stats["fp"] + stats["fn"] + stats["tn"]
        return (stats["tp"] + stats["tn"]) / n


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Inner boundary of a binary ``(B, 1, H, W)`` mask: foreground pixels with a background 8-neighbour.

    Pixels outside the image are ignored (``-inf`` padding of the erosion),
    so a mask touching the image border has no boundary along it.
    """
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    return mask * (1 - eroded)


def _disk(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    return ((r.view(-1, 1) ** 2 + r.view(1, -1) ** 2) <= radius**2).to(dtype).view(1, 1, 2 * radius + 1, -1)


class BoundaryF(_MaskMetric):
    """Boundary F-score: boundary pixels matched within ``tolerance`` px, as DAVIS's F measure.

    Precision is the share of predicted boundary pixels lying within
    ``tolerance`` pixels (Euclidean, a disk) of a true boundary pixel; recall
    the share of true boundary pixels within ``tolerance`` of a predicted one;
    F = 2 P R / (P + R). Boundaries are the masks' inner boundaries
    (:func:`mask_boundary`). No boundary in either mask -> 1; in only one -> 0.

    Args:
        tolerance: distance in px within which a boundary pixel counts as matched (integer >= 0).
    """

    name = "boundary-f"

    def __init__(self, threshold: float = 0.5, tolerance: int = 2) -> None:
        super().__init__(threshold)
        if int(tolerance) != tolerance or tolerance < 0:
            raise ValueError(f"metric 'boundary-f': tolerance must be an integer >= 0 (pixels), "
                             f"got {tolerance}")
        self.tolerance = int(tolerance)

    def _dilate(self, b: torch.Tensor) -> torch.Tensor:
        if self.tolerance == 0:
            return b
        disk = _disk(self.tolerance, b.device, b.dtype)
        return (F.conv2d(b, disk, padding=self.tolerance) > 0.5).to(b.dtype)

    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        p, t = self.binarise(pred, target)
        bp, bt = mask_boundary(p), mask_boundary(t)
        dims = (1, 2, 3)
        return {
            "pred_matched": (bp * self._dilate(bt)).sum(dims),
            "pred_total": bp.sum(dims),
            "target_matched": (bt * self._dilate(bp)).sum(dims),
            "target_total": bt.sum(dims),
        }

    def reduce(self, stats: Stats) -> torch.Tensor:
        one = torch.ones_like(stats["pred_total"])
        precision = _safe_div(stats["pred_matched"], stats["pred_total"], one)
        recall = _safe_div(stats["target_matched"], stats["target_total"], one)
        return _safe_div(2 * precision * recall, precision + recall, torch.zeros_like(one))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, tolerance={self.tolerance}"


# -- surface distances -----------------------------------------------------------------------------

#: Elements of the largest intermediate of :func:`squared_distance_transform` (``chunk x H x W x max(H, W)``):
#: 2^25 float32 values, 128 MiB; larger batches are processed in chunks of images.
EDT_MAX_ELEMENTS = 2**25


def mask_contour(mask: torch.Tensor) -> torch.Tensor:
    """Contour of a binary ``(B, 1, H, W)`` mask: foreground pixels with a background 8-neighbour.

    Unlike :func:`mask_boundary`, pixels outside the image count as background
    (zero padding, as ``scipy.ndimage.binary_erosion``'s default
    ``border_value=0``), so a mask touching the image edge has a contour along
    it and only an empty mask has no contour. Surface distances need that: a
    non-empty object always has a surface.
    """
    eroded = -F.max_pool2d(F.pad(-mask, (1, 1, 1, 1), value=0.0), 3, stride=1)
    return mask * (1 - eroded)


def squared_distance_transform(features: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distance (px^2) from every pixel to the nearest feature pixel.

    ``features`` is a binary ``(B, 1, H, W)`` tensor; the result has its shape,
    float32, ``inf`` in an image with no feature pixel. Computed on the tensors'
    device in two separable passes (the squared Euclidean distance is the
    minimum over columns of the squared horizontal offset plus the squared
    vertical distance within that column), so it is exact, needs no host round
    trip and matches ``scipy.ndimage.distance_transform_edt(~features) ** 2``.

    The vertical pass finds, per column, the nearest feature row above and
    below each row with two running maxima (``cummax``), O(H) per column; the
    horizontal pass is a brute-force minimum over the W columns. Every value
    is a small integer in float32, so both give the very bits a brute-force
    minimum over every pair gives, at about half its cost.
    """
    b, _, h, w = features.shape
    dev = features.device
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    dx = (xs.view(-1, 1) - xs.view(1, -1)).pow(2)  # (W, W')
    rows = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    far = float(2 * h + 1)  # further than any row: the missing side never wins the minimum
    chunk = max(1, EDT_MAX_ELEMENTS // max(1, h * w * w))
    out = []
    for start in range(0, b, chunk):
        f = features[start:start + chunk, 0] > 0.5  # (b, H, W)
        # vertical pass: per column, the nearest feature row at or above (running max of feature rows)
        # and at or below (the same on the flipped column); squared distance to the nearer one
        above = torch.where(f, rows, torch.full_like(rows, -far)).cummax(dim=1).values
        below = torch.where(f, -rows, torch.full_like(rows, -far)).flip(1).cummax(dim=1).values.flip(1).neg()
        g = torch.minimum(rows - above, below - rows).pow(2)  # (b, H, W'), (3 H)^2 where the column is empty
        g = torch.where(f.any(dim=1, keepdim=True), g, torch.full_like(g, float("inf")))
        # horizontal pass: d2[y, x] = min over x' of (x - x')^2 + g[y, x']
        d2 = (dx + g.unsqueeze(2)).amin(dim=-1)  # (b, H, W)
        out.append(d2.unsqueeze(1))
    return torch.cat(out) if out else features.new_zeros(features.shape, dtype=torch.float32)


def _masked_percentile(values: torch.Tensor, keep: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-th percentile (0-100) of ``values[keep]``, linear interpolation as ``numpy.percentile``.

    ``values`` and ``keep`` are ``(B, N)``; a row with nothing kept gives 0
    (the caller applies its empty-set convention). Sort and gather only, so
    no value is read back to the host.
    """
    big = torch.finfo(values.dtype).max
    ordered = torch.where(keep, values, torch.full_like(values, big)).sort(dim=1).values
    n = keep.sum(dim=1).to(values.dtype)
    pos = (q / 100.0) * (n - 1).clamp_min(0)
    lo = pos.floor()
    hi = (lo + 1).clamp(max=(n - 1).clamp_min(0))
    v_lo = ordered.gather(1, lo.long().unsqueeze(1)).squeeze(1)
    v_hi = ordered.gather(1, hi.long().unsqueeze(1)).squeeze(1)
    value = v_lo + (v_hi - v_lo) * (pos - lo)
    return torch.where(n > 0, value, torch.zeros_like(value))


class _LastDistances:
    """The last :func:`_contour_distances` result, so ``hd95`` and ``nsd`` on one batch compute it once.

    Evaluation calls every metric on the same prediction and target tensors in turn; the two boundary
    metrics need the same contours and distance maps, by far the dearest part of evaluation. The entry
    is keyed by the two tensors themselves (held, so their ids cannot be reused), their in-place version
    counters and the threshold, so a hit is the very computation a miss would have repeated.
    """

    key: tuple[Any, ...] | None = None
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    value: tuple[torch.Tensor, ...] = ()


def _contour_distances_of(pred: torch.Tensor, target: torch.Tensor, threshold: float) -> tuple[torch.Tensor, ...]:
    """:func:`_contour_distances` of the binarised pair, shared by successive metrics on the same tensors."""
    key = (id(pred), pred._version, id(target), target._version, threshold, pred.device, pred.shape, target.shape)
    if _LastDistances.key != key:
        p, t = (pred.detach() > threshold).float(), (target.detach() > 0.5).float()
        _LastDistances.key, _LastDistances.held = None, None
        _LastDistances.value = _contour_distances(p, t)
        _LastDistances.key, _LastDistances.held = key, (pred, target)
    return _LastDistances.value


def _contour_distances(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Both contours and each pixel's distance (px) to the other mask's contour."""
    cp, ct = mask_contour(pred), mask_contour(target)
    to_target = squared_distance_transform(ct).sqrt()
    to_pred = squared_distance_transform(cp).sqrt()
    return cp, ct, to_target, to_pred


class HD95(_MaskMetric):
    """95th-percentile symmetric Hausdorff distance between the mask contours, pixels.

    For each predicted contour pixel, its Euclidean distance to the nearest
    true contour pixel, and the other way round; each direction's 95th
    percentile (linear interpolation, as ``numpy.percentile``), and the larger
    of the two (MONAI's ``compute_hausdorff_distance(percentile=95)``
    convention). Contours as :func:`mask_contour`: the image edge counts as
    outside. Both masks empty -> 0; exactly one empty -> the image diagonal
    ``sqrt((H-1)^2 + (W-1)^2)``, the largest distance an image allows (finite,
    so averages stay defined). Lower is better. Not a sum statistic, so it has
    no global aggregation.
    """

    name = "hd95"
    higher_is_better: ClassVar[bool] = False
    aggregable: ClassVar[bool] = False
    percentile: ClassVar[float] = 95.0

    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        cp, ct, to_target, to_pred = _contour_distances_of(pred, target, self.threshold)
        b = pred.shape[0]
        flat = (lambda x: x.reshape(b, -1))  # noqa: E731
        forward = _masked_percentile(flat(to_target), flat(cp) > 0.5, self.percentile)
        backward = _masked_percentile(flat(to_pred), flat(ct) > 0.5, self.percentile)
        return {"hd": torch.maximum(forward, backward).double(),
                "n_pred": flat(cp).sum(1).double(), "n_target": flat(ct).sum(1).double()}

    def reduce(self, stats: Stats) -> torch.Tensor:
        raise TypeError("metric 'hd95' is a percentile, not a sum statistic: it has no global aggregation; "
                        "use the per-image mean")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(self.name, pred, target)
        s = self.stats(pred, target)
        h, w = pred.shape[-2:]
        diagonal = torch.full_like(s["hd"], math.hypot(h - 1, w - 1))
        one_empty = (s["n_pred"] == 0) != (s["n_target"] == 0)
        return torch.where(one_empty, diagonal, s["hd"])


class SurfaceDice(_MaskMetric):
    """Normalized surface Dice (NSD) at ``tolerance`` px: the share of contour within tolerance of the other.

    NSD = (|C_p within tau of C_t| + |C_t within tau of C_p|) / (|C_p| + |C_t|),
    where C_p, C_t are the predicted and true contours (:func:`mask_contour`,
    counted in pixels) and "within tau" means a Euclidean distance of at most
    ``tolerance`` pixels (2 by default), as Nikolov et al. (2021) define it
    with pixel counts in place of surface areas. Both empty -> 1; exactly one
    empty -> 0. Higher is better.

    Args:
        tolerance: distance in px (Euclidean, inclusive) within which a contour pixel counts as matched (>= 0).
    """

    name = "nsd"

    def __init__(self, threshold: float = 0.5, tolerance: float = 2.0) -> None:
        super().__init__(threshold)
        if not float(tolerance) >= 0:
            raise ValueError(f"metric 'nsd': tolerance must be a distance >= 0 (pixels), got {tolerance}")
        self.tolerance = float(tolerance)

    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        cp, ct, to_target, to_pred = _contour_distances_of(pred, target, self.threshold)
        dims = (1, 2, 3)
        return {
            "pred_matched": (cp * (to_target <= self.tolerance)).sum(dims).double(),
            "target_matched": (ct * (to_pred <= self.tolerance)).sum(dims).double(),
            "total": (cp.sum(dims) + ct.sum(dims)).double(),
        }

    def reduce(self, stats: Stats) -> torch.Tensor:
        return _safe_div(stats["pred_matched"] + stats["target_matched"], stats["total"],
                         torch.ones_like(stats["total"]))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, tolerance={self.tolerance}"


# -- depth -----------------------------------------------------------------------------------------


class _DepthMetric(StatMetric):
    """A depth metric that is a function of the per-pixel mean of some error term.

    Args:
        eps: floor in metres of both depths before any division or logarithm (> 0).
    """

    task: ClassVar[Task] = "depth"
    higher_is_better: ClassVar[bool] = False

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if not float(eps) > 0:
            raise ValueError(f"metric {self.name!r}: eps must be > 0 (metres), got {eps}")
        self.eps = float(eps)

    @abstractmethod
    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-pixel error term whose image mean :meth:`reduce` turns into the metric."""

    def stats(self, pred: torch.Tensor, target: torch.Tensor) -> Stats:
        p = pred.detach().double().clamp_min(self.eps)
        t = target.detach().double().clamp_min(self.eps)
        err = self.per_pixel(p, t)
        return {"sum": err.sum(dim=(1, 2, 3)), "n": torch.full((err.shape[0],), float(err[0].numel()),
                                                               dtype=err.dtype, device=err.device)}

    def reduce(self, stats: Stats) -> torch.Tensor:
        return stats["sum"] / stats["n"]

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class RMSE(_DepthMetric):
    """Root mean squared error sqrt(mean((p - t)^2)), metres."""

    name = "rmse"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).pow(2)

    def reduce(self, stats: Stats) -> torch.Tensor:
        return (stats["sum"] / stats["n"]).sqrt()


class MAE(_DepthMetric):
    """Mean absolute error mean(|p - t|), metres."""

    name = "mae"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs()


class AbsRel(_DepthMetric):
    """Mean absolute relative error mean(|p - t| / t)."""

    name = "absrel"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs() / target


class SqRel(_DepthMetric):
    """Mean squared relative error mean((p - t)^2 / t), metres."""

    name = "sqrel"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).pow(2) / target


class Log10(_DepthMetric):
    """Mean absolute log10 error mean(|log10 p - log10 t|)."""

    name = "log10"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.log10(pred) - torch.log10(target)).abs()


class RMSELog(_DepthMetric):
    """Root mean squared log error sqrt(mean((ln p - ln t)^2))."""

    name = "rmse-log"

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.log(pred) - torch.log(target)).pow(2)

    def reduce(self, stats: Stats) -> torch.Tensor:
        return (stats["sum"] / stats["n"]).sqrt()


class DeltaAccuracy(_DepthMetric):
    """Threshold accuracy: share of pixels with max(p / t, t / p) < 1.25^k."""

    higher_is_better: ClassVar[bool] = True
    power: ClassVar[int] = 1

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ratio = torch.maximum(pred / target, target / pred)
        return (ratio < 1.25**self.power).double()


class Delta1(DeltaAccuracy):
    """Share of pixels with max(p / t, t / p) < 1.25."""

    name = "delta1"
    power = 1


class Delta2(DeltaAccuracy):
    """Share of pixels with max(p / t, t / p) < 1.25^2."""

    name = "delta2"
    power = 2


class Delta3(DeltaAccuracy):
    """Share of pixels with max(p / t, t / p) < 1.25^3."""

    name = "delta3"
    power = 3


class DepthSSIM(_DepthMetric):
    """Mean SSIM of the depth maps, each image scaled by its true depth's maximum (range 1).

    SSIM's constants depend on the data range; scaling both maps by the
    target's per-image maximum makes the range 1, so the value does not
    depend on the scene's depth scale. Gaussian window (sigma 1.5) of
    ``window_size`` px, reflect-padded (kornia's ``"same"``). Global
    aggregation averages the per-pixel SSIM over all pixels of the set.

    Args:
        window_size: odd side in px of the Gaussian window (>= 3).
    """

    name = "ssim"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, window_size: int = 11, eps: float = 1e-3) -> None:
        super().__init__(eps)
        if int(window_size) != window_size or window_size < 3 or window_size % 2 == 0:
            raise ValueError(f"metric 'ssim': window_size must be an odd integer >= 3, got {window_size}")
        self.window_size = int(window_size)

    def per_pixel(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if min(pred.shape[-2:]) <= self.window_size // 2:
            raise ValueError(
                f"metric 'ssim': images of {pred.shape[-2]}x{pred.shape[-1]} px are too small for an "
                f"{self.window_size}-px window (reflect padding needs sides > {self.window_size // 2}); "
                "pass a smaller window_size"
            )
        scale = target.amax(dim=(1, 2, 3), keepdim=True)
        return kornia.metrics.ssim(pred / scale, target / scale, self.window_size, max_val=1.0)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, eps={self.eps}"


# -- global aggregation ----------------------------------------------------------------------------


class GlobalAggregator:
    """Global ("dataset") aggregation: add each metric's statistics over all images, reduce once.

    Usage::

        agg = GlobalAggregator({"iou": MaskIoU(), "dice": MaskDice()})
        for pred, target in batches:
            agg.update(pred, target)
        agg.compute()   # {"iou": ..., "dice": ...}

    Only metrics built on :class:`StatMetric` (all built-ins but ``hd95``, a
    percentile) can be aggregated globally; a third-party metric without
    ``stats``/``reduce``, or one marked ``aggregable = False``, is refused
    with a message that says so.
    """

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        for name, metric in metrics.items():
            if not isinstance(metric, StatMetric):
                raise TypeError(
                    f"metric {name!r} ({type(metric).__name__}) cannot be aggregated globally: it does not "
                    "provide per-image statistics; subclass losslab.plugins.metrics.StatMetric "
                    "(stats + reduce), or use the per-image mean"
                )
            if not metric.aggregable:
                raise TypeError(
                    f"metric {name!r} ({type(metric).__name__}) cannot be aggregated globally: its per-image "
                    "value is a percentile, not a sum of statistics; use the per-image mean"
                )
        self.metrics: dict[str, StatMetric] = dict(metrics)  # type: ignore[arg-type]
        self._sums: dict[str, Stats] = {}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch's statistics (sums kept in float64 on the CPU)."""
        for name, metric in self.metrics.items():
            _check_pair(name, pred, target)
            batch = {k: v.sum().double().cpu() for k, v in metric.stats(pred, target).items()}
            acc = self._sums.setdefault(name, {k: torch.zeros((), dtype=torch.float64) for k in batch})
            for k, v in batch.items():
                acc[k] = acc[k] + v

    def compute(self) -> dict[str, float]:
        """Each metric reduced from the sums of every image seen; NaN for a metric that saw no image."""
        return {
            name: float(metric.reduce(self._sums[name])) if name in self._sums else math.nan
            for name, metric in self.metrics.items()
        }

    def reset(self) -> None:
        self._sums.clear()


def global_metric(metric: Metric, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One metric aggregated globally over ``(pred, target)`` batches (see :class:`GlobalAggregator`)."""
    agg = GlobalAggregator({getattr(metric, "name", "") or type(metric).__name__: metric})
    for pred, target in batches:
        agg.update(pred, target)
    return next(iter(agg.compute().values()))


BUILTIN_METRICS: tuple[type[StatMetric], ...] = (
    MaskIoU, MaskDice, MaskPrecision, MaskRecall, MaskAccuracy, BoundaryF, HD95, SurfaceDice,
    RMSE, MAE, AbsRel, SqRel, Log10, RMSELog, Delta1, Delta2, Delta3, DepthSSIM,
)
