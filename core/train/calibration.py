"""Mask calibration: a reliability diagram's bins and the expected calibration error (ECE).

During evaluation every held-out pixel's foreground probability ``p`` falls in one of
``bins`` equal-width bins over [0, 1] (15 by default; bin ``k`` holds ``k/15 <= p < (k+1)/15``,
and ``p = 1`` the last). Per bin the device accumulates the pixel count, the sum of ``p``
and the number of true foreground pixels, with ``scatter_add_`` (no host round trip; unlike
``torch.bincount`` it needs no maximum read back). Then

    ECE = sum over bins of (n_k / N) * |mean p in bin k - share of foreground in bin k|

the binary (foreground-probability) form of Guo et al. (2017)'s ECE, pooled over all pixels
of the held-out set. A reliability diagram plots the share of foreground against the mean
``p`` of each bin; a calibrated mask lies on the diagonal.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from losslab.core import names

ECE_BINS = 15
CALIBRATION_FILE = names.CALIBRATION_FILE


class CalibrationCounts:
    """Per-bin pixel counts, probability sums and foreground counts, accumulated on the device."""

    def __init__(self, device: torch.device, bins: int = ECE_BINS) -> None:
        if bins < 1:
            raise ValueError(f"calibration: bins must be at least 1, got {bins}")
        self.bins = bins
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(3, bins, device=device, dtype=dtype)

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        p = prob.detach().reshape(-1).to(self.sums.dtype)
        t = (target.detach().reshape(-1) > 0.5).to(self.sums.dtype)
        k = (p * self.bins).long().clamp_(0, self.bins - 1)
        self.sums[0].scatter_add_(0, k, torch.ones_like(p))
        self.sums[1].scatter_add_(0, k, p)
        self.sums[2].scatter_add_(0, k, t)


def summarize(sums: list[list[float]]) -> dict[str, Any]:
    """The host-side record of read-back sums: counts, per-bin confidence and accuracy, and the ECE."""
    count, conf, pos = (list(map(float, row)) for row in sums)
    bins = len(count)
    total = sum(count)
    confidence = [c / n if n else math.nan for c, n in zip(conf, count, strict=True)]
    accuracy = [a / n if n else math.nan for a, n in zip(pos, count, strict=True)]
    ece = (sum(n / total * abs(c - a) for n, c, a in zip(count, confidence, accuracy, strict=True) if n)
           if total else math.nan)
    return {"bins": bins, "count": count, "confidence_sum": conf, "positive_sum": pos,
            "confidence": confidence, "accuracy": accuracy, "ece": ece}


def expected_calibration_error(record: dict[str, Any]) -> float:
    """ECE from a record's sums (count, confidence_sum, positive_sum), as :func:`summarize` computes it."""
    return float(summarize([record["count"], record["confidence_sum"], record["positive_sum"]])["ece"])
