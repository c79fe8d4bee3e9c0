"""Bad source files: each is converted in a documented way or refused with a message naming it.

Checks the readers in ``losslab.core.data.sources`` against images written here
with OpenCV and Pillow (an independent encoder), and that one bad file in a
folder never costs the others.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from losslab.core.data.sources import FolderSources, SourceError, fit_background, list_images, read_rgb, read_rgba


def _rgb(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_rgba_png(path: Path, rgba: np.ndarray) -> Path:
    Image.fromarray(rgba, mode="RGBA").save(path)
    return path


def _fg(size: int = 24) -> np.ndarray:
    """An RGBA fg: opaque disc on a transparent square."""
    alpha = np.zeros((size, size), np.uint8)
    cv2.circle(alpha, (size // 2, size // 2), size // 3, 255, -1)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = (200, 40, 90)
    rgba[..., 3] = alpha
    return rgba


# -- single files ----------------------------------------------------------------------------------------


def test_corrupt_and_empty_files_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"corrupt\.jpg: cannot be decoded.*replace or remove"):
        read_rgb(corrupt)
    with pytest.raises(SourceError, match=r"empty\.png: the file is empty \(0 bytes\)"):
        read_rgb(empty)
    with pytest.raises(SourceError, match="empty"):
        read_rgba(empty)


def test_truncated_jpeg_is_refused_or_decoded_whole(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".jpg", _rgb(64, 64))
    assert ok
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.tobytes()[:40])  # only the headers survive
    with pytest.raises(SourceError, match=r"cut\.jpg"):
        read_rgb(path)


def test_a_folder_named_like_an_image_is_reported(tmp_path: Path) -> None:
    (tmp_path / "odd.png").mkdir()
    with pytest.raises(SourceError, match=r"odd\.png: is a folder"):
        read_rgb(tmp_path / "odd.png")


def test_grayscale_bg_becomes_rgb(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgb = read_rgb(tmp_path / "gray.png")
    assert rgb.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_16_bit_images_are_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 257 * 7 + 128]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), np.dstack([values] * 3))
    rgb = read_rgb(tmp_path / "deep.png")
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 255, 7])  # v / 257, rounded (7.498 -> 7)


def test_rgba_bg_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(), np.full((20, 30), 9, np.uint8)])
    _write_rgba_png(tmp_path / "bg.png", rgba)
    np.testing.assert_array_equal(read_rgb(tmp_path / "bg.png"), rgba[..., :3])


def test_fg_without_alpha_is_refused_with_the_fix(tmp_path: Path) -> None:
    Image.fromarray(_rgb(), mode="RGB").save(tmp_path / "flat.png")
    Image.fromarray(_rgb()[..., 0], mode="L").save(tmp_path / "flat_gray.png")
    with pytest.raises(SourceError, match=r"flat\.png: foreground is RGB without an alpha channel.*transparency"):
        read_rgba(tmp_path / "flat.png")
    with pytest.raises(SourceError, match=r"flat_gray\.png: foreground is grayscale without an alpha"):
        read_rgba(tmp_path / "flat_gray.png")


def test_fully_transparent_fg_is_refused(tmp_path: Path) -> None:
    rgba = _fg()
    rgba[..., 3] = 0
    _write_rgba_png(tmp_path / "ghost.png", rgba)
    with pytest.raises(SourceError, match="fully transparent"):
        read_rgba(tmp_path / "ghost.png")


def test_fg_is_cropped_to_its_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[10:25, 7:19] = (1, 2, 3, 255)
    _write_rgba_png(tmp_path / "fg.png", rgba)
    out = read_rgba(tmp_path / "fg.png")
    assert out.shape == (15, 12, 4)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3, 255])


def test_gray_alpha_and_palette_fgs_become_rgba(tmp_path: Path) -> None:
    la = np.dstack([np.full((8, 8), 120, np.uint8), np.full((8, 8), 255, np.uint8)])
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgba(tmp_path / "la.png")[0, 0], [120, 120, 120, 255])

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)  # index 0 is transparent
    palette.save(tmp_path / "pal.png", transparency=0)
    out = read_rgba(tmp_path / "pal.png")
    assert out.shape == (8, 8, 4)
    assert out[0, 0, 3] == 0 and tuple(out[4, 4]) == (10, 200, 30, 255)


def test_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    cv2.imwrite(str(path), np.full((4, 4, 3), 0.5, np.float32))
    with pytest.raises(SourceError, match=r"float\.tiff: unsupported pixel type float32"):
        read_rgb(path)


def test_fit_background_crops_the_centre_square_or_stretches() -> None:
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 20:80] = 255  # the centred 60x60 square is all white
    np.testing.assert_array_equal(fit_background(img, 30, "crop"), np.full((30, 30, 3), 255, np.uint8))
    stretched = fit_background(img, 30, "stretch")
    assert stretched[:, 0].max() == 0 and stretched[:, 15].min() == 255
    with pytest.raises(ValueError, match="crop' or 'stretch"):
        fit_background(img, 30, "squash")


# -- folders ---------------------------------------------------------------------------------------------


def test_unusable_folders_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list_images(tmp_path / "nope", "bg")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="is a file, not a folder"):
        list_images(tmp_path / "file.jpg", "bg")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match="holds no images"):
        list_images(tmp_path / "empty", "fg")

    def denied(self: Path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(SourceError, match=r"cannot be read \(permission denied\); check its permissions"):
        list_images(tmp_path / "empty", "fg")


def test_check_skips_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    bg_dir, fg_dir = tmp_path / "bg", tmp_path / "fg"
    bg_dir.mkdir()
    fg_dir.mkdir()
    cv2.imwrite(str(bg_dir / "a.jpg"), _rgb(150, 150))
    (bg_dir / "b.jpg").write_bytes(b"garbage")
    cv2.imwrite(str(bg_dir / "c.jpg"), _rgb(40, 40))  # smaller than the largest fg box
    _write_rgba_png(fg_dir / "a.png", _fg())
    Image.fromarray(_rgb(), mode="RGB").save(fg_dir / "b.png")  # no alpha
    _write_rgba_png(fg_dir / "c.png", _fg(30))

    sources = FolderSources(bg_dir, fg_dir, size=150)
    check = sources.check(largest_fg=90)
    assert check.bg_ids == [0, 2] and check.fg_ids == [0, 2]  # indices stay those of sorted names
    skipped = [p.path for p in check.skipped]
    assert skipped == [str(bg_dir / "b.jpg"), str(fg_dir / "b.png")]
    assert all("skipped" in p.message for p in check.skipped)
    (warning,) = check.warnings
    assert warning.path == str(bg_dir / "c.jpg")
    assert "40x40 px, smaller than the largest fg box (90 px" in warning.message
    assert sources.bg(2).shape == (150, 150, 3)  # the documented conversion: enlarged to the image size
    with pytest.raises(SourceError, match=r"b\.jpg"):
        sources.bg(1)
