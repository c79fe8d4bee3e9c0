"""The compositor: fg_bg = alpha blend of the resized (and maybe flipped) fg onto the bg.

The fg is resized with premultiplied alpha (so transparent pixels' colour
never bleeds into the edge), fitted inside its ``size`` x ``size`` box keeping
its aspect ratio, and anchored at the box's bottom centre: its base stands on
the recipe's base row. The same code serves the materializing writers and the
virtual dataset, which is what makes both give the same bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np

from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import Sources


def fit_fg(fg_rgba: np.ndarray, size: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGBA fg to fit a ``size`` box; return premultiplied RGB (float32) and alpha in [0, 1]."""
    if fg_rgba.ndim != 3 or fg_rgba.shape[2] != 4:
        raise ValueError(f"fg must be an (h, w, 4) RGBA array, got shape {fg_rgba.shape}")
    if flip:
        fg_rgba = fg_rgba[:, ::-1]
    h, w = fg_rgba.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    alpha = fg_rgba[..., 3:4].astype(np.float32) / 255.0
    premult = np.concatenate([fg_rgba[..., :3].astype(np.float32) * alpha, alpha], axis=2)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(premult), (new_w, new_h), interpolation=interp)
    return resized[..., :3], np.clip(resized[..., 3], 0.0, 1.0)


def placement(recipe: Recipe, fitted_hw: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a fitted fg of shape ``fitted_hw`` in its recipe's box (bottom centre)."""
    h, w = fitted_hw
    return recipe.x + (recipe.size - w) // 2, recipe.y + recipe.size - h


def blend(
    bg: np.ndarray, fg_premult: np.ndarray, fg_alpha: np.ndarray, x0: int, y0: int
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blend a fitted fg onto ``bg`` at (x0, y0), clipping at the borders.

    Returns ``fg_bg`` (uint8 RGB) and the alpha canvas (float32, bg-sized).
    """
    height, width = bg.shape[:2]
    h, w = fg_alpha.shape
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(height, y0 + h), min(width, x0 + w)
    out = bg.copy()
    canvas = np.zeros((height, width), dtype=np.float32)
    if ye <= ys or xe <= xs:
        return out, canvas
    a = fg_alpha[ys - y0 : ye - y0, xs - x0 : xe - x0]
    f = fg_premult[ys - y0 : ye - y0, xs - x0 : xe - x0]
    region = bg[ys:ye, xs:xe].astype(np.float32)
    mixed = region * (1.0 - a[..., None]) + f
    out[ys:ye, xs:xe] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    canvas[ys:ye, xs:xe] = a
    return out, canvas


class Compositor:
    """Composes recipes against sources, caching fitted fgs (few sizes, many placements)."""

    def __init__(self, sources: Sources, cache_size: int = 4096) -> None:
        self.sources = sources
        self._cache: OrderedDict[tuple[int, bool, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    def fitted(self, fg: int, flip: bool, size: int) -> tuple[np.ndarray, np.ndarray]:
        key = (fg, flip, size)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        value = fit_fg(self.sources.fg(fg), size, flip)
        self._cache[key] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def compose(self, recipe: Recipe) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample: (bg, fg_bg, alpha)."""
        bg = self.sources.bg(recipe.bg)
        premult, alpha = self.fitted(recipe.fg, recipe.flip, recipe.size)
        x0, y0 = placement(recipe, alpha.shape)
        fg_bg, canvas = blend(bg, premult, alpha, x0, y0)
        return bg, fg_bg, canvas

    def compose_batch(self, recipes: Sequence[Recipe]) -> dict[str, np.ndarray]:
        """Stack of samples: ``bg``/``fg_bg`` (N, H, W, 3) uint8 and ``alpha`` (N, H, W) float32."""
        parts = [self.compose(r) for r in recipes]
        return {
            "bg": np.stack([p[0] for p in parts]),
            "fg_bg": np.stack([p[1] for p in parts]),
            "alpha": np.stack([p[2] for p in parts]),
        }
