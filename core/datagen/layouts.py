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

import hashlib
import os
import shutil
import zipfile
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from losslab.core.datagen import formats
from losslab.core.datagen.fastcompose import BatchCompositor
from losslab.core.datagen.jpeg import BandEncoder
from losslab.core.datagen.resume import STAGING_DIR
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
        self.compositor = BatchCompositor(sources)
        self.batch_size = batch_size

    def batches(self, recipes: Sequence[Recipe]) -> Iterator[Sequence[Recipe]]:
        for start in range(0, len(recipes), self.batch_size):
            yield recipes[start : start + self.batch_size]

    def compose(self, batch: Sequence[Recipe]) -> dict[str, np.ndarray]:
        """``bg``, ``fg_bg``, ``alpha`` as :class:`Compositor` makes them, plus each fg's ``rects``."""
        return self.compositor.compose_batch(batch)

    def truth(self, kind: str, composed: dict[str, np.ndarray], batch: Sequence[Recipe],
              which: Sequence[int] | None = None) -> np.ndarray:
        """The ``mask`` (uint8) or ``depth`` (float32 m) of the batch, or of its samples ``which``."""
        if which is not None and len(which) != len(batch):
            keep = list(which)
            composed = {key: composed[key][keep] for key in ("bg", "fg_bg", "alpha")}
            batch = [batch[i] for i in which]
        if kind == "mask":
            return np.asarray(self.mask_gt(composed, batch, self.sources), dtype=np.uint8)
        return np.asarray(self.depth_gt(composed, batch, self.sources), dtype=np.float32)

    def __call__(self, recipes: Sequence[Recipe]) -> Iterator[tuple[Sequence[Recipe], dict[str, np.ndarray]]]:
        """Yield (batch, arrays): ``bg``, ``fg_bg``, ``alpha``, ``mask`` and ``depth`` of each batch."""
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


class EncodedCache:
    """Encoded ground-truth files by the producer's ``cache_key``, least recently used out first.

    The documented grid puts every fg at the same 20 places on every bg, and a
    mask from alpha (or a ground-plane depth under one camera geometry) does
    not depend on the bg's pixels: such a file is encoded once per worker and
    its bytes reused for every other bg.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable | None) -> bytes | None:
        if key is None:
            return None
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key: Hashable | None, data: bytes) -> None:
        if key is None or self.capacity <= 0:
            return
        self._items[key] = data
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


class SeedWriter:
    """Writes the documented seed layout; returns the chunk's manifest lines.

    A chunk holding every sample of its bg (``whole_bg``) is written plainly
    into ``.staging/chunk_NNNNNN/`` and its three folders are then renamed
    into place; any other chunk writes each file through a temp name. Either
    way no final name ever holds a partial file (see :mod:`.resume`).
    """

    def __init__(self, root: Path, image_format: str = "jpg", jpeg_quality: int = 95,
                 depth_format: str = "png16", depth_max: float = 50.0) -> None:
        self.root = Path(root)
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.depth_format, self.depth_max = depth_format, depth_max
        self._bgs_written: set[int] = set()
        self._caches = {"mask": EncodedCache(), "depth": EncodedCache()}
        self._jpeg = BandEncoder(jpeg_quality)

    def _write_bg(self, bg: int, sources: Sources) -> None:
        """``bg/bg_K.jpg``: the bg as composited, once per bg (atomic; two workers may race, harmlessly)."""
        if bg in self._bgs_written:
            return
        path = self.root / formats.bg_path(bg, self.image_format)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            formats.atomic_write(path, self._image(sources.bg(bg)))
        self._bgs_written.add(bg)

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer,
                    whole_bg: bool = False) -> list[str]:
        lines = []
        bg_dirs = {r.bg for r in recipes}
        if whole_bg:
            if len(bg_dirs) != 1:
                raise ValueError(f"chunk {chunk}: whole_bg needs the recipes of one bg, got bgs {sorted(bg_dirs)}")
            base = self.root / STAGING_DIR / f"chunk_{chunk:06d}"
            if base.exists():  # left by a killed attempt at this chunk
                shutil.rmtree(base)
            write = formats.write_file
        else:
            base = self.root
            write = formats.atomic_write
        for bg in bg_dirs:
            for name in (formats.fgbg_dir(bg), formats.mask_dir(bg), formats.depth_dir(bg)):
                (base / name).mkdir(parents=True, exist_ok=True)
            self._write_bg(bg, producer.sources)
        root = str(base)
        image_fmt, depth_fmt = self.image_format, self.depth_format
        for batch in producer.batches(recipes):
            composed = producer.compose(batch)
            masks = self._encoded("mask", producer, composed, batch)
            depths = self._encoded("depth", producer, composed, batch)
            for i, recipe in enumerate(batch):
                image, mask, depth = formats.sample_paths(sample_stem(recipe), recipe.bg, image_fmt, depth_fmt)
                write(f"{root}/{image}", self._sample_image(composed, i, recipe.bg))
                write(f"{root}/{mask}", masks[i])
                write(f"{root}/{depth}", depths[i])
                lines.append(manifest_line(recipe))
        if whole_bg:
            bg = next(iter(bg_dirs))
            for name in (formats.fgbg_dir(bg), formats.mask_dir(bg), formats.depth_dir(bg)):
                final = self.root / name
                if final.exists():  # a killed attempt renamed it, but did not record the chunk
                    shutil.rmtree(final)
                os.rename(base / name, final)
            shutil.rmtree(base)
        return lines

    def _encoded(self, kind: str, producer: Producer, composed: dict[str, np.ndarray],
                 batch: Sequence[Recipe]) -> list[bytes]:
        """Encoded mask or depth files of a batch; ground truth is computed only for cache misses."""
        cache = self._caches[kind]
        key_of = getattr(producer.mask_gt if kind == "mask" else producer.depth_gt, "cache_key", None)
        keys = [key_of(r, producer.sources) if key_of is not None else None for r in batch]
        out: list[bytes | None] = [cache.get(k) for k in keys]
        missing = [i for i, data in enumerate(out) if data is None]
        if missing:
            arrays = producer.truth(kind, composed, batch, missing)
            for array, i in zip(arrays, missing, strict=True):
                if kind == "mask":
                    data = formats.encode_mask(array)
                else:
                    data = formats.encode_depth(array, self.depth_format, self.depth_max)
                cache.put(keys[i], data)
                out[i] = data
        return out  # type: ignore[return-value]

    def _image(self, rgb: np.ndarray) -> bytes:
        return formats.encode_image(rgb, self.image_format, self.jpeg_quality)

    def _sample_image(self, composed: dict[str, np.ndarray], i: int, bg: int) -> bytes:
        """fg_bg file; a JPEG re-encodes only the MCU rows of the fg's box (:mod:`.jpeg`)."""
        if self.image_format != "jpg":
            return self._image(composed["fg_bg"][i])
        y0, _x0, h, _w = (int(v) for v in composed["rects"][i])
        return self._jpeg.encode(composed["fg_bg"][i], bg, composed["bg"][i], y0, y0 + h)


def changed_rect(rect: Sequence[int], *changed: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): the smallest rectangle holding ``rect`` and every True pixel of the 2-D masks.

    ``rect`` is (y0, x0, h, w), empty when h or w is 0. Rows are reduced first,
    then columns only within the rows that changed, over contiguous memory.
    """
    y0, x0, h, w = (int(v) for v in rect)
    height, width = changed[0].shape[:2]
    rows = np.zeros(height, dtype=bool)
    cols = np.zeros(width, dtype=bool)
    if h > 0 and w > 0:
        rows[y0 : y0 + h] = True
        cols[x0 : x0 + w] = True
    masks_rows = [mask.any(axis=1) for mask in changed]
    for flags in masks_rows:
        rows |= flags
    ys = np.flatnonzero(rows)
    if ys.size == 0:
        return 0, 0, 0, 0
    top, bottom = int(ys[0]), int(ys[-1]) + 1
    for mask, flags in zip(changed, masks_rows, strict=True):
        if flags.any():
            cols |= mask[top:bottom].any(axis=0)
    xs = np.flatnonzero(cols)
    return top, int(xs[0]), bottom - top, int(xs[-1]) - int(xs[0]) + 1


class ShardWriter:
    """Writes one ``.npz`` shard per chunk (see the module docstring for its arrays).

    A sample's mask and depth patches (with their rectangle) are cached by the
    producers' ``cache_key`` and the bg's empty-scene depth, so a placement
    repeated on another bg of the same geometry reuses them; only its fg_bg
    patch is new.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._patches: OrderedDict[Hashable, tuple[tuple[int, int, int, int], bytes]] = OrderedDict()
        self._refs: dict[int, tuple[np.ndarray, np.ndarray, bytes]] = {}

    def _reference(self, recipe: Recipe, producer: Producer) -> tuple[np.ndarray, np.ndarray, bytes]:
        """(bg, empty-scene depth in mm, fingerprint of that depth) of the recipe's bg, once per bg."""
        hit = self._refs.get(recipe.bg)
        if hit is None:
            depth = formats.depth_to_png16(producer.reference_depth(recipe))
            hit = (producer.sources.bg(recipe.bg).copy(), depth, hashlib.blake2b(depth.tobytes()).digest())
            self._refs[recipe.bg] = hit
        return hit

    def _truth_patches(self, producer: Producer, composed: dict[str, np.ndarray],
                       batch: Sequence[Recipe]) -> list[tuple[tuple[int, int, int, int], bytes]]:
        """(rect, mask bits + depth bytes) per sample; ground truth only for cache misses."""
        mask_key = getattr(producer.mask_gt, "cache_key", None)
        depth_key = getattr(producer.depth_gt, "cache_key", None)
        keys: list[Hashable | None] = []
        for i, recipe in enumerate(batch):
            if mask_key is None or depth_key is None:
                keys.append(None)
                continue
            mk, dk = mask_key(recipe, producer.sources), depth_key(recipe, producer.sources)
            ref_id = self._reference(recipe, producer)[2]
            keys.append(None if mk is None or dk is None else (mk, dk, ref_id, tuple(composed["rects"][i])))
        out = [self._patches.get(k) if k is not None else None for k in keys]
        missing = [i for i, item in enumerate(out) if item is None]
        if missing:
            masks = producer.truth("mask", composed, batch, missing)
            depths = formats.depth_to_png16(producer.truth("depth", composed, batch, missing))
            for j, i in enumerate(missing):
                ref = self._reference(batch[i], producer)[1]
                mask, depth = masks[j], depths[j]
                y0, x0, h, w = rect = changed_rect(composed["rects"][i], mask != 0, depth != ref)
                box = (slice(y0, y0 + h), slice(x0, x0 + w))
                data = np.packbits(mask[box], axis=None).tobytes() + depth[box].astype("<u2").tobytes()
                out[i] = (rect, data)
                if keys[i] is not None:
                    self._patches[keys[i]] = (rect, data)
                    if len(self._patches) > 50_000:
                        self._patches.popitem(last=False)
        return out  # type: ignore[return-value]

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer,
                    whole_bg: bool = False) -> list[str]:
        parts: list[bytes] = []
        offsets = [0]
        rects = np.zeros((len(recipes), 4), dtype=np.int32)
        bg_ids: set[int] = set()
        rows = []
        k = 0
        for batch in producer.batches(recipes):
            composed = producer.compose(batch)
            patches = self._truth_patches(producer, composed, batch)
            for i, recipe in enumerate(batch):
                self._reference(recipe, producer)
                bg_ids.add(recipe.bg)
                (y0, x0, h, w), truth = patches[i]
                rects[k] = (y0, x0, h, w)
                parts.append(composed["fg_bg"][i, y0 : y0 + h, x0 : x0 + w].tobytes())
                parts.append(truth)
                offsets.append(offsets[-1] + 3 * h * w + len(truth))
                rows.append(manifest_line(recipe, shard=chunk, slot=k))
                k += 1
        ids = sorted(bg_ids)
        arrays_out = {
            "offsets": np.asarray(offsets, dtype=np.int64),
            "rects": rects,
            "recipes": np.asarray([[getattr(r, f) for f in RECIPE_FIELDS] for r in recipes], dtype=np.int32),
            "bg_ids": np.asarray(ids, dtype=np.int32),
            "bg": np.stack([self._refs[b][0] for b in ids]),
            "depth_ref": np.stack([self._refs[b][1] for b in ids]),
        }
        path = self.root / shard_name(chunk)
        tmp = formats.temp_name(path)
        write_npz(tmp, arrays_out, "pixels", parts)
        os.replace(tmp, path)
        return rows


def write_npz(path: Path | str, arrays: dict[str, np.ndarray], flat_name: str, parts: Sequence[bytes]) -> None:
    """Write what ``np.savez`` writes (an uncompressed zip of ``.npy`` files), plus one more member.

    The extra member ``flat_name`` is a 1-D uint8 array streamed from
    ``parts``, so the shard's pixels are never joined into one big copy.
    """
    total = sum(len(part) for part in parts)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        with archive.open(f"{flat_name}.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (total,)}
            np.lib.format.write_array_header_1_0(member, header)
            for part in parts:
                member.write(part)
