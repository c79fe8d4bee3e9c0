"""Sources: the backgrounds and foregrounds that recipes refer to by index.

``SyntheticSources`` draws both procedurally from a seed (no download): a
textured ground plane in perspective under a sky or before a back wall, and
varied anti-aliased silhouettes with alpha. ``FolderSources`` reads a bg
folder (JPEG) and a fg folder (PNG with alpha). Images are RGB uint8; fgs RGBA.

Real folders hold bad files. Each reader here either converts a file in a
documented way (grayscale -> RGB, 16-bit -> 8-bit, RGBA bg -> RGB, any bg
size -> the image size) or raises :class:`SourceError` with a message that
names the file and says what to do. :meth:`FolderSources.check` reads every
file once, so a run can skip the bad ones up front (one bad file never costs
the others) instead of failing half way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from losslab.core.data import scene_files
from losslab.core.data.geometry import GeometryUnknown, SceneGeometry
from losslab.core.data.limits import InputLimitError, check_pixels, read_image_bytes

#: bgs kept decoded per process (~70 MB at 150 px); fgs, small, are all kept.
BG_CACHE = 1024


@runtime_checkable
class Sources(Protocol):
    """What the compositor and ground truth read: bgs and fgs by index, and each bg's geometry."""

    @property
    def n_bg(self) -> int: ...

    @property
    def n_fg(self) -> int: ...

    def bg(self, index: int) -> np.ndarray: ...

    def fg(self, index: int) -> np.ndarray: ...

    def geometry(self, index: int) -> SceneGeometry: ...


# -- synthetic scenes ----------------------------------------------------------------------------------


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _random_colour(rng: np.random.Generator, low: int = 20, high: int = 235) -> np.ndarray:
    return rng.integers(low, high, size=3).astype(np.float32)


def draw_background(
    seed: int, index: int, size: int, base: SceneGeometry
) -> tuple[np.ndarray, SceneGeometry]:
    """One procedural bg (RGB uint8) and its geometry: ground texture in perspective, sky or wall."""
    rng = _rng(seed, 0, index)
    has_wall = bool(rng.random() < 0.5)
    geometry = SceneGeometry(
        horizon=base.horizon,
        camera_height=base.camera_height,
        focal=base.focal,
        far=base.far,
        wall_depth=float(rng.uniform(6.0, 25.0)) if has_wall else None,
    )
    h = w = size
    depth = geometry.depth_map(h, w).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = geometry.focal_px(h)
    world_x = (xx + 0.5 - w / 2) * depth / f
    img = np.zeros((h, w, 3), dtype=np.float32)

    # ground: checker, stripes or noise tiles, in world coordinates so that it shrinks with depth
    limit = geometry.wall_depth or geometry.far
    ground = yy + 0.5 > geometry.horizon_row(h) + geometry.camera_height * f / limit
    tile = rng.uniform(0.4, 1.5)
    c1, c2 = _random_colour(rng), _random_colour(rng)
    pattern = int(rng.integers(0, 3))
    if pattern == 0:
        t = (np.floor(world_x / tile) + np.floor(depth / tile)) % 2
    elif pattern == 1:
        t = (np.floor(depth / tile) % 2) * 0.7 + 0.3 * (np.sin(world_x * 3) > 0)
    else:
        t = 0.5 + 0.5 * np.sin(world_x * rng.uniform(1, 4)) * np.cos(depth * rng.uniform(1, 4))
    ground_rgb = c1[None, None] * t[..., None] + c2[None, None] * (1 - t[..., None])
    fog = np.clip(depth / geometry.far, 0, 1)[..., None] * 0.5
    haze = _random_colour(rng, 150, 240)
    ground_rgb = ground_rgb * (1 - fog) + haze[None, None] * fog
    img[ground] = ground_rgb[ground]

    top = ~ground
    if has_wall:
        wall = _random_colour(rng)
        brick_h, brick_w = rng.uniform(3, 9), rng.uniform(8, 20)
        mortar = ((yy % brick_h) < 1) | (((xx + (np.floor(yy / brick_h) % 2) * brick_w / 2) % brick_w) < 1)
        wall_rgb = np.where(mortar[..., None], wall * 0.6, wall)
        for _ in range(int(rng.integers(0, 4))):  # windows
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, max(1, int(geometry.horizon_row(h)))))
            ww, wh = int(rng.integers(8, 25)), int(rng.integers(8, 25))
            wall_rgb[y0 : y0 + wh, x0 : x0 + ww] = _random_colour(rng, 0, 120)
        img[top] = wall_rgb[top]
    else:
        sky_top, sky_bottom = _random_colour(rng, 60, 200), _random_colour(rng, 150, 255)
        frac = np.clip(yy / max(1.0, geometry.horizon_row(h)), 0, 1)[..., None]
        sky = sky_top * (1 - frac) + sky_bottom * frac
        for _ in range(int(rng.integers(0, 5))):  # clouds
            cx, cy = rng.uniform(0, w), rng.uniform(0, geometry.horizon_row(h))
            r = rng.uniform(5, 20)
            blob = np.exp(-(((xx - cx) / (2 * r)) ** 2 + ((yy - cy) / r) ** 2))[..., None]
            sky = sky * (1 - blob) + 245 * blob
        img[top] = sky[top]
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), geometry


def draw_foreground(seed: int, index: int, canvas: int = 96) -> np.ndarray:
    """One procedural fg (RGBA uint8), cropped to its silhouette, base on its bottom row.

    Shapes vary: figures (head, body, legs), blobs with a random radial profile,
    boxes on wheels, trees, stars. Edges are anti-aliased by drawing at 4x and
    shrinking, so alpha is soft at the border as in a real matte.
    """
    rng = _rng(seed, 1, index)
    s = canvas * 4
    mask = np.zeros((s, s), dtype=np.uint8)
    kind = int(rng.integers(0, 5))
    cx = s // 2
    if kind == 0:  # figure
        head = int(s * rng.uniform(0.08, 0.13))
        cv2.circle(mask, (cx, int(s * 0.15)), head, 255, -1)
        body_w = int(s * rng.uniform(0.12, 0.22))
        cv2.ellipse(mask, (cx, int(s * 0.45)), (body_w, int(s * 0.2)), 0, 0, 360, 255, -1)
        for side in (-1, 1):
            leg = np.array([[cx + side * body_w // 3, int(s * 0.55)], [cx + side * body_w, s - 1],
                            [cx + side * (body_w // 2), s - 1], [cx, int(s * 0.6)]], dtype=np.int32)
            cv2.fillPoly(mask, [leg], 255)
            arm = np.array([[cx, int(s * 0.3)], [cx + side * int(s * 0.35), int(s * rng.uniform(0.3, 0.6))],
                            [cx + side * int(s * 0.33), int(s * 0.62)], [cx, int(s * 0.4)]], dtype=np.int32)
            cv2.fillPoly(mask, [arm], 255)
    elif kind == 1:  # blob
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radius = s * 0.3 * (1 + sum(rng.uniform(-0.25, 0.25) * np.sin(k * angles + rng.uniform(0, 6))
                                    for k in range(1, 5)))
        pts = np.stack([cx + radius * np.cos(angles), s / 2 + radius * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
    elif kind == 2:  # box on wheels
        bw, bh = int(s * rng.uniform(0.35, 0.48)), int(s * rng.uniform(0.2, 0.35))
        cv2.rectangle(mask, (cx - bw, s - int(s * 0.12) - bh), (cx + bw, s - int(s * 0.12)), 255, -1)
        cv2.rectangle(mask, (cx - bw // 2, s - int(s * 0.12) - bh - int(s * 0.15)),
                      (cx + bw // 3, s - int(s * 0.12) - bh), 255, -1)
        for wx in (cx - bw * 2 // 3, cx + bw * 2 // 3):
            cv2.circle(mask, (wx, s - int(s * 0.1)), int(s * 0.09), 255, -1)
    elif kind == 3:  # tree
        trunk = int(s * rng.uniform(0.04, 0.08))
        cv2.rectangle(mask, (cx - trunk, int(s * 0.5)), (cx + trunk, s - 1), 255, -1)
        crown = np.array([[cx, int(s * 0.02)], [cx - int(s * rng.uniform(0.25, 0.45)), int(s * 0.65)],
                          [cx + int(s * rng.uniform(0.25, 0.45)), int(s * 0.65)]], dtype=np.int32)
        cv2.fillPoly(mask, [crown], 255)
    else:  # star on a post
        n = int(rng.integers(5, 8))
        angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
        radius = np.where(np.arange(2 * n) % 2 == 0, s * 0.3, s * 0.13)
        pts = np.stack([cx + radius * np.sin(angles), s * 0.35 - radius * np.cos(angles)], axis=1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
        cv2.rectangle(mask, (cx - s // 30, int(s * 0.5)), (cx + s // 30, s - 1), 255, -1)

    alpha = cv2.resize(mask, (canvas, canvas), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    c1, c2 = _random_colour(rng), _random_colour(rng)
    grad = (yy / canvas)[..., None]
    rgb = c1 * (1 - grad) + c2 * grad
    if rng.random() < 0.5:  # stripes or spots
        period = rng.uniform(4, 12)
        rgb = rgb * (0.75 + 0.25 * (np.sin((xx + yy * rng.uniform(-1, 1)) / period * np.pi) > 0))[..., None]
    rgb = rgb + rng.normal(0, 5, size=rgb.shape)
    rgba = np.dstack([np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha])
    ys, xs = np.nonzero(alpha > 0)
    return np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


class SyntheticSources:
    """Procedural bgs and fgs, drawn lazily from ``seed`` and cached; nothing is downloaded."""

    def __init__(
        self, n_bg: int = 100, n_fg: int = 100, seed: int = 0, size: int = 150,
        geometry: SceneGeometry | None = None,
    ) -> None:
        if n_bg < 1 or n_fg < 1:
            raise ValueError(
                f"synthetic sources need at least one bg and one fg, got n_bg={n_bg}, n_fg={n_fg}"
            )
        if size < 32:
            raise ValueError(f"synthetic bg size must be at least 32 px, got {size}")
        self._n_bg, self._n_fg, self.seed, self.size = n_bg, n_fg, seed, size
        self.base_geometry = geometry or SceneGeometry()
        self._bg = lru_cache(maxsize=BG_CACHE)(self._draw_bg)
        self._fg = lru_cache(maxsize=None)(lambda i: draw_foreground(self.seed, i))

    @property
    def n_bg(self) -> int:
        return self._n_bg

    @property
    def n_fg(self) -> int:
        return self._n_fg

    def _draw_bg(self, index: int) -> tuple[np.ndarray, SceneGeometry]:
        return draw_background(self.seed, index, self.size, self.base_geometry)

    def _check(self, index: int, n: int, what: str) -> None:
        if not 0 <= index < n:
            raise IndexError(f"{what} index {index} is out of range 0..{n - 1}")

    def bg(self, index: int) -> np.ndarray:
        self._check(index, self._n_bg, "bg")
        return self._bg(index)[0]

    def fg(self, index: int) -> np.ndarray:
        self._check(index, self._n_fg, "fg")
        return self._fg(index)

    def geometry(self, index: int) -> SceneGeometry:
        self._check(index, self._n_bg, "bg")
        return self._bg(index)[1]


# -- folders -------------------------------------------------------------------------------------------


class SourceError(Exception):
    """A source file or folder cannot be used; the message names it and says what to do."""


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _decode(path: Path) -> np.ndarray:
    """Decode an image file as stored (any depth, any channels), with a clear error per failure mode."""
    path = Path(path)
    try:
        data = read_image_bytes(path)  # regular files only, within the byte cap; never blocks on a FIFO
        check_pixels(data, path)  # the header's width x height within the pixel cap, before decoding
    except InputLimitError as exc:
        raise SourceError(str(exc)) from None
    except PermissionError:
        raise SourceError(
            f"{path}: cannot be read (permission denied); fix its permissions or remove it"
        ) from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not an image; move it out of the image folder") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc}); replace or remove it") from None
    if not data:
        raise SourceError(f"{path}: the file is empty (0 bytes); replace or remove it")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise SourceError(
            f"{path}: cannot be decoded as an image ({len(data)} bytes; corrupt, truncated or not an image); "
            "replace or remove it"
        )
    return _to_uint8(img, path)


def _to_uint8(img: np.ndarray, path: Path | str = "<image>") -> np.ndarray:
    """Documented conversion: 16-bit -> 8-bit by rounding v / 257 (65535 -> 255); other types are refused."""
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype != np.uint8:
        raise SourceError(
            f"{path}: unsupported pixel type {img.dtype} (floating-point or signed images are not converted, "
            "since their range is unknown); save it as an 8- or 16-bit PNG or JPEG"
        )
    return img


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as RGB uint8.

    Documented conversions: grayscale -> RGB (channel copied), 16-bit -> 8-bit,
    RGBA -> RGB (alpha dropped; a bg is opaque).
    """
    img = _decode(Path(path))
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[..., 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_rgba(path: Path) -> np.ndarray:
    """Read a fg as RGBA uint8, cropped to its alpha's bounding box.

    Documented conversions: gray + alpha -> RGBA, 16-bit -> 8-bit, palette PNG
    with transparency -> RGBA (the decoder expands it). A fg without an alpha
    channel, or with a fully transparent one, is an error: its mask (the
    ground truth) comes from alpha.
    """
    path = Path(path)
    img = _decode(path)
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha, should the decoder keep it so
        img = np.dstack([img[..., 0], img[..., 0], img[..., 0], img[..., 1]])
    if img.ndim == 2 or img.shape[2] != 4:
        kind = "grayscale" if img.ndim == 2 or img.shape[2] == 1 else "RGB"
        raise SourceError(
            f"{path}: foreground is {kind} without an alpha channel; save it as a PNG with transparency "
            "(the mask ground truth comes from alpha)"
        )
    rgba = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if not rgba[..., 3].any():
        raise SourceError(
            f"{path}: foreground's alpha channel is fully transparent, so nothing would be pasted; "
            "re-export it with the object opaque"
        )
    ys, xs = np.nonzero(rgba[..., 3])
    return np.ascontiguousarray(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def fit_background(img: np.ndarray, size: int, fit: str = "crop") -> np.ndarray:
    """Bring a bg of any shape to ``size`` x ``size``.

    ``crop`` (default) takes the largest centred square, so the scene is not
    distorted, then resizes it (area filter to shrink, bilinear to enlarge);
    ``stretch`` resizes the whole image, changing its aspect ratio.
    """
    if fit not in ("crop", "stretch"):
        raise ValueError(f"bg fit must be 'crop' or 'stretch', got {fit!r}")
    h, w = img.shape[:2]
    if fit == "crop" and h != w:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        img = img[y0 : y0 + side, x0 : x0 + side]
        h = w = side
    if (h, w) == (size, size):
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def list_images(folder: Path, what: str) -> list[Path]:
    """Image files of a folder in sorted-name order (their index is their position); hidden files skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise SourceError(f"{what} folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise SourceError(
            f"{what} folder {folder} is a file, not a folder; pass the folder that holds the images"
        )
    try:
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
    except PermissionError:
        raise SourceError(
            f"{what} folder {folder} cannot be read (permission denied); check its permissions"
        ) from None
    except OSError as exc:
        raise SourceError(f"{what} folder {folder} cannot be read ({exc.strerror or exc})") from None
    if not files:
        raise SourceError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@dataclass(frozen=True)
class SourceProblem:
    """One file that was skipped (``skipped=True``) or converted with a warning."""

    path: str
    message: str
    skipped: bool = True

    def __str__(self) -> str:
        return self.message


@dataclass
class SourceCheck:
    """The result of reading every source once: usable indices, skipped files, conversion warnings."""

    bg_ids: list[int]
    fg_ids: list[int]
    problems: list[SourceProblem] = field(default_factory=list)

    @property
    def skipped(self) -> list[SourceProblem]:
        return [p for p in self.problems if p.skipped]

    @property
    def warnings(self) -> list[SourceProblem]:
        return [p for p in self.problems if not p.skipped]


class FolderSources:
    """bgs from one folder and fgs (PNG with alpha) from another, indexed in sorted-name order.

    Every bg is brought to ``size`` x ``size`` by :func:`fit_background`
    (``bg_fit``: centred crop by default, or stretch). A bad file raises
    :class:`SourceError` when it is first used; call :meth:`check` first to
    learn which indices are usable.

    A photo's geometry is never invented: ``geometry(i)`` comes from the bg's
    sidecar (``<bg>.geometry.json``, :mod:`.scene_files`), else from
    ``geometry`` when the caller states one for every bg, else it raises
    :class:`~losslab.core.data.geometry.GeometryUnknown`.
    """

    def __init__(self, bg_dir: Path, fg_dir: Path, size: int = 150, geometry: SceneGeometry | None = None,
                 bg_fit: str = "crop"):
        if size < 8:
            raise ValueError(f"image size must be at least 8 px, got {size}")
        fit_background(np.zeros((1, 1, 3), np.uint8), 1, bg_fit)  # validates bg_fit early
        self.bg_paths = list_images(Path(bg_dir), "bg")
        self.fg_paths = list_images(Path(fg_dir), "fg")
        self.size, self.bg_fit = size, bg_fit
        self.base_geometry, self.geometry_stated = geometry or SceneGeometry(), geometry is not None
        self._bg = lru_cache(maxsize=BG_CACHE)(self._read_bg)
        self._fg = lru_cache(maxsize=None)(lambda i: read_rgba(self.fg_paths[i]))
        self._photo_shape: dict[int, tuple[int, int]] = {}
        self._notes = lru_cache(maxsize=None)(self._read_notes)

    @property
    def n_bg(self) -> int:
        return len(self.bg_paths)

    @property
    def n_fg(self) -> int:
        return len(self.fg_paths)

    def _read_bg(self, index: int) -> np.ndarray:
        raw = read_rgb(self.bg_paths[index])
        self._photo_shape[index] = raw.shape[:2]
        return fit_background(raw, self.size, self.bg_fit)

    def _read_notes(self, index: int) -> scene_files.SceneNotes | None:
        try:
            return scene_files.read_sidecar(self.bg_paths[index])
        except scene_files.SidecarError as exc:
            raise SourceError(str(exc)) from None

    def _photo(self, index: int) -> tuple[int, int]:
        """The photo's (height, width) as stored; reading the bg records it."""
        if index not in self._photo_shape:
            self.bg(index)
        return self._photo_shape[index]

    def _check_index(self, index: int, n: int, what: str) -> None:
        if not 0 <= index < n:
            raise IndexError(f"{what} index {index} is out of range 0..{n - 1}")

    def bg(self, index: int) -> np.ndarray:
        self._check_index(index, self.n_bg, "bg")
        return self._bg(index)

    def fg(self, index: int) -> np.ndarray:
        self._check_index(index, self.n_fg, "fg")
        return self._fg(index)

    def geometry(self, index: int) -> SceneGeometry:
        self._check_index(index, self.n_bg, "bg")
        notes = self._notes(index)
        if notes is not None and notes.has_geometry:
            h, w = self._photo(index)
            return scene_files.fitted_geometry(notes, h, w, self.size, self.bg_fit, self.base_geometry)
        if self.geometry_stated:
            return self.base_geometry
        sidecar = scene_files.sidecar_path(self.bg_paths[index])
        raise GeometryUnknown(
            f"{self.bg_paths[index]}: the photo's geometry is unknown (no horizon and camera_height in "
            f"{sidecar.name} or in the depth parameters)", self.base_geometry)

    def anchors(self, index: int) -> np.ndarray:
        """(K, 3): the sidecar's depth anchors as (u, v, metres), u, v fractions of the fitted bg (K may be 0)."""
        self._check_index(index, self.n_bg, "bg")
        notes = self._notes(index)
        if notes is None or not notes.anchors:
            return np.zeros((0, 3))
        h, w = self._photo(index)
        return scene_files.fitted_anchors(notes, h, w, self.size, self.bg_fit)

    def check(self, largest_fg: int | None = None) -> SourceCheck:
        """Read every file once; return the usable bg and fg indices and what was skipped or converted.

        ``largest_fg`` is the largest fg box in pixels of the output image: a bg
        whose shorter side is smaller is still used (enlarged to the image
        size, a documented conversion) but reported, since it will look blurry.
        """
        problems: list[SourceProblem] = []
        bg_ids: list[int] = []
        for i, path in enumerate(self.bg_paths):
            try:
                raw = read_rgb(path)
                self._photo_shape[i] = raw.shape[:2]
                self._notes(i)  # a sidecar that cannot be read costs its bg only, reported here
            except SourceError as exc:
                problems.append(SourceProblem(str(path), f"{exc}; skipped"))
                continue
            h, w = raw.shape[:2]
            side = min(h, w)
            if largest_fg is not None and side < largest_fg:
                problems.append(SourceProblem(
                    str(path),
                    f"{path}: bg is {w}x{h} px, smaller than the largest fg box ({largest_fg} px at "
                    f"image size {self.size}); it is enlarged to {self.size}x{self.size} and will look "
                    f"blurry; use a bg of at least {self.size} px",
                    skipped=False,
                ))
            bg_ids.append(i)
        fg_ids: list[int] = []
        for j, path in enumerate(self.fg_paths):
            try:
                fg = read_rgba(path)
            except SourceError as exc:
                problems.append(SourceProblem(str(path), f"{exc}; skipped"))
                continue
            if (fg[..., 3] == 255).all():
                problems.append(SourceProblem(
                    str(path),
                    f"{path}: foreground's alpha is fully opaque, so its mask is its whole rectangle; "
                    "check it was exported with transparency",
                    skipped=False,
                ))
            fg_ids.append(j)
        return SourceCheck(bg_ids, fg_ids, problems)
