"""The ``shards`` writer: one uncompressed ``.npz`` per chunk, small enough to write at disk-cache speed.

A composite differs from its bg only inside the fg's box, and inside that box
only where the fg is partly transparent does it depend on the bg at all:

- where alpha is 0 the blend gives the bg's pixel back, exactly;
- where alpha is 1 it gives the fitted fg's pixel, whatever the bg;
- only the soft edge in between mixes the two.

So a shard stores each of its bgs once, each distinct fitted-fg box (a
*stamp*: which pixels are fg, which are blended, and the fg's colours) once,
and per sample only the blended pixels' colours. Mask and depth patches are
stored once per distinct content (the grid repeats a placement's ground
truth along a row and on every bg) and referenced by index. A sample is then
about a tenth of its raw box, which is what makes writing cheap.

The blended pixels of a whole chunk are computed in one vectorised pass
(gather the bg bytes, multiply, add, round) with the same two OpenCV
operations the compositor applies per box, so the bytes are the compositor's
(the tests compare every sample with the virtual dataset). Ground truth is
computed on fully composed images only for the producers' cache misses.

Arrays of ``shards/shard_NNNNNN.npz`` (format 2; N samples, B bgs, S stamps,
T ground-truth patches; every ``*_offsets`` indexes the flat ``pixels``):

``format`` () int32 = 2; ``recipes`` (N, 8) int32; ``bg_ids`` (B,) int32;
``bg`` (B, H, W, 3) uint8; ``depth_ref`` (B, H, W) uint16 mm (the bg's depth
with nothing pasted); ``boxes`` (N, 4) int32 y0, x0, h, w of the fg's box
(clipped to the image); ``stamp`` (N,) int32 and ``stamp_offsets`` (S + 1,)
int64: a stamp of an h x w box is ``packbits(is_fg)``, ``packbits(is_blend)``
(h*w bits each, raster order) then the RGB of its fg pixels;
``value_offsets`` (N + 1,) int64: the RGB of the sample's blended pixels,
raster order; ``rects`` (N, 4) int32: the rectangle holding every mask or
depth change; ``truth`` (N,) int32 and ``truth_offsets`` (T + 1,) int64: a
patch of an h x w rectangle is the mask's bits, the bits of the pixels whose
depth differs from ``depth_ref``, then those depths as little-endian uint16
mm (outside the rectangle the mask is 0 and depth is ``depth_ref``);
``pixels`` uint8.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Hashable, Sequence
from pathlib import Path

import cv2
import numpy as np

from losslab.core.data import formats
from losslab.core.data.batch_compositor import Rect
from losslab.core.data.formats import RECIPE_FIELDS, SHARD_DIR, SHARD_FORMAT
from losslab.core.data.generate.layouts import LRU, Producer, manifest_line
from losslab.core.data.recipes import Recipe


def shard_name(chunk: int) -> str:
    return f"{SHARD_DIR}/shard_{chunk:06d}.npz"


def recipe_table(recipes: Sequence[Recipe]) -> np.ndarray:
    """(N, 8) int32 array of the recipes' ``RECIPE_FIELDS``."""
    flat = [v for r in recipes for v in (r.bg, r.fg, r.flip, r.row, r.col, r.x, r.y, r.size)]
    return np.asarray(flat, dtype=np.int32).reshape(len(recipes), len(RECIPE_FIELDS))


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


def blend_values(region: np.ndarray, one_minus: np.ndarray, premult: np.ndarray) -> np.ndarray:
    """``rint(region * one_minus + premult)`` saturated to uint8, in float32: the compositor's blend.

    The same two OpenCV passes as ``BatchCompositor._blend``, element by
    element, so any shape (a box, or a chunk's gathered pixels) gives the same
    bytes.
    """
    if region.size == 0:
        return np.zeros(region.shape, dtype=np.uint8)
    out = cv2.add(cv2.multiply(region, one_minus, dtype=cv2.CV_32F), premult, dtype=cv2.CV_8U)
    return out.reshape(region.shape)


class _Stamp:
    """A fitted fg inside its (clipped) box: the stored bytes and the blended pixels' coefficients."""

    __slots__ = ("cc", "data", "one_minus", "premult", "rr")

    def __init__(self, premult: np.ndarray, one_minus: np.ndarray) -> None:
        om = one_minus[..., 0]
        is_fg = om == 0  # alpha 1: the fg's own colour, whatever the bg
        is_bg = (om == 1) & ~premult.any(axis=2)  # alpha 0: the bg's pixel, exactly
        is_blend = ~(is_fg | is_bg)
        rgb = blend_values(np.zeros(premult.shape, np.uint8), one_minus, premult)[is_fg]
        self.data = np.packbits(is_fg, axis=None).tobytes() + np.packbits(is_blend, axis=None).tobytes() + \
            rgb.tobytes()
        self.rr, self.cc = (a.astype(np.int64) for a in np.nonzero(is_blend))
        self.one_minus = np.ascontiguousarray(one_minus[is_blend]).reshape(-1)
        self.premult = np.ascontiguousarray(premult[is_blend]).reshape(-1)


class _Placement:
    """A recipe's box on a bg of a given size: its stamp and the flat bg indices of its blended pixels."""

    __slots__ = ("box", "index", "stamp", "stamp_key")

    def __init__(self, box: Rect, stamp_key: Hashable, stamp: _Stamp, width: int) -> None:
        self.box, self.stamp_key, self.stamp = box, stamp_key, stamp
        y0, x0 = box[0], box[1]
        base = ((y0 + stamp.rr) * width + (x0 + stamp.cc)) * 3
        self.index = (base[:, None] + np.arange(3)).reshape(-1).astype(np.int32)  # < H * W * 3


class _ChunkParts:
    """What one shard accumulates while its samples are placed: deduplicated stamps and truth patches,
    per-sample ids and offsets, and the manifest rows; :meth:`arrays` turns it into the shard's arrays."""

    def __init__(self, n: int) -> None:
        self.bg_slot: dict[int, int] = {}
        self.bgs: list[np.ndarray] = []
        self.depth_refs: list[np.ndarray] = []
        self.boxes = np.zeros((n, 4), dtype=np.int32)
        self.stamp_ids = np.empty(n, dtype=np.int32)
        self.truth_ids = np.empty(n, dtype=np.int32)
        self.counts = np.empty(n, dtype=np.int64)
        self.slots = np.empty(n, dtype=np.int64)
        self.stamp_local: dict[Hashable, int] = {}
        self.stamp_parts: list[bytes] = []
        self.truth_local: dict[tuple[int, int, bytes], int] = {}
        self.truth_parts: list[bytes] = []
        self.rects = np.zeros((n, 4), dtype=np.int32)
        self.index_parts: list[np.ndarray] = []
        self.one_minus_parts: list[np.ndarray] = []
        self.premult_parts: list[np.ndarray] = []
        self.rows: list[str] = []

    def add(self, k: int, recipe: Recipe, chunk: int, slot: int, place: _Placement,
            truth: tuple[Rect, bytes, bytes]) -> None:
        """Record sample ``k``: a stamp or truth patch already in the shard is referenced, not stored again."""
        rect, data, digest = truth
        sid = self.stamp_local.get(place.stamp_key)
        if sid is None:
            sid = self.stamp_local[place.stamp_key] = len(self.stamp_parts)
            self.stamp_parts.append(place.stamp.data)
        tkey = (rect[2], rect[3], digest)
        tid = self.truth_local.get(tkey)
        if tid is None:
            tid = self.truth_local[tkey] = len(self.truth_parts)
            self.truth_parts.append(data)
        self.boxes[k], self.rects[k] = place.box, rect
        self.stamp_ids[k], self.truth_ids[k], self.slots[k] = sid, tid, slot
        self.counts[k] = place.index.size
        self.index_parts.append(place.index)
        self.one_minus_parts.append(place.stamp.one_minus)
        self.premult_parts.append(place.stamp.premult)
        self.rows.append(manifest_line(recipe, shard=chunk, slot=k))

    def arrays(self, recipes: Sequence[Recipe], bg_stack: np.ndarray) -> dict[str, np.ndarray]:
        """The shard's named arrays; the offsets index the flat ``pixels`` blob (stamps, values, truths)."""
        stamp_sizes = np.fromiter((len(p) for p in self.stamp_parts), np.int64, len(self.stamp_parts))
        truth_sizes = np.fromiter((len(p) for p in self.truth_parts), np.int64, len(self.truth_parts))
        stamp_offsets = _offsets(0, stamp_sizes)
        value_offsets = _offsets(int(stamp_offsets[-1]), self.counts)
        truth_offsets = _offsets(int(value_offsets[-1]), truth_sizes)
        ids = sorted(self.bg_slot, key=self.bg_slot.get)  # type: ignore[arg-type]
        return {
            "format": np.asarray(SHARD_FORMAT, dtype=np.int32),
            "recipes": recipe_table(recipes),
            "bg_ids": np.asarray(ids, dtype=np.int32),
            "bg": bg_stack,
            "depth_ref": np.stack(self.depth_refs),
            "boxes": self.boxes,
            "stamp": self.stamp_ids,
            "stamp_offsets": stamp_offsets,
            "value_offsets": value_offsets,
            "truth": self.truth_ids,
            "rects": self.rects,
            "truth_offsets": truth_offsets,
        }


class ShardWriter:
    """Writes one ``.npz`` shard per chunk (arrays in the module docstring); returns its manifest lines."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._stamps = LRU(4096)
        self._placements = LRU(16384)
        self._truths = LRU(16384)
        self._refs = LRU(256)

    # -- per bg, per placement, per ground truth: computed once, then looked up -------------------------

    def _reference(self, recipe: Recipe, producer: Producer) -> tuple[np.ndarray, np.ndarray, bytes, np.ndarray]:
        """(bg, empty-scene depth in mm, fingerprint of that depth, the same depth in metres), once per bg."""
        hit = self._refs.get(recipe.bg)
        if hit is None:
            metres = producer.reference_depth(recipe)
            depth = formats.depth_to_png16(metres)
            hit = (producer.sources.bg(recipe.bg), depth, hashlib.blake2b(depth.tobytes()).digest(), metres)
            self._refs.put(recipe.bg, hit)
        return hit

    def _placement(self, recipe: Recipe, height: int, width: int, producer: Producer) -> _Placement:
        key = (recipe.fg, recipe.flip, recipe.size, recipe.x, recipe.y, height, width)
        hit = self._placements.get(key)
        if hit is None:
            box, inside, fit = producer.compositor.placed(recipe, height, width)
            skey = (recipe.fg, recipe.flip, recipe.size, inside[0].start, inside[0].stop,
                    inside[1].start, inside[1].stop)
            stamp = self._stamps.get(skey)
            if stamp is None:
                premult, _alpha, one_minus = fit
                stamp = _Stamp(premult[inside], one_minus[inside])
                self._stamps.put(skey, stamp)
            hit = _Placement(box, skey, stamp, width)
            self._placements.put(key, hit)
        return hit

    def _truth_patches(self, producer: Producer, batch: Sequence[Recipe],
                       boxes: list[Rect]) -> list[tuple[Rect, bytes, bytes]]:
        """(rect, mask bits + depth bytes, digest) per sample; ground truth only for cache misses."""
        mask_keys, depth_keys = producer.keys("mask", batch), producer.keys("depth", batch)
        keys: list[Hashable | None] = []
        for recipe, mk, dk, box in zip(batch, mask_keys, depth_keys, boxes, strict=True):
            ok = mk is not None and dk is not None
            keys.append((mk, dk, self._reference(recipe, producer)[2], box) if ok else None)
        out = [self._truths.get(k) for k in keys]
        for i, mask, metres in producer.misses(batch, out):
            _bg, ref, _digest, ref_m = self._reference(batch[i], producer)
            # a pixel whose depth in metres equals the empty scene's has the same millimetres: the
            # rectangle holds every change (millimetres are computed only inside it)
            y0, x0, h, w = rect = changed_rect(boxes[i], mask != 0, metres != ref_m)
            region = (slice(y0, y0 + h), slice(x0, x0 + w))
            depth = formats.depth_to_png16(metres[region])
            moved = depth != ref[region]  # stored as a change against the bg's depth: position-free
            data = (np.packbits(mask[region], axis=None).tobytes() + np.packbits(moved, axis=None).tobytes()
                    + depth[moved].astype("<u2").tobytes())
            out[i] = (rect, data, hashlib.blake2b(data, digest_size=16).digest())
            self._truths.put(keys[i], out[i])  # a sample without cache keys (None) is not remembered
        return out

    # -- one chunk -------------------------------------------------------------------------------------

    def write_chunk(self, chunk: int, recipes: Sequence[Recipe], producer: Producer,
                    whole_bg: bool = False) -> list[str]:
        """Write shard ``chunk`` (via a temp file, so a kill never leaves half a shard) and return its
        manifest rows; samples are placed batch by batch, as ``producer`` yields them."""
        parts = _ChunkParts(len(recipes))
        start = 0
        for batch in producer.batches(recipes):
            placements = [self._place(recipe, producer, parts) for recipe in batch]
            truths = self._truth_patches(producer, batch, [p.box for _s, p in placements])
            for k, recipe, (slot, place), truth in zip(
                range(start, start + len(batch)), batch, placements, truths, strict=True
            ):
                parts.add(k, recipe, chunk, slot, place, truth)
            start += len(batch)
        bg_stack = np.stack(parts.bgs)
        values = self._blend_chunk(bg_stack, parts.slots, parts.counts, parts.index_parts,
                                   parts.one_minus_parts, parts.premult_parts)
        path = self.root / shard_name(chunk)
        tmp = formats.temp_name(path)
        write_npz(tmp, parts.arrays(recipes, bg_stack), "pixels",
                  [*parts.stamp_parts, values, *parts.truth_parts])
        os.replace(tmp, path)
        return parts.rows

    def _place(self, recipe: Recipe, producer: Producer, parts: _ChunkParts) -> tuple[int, _Placement]:
        """``recipe``'s bg slot in the shard (loading the bg on first use: a shard stores each bg once)
        and its fg placement on that bg."""
        slot = parts.bg_slot.get(recipe.bg)
        if slot is None:
            bg, depth_ref, _digest, _metres = self._reference(recipe, producer)
            if parts.bgs and bg.shape != parts.bgs[0].shape:
                raise ValueError(f"bg {recipe.bg} is {bg.shape}, the shard's first bg {parts.bgs[0].shape}")
            slot = parts.bg_slot[recipe.bg] = len(parts.bgs)
            parts.bgs.append(bg)
            parts.depth_refs.append(depth_ref)
        return slot, self._placement(recipe, parts.bgs[0].shape[0], parts.bgs[0].shape[1], producer)

    @staticmethod
    def _blend_chunk(bg_stack: np.ndarray, slots: np.ndarray, counts: np.ndarray, index_parts: list[np.ndarray],
                     one_minus_parts: list[np.ndarray], premult_parts: list[np.ndarray]) -> np.ndarray:
        """Every sample's blended pixels, in sample order, in one pass over the chunk."""
        if not index_parts or int(counts.sum()) == 0:
            return np.zeros(0, dtype=np.uint8)
        image = bg_stack[0].size
        index = np.concatenate(index_parts)
        if bg_stack.size >= 2**31:
            index = index.astype(np.int64)
        index += np.repeat((slots * image).astype(index.dtype), counts)
        region = bg_stack.reshape(-1).take(index)
        return blend_values(region, np.concatenate(one_minus_parts), np.concatenate(premult_parts))


def _offsets(first: int, sizes: np.ndarray) -> np.ndarray:
    out = np.empty(sizes.size + 1, dtype=np.int64)
    out[0] = first
    np.cumsum(sizes, out=out[1:])
    out[1:] += first
    return out


def write_npz(path: Path | str, arrays: dict[str, np.ndarray], flat_name: str,
              parts: Sequence[bytes | np.ndarray]) -> None:
    """Write what ``np.savez`` writes (an uncompressed zip of ``.npy`` files), plus one more member.

    The extra member ``flat_name`` is a 1-D uint8 array streamed from
    ``parts`` (bytes or uint8 arrays), so the shard's pixels are never joined
    into one big copy.
    """
    total = sum(len(part) if isinstance(part, bytes) else part.nbytes for part in parts)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        with archive.open(f"{flat_name}.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (total,)}
            np.lib.format.write_array_header_1_0(member, header)
            batch: list[bytes | memoryview] = []
            size = 0
            for part in parts:  # joined into writes of a few MB: one zip write (and CRC call) per part is slow
                # numpy's stubs do not declare ndarray a Buffer, though it implements the buffer protocol
                if isinstance(part, bytes):
                    batch.append(part)
                else:
                    batch.append(memoryview(np.ascontiguousarray(part)).cast("B"))  # type: ignore[arg-type]
                size += len(batch[-1])
                if size >= 4 << 20:
                    member.write(b"".join(batch))
                    batch, size = [], 0
            if batch:
                member.write(b"".join(batch))
