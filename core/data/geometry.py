"""Scene geometry shared by the grid generator, the synthetic scenes and the depth ground truth.

A pinhole camera at height ``camera_height`` metres looks level over a flat
ground; the horizon is the image row ``horizon * H``; the focal length is
``focal * H`` pixels. A ground pixel on row ``y`` (below the horizon) lies at
depth ``camera_height * f / (y + 0.5 - y_h)`` metres. An object standing on
the ground with its base on row ``y_b`` is at the depth of that row, and its
image height is proportional to ``y_b - y_h``: this is why the grid's farther
rows are both smaller and higher, and why size, base height and depth agree.

:func:`grid_cells` is the documented grid's cell table. It lives here, not in the grid generator plugin, because
the engine needs it too: the reader of the original dataset rebuilds each sample's placement from its row and
column, and the engine never imports a built-in plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Depth saved in 16-bit PNGs is in millimetres: 1 unit = 1 mm, so the far plane must stay below 65.535 m.
DEPTH_PNG_UNITS_PER_METRE = 1000.0
#: The documented grid: one fg size per row, nearest row first, in pixels of a ``DOCUMENTED_IMAGE`` px bg.
DOCUMENTED_SIZES = (90, 80, 70, 60)
DOCUMENTED_IMAGE = 150


@dataclass(frozen=True)
class SceneGeometry:
    """Camera and scene layout of one background.

    ``wall_depth`` is the distance of a fronto-parallel back wall (None for an
    open scene, whose sky lies at ``far``).
    """

    horizon: float = 1.0 / 3.0
    camera_height: float = 1.6
    focal: float = 1.0
    far: float = 50.0
    wall_depth: float | None = None

    def horizon_row(self, height: int) -> float:
        return self.horizon * height

    def focal_px(self, height: int) -> float:
        return self.focal * height

    def ground_depth_at(self, base_row: float, height: int) -> float:
        """Depth in metres of the ground at image row ``base_row`` (capped at the wall or far plane)."""
        dy = base_row + 0.5 - self.horizon_row(height)
        limit = self.wall_depth if self.wall_depth is not None else self.far
        if dy <= 0:
            return float(limit)
        return float(min(self.camera_height * self.focal_px(height) / dy, limit))

    def depth_map(self, height: int, width: int) -> np.ndarray:
        """Per-pixel depth (metres, float32) of the empty scene: ground, then wall or sky."""
        rows = np.arange(height, dtype=np.float64) + 0.5 - self.horizon_row(height)
        limit = self.wall_depth if self.wall_depth is not None else self.far
        with np.errstate(divide="ignore"):
            depth = np.where(rows > 0, self.camera_height * self.focal_px(height) / np.maximum(rows, 1e-9), limit)
        depth = np.minimum(depth, limit).astype(np.float32)
        return np.repeat(depth[:, None], width, axis=1)

    def ground_rows(self, height: int) -> np.ndarray:
        """Boolean (H,): the rows that show ground nearer than the wall or far plane (where a fit can use it)."""
        rows = np.arange(height, dtype=np.float64) + 0.5 - self.horizon_row(height)
        limit = self.wall_depth if self.wall_depth is not None else self.far
        with np.errstate(divide="ignore"):
            depth = np.where(rows > 0, self.camera_height * self.focal_px(height) / np.maximum(rows, 1e-9), np.inf)
        return depth < limit


class GeometryUnknown(ValueError):
    """A bg's geometry was never stated (a photo): nothing may invent it.

    ``defaults`` holds the values to use for the fields that are not stated
    (focal, far) once the caller has the horizon and camera height from
    somewhere else (a depth plugin's parameters).
    """

    def __init__(self, message: str, defaults: SceneGeometry | None = None) -> None:
        super().__init__(message)
        self.defaults = defaults or SceneGeometry()


def grid_cells(
    image_hw: tuple[int, int], cols: int = 5, sizes: Sequence[int] = DOCUMENTED_SIZES,
    horizon: float = SceneGeometry.horizon,
) -> list[tuple[int, int, int, int, int]]:
    """(row, col, x, y, size) for every cell of a ``len(sizes)`` x ``cols`` grid on an image of ``image_hw``.

    Row ``r`` uses fg size ``sizes[r]`` (given for a 150 px bg, scaled to the image). Each row's base stands
    where an object of that size would stand on the ground plane: ``horizon + k * size``, with ``k`` set so
    row 0 stands on the bottom edge. Columns spread the fg's centre evenly across the width.
    """
    height, width = image_hw
    scale = height / DOCUMENTED_IMAGE
    scaled = [max(4, round(s * scale)) for s in sizes]
    horizon_row = horizon * height
    k = (height - horizon_row) / scaled[0]
    out = []
    for r, size in enumerate(scaled):
        base = round(horizon_row + k * size)
        y = min(height, base) - size
        for c in range(cols):
            centre = (c + 0.5) * width / cols
            x = int(np.clip(round(centre - size / 2), 0, max(0, width - size)))
            out.append((r, c, x, y, size))
    return out
