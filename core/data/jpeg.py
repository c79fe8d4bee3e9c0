"""JPEG encoding of images that differ from a base image only in a band of rows.

A fg_bg differs from its bg only inside the fg's box, yet a plain encoder
re-encodes all of it for every sample. Baseline JPEG with a restart marker
after every row of MCUs (16 px with 4:2:0 chroma) codes each MCU row on its
own: its bytes depend only on its pixels. So the bg is encoded once, and a
sample only re-encodes the MCU rows its box touches (a strip of the image,
encoded with the same settings) and splices them between the bg's rows. The
result is byte for byte what the encoder gives for the whole image with the
same settings (the tests check it), and decodes to exactly the pixels a plain
encode without restart markers gives; restart markers are part of baseline
JPEG and every decoder reads them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import cv2
import numpy as np

MCU = 16  # rows per MCU row with 4:2:0 chroma subsampling
_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"
_RST = [bytes([0xFF, 0xD0 + k]) for k in range(8)]


class JpegError(RuntimeError):
    """The encoder's output did not have the expected structure (so it cannot be spliced)."""


def _split(data: bytes, rows: int) -> tuple[bytes, list[bytes]]:
    """(everything up to the scan data, the entropy-coded segment of each MCU row)."""
    sos = data.find(_SOS)
    if sos < 0:
        raise JpegError("no start-of-scan marker")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    segments = []
    pos = start
    for k in range(rows - 1):
        mark = data.find(_RST[k % 8], pos)
        if mark < 0:
            raise JpegError(f"expected {rows} restart intervals, found {k + 1}")
        segments.append(data[pos:mark])
        pos = mark + 2
    end = data.rfind(_EOI)
    segments.append(data[pos:end])
    return data[:start], segments


def _join(header: bytes, segments: list[bytes]) -> bytes:
    parts = [header]
    for k, segment in enumerate(segments):
        if k:
            parts.append(_RST[(k - 1) % 8])
        parts.append(segment)
    parts.append(_EOI)
    return b"".join(parts)


class BandEncoder:
    """Encodes RGB images as JPEG, reusing a base image's rows outside the band that changed."""

    def __init__(self, quality: int = 95, cache: int = 64) -> None:
        self.quality = int(quality)
        self._bases: OrderedDict[Hashable, tuple[bytes, list[bytes], int]] = OrderedDict()
        self._cache = cache

    def params(self, width: int) -> list[int]:
        return [
            cv2.IMWRITE_JPEG_QUALITY, self.quality,
            cv2.IMWRITE_JPEG_OPTIMIZE, 0,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
            cv2.IMWRITE_JPEG_RST_INTERVAL, -(-width // MCU),
        ]

    def encode_full(self, rgb: np.ndarray) -> bytes:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, self.params(bgr.shape[1]))
        if not ok:
            raise JpegError(f"OpenCV could not encode a {bgr.shape} image as JPEG")
        return buf.tobytes()

    def _base(self, key: Hashable, base_rgb: np.ndarray) -> tuple[bytes, list[bytes], int]:
        hit = self._bases.get(key)
        if hit is None:
            rows = -(-base_rgb.shape[0] // MCU)
            header, segments = _split(self.encode_full(base_rgb), rows)
            hit = self._bases[key] = (header, segments, rows)
            if len(self._bases) > self._cache:
                self._bases.popitem(last=False)
        else:
            self._bases.move_to_end(key)
        return hit

    @staticmethod
    def band(y0: int, y1: int, height: int) -> tuple[int, int]:
        """Pixel rows (top, bottom) of the whole MCU rows that hold rows ``y0:y1``."""
        if y1 <= y0:
            return 0, 0
        return (y0 // MCU) * MCU, min(height, -(-y1 // MCU) * MCU)

    def encode_band(self, band_rgb: np.ndarray, top: int, base_key: Hashable, base_rgb: np.ndarray) -> bytes:
        """JPEG of ``base_rgb`` with rows ``top:top + len(band_rgb)`` replaced by ``band_rgb``.

        ``top`` and the band's height come from :meth:`band` (whole MCU rows, or
        down to the image's bottom edge); ``base_key`` names the base image.
        """
        header, segments, rows = self._base(base_key, base_rgb)
        if len(band_rgb) == 0:
            return _join(header, segments)
        r0 = top // MCU
        r1 = min(rows, r0 + -(-len(band_rgb) // MCU))
        _band_header, band_segments = _split(self.encode_full(band_rgb), r1 - r0)
        return _join(header, segments[:r0] + band_segments + segments[r1:])

    def encode(self, rgb: np.ndarray, base_key: Hashable, base_rgb: np.ndarray, y0: int, y1: int) -> bytes:
        """JPEG of ``rgb``, which equals ``base_rgb`` outside rows ``y0:y1`` (``base_key`` names the base)."""
        top, bottom = self.band(y0, y1, rgb.shape[0])
        return self.encode_band(rgb[top:bottom], top, base_key, base_rgb)
