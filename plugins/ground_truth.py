"""Built-in ground-truth producers: masks (alpha, diff) and depth (ground-plane, layers).

Depth is in metres and never stretched per image, so a value means the same
distance in every image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import cv2
import numpy as np

from losslab.core.geometry import SceneGeometry
from losslab.core.markers import hookimpl
from losslab.core.recipes import Recipe
from losslab.core.sources import Sources


class AlphaMask:
    """Mask from the fg's alpha: pixel is fg where the composited alpha is at least ``threshold``."""

    target: ClassVar[str] = "mask"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"alpha mask: threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold

    def __call__(self, composed: dict[str, np.ndarray], recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        return (composed["alpha"] >= self.threshold).astype(np.uint8)


class DiffMask:
    """The documented differencing mask: gray(fg_bg - bg) > threshold, in uint8 arithmetic.

    Kept to measure the label noise it adds: it misses fg pixels whose colour
    equals the bg's, and uint8 subtraction wraps around (``3 - 5 = 254``), so
    it marks some pixels for the wrong reason. Use ``alpha`` for real labels.
    """

    target: ClassVar[str] = "mask"

    def __init__(self, threshold: int = 0) -> None:
        self.threshold = threshold

    def __call__(self, composed: dict[str, np.ndarray], recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        diff = composed["fg_bg"] - composed["bg"]  # uint8: wraps around, as the documented code did
        gray = np.stack([cv2.cvtColor(d, cv2.COLOR_RGB2GRAY) for d in diff])
        return (gray > self.threshold).astype(np.uint8)


class GroundPlaneDepth:
    """Camera-geometry depth: the bg's ground plane (then wall or sky), each fg at its base row's depth.

    ``horizon`` and ``camera_height`` override the source's geometry when given
    (for real photos, whose geometry the source cannot know).
    """

    target: ClassVar[str] = "depth"

    def __init__(self, horizon: float | None = None, camera_height: float | None = None,
                 far: float | None = None, threshold: float = 0.5) -> None:
        self.overrides = {k: v for k, v in
                          {"horizon": horizon, "camera_height": camera_height, "far": far}.items() if v is not None}
        self.threshold = threshold
        self._bg_depth: dict[tuple[int, int, int], np.ndarray] = {}

    def geometry(self, sources: Sources, bg: int) -> SceneGeometry:
        geo = sources.geometry(bg)
        return SceneGeometry(**{**geo.__dict__, **self.overrides}) if self.overrides else geo

    def __call__(self, composed: dict[str, np.ndarray], recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        n, h, w = composed["alpha"].shape
        out = np.empty((n, h, w), dtype=np.float32)
        for i, recipe in enumerate(recipes):
            geo = self.geometry(sources, recipe.bg)
            key = (recipe.bg, h, w)
            if key not in self._bg_depth:
                self._bg_depth[key] = geo.depth_map(h, w)
            fg_depth = geo.ground_depth_at(min(recipe.base_y, h) - 1, h)
            out[i] = np.where(composed["alpha"][i] >= self.threshold, np.float32(fg_depth), self._bg_depth[key])
        return out


class LayerDepth:
    """The documented depth layers: a constant depth per grid row, the bg at one far layer.

    ``depths`` gives the depth (metres) of rows 0..n-1; by default row ``r`` is
    at ``near * step**r``. Free placements (row -1) use the depth of the nearest
    row by size.
    """

    target: ClassVar[str] = "depth"

    def __init__(self, depths: Sequence[float] | None = None, near: float = 2.5, step: float = 1.25,
                 background: float = 20.0, rows: int = 4, threshold: float = 0.5) -> None:
        self.depths = list(depths) if depths is not None else [near * step**r for r in range(rows)]
        if any(d <= 0 for d in self.depths) or background <= 0:
            raise ValueError(f"layer depth: depths must be positive metres, got {self.depths} and {background}")
        self.background, self.threshold = background, threshold

    def __call__(self, composed: dict[str, np.ndarray], recipes: Sequence[Recipe], sources: Sources) -> np.ndarray:
        n, h, w = composed["alpha"].shape
        out = np.full((n, h, w), self.background, dtype=np.float32)
        for i, recipe in enumerate(recipes):
            row = recipe.row if 0 <= recipe.row < len(self.depths) else 0
            out[i][composed["alpha"][i] >= self.threshold] = self.depths[row]
        return out


@hookimpl
def lab_register_ground_truth(registry) -> None:
    registry.add("alpha", AlphaMask, summary="mask from the fg's alpha channel (default)", target="mask")
    registry.add("diff", DiffMask, summary="documented differencing mask (noisy; for label-noise studies)",
                 target="mask")
    registry.add("ground-plane", GroundPlaneDepth, summary="camera-geometry depth: ground plane, fg at its base",
                 target="depth")
    registry.add("layers", LayerDepth, summary="documented per-row depth layers", target="depth")
