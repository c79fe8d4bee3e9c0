"""The writers: one chunk of recipes in, files out, each file written atomically.

Both layouts share :class:`Producer` (compose, then ground truth, in small
batches) so they hold the same pixels the virtual dataset composes.

``seed``
    The documented layout: ``fgbg_K/<stem>.jpg``, ``mask_fgbg_K/mask_<stem>.png``,
    ``depth_fgbg_K/depth_<stem>.png`` (K = bg index), plus ``bg/bg_K.jpg`` (the bg
    as composited) and, at the root, ``manifest.jsonl`` and ``dataset.json``.

``shards``
    ``shards/shard_NNNNNN.npz``: one uncompressed NumPy ``.npz`` per chunk. A
    sample differs from its bg only near its fg, so a shard stores each bg
    once (``bg`` and the empty scene's depth ``depth_ref``) and, per sample,
    only the rectangle where fg_bg, mask or depth differ from them
    (``rects``), packed in one flat ``pixels`` array at ``offsets``: fg_bg
    RGB bytes, then the mask as bits (``np.packbits``), then depth as
    little-endian uint16 mm. Lossless, and readable by memory-mapping
    ``pixels`` without extracting anything (see :mod:`losslab.core.storage`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from losslab.core.compositor import Compositor
from losslab.core.datagen import formats
from losslab.core.recipes import Recipe
from losslab.core.sources import Sources

SHARD_DIR = "shards"
#: Recipe fields in the order of a shard's ``recipes`` array.
RECIPE_FIELDS = ("bg", "fg", "flip", "row", "col", "x", "y", "size")


def sample_stem(recipe: Recipe) -> str:
    """The documented stem for grid recipes; free placements (row -1) also name their box.

    ``bg5_0_2_flip_fg_73`` for a grid cell; ``bg5_x12_y60_s48_flip_fg_73`` for a
    random placement, whose row and column mean nothing.
    """
    if recipe.row >= 0 and recipe.col >= 0:
        return recipe.stem
    flip = "flip_" if recipe.flip else ""
    return f"bg{recipe.bg}_x{recipe.x}_y{recipe.y}_s{recipe.size}_{flip}fg_{recipe.fg}"


def shard_name(chunk: int) -> str:
    return f"{SHARD_DIR}/shard_{chunk:06d}.npz"


class Producer:
    """Composes recipes and runs the mask and depth ground truth on them, ``batch_size`` at a time."""

    def __init__(self, sources: Sources, mask_gt: Any, depth_gt: Any, batch_size: int = 32) -> None:
        self.sources, self.mask_gt, self.depth_gt = sources, mask_gt, depth_gt
        self.compositor = Compositor(sources)
        self.batch_size = batch_size

    def __call__(self, recipes: Sequence[Recipe]) -> Iterator[tuple[Sequence[Recipe], dict[str, np.ndarray]]]:
        for start in range(0, len(recipes), self.batch_size):
            batch = recipes[start : start + self.batch_size]
            composed = self.compositor.compose_batch(batch)
            composed["mask"] = np.asarray(self.mask_gt(composed, batch, self.sources), dtype=np.uint8)
            composed["depth"] = np.asarray(self.depth_gt(composed, batch, self.sources), dtype=np.float32)
            yield batch, composed

    def reference_depth(self, recipe: Recipe) -> np.ndarray:
        """The depth ground truth of ``recipe``'s bg with nothing pasted (alpha 0 everywhere)."""
        bg = self.sources.bg(recipe.bg)
        empty = {"bg": bg[None], "fg_bg": bg[None], "alpha": np.zeros((1, *bg.shape[:2]), np.float32)}
        return np.asarray(self.depth_gt(empty, [recipe], self.sources), dtype=np.float32)[0]


def recipe_row(recipe: Recipe, **extra: Any) -> dict[str, Any]:
    return {"name": sample_stem(recipe), **recipe.to_dict(), **extra}


class SeedWriter:
    """Writes the documented seed layout; returns the chunk's manifest rows."""

    def __init__(self, root: Path, image_format: str = "jpg", jpeg_quality: int = 95,
                 depth_format: str = "png16", depth_max: float = 50.0) -> None:
        self.root = Path(root)
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.depth_format, self.depth_max = depth_format, depth_max
        self._dirs: set[int] = set()

    def _prepare_bg(self, bg: int, sources: Sources) -> None:
        if bg in self._dirs:
            return
        for name in (formats.fgbg_dir(bg), formats.mask_dir(bg), formats.depth_dir(bg), formats.BG_DIR):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        path = self.root / formats.bg_path(bg, self.image_format)
        if not path.exists():
            formats.atomic_write(path, self._image(sources.bg(bg)))
        self._dirs.add(bg)

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer) -> list[dict[str, Any]]:
        rows = []
        root, write = self.root, formats.atomic_write
        image_fmt, depth_fmt, depth_max = self.image_format, self.depth_format, self.depth_max
        for batch, arrays in producer(recipes):
            for i, recipe in enumerate(batch):
                self._prepare_bg(recipe.bg, producer.sources)
                stem = sample_stem(recipe)
                image, mask, depth = formats.sample_paths(stem, recipe.bg, image_fmt, depth_fmt)
                write(root / image, self._image(arrays["fg_bg"][i]))
                write(root / mask, formats.encode_mask(arrays["mask"][i]))
                write(root / depth, formats.encode_depth(arrays["depth"][i], depth_fmt, depth_max))
                rows.append(recipe_row(recipe))
        return rows

    def _image(self, rgb: np.ndarray) -> bytes:
        return formats.encode_image(rgb, self.image_format, self.jpeg_quality)


def changed_rect(*changed: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the smallest rectangle holding every True pixel of the masks (0 size if none)."""
    any_changed = changed[0]
    for extra in changed[1:]:
        any_changed = any_changed | extra
    rows = np.flatnonzero(any_changed.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    cols = np.flatnonzero(any_changed[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


class ShardWriter:
    """Writes one ``.npz`` shard per chunk (see the module docstring for its arrays)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer) -> list[dict[str, Any]]:
        parts: list[bytes] = []
        offsets = [0]
        rects = np.zeros((len(recipes), 4), dtype=np.int32)
        refs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        rows = []
        k = 0
        for batch, arrays in producer(recipes):
            for i, recipe in enumerate(batch):
                if recipe.bg not in refs:
                    refs[recipe.bg] = (arrays["bg"][i].copy(),
                                       formats.depth_to_png16(producer.reference_depth(recipe)))
                bg, ref = refs[recipe.bg]
                fg_bg, mask = arrays["fg_bg"][i], arrays["mask"][i]
                depth = formats.depth_to_png16(arrays["depth"][i])
                y0, x0, h, w = changed_rect((fg_bg != bg).any(axis=2), mask != 0, depth != ref)
                rects[k] = (y0, x0, h, w)
                box = (slice(y0, y0 + h), slice(x0, x0 + w))
                blob = b"".join((
                    fg_bg[box].tobytes(),
                    np.packbits(mask[box], axis=None).tobytes(),
                    depth[box].astype("<u2").tobytes(),
                ))
                parts.append(blob)
                offsets.append(offsets[-1] + len(blob))
                rows.append(recipe_row(recipe, shard=chunk, slot=k))
                k += 1
        bg_ids = sorted(refs)
        arrays_out = {
            "pixels": np.frombuffer(b"".join(parts), dtype=np.uint8),
            "offsets": np.asarray(offsets, dtype=np.int64),
            "rects": rects,
            "recipes": np.asarray([[getattr(r, f) for f in RECIPE_FIELDS] for r in recipes], dtype=np.int32),
            "bg_ids": np.asarray(bg_ids, dtype=np.int32),
            "bg": np.stack([refs[b][0] for b in bg_ids]),
            "depth_ref": np.stack([refs[b][1] for b in bg_ids]),
        }
        path = self.root / shard_name(chunk)
        tmp = formats.temp_name(path)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays_out)
        os.replace(tmp, path)
        return rows
