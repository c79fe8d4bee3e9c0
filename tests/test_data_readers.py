"""Readers: the original dataset's folders (no manifest, JPEG masks and 8-bit depth) and damaged data.

The original layout is built here by hand, from the virtual dataset's pixels,
the way the documented code wrote it, so the reader is checked against files
it did not write.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from losslab.core.data.datasets import VirtualSamples, split_by_bg
from losslab.core.data.formats import sample_stem
from losslab.core.data.generate import GenerationPlan, InputSpec, generate
from losslab.core.data.readers import DatasetError, OriginalSamples, npz_memmap, open_dataset
from losslab.core.data.sources import SyntheticSources, fit_background, read_rgb
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import AlphaMask, GroundPlaneDepth

SIZE = 64


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _original(root: Path, bg_names: tuple[str, ...] = ("img_1.jpg", "img_2.jpg"), bg_size: int = SIZE,
              base: int = 1):
    """The documented layout: fgbg_K/, mask_fgbg_K/ (JPEG), depth_fgbg_K/ (8-bit JPEG stretched per image).

    Names number bg and fg from ``base``: 1 as documented (``fgbg_1/bg1_0_0_fg_1.jpg`` is bg 0, fg 0),
    0 as earlier losslab versions wrote them.
    """
    recipes = GridGenerator().recipes([0, 1], [0], (SIZE, SIZE))
    sources = SyntheticSources(2, 1, size=SIZE)
    virtual = VirtualSamples(sources, recipes, AlphaMask(), GroundPlaneDepth())
    arrays = virtual.get(range(len(recipes)))
    for i, recipe in enumerate(recipes):
        k, stem = recipe.bg + base, sample_stem(recipe, base)
        _write(root / f"fgbg_{k}" / f"{stem}.jpg", cv2.cvtColor(arrays["fg_bg"][i], cv2.COLOR_RGB2BGR))
        _write(root / f"mask_fgbg_{k}" / f"mask_{stem}.jpg", arrays["mask"][i] * 255)
        d = arrays["depth"][i]
        _write(root / f"depth_fgbg_{k}" / f"depth_{stem}.jpg", np.rint(255 * (d - d.min()) / (d.max() - d.min())))
    for k, name in enumerate(bg_names):
        bg = cv2.resize(sources.bg(k), (bg_size, bg_size), interpolation=cv2.INTER_LINEAR)
        _write(root / "bg_images" / name, cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
    return recipes, arrays


@pytest.mark.parametrize("base", [1, 0])
def test_original_layout_is_read_from_names_without_a_manifest(tmp_path: Path, base: int) -> None:
    names = ("img_1.jpg", "img_2.jpg") if base else ("img_0.jpg", "img_1.jpg")
    recipes, arrays = _original(tmp_path, names, base=base)
    samples = open_dataset(tmp_path)
    assert isinstance(samples, OriginalSamples) and len(samples) == len(recipes) == 80
    order = sorted(range(len(recipes)), key=lambda i: (recipes[i].bg, recipes[i].fg, recipes[i].flip,
                                                        recipes[i].row, recipes[i].col))
    assert [samples.recipe(j) for j in range(len(samples))] == [recipes[i] for i in order]
    np.testing.assert_array_equal(samples.bg_ids(), [recipes[i].bg for i in order])
    j = 37
    got = samples.get([j])
    i = order[j]
    np.testing.assert_array_equal(got["mask"][0], arrays["mask"][i])  # JPEG masks are thresholded back
    k, stem = recipes[i].bg + base, sample_stem(recipes[i], base)
    image = cv2.imread(str(tmp_path / f"fgbg_{k}" / f"{stem}.jpg"))
    np.testing.assert_array_equal(got["fg_bg"][0], cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    depth = cv2.imread(str(tmp_path / f"depth_fgbg_{k}" / f"depth_{stem}.jpg"), 0)
    np.testing.assert_allclose(got["depth"][0], depth / 255 * 50.0, rtol=1e-6)  # unitless: v / 255 * depth_max
    assert got["bg"].shape == (1, SIZE, SIZE, 3) and got["depth"].dtype == np.float32
    train, val = split_by_bg(samples, 0.5)
    assert set(samples.bg_ids()[train]).isdisjoint(samples.bg_ids()[val])


def test_original_bg_index_from_trailing_numbers_or_sorted_order(tmp_path: Path) -> None:
    _original(tmp_path / "numbered", bg_names=("scene_2.jpg", "scene_1.jpg"))
    _original(tmp_path / "named", bg_names=("b.jpg", "a.jpg"), bg_size=2 * SIZE)
    numbered, named = open_dataset(tmp_path / "numbered"), open_dataset(tmp_path / "named")
    assert numbered.bg_ids()[0] == named.bg_ids()[0] == 0
    # trailing numbers name the bg, counted from 1 like the fg_bg names: bg 0 is scene_1.jpg, whatever the order
    np.testing.assert_array_equal(numbered.get([0])["bg"][0], read_rgb(tmp_path / "numbered/bg_images/scene_1.jpg"))
    # no numbers: bg 0 is the first file in sorted order; a larger bg is brought to the samples' size
    expected = fit_background(read_rgb(tmp_path / "named/bg_images/a.jpg"), SIZE)
    np.testing.assert_array_equal(named.get([0])["bg"][0], expected)


def test_original_samples_without_mask_or_valid_name_are_left_out(tmp_path: Path) -> None:
    _original(tmp_path)
    (tmp_path / "mask_fgbg_2" / "mask_bg2_0_0_fg_1.jpg").unlink()
    (tmp_path / "fgbg_1" / "holiday.jpg").write_bytes(b"not a sample")
    samples = open_dataset(tmp_path)
    assert len(samples) == 79
    assert any("bg2_0_0_fg_1.jpg: no mask file" in s for s in samples.skipped)
    assert any("holiday.jpg" in s and "documented pattern" in s for s in samples.skipped)


def test_original_without_bg_folder_says_where_to_put_it(tmp_path: Path) -> None:
    _original(tmp_path)
    (tmp_path / "bg_images").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"stores no bg per sample.*bg, bg_images"):
        open_dataset(tmp_path)
    assert len(open_dataset(tmp_path, bg_dir=tmp_path / "elsewhere")) == 80


def test_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match=r"not a dataset; expected dataset\.json"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such dataset folder"):
        open_dataset(tmp_path / "missing")


def test_damaged_shards_and_files_are_reported(tmp_path: Path) -> None:
    plan = GenerationPlan(InputSpec.synthetic(2, 1, image_size=SIZE), layout="shards", chunk_size=40)
    generate(plan, tmp_path / "shards", workers=1, progress=False, log=lambda _m: None)
    shard = tmp_path / "shards" / "shards" / "shard_000001.npz"
    assert isinstance(npz_memmap(shard, "pixels"), np.memmap)
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"shard_000001\.npz: cannot be read as a shard"):
        open_dataset(tmp_path / "shards")
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, pixels=np.zeros(10, np.uint8))
    assert zipfile.ZipFile(compressed).getinfo("pixels.npy").compress_type == zipfile.ZIP_DEFLATED
    with pytest.raises(DatasetError, match="compressed; shards must be written uncompressed"):
        npz_memmap(compressed, "pixels")

    generate(GenerationPlan(InputSpec.synthetic(1, 1, image_size=SIZE)), tmp_path / "seed", workers=1,
             progress=False, log=lambda _m: None)
    (tmp_path / "seed" / "fgbg_1" / "bg1_2_2_fg_1.jpg").write_bytes(b"")
    samples = open_dataset(tmp_path / "seed")
    index = next(i for i in range(len(samples)) if samples.recipe(i).stem == "bg1_2_2_fg_1")
    with pytest.raises(DatasetError, match=r"bg1_2_2_fg_1\.jpg: cannot be decoded"):
        samples.get([index])
    with pytest.raises(IndexError, match=r"out of range 0\.\.39"):
        samples.get([40])


def test_seed_reader_falls_back_to_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "seed"
    generate(GenerationPlan(InputSpec.synthetic(2, 1, image_size=SIZE)), out, workers=1, progress=False,
             log=lambda _m: None)
    fast = open_dataset(out).recipes
    (out / "recipes.npy").unlink()  # e.g. a dataset edited by hand: the manifest is the reference
    np.testing.assert_array_equal(open_dataset(out).recipes, fast)
