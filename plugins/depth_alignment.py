"""Making a monocular model's relative depth metric: a least-squares scale and shift per image.

Relative depth networks (MiDaS, DPT, Depth Anything) predict inverse depth up
to an unknown scale and shift per image. MiDaS (Ranftl et al., 2020, eq. 4)
recovers them by least squares in inverse-depth (disparity) space:

.. math::

    (s, t) = \\arg\\min_{s, t} \\sum_{i \\in M} (s\\, p_i + t - 1/z_i)^2

over pixels ``M`` whose true depth ``z_i`` is known, which has the closed form
of a 2x2 normal equation. Here the known depths come either from a stated
ground plane (the pixels below the horizon nearer than the far plane, depth
from :class:`~losslab.core.data.geometry.SceneGeometry`) or from anchor depths
the user supplies (a sidecar next to the photo, :mod:`losslab.core.data.scene_files`).
The metric depth is then ``1 / (s p + t)``, clipped to ``[min_depth, max_depth]``
(``max_depth`` where ``s p + t <= 0``: beyond any finite distance).

A model that predicts metres already (GLPN, ZoeDepth) can be aligned the same
way in depth space (``space="depth"``: ``z = s p + t``).

The residual of each fit is kept (:class:`Fit`), in the fit's own space
(``rmse``, 1/m or m) and as the mean relative depth error over the fitted
pixels (``abs_rel``), so ``lab data stats`` can show how well the model agreed
with the stated scene.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from losslab.core.data.geometry import SceneGeometry


class AlignmentError(ValueError):
    """A scale and shift cannot be fitted (too few points, or a prediction constant over them)."""


@dataclass(frozen=True)
class Fit:
    """One least-squares alignment: ``target ~ scale * pred + shift`` over ``points`` pixels."""

    method: str
    scale: float
    shift: float
    points: int
    rmse: float
    abs_rel: float
    rmse_unit: str = "1/m"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_scale_shift(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """The least-squares ``(s, t)`` minimising ``sum(mask * (s * pred + t - target)**2)``, in float64.

    Solves the normal equations
    ``[[Σp², Σp], [Σp, Σ1]] [s, t]ᵀ = [Σp·y, Σy]ᵀ`` (sums over the mask), as MiDaS's
    ``compute_scale_and_shift`` does per image.

    Example:
        >>> p = np.array([0.0, 1.0, 2.0])
        >>> fit_scale_shift(p, 3.0 * p + 1.0)
        (3.0, 1.0)
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    m = np.ones_like(p, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).ravel()
    p, y = p[m], y[m]
    if p.size < 2:
        raise AlignmentError(f"need at least 2 known depths to fit a scale and shift, got {p.size}")
    # centred sums: the same solution as the raw normal equations, without their cancellation
    pm, ym = p.mean(), y.mean()
    dp = p - pm
    var = float(dp @ dp)
    if not var > 1e-12 * max(1.0, float(p @ p)):
        raise AlignmentError(
            "the model's prediction is constant over the pixels of known depth, so no scale can be fitted"
        )
    s = float(dp @ (y - ym)) / var
    return s, float(ym - s * pm)


def to_metres(pred: np.ndarray, scale: float, shift: float, space: str, min_depth: float,
              max_depth: float) -> np.ndarray:
    """Metres (float32) from a raw prediction and a fit in ``space`` ("inverse" or "depth")."""
    y = scale * np.asarray(pred, dtype=np.float64) + shift
    if space == "inverse":
        with np.errstate(divide="ignore"):
            y = np.where(y > 0, 1.0 / np.maximum(y, 1e-300), max_depth)
    return np.clip(y, min_depth, max_depth).astype(np.float32)


def align(pred: np.ndarray, depth: np.ndarray, mask: np.ndarray | None, space: str, method: str) -> Fit:
    """Fit ``pred`` to the known metric ``depth`` (where ``mask``) in ``space``; return the fit and its residual."""
    depth = np.asarray(depth, dtype=np.float64)
    m = np.ones(depth.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    m = m & np.isfinite(depth) & (depth > 0)
    target = 1.0 / np.where(m, depth, 1.0) if space == "inverse" else depth
    s, t = fit_scale_shift(pred, target, m)
    p = np.asarray(pred, dtype=np.float64)[m]
    fitted = s * p + t
    rmse = float(np.sqrt(np.mean((fitted - target[m]) ** 2)))
    if space == "inverse":
        with np.errstate(divide="ignore"):
            fitted = np.where(fitted > 0, 1.0 / np.maximum(fitted, 1e-300), np.inf)
    z = depth[m]
    abs_rel = float(np.mean(np.minimum(np.abs(fitted - z) / z, 1e6)))
    return Fit(method, s, t, int(m.sum()), rmse, abs_rel, "1/m" if space == "inverse" else "m")


def ground_target(geometry: SceneGeometry, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The stated ground's depth map (H, W) and the mask of the rows that show ground (nearer than the far plane)."""
    depth = geometry.depth_map(height, width)
    rows = geometry.ground_rows(height)
    return depth, np.repeat(rows[:, None], width, axis=1)


def anchor_target(anchors: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchors (K, 3) of (u, v, metres) as a sparse depth map (H, W) and its mask (last anchor wins a pixel)."""
    depth = np.zeros((height, width), dtype=np.float64)
    mask = np.zeros((height, width), dtype=bool)
    if len(anchors):
        cols = np.clip(np.floor(anchors[:, 0] * width).astype(int), 0, width - 1)
        rows = np.clip(np.floor(anchors[:, 1] * height).astype(int), 0, height - 1)
        depth[rows, cols] = anchors[:, 2]
        mask[rows, cols] = True
    return depth, mask
