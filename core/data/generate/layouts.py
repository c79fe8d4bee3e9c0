"""The writers: one chunk of recipes in, files out, no file ever visible half-written.

Both layouts share :class:`Producer` (compose, then ground truth, in small
batches) so they hold the same pixels the virtual dataset composes, and its
:meth:`Producer.misses`: the one loop that composes and runs the ground truth
only for the samples a writer's cache does not hold yet.

``seed``
    The documented layout: ``fgbg_K/<stem>.jpg``, ``mask_fgbg_K/mask_<stem>.png``,
    ``depth_fgbg_K/depth_<stem>.png`` (K = bg index), plus ``bg/bg_K.jpg`` (the bg
    as composited) and, at the root, ``manifest.jsonl``, ``recipes.npy`` and
    ``dataset.json`` (written by :mod:`.resume` at the end).

``shards``
    Written by :class:`~losslab.core.data.generate.shards.ShardWriter` (its module
    describes the arrays), which uses :class:`Producer` for the ground truth.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from losslab.core.data import formats
from losslab.core.data.batch_compositor import BatchCompositor, Rect
from losslab.core.data.formats import sample_stem
from losslab.core.data.generate.resume import STAGING_DIR
from losslab.core.data.jpeg import BandEncoder
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import Sources


class Producer:
    """Composes recipes and runs the mask and depth ground truth on them, ``batch_size`` at a time."""

    def __init__(self, sources: Sources, mask_gt: Any, depth_gt: Any, batch_size: int = 32) -> None:
        self.sources, self.mask_gt, self.depth_gt = sources, mask_gt, depth_gt
        self.compositor = BatchCompositor(sources)
        self.batch_size = batch_size

    def batches(self, recipes: Sequence[Recipe]) -> Iterator[Sequence[Recipe]]:
        for start in range(0, len(recipes), self.batch_size):
            yield recipes[start : start + self.batch_size]

    def compose(self, batch: Sequence[Recipe]) -> dict[str, np.ndarray]:
        """``bg``, ``fg_bg``, ``alpha`` as :class:`Compositor` makes them, plus each fg's ``rects``."""
        return self.compositor.compose_batch(batch)

    def truth(self, kind: str, composed: dict[str, np.ndarray], batch: Sequence[Recipe]) -> np.ndarray:
        """The ``mask`` (uint8 {0,1}) or ``depth`` (float32 m) of a composed batch."""
        if kind == "mask":
            return np.asarray(self.mask_gt(composed, batch, self.sources), dtype=np.uint8)
        return np.asarray(self.depth_gt(composed, batch, self.sources), dtype=np.float32)

    def keys(self, kind: str, batch: Sequence[Recipe]) -> list[Hashable | None]:
        """The producer's ``cache_key`` of each recipe (None where it has none)."""
        key_of = getattr(self.mask_gt if kind == "mask" else self.depth_gt, "cache_key", None)
        if key_of is None:
            return [None] * len(batch)
        return [key_of(recipe, self.sources) for recipe in batch]

    def misses(self, batch: Sequence[Recipe],
               found: Sequence[object | None]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(index in ``batch``, mask, depth) for each sample whose ``found`` entry is None.

        The writers' shared cache-miss step: a writer looks each sample's encoded ground truth up in its own
        cache (``found``), and only the misses are composed, together in one batch, and given to the mask and
        depth ground truth; the writer encodes what this yields and remembers it.
        """
        missing = [i for i, hit in enumerate(found) if hit is None]
        if not missing:
            return
        sub = [batch[i] for i in missing]
        composed = self.compose(sub)
        masks = self.truth("mask", composed, sub)
        depths = self.truth("depth", composed, sub)
        for j, i in enumerate(missing):
            yield i, masks[j], depths[j]

    def __call__(self, recipes: Sequence[Recipe]) -> Iterator[tuple[Sequence[Recipe], dict[str, np.ndarray]]]:
        """Yield (batch, arrays): ``bg``, ``fg_bg``, ``alpha``, ``rects``, ``mask`` and ``depth``."""
        for batch in self.batches(recipes):
            composed = self.compose(batch)
            composed["mask"] = self.truth("mask", composed, batch)
            composed["depth"] = self.truth("depth", composed, batch)
            yield batch, composed

    def reference_depth(self, recipe: Recipe) -> np.ndarray:
        """The depth ground truth of ``recipe``'s bg with nothing pasted (alpha 0 everywhere)."""
        bg = self.sources.bg(recipe.bg)
        empty = {"bg": bg[None], "fg_bg": bg[None], "alpha": np.zeros((1, *bg.shape[:2]), np.float32)}
        return np.asarray(self.depth_gt(empty, [recipe], self.sources), dtype=np.float32)[0]


class LRU:
    """A bounded mapping, least recently used out first: every writer cache (files, stamps, truths, bgs)."""

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable | None) -> Any:
        if key is None:
            return None
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: Hashable | None, value: Any) -> None:
        if key is None or self.capacity <= 0:
            return
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)


def manifest_line(recipe: Recipe, shard: int | None = None, slot: int | None = None) -> str:
    """One manifest row as compact JSON: the sample's name and its recipe (and shard and slot).

    Formatted by hand, which is several times faster than ``json.dumps`` of a
    dict; every value is an integer, a boolean or a name made of ``[a-z0-9_]``.
    """
    r = recipe
    flip = "true" if r.flip else "false"
    line = (f'{{"name":"{sample_stem(r)}","bg":{r.bg},"fg":{r.fg},"flip":{flip},"row":{r.row},'
            f'"col":{r.col},"x":{r.x},"y":{r.y},"size":{r.size}')
    if shard is not None:
        line += f',"shard":{shard},"slot":{slot}'
    return line + "}\n"


def _paste(base: np.ndarray, top: int, left: int, rect: Rect, patch: np.ndarray) -> np.ndarray:
    """A copy of ``base`` (a crop whose corner is at (top, left) in the image) with ``patch`` pasted at ``rect``."""
    out = base.copy()
    y0, x0, h, w = rect
    if h and w:
        out[y0 - top : y0 - top + h, x0 - left : x0 - left + w] = patch
    return out


class _File:
    """An encoded ground-truth file, and where its first copy was written (to hard-link to it)."""

    __slots__ = ("chunk", "data", "key", "rel")

    def __init__(self, data: bytes, key: Hashable | None) -> None:
        self.data, self.key = data, key
        self.rel: str | None = None
        self.chunk = -1


class SeedWriter:
    """Writes the documented seed layout; returns the chunk's manifest lines.

    A chunk holding every sample of its bg (``whole_bg``) is written plainly
    into ``.staging/chunk_NNNNNN/`` and its three folders are then renamed
    into place; any other chunk writes each file through a temp name. Either
    way no final name ever holds a partial file (see :mod:`.resume`).

    Mask and depth files are made once per producer ``cache_key`` (the grid
    repeats every placement on every bg, and a mask from alpha or a
    ground-plane depth does not depend on the bg's pixels): their ground truth
    is computed, on a fully composed sample, only when the cache misses, and
    with ``links`` (default) the identical files of later samples are hard
    links to the first one (no new inode: much cheaper than a new file, and
    stored once). fg_bg JPEGs re-encode only the MCU rows of the fg's box
    (:mod:`losslab.core.data.jpeg`).
    """

    def __init__(self, root: Path, image_format: str = "jpg", jpeg_quality: int = 95,
                 depth_format: str = "png16", depth_max: float = 50.0, links: bool = True) -> None:
        self.root = Path(root)
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.depth_format, self.depth_max = depth_format, depth_max
        self.links = links
        self._bgs_written: set[int] = set()
        self._caches = {"mask": LRU(), "depth": LRU()}
        self._jpeg = BandEncoder(jpeg_quality)

    def _write_bg(self, bg: int, sources: Sources) -> None:
        """``bg/bg_K.jpg``: the bg as composited, once per bg (atomic; two workers may race, harmlessly)."""
        if bg in self._bgs_written:
            return
        path = self.root / formats.bg_path(bg, self.image_format)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            formats.atomic_write(path, formats.encode_image(sources.bg(bg), self.image_format, self.jpeg_quality))
        self._bgs_written.add(bg)

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer,
                    whole_bg: bool = False) -> list[str]:
        lines = []
        bgs = {r.bg for r in recipes}
        if whole_bg:
            if len(bgs) != 1:
                raise ValueError(f"chunk {chunk}: whole_bg needs the recipes of one bg, got {sorted(bgs)}")
            base = self.root / STAGING_DIR / f"chunk_{chunk:06d}"
            if base.exists():  # left by a killed attempt at this chunk
                shutil.rmtree(base)
            write = formats.write_file
        else:
            base = self.root
            write = formats.atomic_write
        for bg in bgs:
            for name in (formats.fgbg_dir(bg), formats.mask_dir(bg), formats.depth_dir(bg)):
                (base / name).mkdir(parents=True, exist_ok=True)
            self._write_bg(bg, producer.sources)
        root = str(base)
        image_fmt, depth_fmt = self.image_format, self.depth_format
        for batch in producer.batches(recipes):
            patches = producer.compositor.patches(batch)
            masks, depths = self._truth_files(producer, batch)
            for i, recipe in enumerate(batch):
                image, mask, depth = formats.sample_paths(sample_stem(recipe), recipe.bg, image_fmt, depth_fmt)
                write(f"{root}/{image}", self._sample_image(recipe, *patches[i], producer.sources))
                self._place("mask", masks[i], mask, chunk, root, whole_bg)
                self._place("depth", depths[i], depth, chunk, root, whole_bg)
                lines.append(manifest_line(recipe))
        if whole_bg:
            bg = next(iter(bgs))
            for name in (formats.fgbg_dir(bg), formats.mask_dir(bg), formats.depth_dir(bg)):
                final = self.root / name
                if final.exists():  # a killed attempt renamed it, but did not record the chunk
                    shutil.rmtree(final)
                os.rename(base / name, final)
            shutil.rmtree(base)
        return lines

    def _truth_files(self, producer: Producer, batch: Sequence[Recipe]) -> tuple[list[_File], list[_File]]:
        """Mask and depth files of a batch, from the cache or computed for the misses."""
        mask_keys, depth_keys = producer.keys("mask", batch), producer.keys("depth", batch)
        masks = [self._caches["mask"].get(k) for k in mask_keys]
        depths = [self._caches["depth"].get(k) for k in depth_keys]
        both = [m if m is not None and d is not None else None for m, d in zip(masks, depths, strict=True)]
        for i, mask, depth in producer.misses(batch, both):
            if masks[i] is None:
                masks[i] = _File(formats.encode_mask(mask), mask_keys[i])
                self._caches["mask"].put(mask_keys[i], masks[i])
            if depths[i] is None:
                depths[i] = _File(formats.encode_depth(depth, self.depth_format, self.depth_max), depth_keys[i])
                self._caches["depth"].put(depth_keys[i], depths[i])
        return masks, depths

    def _place(self, kind: str, file: _File, rel: str, chunk: int, root: str, staged: bool) -> None:
        """Put ``file`` at ``root/rel``: a hard link to its first copy when possible, else written."""
        if self.links and file.rel is not None:
            first_root = root if file.chunk == chunk else str(self.root)  # this chunk's files are still staged
            if formats.link_file(f"{first_root}/{file.rel}", f"{root}/{rel}", atomic=not staged):
                return
        (formats.write_file if staged else formats.atomic_write)(f"{root}/{rel}", file.data)
        if file.key is not None:  # later samples link to this copy
            file.rel, file.chunk = rel, chunk

    def _sample_image(self, recipe: Recipe, rect: Rect, patch: np.ndarray, sources: Sources) -> bytes:
        """The fg_bg file: the bg with the blended box pasted; a JPEG re-encodes only the box's MCU rows."""
        bg = sources.bg(recipe.bg)
        if self.image_format != "jpg":
            return formats.encode_image(_paste(bg, 0, 0, rect, patch), self.image_format, self.jpeg_quality)
        y0, _x0, h, _w = rect
        top, bottom = self._jpeg.band(y0, y0 + h, bg.shape[0])
        band = _paste(bg[top:bottom], top, 0, rect, patch)
        return self._jpeg.encode_band(band, top, recipe.bg, bg)
