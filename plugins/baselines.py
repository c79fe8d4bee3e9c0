"""Built-in baselines: the floors of each task, predictors that learn nothing by gradient.

A study's numbers mean something only next to what such a predictor scores.
Each is fitted on the training split only and is deterministic:

- mask ``image-difference``: ``max over channels |fg_bg - bg| > t``, with the
  threshold ``t`` (in 1/255 steps) chosen to maximise the mean per-image IoU
  on the training split. Where the fg is composited, the two shots differ;
  this is what a network must beat to show it learned more than subtraction.
- mask ``prior``: the per-pixel frequency of foreground in the training
  masks, thresholded at the level best (mean per-image IoU) on the training
  split. It ignores the input: it knows only where objects usually stand.
- depth ``median-map``: the per-pixel median of the training depths. It
  ignores the input; on scenes with a fixed camera it knows the ground plane.
- depth ``global-median``: one number, the median of every training depth.

IoU per image follows the built-in ``iou`` metric: an empty prediction of an
empty mask scores 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from typing import ClassVar

import numpy as np
import torch

from losslab.core.plugin.contracts import Batch, Task

#: Image differences are measured in these many steps (the images are 8-bit).
LEVELS = 255

#: Images per block when the prior scores its level sets (bounds the fit's memory, not its result).
PRIOR_BLOCK = 256


def _nothing_seen(name: str) -> ValueError:
    return ValueError(f"baseline {name!r}: fit() was given no training batches; the training split is empty")


def _not_fitted(name: str) -> RuntimeError:
    return RuntimeError(f"baseline {name!r}: predict() was called before fit(); fit it on the training split")


def iou_of_counts(tp: torch.Tensor, predicted: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (predicted + positives - TP), and 1 where both are empty (the ``iou`` metric's rule)."""
    union = predicted + positives - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(tp))


def difference_levels(batch: Batch) -> torch.Tensor:
    """``(B, H, W)`` integer levels 0..255 of ``max over channels |fg_bg - bg|``."""
    diff = (batch["fg_bg"].float() - batch["bg"].float()).abs().amax(dim=1)
    return (diff * LEVELS).round().clamp(0, LEVELS).long()


class ImageDifference:
    """Mask floor: ``max_c |fg_bg - bg| > t``, t chosen on the training split for the best mean IoU.

    Args:
        threshold: a fixed ``t`` in levels 0..254 (1/255 units) instead of the fitted one.
    """

    task: ClassVar[Task] = "mask"
    name = "image-difference"

    def __init__(self, threshold: int | None = None) -> None:
        if threshold is not None and not 0 <= int(threshold) < LEVELS:
            raise ValueError(f"baseline {self.name!r}: threshold must be a level in 0..{LEVELS - 1} "
                             f"(1/255 units), got {threshold}")
        self.threshold: int | None = None if threshold is None else int(threshold)
        self.fixed = threshold is not None
        self.train_iou: float | None = None

    def fit(self, batches: Iterable[Batch]) -> None:
        """Per image, histograms of the levels on fg and on bg pixels; the best t from their tails."""
        fg_hist: list[torch.Tensor] = []
        bg_hist: list[torch.Tensor] = []
        for batch in batches:
            levels = difference_levels(batch).flatten(1)
            fg = (batch["mask"][:, 0] > 0.5).flatten(1)
            n = levels.shape[0]
            # one bincount over every pixel: bin (is_fg, image, level), so no boolean gather of either part
            bins = levels + torch.arange(n).unsqueeze(1) * (LEVELS + 1) + fg.long() * (n * (LEVELS + 1))
            counts = torch.bincount(bins.flatten(), minlength=2 * n * (LEVELS + 1)).reshape(2, n, LEVELS + 1)
            bg_hist.append(counts[0].double())
            fg_hist.append(counts[1].double())
        if not fg_hist:
            raise _nothing_seen(self.name)
        fg_counts, bg_counts = torch.cat(fg_hist), torch.cat(bg_hist)
        # pixels with level > t, for t = 0..254: reversed cumulative sums of the histograms
        above_fg = fg_counts.flip(1).cumsum(1).flip(1)[:, 1:]
        above_bg = bg_counts.flip(1).cumsum(1).flip(1)[:, 1:]
        positives = fg_counts.sum(1, keepdim=True)
        mean_iou = iou_of_counts(above_fg, above_fg + above_bg, positives).mean(0)
        if not self.fixed:
            self.threshold = int(torch.argmax(mean_iou))  # the lowest t among equals
        self.train_iou = float(mean_iou[self.threshold])

    def predict(self, batch: Batch) -> torch.Tensor:
        if self.threshold is None:
            raise _not_fitted(self.name)
        return (difference_levels(batch) > self.threshold).float().unsqueeze(1)


class MaskPrior:
    """Mask floor: the training masks' per-pixel frequency, thresholded at the level best on the training split."""

    task: ClassVar[Task] = "mask"
    name = "prior"

    def __init__(self) -> None:
        self.frequency: torch.Tensor | None = None
        self.level: float | None = None
        self.train_iou: float | None = None

    def fit(self, batches: Iterable[Batch]) -> None:
        masks = [(b["mask"][:, 0] > 0.5).flatten(1) for b in batches]  # bool: 1 byte a pixel
        if not masks:
            raise _nothing_seen(self.name)
        m = torch.cat(masks)
        hw = m.shape[1]
        frequency = m.sum(0, dtype=torch.float64) / len(m)
        # the set {frequency > level} grows through the pixels in order of falling frequency; a set is
        # only reachable at the end of a run of equal frequencies (ties go in together)
        order = torch.argsort(frequency, descending=True, stable=True)
        ranked = frequency[order]
        predicted = torch.arange(hw + 1, dtype=torch.float64)
        # each image's IoU at every set size, summed over blocks of images: the (images, HW + 1) counts
        # of the whole split would need 8 bytes per pixel of every training image several times over
        # (13 GB at 100 backgrounds, 64 px); a block keeps it to a few MB
        total = torch.zeros(hw + 1, dtype=torch.float64)
        for block in m.split(PRIOR_BLOCK):
            b = block.double()
            tp = torch.cat([torch.zeros(len(b), 1, dtype=b.dtype), b[:, order].cumsum(1)], dim=1)  # (n, HW + 1)
            total += iou_of_counts(tp, predicted.expand_as(tp), b.sum(1, keepdim=True)).sum(0)
        mean_iou = total / len(m)
        ends = torch.ones(hw + 1, dtype=torch.bool)
        ends[1:hw] = ranked[:-1] > ranked[1:]
        mean_iou = torch.where(ends, mean_iou, torch.full_like(mean_iou, -1.0))
        k = int(torch.argmax(mean_iou))  # the smallest set among equals
        # predict frequency > level: level is the frequency of the first pixel left out (-1: take all)
        self.level = float(ranked[k]) if k < hw else -1.0
        self.frequency = frequency.float()
        self.train_iou = float(mean_iou[k])

    def predict(self, batch: Batch) -> torch.Tensor:
        if self.frequency is None or self.level is None:
            raise _not_fitted(self.name)
        b, _, h, w = batch["fg_bg"].shape
        if h * w != self.frequency.numel():
            raise ValueError(f"baseline {self.name!r}: fitted on images of {self.frequency.numel()} pixels, asked for "
                             f"{h}x{w}; fit and score at one data.image_size")
        return (self.frequency > self.level).float().reshape(1, 1, h, w).expand(b, 1, h, w).clone()


def _median_rows(values: np.ndarray) -> np.ndarray:
    """Each row's median (float64): the middle value, or the mean of the two middle ones.

    Partitions ``values`` (``(R, n)``, C order) in place: one selection pass for both middle
    values, on rows that are contiguous in memory, instead of two ``kthvalue`` calls across
    a strided dimension (which copy the data twice and cost several times as long). The order
    statistics are the same, so the median is the same to the bit.
    """
    n = values.shape[1]
    low, high = (n + 1) // 2 - 1, n // 2
    values.partition(sorted({low, high}), axis=1)
    return (values[:, low].astype(np.float64) + values[:, high].astype(np.float64)) / 2


def _depth_rows(batches: Iterable[Batch]) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Every training depth as one ``(N, H * W)`` float32 array (an image a row), and (H, W).

    Filled batch by batch into one buffer (sized up front where the iterable knows its sample
    count), with contiguous row copies, so no second copy of the split is concatenated next to it.
    """
    rows: np.ndarray | None = None
    used = 0
    expected = len(batches) if isinstance(batches, Sized) else 0  # samples, where the iterable knows (no regrowth)
    shape = (0, 0)
    for batch in batches:
        shape = (int(batch["depth"].shape[-2]), int(batch["depth"].shape[-1]))
        depth = batch["depth"][:, 0].float().flatten(1).numpy()  # (b, H * W)
        b, hw = depth.shape
        if rows is None:
            rows = np.empty((max(b, expected, 1024), hw), dtype=np.float32)
        if rows.shape[1] != hw:
            raise ValueError(f"depth batches of {rows.shape[1]} and of {hw} pixels; fit at one data.image_size")
        if used + b > rows.shape[0]:
            grown = np.empty((max(used + b, 2 * rows.shape[0]), hw), dtype=np.float32)
            grown[:used] = rows[:used]
            rows = grown
        rows[used:used + b] = depth
        used += b
    return None if rows is None else (rows[:used], shape)


class MedianMap:
    """Depth floor: the per-pixel median of the training depths (in metres); ignores the input."""

    task: ClassVar[Task] = "depth"
    name = "median-map"

    def __init__(self) -> None:
        self.map: torch.Tensor | None = None

    def fit(self, batches: Iterable[Batch]) -> None:
        found = _depth_rows(batches)
        if found is None:
            raise _nothing_seen(self.name)
        rows, shape = found
        columns = np.ascontiguousarray(rows.T)  # one pixel's values in a row: what the partition runs along
        del rows, found
        self.map = torch.from_numpy(_median_rows(columns)).float().reshape(shape)

    def predict(self, batch: Batch) -> torch.Tensor:
        if self.map is None:
            raise _not_fitted(self.name)
        b, _, h, w = batch["fg_bg"].shape
        if (h, w) != tuple(self.map.shape):
            raise ValueError(f"baseline {self.name!r}: fitted on {tuple(self.map.shape)} images, asked for "
                             f"{(h, w)}; fit and score at one data.image_size")
        return self.map.expand(b, 1, h, w).clone()


class GlobalMedian:
    """Depth floor: one depth everywhere, the median of every training depth pixel (in metres)."""

    task: ClassVar[Task] = "depth"
    name = "global-median"

    def __init__(self) -> None:
        self.value: float | None = None

    def fit(self, batches: Iterable[Batch]) -> None:
        found = _depth_rows(batches)
        if found is None:
            raise _nothing_seen(self.name)
        self.value = float(_median_rows(found[0].reshape(1, -1))[0])  # contiguous: a view, partitioned in place

    def predict(self, batch: Batch) -> torch.Tensor:
        if self.value is None:
            raise _not_fitted(self.name)
        b, _, h, w = batch["fg_bg"].shape
        return torch.full((b, 1, h, w), self.value)
