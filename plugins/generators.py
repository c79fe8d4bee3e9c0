"""Built-in data generators: the documented 4 x 5 grid, and free placement for comparison."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from losslab.core.data.geometry import DOCUMENTED_IMAGE, DOCUMENTED_SIZES, SceneGeometry, grid_cells
from losslab.core.data.recipes import Recipe


class GridGenerator:
    """The documented recipe: every bg x every fg and its flip x (rows x cols) placements.

    Row ``r`` uses fg size ``sizes[r]`` (given for a 150 px bg and scaled to
    the actual bg size). Each row's base stands where an object of that
    image size would stand on the ground plane, so a farther row is smaller
    and its base higher; the cell table itself is the engine's
    :func:`losslab.core.data.geometry.grid_cells`, which the reader of the
    original dataset shares.

    Args:
        rows: grid rows, one fg size per row.
        cols: grid columns.
        sizes: fg size in px of each row, for a 150 px bg (scaled to the actual size); must shrink row by row.
        horizon: horizon row as a fraction of the height from the top, in (0, 1).
        flips: also place each fg mirrored.
    """

    def __init__(
        self, rows: int = 4, cols: int = 5, sizes: Sequence[int] = DOCUMENTED_SIZES,
        horizon: float = SceneGeometry.horizon, flips: bool = True,
    ) -> None:
        if len(sizes) != rows:
            raise ValueError(f"grid generator: sizes has {len(sizes)} entries but rows={rows}; give one size per row")
        if not 0.0 < horizon < 1.0:
            raise ValueError(f"grid generator: horizon must be a fraction of the height in (0, 1), got {horizon}")
        if sorted(sizes, reverse=True) != list(sizes):
            raise ValueError(f"grid generator: sizes must shrink row by row (farther rows are smaller), got {sizes}")
        self.rows, self.cols, self.sizes, self.horizon, self.flips = rows, cols, list(sizes), horizon, flips

    def cells(self, image_hw: tuple[int, int]) -> list[tuple[int, int, int, int, int]]:
        """(row, col, x, y, size) for every grid cell of an image of ``image_hw`` (the engine's cell table)."""
        return grid_cells(image_hw, self.cols, self.sizes, self.horizon)

    def recipes(self, bg_ids: Sequence[int], fg_ids: Sequence[int], image_hw: tuple[int, int]) -> list[Recipe]:
        cells = self.cells(image_hw)
        flips = (False, True) if self.flips else (False,)
        return [
            Recipe(bg=b, fg=f, flip=flip, row=r, col=c, x=x, y=y, size=s)
            for b in bg_ids
            for f in fg_ids
            for flip in flips
            for (r, c, x, y, s) in cells
        ]


class RandomPlacementGenerator:
    """Free placement for comparison: a random base row below the horizon, size tied to it.

    ``per_pair`` placements for each (bg, fg, flip); the size follows the same
    ground-plane rule as the grid (size proportional to base row minus horizon),
    so depth and scale stay consistent. Deterministic in ``seed``.

    Args:
        per_pair: placements per (bg, fg, flip).
        horizon: horizon row as a fraction of the height from the top.
        max_size: largest fg size in px, for a 150 px bg (scaled to the actual size).
        min_size: smallest fg size in px, for a 150 px bg.
        flips: also place each fg mirrored.
        seed: seed of the placements.
    """

    def __init__(
        self, per_pair: int = 20, horizon: float = SceneGeometry.horizon, max_size: int = 90,
        min_size: int = 40, flips: bool = True, seed: int = 0,
    ) -> None:
        if per_pair < 1:
            raise ValueError(f"random generator: per_pair must be at least 1, got {per_pair}")
        self.per_pair, self.horizon, self.flips, self.seed = per_pair, horizon, flips, seed
        self.max_size, self.min_size = max_size, min_size

    def recipes(self, bg_ids: Sequence[int], fg_ids: Sequence[int], image_hw: tuple[int, int]) -> list[Recipe]:
        height, width = image_hw
        scale = height / DOCUMENTED_IMAGE
        max_size, min_size = max(4, round(self.max_size * scale)), max(4, round(self.min_size * scale))
        horizon_row = self.horizon * height
        k = (height - horizon_row) / max_size
        flips = (False, True) if self.flips else (False,)
        out = []
        for b in bg_ids:
            for f in fg_ids:
                for flip in flips:
                    rng = np.random.default_rng([self.seed, b, f, int(flip)])
                    for _ in range(self.per_pair):
                        size = int(rng.integers(min_size, max_size + 1))
                        base = round(horizon_row + k * size)
                        x = int(rng.integers(0, max(1, width - size + 1)))
                        out.append(Recipe(bg=b, fg=f, flip=flip, row=-1, col=-1, x=x,
                                          y=min(height, base) - size, size=size))
        return out
