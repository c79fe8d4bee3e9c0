"""Input limits: only regular files are read as images, within a byte cap and a decoded-pixel cap.

Image folders are shared and can hold anything. A FIFO named ``x.jpg`` blocks
a plain ``open`` forever, a symlink to ``/dev/zero`` fills memory, and a
1 MB PNG can declare 20000 x 20000 pixels (1.2 GB decoded). So every image
file goes through :func:`read_image_bytes`:

- it is opened without blocking (``O_NONBLOCK``) and refused unless ``fstat``
  says it is a regular file (a symlink is judged by what it points to);
- at most ``LOSSLAB_MAX_IMAGE_BYTES`` bytes are read (default 64 MiB);
- the width and height in its header are checked against
  ``LOSSLAB_MAX_IMAGE_PIXELS`` (default 64 million, e.g. 8000 x 8000) before
  anything is decoded.

Each refusal is an :class:`InputLimitError` whose message names the file, the
cap and how to fix it; callers wrap it in their own error type
(``SourceError``, ``DatasetError``). The caps are read from the environment at
each call, so a test or a user can change them without a restart.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
BYTES_ENV = "LOSSLAB_MAX_IMAGE_BYTES"
PIXELS_ENV = "LOSSLAB_MAX_IMAGE_PIXELS"


class InputLimitError(OSError):
    """A file is not a regular file or exceeds a cap; the message names it, the cap and the fix."""


def _cap(env: str, default: int) -> int:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise InputLimitError(f"{env}={text!r} is not a number; set it to a positive integer or unset it") from None
    if value < 1:
        raise InputLimitError(f"{env}={text!r} must be at least 1; set a positive integer or unset it")
    return value


def max_image_bytes() -> int:
    return _cap(BYTES_ENV, DEFAULT_MAX_IMAGE_BYTES)


def max_image_pixels() -> int:
    return _cap(PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def not_regular(path: Path | str) -> str | None:
    """Why ``path`` is not a regular file (following symlinks), or None when it is one (or is missing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    via = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
    return f"{_kind(mode)}{via}"


def read_image_bytes(path: Path | str, max_bytes: int | None = None) -> bytes:
    """The bytes of image file ``path``: a regular file of at most ``max_bytes``, never blocking on a pipe.

    Raises :class:`InputLimitError` for a non-regular file or one over the cap;
    other ``OSError`` (missing, permission denied) pass through for the caller's message.
    """
    cap = max_image_bytes() if max_bytes is None else max_bytes
    why = not_regular(path)  # a socket cannot even be opened; a device should not be
    if why:
        raise InputLimitError(f"{path}: is {why}, not a regular image file; only regular files are read: "
                              "move it out of the folder")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            via = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
            raise InputLimitError(f"{path}: is {_kind(st.st_mode)}{via}, not a regular image file; "
                                  "only regular files are read: move it out of the folder")
        if st.st_size > cap:
            raise InputLimitError(f"{path}: {st.st_size} bytes, more than the {cap}-byte cap on an image file "
                                  f"({BYTES_ENV}); shrink the image, or raise {BYTES_ENV}")
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:  # it grew while being read
            raise InputLimitError(f"{path}: more than the {cap}-byte cap on an image file ({BYTES_ENV}); "
                                  f"shrink the image, or raise {BYTES_ENV}")
        return b"".join(chunks)
    finally:
        os.close(fd)


# -- header dimensions -----------------------------------------------------------------------------------

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _JPEG_SOF and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        i += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header without decoding it; None when it cannot be told."""
    for parse in (_png_size, _jpeg_size):
        found = parse(data)
        if found is not None:
            return found
    try:  # other formats (BMP, WebP, TIFF, ...): Pillow (a dependency of matplotlib) reads headers lazily
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError:
        return (1 << 16, 1 << 16)  # Pillow's own bomb check fired: far beyond any sane cap
    except Exception:
        return None  # not a format Pillow knows: the decoder decides (and OpenCV has its own 2^30 cap)


def check_pixels(data: bytes, path: Path | str, max_pixels: int | None = None) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before it is decoded."""
    cap = max_image_pixels() if max_pixels is None else max_pixels
    size = image_size(data)
    if size is None:
        return
    w, h = size
    if w * h > cap:
        raise InputLimitError(f"{path}: {w} x {h} = {w * h} pixels, more than the {cap}-pixel cap on a decoded "
                              f"image ({PIXELS_ENV}); shrink the image, or raise {PIXELS_ENV}")
