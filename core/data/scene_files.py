"""Per-photo sidecar files: what the user knows about a bg's scene, next to the photo.

A photo says nothing about its camera, so the geometry-based depth (and the
ground fit of a depth model) needs it stated. ``photos/beach.jpg`` may have a
``photos/beach.geometry.json``::

    {"horizon": 0.42, "camera_height": 1.5, "focal": 1.1, "far": 60,
     "anchors": [[320, 410, 3.2], {"x": 100, "y": 460, "depth": 2.1}]}

Every key is optional. ``horizon`` is the horizon's row as a fraction of the
photo's height from the top; ``camera_height`` is in metres; ``focal`` is
the focal length in units of the photo's height; ``far`` and ``wall_depth``
in metres (see :mod:`.geometry`). ``anchors`` are known depths: pixel column
``x`` and row ``y`` in the photo as stored (before any crop or resize), and
the depth there in metres. Values are in the photo's own frame; this module
converts them to the frame of the bg as losslab uses it (centred square
crop or stretch, then resize: :func:`~losslab.core.data.sources.fit_background`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from losslab.core.data.geometry import SceneGeometry
from losslab.core.data.limits import not_regular

SIDECAR_SUFFIX = ".geometry.json"
#: A sidecar is a few numbers; anything larger is not one.
MAX_SIDECAR_BYTES = 1 << 20
MAX_ANCHORS = 100_000
_FIELDS = ("horizon", "camera_height", "focal", "far", "wall_depth")


class SidecarError(ValueError):
    """A sidecar file cannot be used; the message names it and says what to fix."""


@dataclass(frozen=True)
class SceneNotes:
    """A sidecar's content in the photo's frame: stated geometry fields and anchors (x_px, y_px, metres)."""

    path: str
    fields: tuple[tuple[str, float | None], ...] = ()
    anchors: tuple[tuple[float, float, float], ...] = ()

    @property
    def has_geometry(self) -> bool:
        stated = dict(self.fields)
        return stated.get("horizon") is not None and stated.get("camera_height") is not None


def sidecar_path(image: Path) -> Path:
    """``photos/beach.jpg`` -> ``photos/beach.geometry.json``."""
    return image.with_name(image.stem + SIDECAR_SUFFIX)


def _number(path: Path, key: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SidecarError(f"{path}: {key!r} must be a number, got {value!r}")
    if not low < value < high:
        bounds = f"in ({low:g}, {high:g})" if math.isfinite(high) else f"greater than {low:g}"
        raise SidecarError(f"{path}: {key!r} must be {bounds}, got {value}")
    return float(value)


def _anchor(path: Path, i: int, item: Any) -> tuple[float, float, float]:
    if isinstance(item, dict):
        unknown = set(item) - {"x", "y", "depth"}
        if unknown or len(item) != 3:
            raise SidecarError(f"{path}: anchor {i} must have exactly the keys x, y, depth, got {sorted(item)}")
        item = [item["x"], item["y"], item["depth"]]
    if not isinstance(item, list) or len(item) != 3:
        raise SidecarError(f"{path}: anchor {i} must be [x, y, depth] or {{\"x\":..,\"y\":..,\"depth\":..}}")
    x = _number(path, f"anchors[{i}].x", item[0], low=-1.0)
    y = _number(path, f"anchors[{i}].y", item[1], low=-1.0)
    return x, y, _number(path, f"anchors[{i}].depth", item[2])


def read_sidecar(image: Path) -> SceneNotes | None:
    """The sidecar of ``image``, or None when there is none; :class:`SidecarError` when it is unusable."""
    path = sidecar_path(Path(image))
    if not os.path.lexists(path):
        return None
    why = not_regular(path)  # a FIFO would block, a device never end
    if why or not path.exists():
        raise SidecarError(f"{path}: is {why or 'a broken symlink'}, not a regular file; remove it or replace it "
                           "with a JSON file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
        if len(raw) > MAX_SIDECAR_BYTES:
            raise SidecarError(f"{path}: larger than {MAX_SIDECAR_BYTES} bytes, which no sidecar needs")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{path}: not readable as JSON ({exc}); fix it or remove it") from None
    if not isinstance(data, dict):
        raise SidecarError(f"{path}: must hold a JSON object such as {{\"horizon\": 0.4, \"camera_height\": 1.6}}")
    unknown = sorted(set(data) - {*_FIELDS, "anchors"})
    if unknown:
        raise SidecarError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(_FIELDS)}, anchors")
    fields: list[tuple[str, float | None]] = []
    for key in _FIELDS:
        if key not in data:
            continue
        if key == "wall_depth" and data[key] is None:
            fields.append((key, None))
            continue
        fields.append((key, _number(path, key, data[key], high=1.0 if key == "horizon" else math.inf)))
    anchors = data.get("anchors", [])
    if not isinstance(anchors, list) or len(anchors) > MAX_ANCHORS:
        raise SidecarError(f"{path}: 'anchors' must be a list of at most {MAX_ANCHORS} [x, y, depth] entries")
    return SceneNotes(str(path), tuple(fields), tuple(_anchor(path, i, a) for i, a in enumerate(anchors)))


def fit_transform(height: int, width: int, size: int, fit: str) -> tuple[float, float, float, float]:
    """(y0, x0, sy, sx): a photo pixel coordinate p lands at ``(p - offset) * scale`` in the fitted bg.

    Mirrors :func:`~losslab.core.data.sources.fit_background` (same integer crop offsets).
    """
    if fit == "crop" and height != width:
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, size / side, size / side
    return 0.0, 0.0, size / height, size / width


def fitted_geometry(notes: SceneNotes, height: int, width: int, size: int, fit: str,
                    defaults: SceneGeometry) -> SceneGeometry:
    """The sidecar's fields over ``defaults``, converted to the fitted bg's frame.

    The horizon row and the focal length (both in pixels of the photo) move
    with the crop offset and scale like any row; camera height and depths do not.
    """
    stated = dict(notes.fields)
    y0, _x0, sy, _sx = fit_transform(height, width, size, fit)
    rest: dict[str, Any] = {k: v for k, v in stated.items() if k not in ("horizon", "focal")}
    geo = replace(defaults, **rest)
    if "horizon" in stated:
        geo = replace(geo, horizon=(float(stated["horizon"] or 0.0) * height - y0) * sy / size)
    focal = stated.get("focal")
    # the default focal is in units of the fitted bg's height already; a stated one is in the photo's
    geo = replace(geo, focal=float(focal) * height * sy / size) if focal is not None else geo
    return geo


def fitted_anchors(notes: SceneNotes, height: int, width: int, size: int, fit: str) -> np.ndarray:
    """(K, 3) float64: anchor (u, v, metres), u and v as fractions of the fitted bg's width and height.

    Fractions, not pixels, so the anchors hold at any resolution the bg is
    later resized to; anchors that the crop cuts away are dropped.
    """
    if not notes.anchors:
        return np.zeros((0, 3))
    y0, x0, sy, sx = fit_transform(height, width, size, fit)
    a = np.asarray(notes.anchors, dtype=np.float64)
    u = (a[:, 0] + 0.5 - x0) * sx / size
    v = (a[:, 1] + 0.5 - y0) * sy / size
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    return np.stack([u, v, a[:, 2]], axis=1)[inside]
