"""File names, encoders and decoders of the materialized layouts, shared by writers and readers.

Keeping both directions in one module is what guarantees that a reader
decodes exactly what a writer encoded (same names, same depth unit).

Depth encodings, never stretched per image (a value means the same distance
in every image):

- ``png16``: 16-bit PNG, 1 unit = 1 mm (``DEPTH_PNG_UNITS_PER_METRE``), so
  0..65.535 m; deeper values are clipped. Lossless up to the 0.5 mm rounding.
- ``jpg8``: the documented 8-bit JPEG, kept for compatibility, with a fixed
  scale: ``v = round(255 * depth / depth_max)`` (far is white), lossy.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from losslab.core.data.geometry import DEPTH_PNG_UNITS_PER_METRE
from losslab.core.data.recipes import Recipe

IMAGE_FORMATS = ("jpg", "png")
DEPTH_FORMATS = ("png16", "jpg8")
TEMP_SUFFIX = ".part"

#: PNG settings for masks and depth: no row filter and fast deflate. Both are mostly long runs (a
#: mask is 0 or 255; ground-plane depth is constant along each row), which deflate packs well without
#: filtering, and the encoder is ~5x faster than OpenCV's adaptive default.
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
_PNG_IMAGE = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


# -- names of a generated dataset's files (written by data/generate/, read by data/readers.py) --------------

#: The finished dataset's description; it exists only once generation completed.
DATASET_FILE = "dataset.json"
#: Generation's bookkeeping while it runs (and after a kill, so ``--resume`` can continue).
PROGRESS_DIR = ".progress"
#: One JSON line per sample, in sample order.
MANIFEST = "manifest.jsonl"
#: The manifest's recipe columns (``RECIPE_FIELDS`` order) as an (N, 8) int32 array, for fast loading.
RECIPES_FILE = "recipes.npy"
#: Where the shards layout keeps its ``shard_NNNNNN.npz`` files.
SHARD_DIR = "shards"
#: Recipe fields in the order of a shard's ``recipes`` array and of ``RECIPES_FILE``'s columns.
RECIPE_FIELDS = ("bg", "fg", "flip", "row", "col", "x", "y", "size")
#: Format of the shards the writer makes (``format`` member); 1 stored each sample's whole box.
SHARD_FORMAT = 2


# -- names (the documented seed layout) ------------------------------------------------------------------

#: File and folder names of the seed layout number bgs and fgs from 1, as documented (bg1..bg100,
#: fg_1.., fgbg_1..fgbg_100: ``fgbg_6/bg6_0_2_flip_fg_74.jpg`` is bg index 5, fg index 73); recipes,
#: manifests and ``recipes.npy`` keep 0-based indices. Datasets written before numbered names from 0:
#: their ``dataset.json`` has no ``name_base``, and the reader uses 0 for them.
NAME_BASE = 1


def sample_stem(recipe: Recipe, base: int = NAME_BASE) -> str:
    """The documented stem for grid recipes; free placements (row -1) also name their box.

    bg and fg are numbered from ``base`` (1, as documented; 0 in datasets
    written before): ``bg5_0_2_flip_fg_73`` for a grid cell of bg index 4 and
    fg index 72; ``bg5_x12_y60_s48_flip_fg_73`` for a random placement, whose
    row and column mean nothing.
    """
    flip = "flip_" if recipe.flip else ""
    bg, fg = recipe.bg + base, recipe.fg + base
    if recipe.row >= 0 and recipe.col >= 0:
        return f"bg{bg}_{recipe.row}_{recipe.col}_{flip}fg_{fg}"
    return f"bg{bg}_x{recipe.x}_y{recipe.y}_s{recipe.size}_{flip}fg_{fg}"


def image_ext(image_format: str) -> str:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    return "." + image_format


def depth_ext(depth_format: str) -> str:
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth format must be one of {', '.join(DEPTH_FORMATS)}, got {depth_format!r}")
    return ".png" if depth_format == "png16" else ".jpg"


def fgbg_dir(bg: int, base: int = NAME_BASE) -> str:
    return f"fgbg_{bg + base}"


def mask_dir(bg: int, base: int = NAME_BASE) -> str:
    return f"mask_fgbg_{bg + base}"


def depth_dir(bg: int, base: int = NAME_BASE) -> str:
    return f"depth_fgbg_{bg + base}"


def sample_paths(stem: str, bg: int, image_format: str, depth_format: str,
                 base: int = NAME_BASE) -> tuple[str, str, str]:
    """Relative paths of a sample's fg_bg, mask and depth (``bg`` is the 0-based index).

    ``fgbg_K/<stem>.jpg``, ``mask_fgbg_K/mask_<stem>.png``, ``depth_fgbg_K/depth_<stem>.png``,
    with K = ``bg + base``.
    """
    return (
        f"{fgbg_dir(bg, base)}/{stem}{image_ext(image_format)}",
        f"{mask_dir(bg, base)}/mask_{stem}.png",
        f"{depth_dir(bg, base)}/depth_{stem}{depth_ext(depth_format)}",
    )


BG_DIR = "bg"


def bg_path(bg: int, image_format: str, base: int = NAME_BASE) -> str:
    """Relative path of bg index ``bg`` as composited (at the image size): ``bg/bg_K.jpg``, K = ``bg + base``."""
    return f"{BG_DIR}/bg_{bg + base}{image_ext(image_format)}"


# -- depth units -----------------------------------------------------------------------------------------


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (rounded, clipped to 0..65535)."""
    units = np.multiply(depth_m, DEPTH_PNG_UNITS_PER_METRE, dtype=np.float64)
    np.rint(units, out=units)
    np.clip(units, 0, 65535, out=units)
    return units.astype(np.uint16)


def png16_to_depth(units: np.ndarray) -> np.ndarray:
    return units.astype(np.float32) / np.float32(DEPTH_PNG_UNITS_PER_METRE)


def depth_to_jpg8(depth_m: np.ndarray, depth_max: float) -> np.ndarray:
    """Metres -> 8-bit with a fixed scale (``depth_max`` metres is 255), never per image."""
    return np.clip(np.rint(depth_m * (255.0 / depth_max)), 0, 255).astype(np.uint8)


def jpg8_to_depth(values: np.ndarray, depth_max: float) -> np.ndarray:
    return values.astype(np.float32) * np.float32(depth_max / 255.0)


# -- encoders --------------------------------------------------------------------------------------------


def _encode(ext: str, img: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} {img.dtype} image as {ext}")
    return buf.tobytes()


def encode_image(rgb: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """RGB uint8 -> JPEG (baseline, 4:2:0, a restart marker per MCU row; see :mod:`.jpeg`) or PNG bytes."""
    if image_format == "jpg":
        from losslab.core.data.jpeg import BandEncoder

        return BandEncoder(jpeg_quality).encode_full(rgb)
    image_ext(image_format)
    return _encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), _PNG_IMAGE)


def encode_mask(mask: np.ndarray) -> bytes:
    """{0,1} mask -> 8-bit PNG with values 0 and 255 (lossless, and visible in any viewer)."""
    return _encode(".png", mask.astype(np.uint8) * np.uint8(255), _PNG_FAST)


def encode_depth(depth_m: np.ndarray, depth_format: str, depth_max: float) -> bytes:
    if depth_format == "png16":
        return _encode(".png", depth_to_png16(depth_m), _PNG_FAST)
    depth_ext(depth_format)
    return _encode(".jpg", depth_to_jpg8(depth_m, depth_max), [cv2.IMWRITE_JPEG_QUALITY, 95])


# -- decoders --------------------------------------------------------------------------------------------


class DatasetError(Exception):
    """A dataset on disk cannot be read; the message names the file and what to do."""


def _read(path: Path, flags: int) -> np.ndarray:
    from losslab.core.data.limits import InputLimitError, check_pixels, read_image_bytes

    try:
        data = read_image_bytes(path)  # regular files only, within the byte cap; never blocks on a FIFO
        check_pixels(data, path)
    except InputLimitError as exc:
        raise DatasetError(str(exc)) from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise DatasetError(f"{path}: cannot be read ({reason}); is the dataset complete?") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise DatasetError(
            f"{path}: cannot be decoded (empty or corrupt); regenerate it with `lab data generate`"
        )
    return img


def decode_image(path: Path) -> np.ndarray:
    """Any image -> RGB uint8."""
    img = _read(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_mask(path: Path) -> np.ndarray:
    """A mask image (PNG 0/255, or the original's JPEG) -> {0,1} uint8, thresholded at 128."""
    img = _read(path, cv2.IMREAD_GRAYSCALE)
    return (img >= 128).astype(np.uint8)


def decode_depth(path: Path, depth_format: str, depth_max: float) -> np.ndarray:
    """A depth image -> float32 metres."""
    if depth_format == "png16":
        img = _read(path, cv2.IMREAD_UNCHANGED)
        if img.dtype != np.uint16 or img.ndim != 2:
            raise DatasetError(f"{path}: expected a 16-bit single-channel PNG (depth in mm), got {img.dtype} "
                               f"with shape {img.shape}")
        return png16_to_depth(img)
    return jpg8_to_depth(_read(path, cv2.IMREAD_GRAYSCALE), depth_max)


# -- atomic writes ---------------------------------------------------------------------------------------


def temp_name(path: Path | str) -> str:
    """Hidden temp name beside ``path``, unique per process (two workers may write the same bg)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}{TEMP_SUFFIX}")


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_file(path: Path | str, data: bytes) -> None:
    """Plain write (create or truncate): only for files inside a staging folder renamed whole later."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def link_file(source: str, path: str, atomic: bool) -> bool:
    """Make ``path`` a hard link to the complete file ``source``; False if the file system refuses.

    A link makes no new inode, so it costs a fraction of writing a file; it
    appears whole or not at all. ``atomic`` replaces an existing ``path``
    (through a temp name), as :func:`atomic_write` does.
    """
    try:
        if not atomic:
            os.link(source, path)
            return True
        try:
            os.link(source, path)
        except FileExistsError:
            tmp = temp_name(path)
            os.link(source, tmp)
            os.replace(tmp, path)
        return True
    except OSError:  # no hard links here (another file system, too many links, gone): write instead
        return False


def atomic_write(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a temp name, then rename: a reader (or a resumed run) never sees a truncated file."""
    tmp = temp_name(path)
    write_file(tmp, data)
    os.replace(tmp, path)
