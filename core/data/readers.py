"""Readers of materialized datasets: the seed layout, shards, and the original dataset's folders.

:func:`open_dataset` looks at a folder and returns the matching sample set.
Every set answers the trainer's protocol (``SampleSet`` in
:mod:`losslab.core.data.datasets`): ``len``, ``bg_ids()`` (the bg of each sample,
for a bg-disjoint validation split) and ``get(indices)`` -> ``bg`` and
``fg_bg`` (N,H,W,3) uint8 RGB, ``mask`` (N,H,W) uint8 {0,1}, ``depth``
(N,H,W) float32 metres. Each also exposes ``recipe(i)`` and ``recipes``
(an (N, 8) int array, columns ``RECIPE_FIELDS``).

Layouts recognised:

- ``dataset.json`` with ``"layout": "seed"`` or ``"shards"``: written by ``lab data generate``.
- ``fgbg_K/``, ``mask_fgbg_K/``, ``depth_fgbg_K/`` and no ``dataset.json``: the original
  dataset. Its bgs are not stored per sample: they are read from a bg folder beside
  those folders (see :data:`ORIGINAL_BG_DIRS`), and its 8-bit depth, stretched per
  image when it was made, carries no unit (see :class:`OriginalSamples`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from losslab.core.data import formats
from losslab.core.data.formats import (
    DATASET_FILE,
    MANIFEST,
    PROGRESS_DIR,
    RECIPE_FIELDS,
    RECIPES_FILE,
    SHARD_DIR,
    SHARD_FORMAT,
    DatasetError,
    sample_stem,
)
from losslab.core.data.geometry import grid_cells
from losslab.core.data.recipes import Recipe, parse_stem
from losslab.core.data.sources import IMAGE_SUFFIXES, SourceError, fit_background, read_rgb

__all__ = [
    "ORIGINAL_BG_DIRS",
    "DatasetError",
    "OriginalSamples",
    "SeedSamples",
    "ShardSamples",
    "dataset_bytes",
    "open_dataset",
]

#: Where the original dataset's bgs are looked for, inside the dataset folder, in this order.
ORIGINAL_BG_DIRS = ("bg", "bg_images", "bgs", "background", "backgrounds")
_FGBG = re.compile(r"^fgbg_(\d+)$")


def dataset_bytes(root: Path) -> int:
    """Bytes of every file under ``root``, each hard-linked file counted once (what it costs on disk)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


class _Materialized:
    """Shared parts: recipe table, bg ids, per-index access."""

    layout = ""

    def __init__(self, root: Path, recipes: np.ndarray, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.recipes = recipes
        self.meta = meta

    def __len__(self) -> int:
        return int(self.recipes.shape[0])

    def bg_ids(self) -> np.ndarray:
        return self.recipes[:, 0].astype(np.int64)

    def recipe(self, index: int) -> Recipe:
        values = dict(zip(RECIPE_FIELDS, (int(v) for v in self.recipes[index]), strict=True))
        return Recipe.from_dict(values)

    def _indices(self, indices: Sequence[int]) -> list[int]:
        n = len(self)
        out = [int(i) for i in indices]
        bad = [i for i in out if not 0 <= i < n]
        if bad:
            raise IndexError(f"sample index {bad[0]} is out of range 0..{n - 1} ({self.root})")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} samples)"


def _stack(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not items:
        raise ValueError("get() needs at least one index")
    return {key: np.stack([item[key] for item in items]) for key in ("bg", "fg_bg", "mask", "depth")}


def _read_meta(root: Path) -> dict[str, Any]:
    from losslab.core.data.limits import not_regular

    why = not_regular(root / DATASET_FILE)
    if why:  # a FIFO would block the read forever
        raise DatasetError(f"{root / DATASET_FILE}: is {why}, not a regular file; regenerate the dataset")
    try:
        return json.loads((root / DATASET_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{root / DATASET_FILE}: cannot be read ({exc}); regenerate the dataset") from None


# -- seed layout -----------------------------------------------------------------------------------------


class SeedSamples(_Materialized):
    """The seed layout: one image per fg_bg, mask and depth, named as documented, plus ``manifest.jsonl``."""

    layout = "seed"

    def __init__(self, root: Path) -> None:
        root = Path(root)
        meta = _read_meta(root)
        super().__init__(root, self._recipes(root, int(meta.get("count", -1))), meta)
        self.image_format = meta.get("image_format", "jpg")
        self.depth_format = meta.get("depth_format", "png16")
        self.depth_max = float(meta.get("depth_max", 50.0))
        #: names number bg and fg from 1 (formats.NAME_BASE); datasets written before, with no key, from 0
        self.name_base = int(meta.get("name_base", 0))
        self._bg = lru_cache(maxsize=256)(self._read_bg)

    @staticmethod
    def _recipes(root: Path, count: int) -> np.ndarray:
        """The recipe table: ``recipes.npy`` when it matches the count, else parsed from the manifest."""
        fast = root / RECIPES_FILE
        if fast.exists():
            table = np.load(fast, allow_pickle=False)
            if table.shape == (count, len(RECIPE_FIELDS)):
                return table
        rows = []
        try:
            with open(root / MANIFEST) as fh:
                for line in fh:
                    row = json.loads(line)
                    rows.append([int(row[f]) for f in RECIPE_FIELDS])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise DatasetError(f"{root / MANIFEST}: cannot be read ({exc}); regenerate the dataset") from None
        return np.asarray(rows, dtype=np.int32).reshape(-1, len(RECIPE_FIELDS))

    def _read_bg(self, bg: int) -> np.ndarray:
        return formats.decode_image(self.root / formats.bg_path(bg, self.image_format, self.name_base))

    def paths(self, index: int) -> tuple[Path, Path, Path]:
        """Absolute paths of sample ``index``'s fg_bg, mask and depth files."""
        recipe = self.recipe(index)
        base = self.name_base
        names = formats.sample_paths(sample_stem(recipe, base), recipe.bg, self.image_format, self.depth_format, base)
        return tuple(self.root / n for n in names)  # type: ignore[return-value]

    def get(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        items = []
        for i in self._indices(indices):
            image, mask, depth = self.paths(i)
            items.append({
                "bg": self._bg(int(self.recipes[i, 0])),
                "fg_bg": formats.decode_image(image),
                "mask": formats.decode_mask(mask),
                "depth": formats.decode_depth(depth, self.depth_format, self.depth_max),
            })
        return _stack(items)


# -- shards ----------------------------------------------------------------------------------------------


def npz_memmap(path: Path, member: str) -> np.ndarray:
    """Memory-map one array of an uncompressed ``.npz`` without extracting it.

    An ``.npz`` is a zip archive of ``.npy`` files; stored without compression,
    each member's bytes lie as-is in the archive, after the zip local header
    and the ``.npy`` header, so the array can be mapped in place.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise DatasetError(f"{path}: member {member} is compressed; shards must be written uncompressed")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise DatasetError(f"{path}: not a valid zip archive near {member}; the shard is damaged")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    if fortran:
        raise DatasetError(f"{path}: member {member} is Fortran-ordered; shards are written C-ordered")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class _Shard:
    """One shard: small arrays in memory, ``pixels`` memory-mapped (arrays: :mod:`losslab.core.data.generate.shards`).

    A fg's box is stored once per shard (its *stamp*: fg pixels, blended
    pixels); a sample adds its blended pixels' colours and an index into the
    shard's distinct mask and depth patches. Shards of format 1 (each
    sample's whole rectangle; no ``format`` member) are refused with the
    command that remakes them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                self.version = int(npz["format"]) if "format" in names else 1
                self.recipes = npz["recipes"]
                bg_ids = npz["bg_ids"]
                self.bg = npz["bg"]
                self.depth_ref = npz["depth_ref"]
                if self.version != SHARD_FORMAT:
                    raise DatasetError(
                        f"{path}: shard format {self.version}, this losslab reads format {SHARD_FORMAT}; "
                        "regenerate the dataset with this version (lab data generate ... --layout shards)"
                    )
                self.boxes = npz["boxes"]
                self.stamp = npz["stamp"]
                self.stamp_offsets = npz["stamp_offsets"]
                self.value_offsets = npz["value_offsets"]
                self.rects = npz["rects"]
                self.truth = npz["truth"]
                self.truth_offsets = npz["truth_offsets"]
            self.pixels = npz_memmap(path, "pixels")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{path}: cannot be read as a shard ({exc}); regenerate the dataset") from None
        self.bg_slot = {int(b): k for k, b in enumerate(bg_ids)}

    def _bytes(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.pixels[start:stop])

    def sample(self, slot: int) -> dict[str, np.ndarray]:
        k = self.bg_slot[int(self.recipes[slot, 0])]
        bg = self.bg[k]
        fg_bg = bg.copy()
        y0, x0, h, w = (int(v) for v in self.boxes[slot])
        n = h * w
        if n:
            s = int(self.stamp[slot])
            stamp = self._bytes(int(self.stamp_offsets[s]), int(self.stamp_offsets[s + 1]))
            packed = (n + 7) // 8
            is_fg = np.unpackbits(stamp[:packed], count=n).view(bool).reshape(h, w)
            is_blend = np.unpackbits(stamp[packed : 2 * packed], count=n).view(bool).reshape(h, w)
            box = fg_bg[y0 : y0 + h, x0 : x0 + w]
            box[is_fg] = stamp[2 * packed :].reshape(-1, 3)
            box[is_blend] = self._bytes(int(self.value_offsets[slot]), int(self.value_offsets[slot + 1])).reshape(-1, 3)
        y0, x0, h, w = (int(v) for v in self.rects[slot])
        mask = np.zeros(bg.shape[:2], dtype=np.uint8)
        depth = self.depth_ref[k].copy()
        n = h * w
        if n:
            t = int(self.truth[slot])
            blob = self._bytes(int(self.truth_offsets[t]), int(self.truth_offsets[t + 1]))
            packed = (n + 7) // 8
            mask[y0 : y0 + h, x0 : x0 + w] = np.unpackbits(blob[:packed], count=n).reshape(h, w)
            moved = np.unpackbits(blob[packed : 2 * packed], count=n).view(bool).reshape(h, w)
            depth[y0 : y0 + h, x0 : x0 + w][moved] = blob[2 * packed :].view("<u2")
        return {"bg": bg, "fg_bg": fg_bg, "mask": mask, "depth": formats.png16_to_depth(depth)}


class ShardSamples(_Materialized):
    """Shards: ``shards/shard_NNNNNN.npz`` (layout in :mod:`losslab.core.data.generate.layouts`), read in place."""

    layout = "shards"

    def __init__(self, root: Path) -> None:
        root = Path(root)
        meta = _read_meta(root)
        paths = sorted((root / SHARD_DIR).glob("shard_*.npz"))
        expected = int(meta.get("chunks", len(paths)))
        if len(paths) != expected:
            raise DatasetError(
                f"{root / SHARD_DIR}: found {len(paths)} shards, dataset.json lists {expected}; "
                "the dataset is incomplete, regenerate or resume it"
            )
        self.shards = [_Shard(p) for p in paths]
        if not self.shards:
            raise DatasetError(f"{root / SHARD_DIR}: no shard files; regenerate the dataset")
        super().__init__(root, np.concatenate([s.recipes for s in self.shards]), meta)
        sizes = [len(s.recipes) for s in self.shards]
        self._shard = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        self._slot = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])

    def get(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        idx = self._indices(indices)
        return _stack([self.shards[self._shard[i]].sample(int(self._slot[i])) for i in idx])


# -- the original dataset --------------------------------------------------------------------------------


def _numbered(paths: list[Path], base: int = 0) -> dict[int, Path]:
    """bg index -> file: the trailing number (counted from ``base``) of each name when all have distinct
    ones, else sorted order."""
    numbers = [re.search(r"(\d+)$", p.stem) for p in paths]
    if all(numbers) and len({int(m.group(1)) for m in numbers if m}) == len(paths):
        return {int(m.group(1)) - base: p for m, p in zip(numbers, paths, strict=True) if m}
    return dict(enumerate(sorted(paths)))


class OriginalSamples(_Materialized):
    """The original dataset's folders: ``fgbg_K/``, ``mask_fgbg_K/``, ``depth_fgbg_K/``, no manifest.

    Each fg_bg name (``bg5_0_2_flip_fg_73.jpg``) gives the recipe's bg, row,
    column, flip and fg (:func:`~losslab.core.data.recipes.parse_stem`); x, y and
    size are not stored, so they are those of the documented grid at the
    images' size (-1 outside it). Masks are thresholded at 128. The 8-bit
    depth was stretched per image when it was made, so it has no unit: it is
    read as ``v / 255 * depth_max`` metres (default 50, the trainer's default
    ``max_depth``, so the training target is ``v / 255``).

    bgs: the folder ``bg_dir``, or the first of :data:`ORIGINAL_BG_DIRS` found
    inside ``root``. bg K is the file whose name ends with the number K when
    every name ends with a distinct number (``bg_5.jpg``, ``img005.jpg``), else
    the K-th file in sorted-name order. A bg of another size than the samples
    is resized to it (centred crop first if its aspect differs).

    Samples whose mask or depth file is missing, or whose name does not
    follow the pattern, are left out and listed in :attr:`skipped`.
    """

    layout = "original"

    def __init__(self, root: Path, bg_dir: Path | None = None, depth_max: float = 50.0) -> None:
        root = Path(root)
        self.depth_max = float(depth_max)
        self.skipped: list[str] = []
        entries: list[tuple[tuple[int, int, bool, int, int], Path, Path, Path]] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and _FGBG.match(p.name)):
            k = int(_FGBG.match(folder.name).group(1))  # type: ignore[union-attr]
            masks = self._by_stem(root / f"mask_fgbg_{k}", "mask_")
            depths = self._by_stem(root / f"depth_fgbg_{k}", "depth_")
            for entry in os.scandir(folder):
                path = Path(entry.path)
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    parts = parse_stem(path.stem)
                except ValueError as exc:
                    self.skipped.append(f"{path}: {exc}")
                    continue
                if parts["bg"] != k:
                    self.skipped.append(f"{path}: names bg {parts['bg']} but lies in {folder.name}")
                    continue
                if path.stem not in masks or path.stem not in depths:
                    absent = "mask" if path.stem not in masks else "depth"
                    self.skipped.append(f"{path}: no {absent} file for it")
                    continue
                key = (k, int(parts["fg"]), bool(parts["flip"]), int(parts["row"]), int(parts["col"]))
                entries.append((key, path, masks[path.stem], depths[path.stem]))
        if not entries:
            raise DatasetError(
                f"{root}: no usable sample in fgbg_K/ folders (with mask_fgbg_K/ and depth_fgbg_K/)"
            )
        # the documented dataset numbers bg and fg from 1; earlier losslab seed layouts from 0
        self.name_base = 0 if any(e[0][0] == 0 or e[0][1] == 0 for e in entries) else 1
        base = self.name_base
        entries = [((k - base, fg - base, flip, row, col), image, mask, depth)
                   for (k, fg, flip, row, col), image, mask, depth in entries]
        entries.sort(key=lambda e: e[0])
        self._files = [(e[1], e[2], e[3]) for e in entries]
        first = formats.decode_image(self._files[0][0])
        self.image_hw = first.shape[:2]
        super().__init__(root, self._recipe_table([e[0] for e in entries]), {"layout": "original"})
        self.bg_dir = self._find_bg_dir(root, bg_dir)
        files = [p for p in self.bg_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        files = [p for p in files if not p.name.startswith(".")]
        self._bg_files = _numbered(files, self.name_base)
        missing = sorted(set(int(b) for b in np.unique(self.recipes[:, 0])) - set(self._bg_files))
        if missing:
            raise DatasetError(
                f"{self.bg_dir}: no bg image for bg index {missing[:10]} (bg K is the file whose name ends "
                "with K, or the K-th file in sorted order); add them or pass the right bg folder"
            )
        self._bg = lru_cache(maxsize=256)(self._read_bg)

    @staticmethod
    def _by_stem(folder: Path, prefix: str) -> dict[str, Path]:
        if not folder.is_dir():
            return {}
        out = {}
        for entry in os.scandir(folder):
            stem, ext = os.path.splitext(entry.name)
            if stem.startswith(prefix) and ext.lower() in IMAGE_SUFFIXES:
                out[stem[len(prefix) :]] = Path(entry.path)
        return out

    def _recipe_table(self, keys: list[tuple[int, int, bool, int, int]]) -> np.ndarray:
        cells = {(r, c): (x, y, s) for r, c, x, y, s in grid_cells(self.image_hw)}
        rows = []
        for bg, fg, flip, row, col in keys:
            x, y, s = cells.get((row, col), (-1, -1, -1))
            rows.append((bg, fg, int(flip), row, col, x, y, s))
        return np.asarray(rows, dtype=np.int32)

    @staticmethod
    def _find_bg_dir(root: Path, bg_dir: Path | None) -> Path:
        if bg_dir is not None:
            if not Path(bg_dir).is_dir():
                raise DatasetError(f"bg folder {bg_dir} does not exist")
            return Path(bg_dir)
        for name in ORIGINAL_BG_DIRS:
            if (root / name).is_dir():
                return root / name
        raise DatasetError(
            f"{root}: the original layout stores no bg per sample; put the bg images in a folder named "
            f"one of {', '.join(ORIGINAL_BG_DIRS)} inside {root}, or pass bg_dir"
        )

    def _read_bg(self, bg: int) -> np.ndarray:
        path = self._bg_files[bg]
        try:
            img = read_rgb(path)
        except SourceError as exc:
            raise DatasetError(str(exc)) from None
        h, w = self.image_hw
        if img.shape[:2] == (h, w):
            return img
        if h == w:
            return fit_background(img, h)
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

    def get(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        items = []
        for i in self._indices(indices):
            image, mask, depth = self._files[i]
            fg_bg = formats.decode_image(image)
            h, w = fg_bg.shape[:2]
            m = formats.decode_mask(mask)
            d = formats.decode_depth(depth, "jpg8", self.depth_max)
            if m.shape != (h, w) or d.shape != (h, w):
                raise DatasetError(f"{mask} or {depth}: size differs from {image} ({w}x{h})")
            items.append({"bg": self._bg(int(self.recipes[i, 0])), "fg_bg": fg_bg, "mask": m, "depth": d})
        return _stack(items)


# -- detection -------------------------------------------------------------------------------------------


def open_dataset(path: Path | str, **options: Any) -> SeedSamples | ShardSamples | OriginalSamples:
    """Open a dataset folder, detecting its layout.

    ``options`` go to :class:`OriginalSamples` (``bg_dir``, ``depth_max``) for the original layout.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    if (root / DATASET_FILE).exists():
        layout = _read_meta(root).get("layout")
        if layout == "seed":
            return SeedSamples(root)
        if layout == "shards":
            return ShardSamples(root)
        raise DatasetError(f"{root / DATASET_FILE}: unknown layout {layout!r} (expected seed or shards)")
    if (root / PROGRESS_DIR).exists():
        raise DatasetError(
            f"{root}: generation did not finish; complete it with the same `lab data generate` "
            "command and --resume"
        )
    if any(_FGBG.match(p.name) for p in root.iterdir() if p.is_dir()):
        return OriginalSamples(root, **options)
    raise DatasetError(
        f"{root}: not a dataset; expected dataset.json (written by `lab data generate`) or the original "
        "layout's fgbg_K/, mask_fgbg_K/, depth_fgbg_K/ folders"
    )
