"""Where in the image a score comes from: region masks and region-restricted scores, on the device.

A report that says which loss won should also say *where* it won. Evaluation therefore
scores every held-out image a second time, restricted to parts of the scene that
the true mask and the true depth define (no prediction is involved in choosing them):

Regions (a partition of the image; ``b`` is the band width, :func:`band_width`):

- ``fg``: the foreground's interior, true-mask pixels more than ``b`` px from the background;
- ``boundary``: the band of pixels within ``b`` px of the true mask's edge, on either side
  (square neighbourhood: a ``(2b+1)``-px max-pool of the mask minus its erosion);
- ``wall-sky``: the rest of the background lying at the scene's far plane, i.e. whose true
  depth is within 0.1% of the largest true background depth of that image (the back wall,
  or the sky at the far distance; also ground beyond ``data.max_depth``, which the
  target clips there). A scene whose background has one constant depth (the ``layers``
  ground truth) is all ``wall-sky``;
- ``ground``: the rest of the background (nearer than the far plane).

Depth bins (a second partition, by true depth): ``near``, ``mid``, ``far`` are the thirds of
``[0, data.max_depth]``: ``[0, m/3)``, ``[m/3, 2m/3)``, ``[2m/3, m]``.

Scores (per image; NaN where the image has no pixel of that region):

- ``mask_iou@fg`` and ``mask_iou@boundary``: IoU of the binarised mask (probability > 0.5)
  counting only the region's pixels (in ``fg`` this equals the recall there);
- ``mask_fp@ground``, ``mask_fp@wall-sky``: the share of the region's pixels predicted as
  foreground. No true foreground lies there, so IoU would only be 0 or 1; the false-positive
  share is the whole error (lower is better);
- ``depth_delta1@R`` and ``depth_absrel@R`` for every region and every depth bin ``R``, with
  depths clamped below at 1e-3 m as the depth metrics do.

Everything is tensor work on the evaluation device; the values join the per-image metrics in
evaluation's one read-back and become extra columns of ``val_per_image.csv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REGIONS = ("fg", "boundary", "ground", "wall-sky")
DEPTH_BINS = ("near", "mid", "far")
#: Relative tolerance that puts a background pixel on the far plane.
FAR_PLANE_TOLERANCE = 1e-3
#: Depths are clamped below at this many metres before any ratio, as the depth metrics do.
DEPTH_EPS = 1e-3
THRESHOLD = 0.5


def band_width(height: int) -> int:
    """Half-width of the boundary band in pixels: 1 px per 32 px of image height, at least 1 (2 px at 64 px)."""
    return max(1, round(height / 32))


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    # the image edge counts as foreground here, so a mask touching the edge is not eroded along it
    return -F.max_pool2d(-mask, 2 * radius + 1, stride=1, padding=radius)


def region_masks(mask: torch.Tensor, depth: torch.Tensor, band: int | None = None) -> dict[str, torch.Tensor]:
    """The four regions of each image as boolean ``(B, 1, H, W)`` tensors (see the module's docstring).

    ``mask`` is the true mask (B, 1, H, W) in {0, 1}; ``depth`` the true depth in any unit.
    """
    b = band_width(mask.shape[-2]) if band is None else band
    m = (mask > 0.5).to(depth.dtype)
    outer = _dilate(m, b) > 0.5
    inner = _erode(m, b) > 0.5
    background = ~outer
    neg_inf = torch.full_like(depth, float("-inf"))
    far = torch.where(background, depth, neg_inf).amax(dim=(1, 2, 3), keepdim=True)
    on_far = depth >= far * (1 - FAR_PLANE_TOLERANCE)
    return {
        "fg": inner,
        "boundary": outer & ~inner,
        "ground": background & ~on_far,
        "wall-sky": background & on_far,
    }


def depth_bins(depth: torch.Tensor, max_depth: float) -> dict[str, torch.Tensor]:
    """``near``, ``mid``, ``far``: the thirds of ``[0, max_depth]`` by true depth (metres), as booleans."""
    first, second = max_depth / 3.0, 2.0 * max_depth / 3.0
    return {"near": depth < first, "mid": (depth >= first) & (depth < second), "far": depth >= second}


def _share(hit: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Per image: the share of ``region``'s pixels where ``hit`` holds; NaN for an empty region."""
    dims = (1, 2, 3)
    total = region.sum(dims).float()
    inside = (hit & region).sum(dims).float()
    return torch.where(total > 0, inside / total.clamp_min(1), torch.full_like(total, float("nan")))


def _mean_in(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    dims = (1, 2, 3)
    total = region.sum(dims).float()
    inside = torch.where(region, values, torch.zeros_like(values)).sum(dims).float()
    return torch.where(total > 0, inside / total.clamp_min(1), torch.full_like(total, float("nan")))


def _iou_in(pred: torch.Tensor, true: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    dims = (1, 2, 3)
    tp = (pred & true & region).sum(dims).float()
    union = ((pred | true) & region).sum(dims).float()
    size = region.sum(dims).float()
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.ones_like(union))  # both empty there -> 1
    return torch.where(size > 0, iou, torch.full_like(size, float("nan")))


def region_scores(prob: torch.Tensor, mask: torch.Tensor, pred_depth: torch.Tensor, true_depth: torch.Tensor,
                  max_depth: float) -> dict[str, torch.Tensor]:
    """Every region- and bin-restricted score of a batch: ``{"mask_iou@boundary": (B,) float32, ...}``.

    ``prob`` is the predicted foreground probability, ``mask`` the true mask, both (B, 1, H, W);
    ``pred_depth`` and ``true_depth`` are in metres.
    """
    regions = region_masks(mask, true_depth)
    pred, true = prob > THRESHOLD, mask > 0.5
    out: dict[str, torch.Tensor] = {
        "mask_iou@fg": _iou_in(pred, true, regions["fg"]),
        "mask_iou@boundary": _iou_in(pred, true, regions["boundary"]),
        "mask_fp@ground": _share(pred, regions["ground"]),
        "mask_fp@wall-sky": _share(pred, regions["wall-sky"]),
    }
    p = pred_depth.float().clamp_min(DEPTH_EPS)
    t = true_depth.float().clamp_min(DEPTH_EPS)
    within = torch.maximum(p / t, t / p) < 1.25
    absrel = (p - t).abs() / t
    for name, region in {**regions, **depth_bins(true_depth, max_depth)}.items():
        out[f"depth_delta1@{name}"] = _share(within, region)
        out[f"depth_absrel@{name}"] = _mean_in(absrel, region)
    return out


def split_column(column: str) -> tuple[str, str] | None:
    """``"mask_iou@boundary"`` -> ``("mask_iou", "boundary")``; None for a column without a region."""
    base, sep, where = column.partition("@")
    return (base, where) if sep and base and where else None
