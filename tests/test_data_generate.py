"""Generation: the documented layout and names, shards, and the virtual dataset's equality with both.

The reference for every pixel is the lead's compositor and ground-truth
plugins (``VirtualSamples``); file names and depth units are checked against
the documented pattern and ``geometry.py`` worked independently.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from losslab.core.data.batch_compositor import BatchCompositor
from losslab.core.data.compositor import Compositor, fit_fg
from losslab.core.data.datasets import VirtualSamples
from losslab.core.data.generate import GenerationPlan, InputSpec, generate
from losslab.core.data.jpeg import BandEncoder
from losslab.core.data.readers import DatasetError, ShardSamples, dataset_bytes, open_dataset
from losslab.core.data.recipes import Recipe, parse_stem
from losslab.core.data.sources import SyntheticSources
from losslab.plugins.generators import GridGenerator, RandomPlacementGenerator
from losslab.plugins.ground_truth import AlphaMask, DiffMask, GroundPlaneDepth, LayerDepth

N_BG, N_FG = 2, 2


def _generate(out: Path, **plan) -> Path:
    inputs = InputSpec.synthetic(N_BG, N_FG, image_size=plan.pop("image_size", 150))
    report = generate(GenerationPlan(inputs, **plan), out, workers=1, progress=False, log=lambda _m: None)
    assert report.complete and not report.failures
    return out


@pytest.fixture(scope="module")
def seed_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("seed") / "ds", image_format="png")


@pytest.fixture(scope="module")
def seed_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("seedjpg") / "ds")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("shards") / "ds", layout="shards", chunk_size=70)


def _virtual(generator=None, mask=None, depth=None, size: int = 150) -> VirtualSamples:
    generator = generator or GridGenerator()
    recipes = generator.recipes(list(range(N_BG)), list(range(N_FG)), (size, size))
    return VirtualSamples(SyntheticSources(N_BG, N_FG, size=size), recipes, mask or AlphaMask(),
                          depth or GroundPlaneDepth())


def _assert_same(materialized, virtual: VirtualSamples, indices) -> None:
    got, want = materialized.get(indices), virtual.get(indices)
    for key in ("bg", "fg_bg", "mask"):
        assert got[key].dtype == want[key].dtype
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # depth is stored as uint16 millimetres: equal up to the 0.5 mm rounding
    np.testing.assert_allclose(got["depth"], want["depth"], rtol=0, atol=0.0005 + 1e-6)


# -- the seed layout -------------------------------------------------------------------------------------


def test_seed_layout_has_the_documented_folders_and_names(seed_jpg: Path) -> None:
    n = N_BG * N_FG * 2 * 20
    top = sorted(p.name for p in seed_jpg.iterdir())
    # bgs, fgs and folders are numbered from 1, as documented (bg1..bg100, fg_1.., fgbg_1..)
    assert top == ["bg", "dataset.json", "depth_fgbg_1", "depth_fgbg_2", "fgbg_1", "fgbg_2", "manifest.jsonl",
                   "mask_fgbg_1", "mask_fgbg_2", "recipes.npy"]
    names = sorted(p.name for k in range(1, N_BG + 1) for p in (seed_jpg / f"fgbg_{k}").iterdir())
    assert len(names) == n
    pattern = re.compile(r"^bg([12])_([0-3])_([0-4])_(flip_)?fg_([12])\.jpg$")
    assert all(pattern.match(name) for name in names)
    assert "bg1_0_2_fg_2.jpg" in names and "bg2_3_4_flip_fg_1.jpg" in names
    for k in range(1, N_BG + 1):
        for image in (seed_jpg / f"fgbg_{k}").iterdir():
            assert parse_stem(image.stem)["bg"] == k  # K is the bg's number: one folder per bg
            assert (seed_jpg / f"mask_fgbg_{k}" / f"mask_{image.stem}.png").is_file()
            assert (seed_jpg / f"depth_fgbg_{k}" / f"depth_{image.stem}.png").is_file()
    assert sorted(p.name for p in (seed_jpg / "bg").iterdir()) == ["bg_1.jpg", "bg_2.jpg"]


def test_manifest_lists_every_sample_with_its_recipe(seed_jpg: Path) -> None:
    rows = [json.loads(line) for line in (seed_jpg / "manifest.jsonl").read_text().splitlines()]
    expected = GridGenerator().recipes(list(range(N_BG)), list(range(N_FG)), (150, 150))
    assert [row["index"] for row in rows] == list(range(len(expected)))
    assert [Recipe.from_dict(row) for row in rows] == expected
    assert all(row["name"] == Recipe.from_dict(row).stem for row in rows)
    table = np.load(seed_jpg / "recipes.npy")  # the same recipes, as an array that loads at once
    assert table.tolist() == [[row[f] for f in ("bg", "fg", "flip", "row", "col", "x", "y", "size")] for row in rows]
    meta = json.loads((seed_jpg / "dataset.json").read_text())
    assert meta["layout"] == "seed" and meta["count"] == len(rows) and meta["depth_format"] == "png16"


def test_depth_png_is_16_bit_millimetres_of_the_scene_geometry(seed_jpg: Path) -> None:
    sources = SyntheticSources(N_BG, N_FG)
    stem = "bg2_2_3_flip_fg_1"  # bg index 1, fg index 0
    depth = cv2.imread(str(seed_jpg / "depth_fgbg_2" / f"depth_{stem}.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(seed_jpg / "mask_fgbg_2" / f"mask_{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (150, 150)
    assert set(np.unique(mask)) == {0, 255}
    geo = sources.geometry(1)
    # an independent worked value: the ground at row y lies at camera_height * f / (y + 0.5 - horizon) metres
    y = 140
    expected_mm = round(1000 * min(geo.camera_height * 150 / (y + 0.5 - 50), geo.wall_depth or geo.far))
    bg_cols = np.flatnonzero(mask[y] == 0)
    assert np.all(depth[y, bg_cols] == expected_mm)
    # the fg stands on its base row: one depth over the whole fg, that of the ground there
    fg = mask == 255
    recipe = next(r for r in GridGenerator().recipes([1], [0], (150, 150)) if r.stem == stem)
    assert np.unique(depth[fg]).tolist() == [round(1000 * geo.ground_depth_at(recipe.base_y - 1, 150))]


def test_jpg8_depth_keeps_the_documented_8_bit_jpeg_at_a_fixed_scale(tmp_path: Path) -> None:
    out = _generate(tmp_path / "ds", depth_format="jpg8", depth_max=50.0, image_size=64)
    depth = cv2.imread(str(out / "depth_fgbg_1" / "depth_bg1_0_0_fg_1.jpg"), cv2.IMREAD_GRAYSCALE)
    want = _virtual(size=64).get([0])["depth"][0]
    error = np.abs(depth.astype(float) - want * 255 / 50)  # v = 255 * depth / depth_max, never stretched
    assert np.median(error) <= 1 and np.percentile(error, 95) <= 4  # JPEG's loss, larger at the fg's edge
    got = open_dataset(out).get([0])["depth"][0]
    assert np.median(np.abs(got - want)) <= 50 / 255


# -- the virtual dataset equals the lossless materializations --------------------------------------------


def test_virtual_dataset_gives_the_same_pixels_as_seed_png(seed_png: Path) -> None:
    samples = open_dataset(seed_png)
    assert len(samples) == N_BG * N_FG * 40
    _assert_same(samples, _virtual(), range(len(samples)))


def test_virtual_dataset_gives_the_same_pixels_as_shards(shards: Path) -> None:
    samples = open_dataset(shards)
    assert isinstance(samples, ShardSamples) and len(samples) == N_BG * N_FG * 40
    assert len(list((shards / "shards").iterdir())) == 3  # 160 samples in shards of 70: few large files
    _assert_same(samples, _virtual(), [5, 150, 0, 69, 70, 159])
    _assert_same(samples, _virtual(), range(len(samples)))
    assert isinstance(samples.shards[0].pixels, np.memmap)  # read in place, nothing extracted


def test_shards_store_each_fg_box_once_and_only_its_blended_pixels_per_sample(shards: Path) -> None:
    """Per sample, only the pixels where the fitted fg is partly transparent carry their own colours."""
    sources = SyntheticSources(N_BG, N_FG)
    with np.load(shards / "shards" / "shard_000000.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    n = len(arrays["recipes"])
    assert int(arrays["format"]) == 2
    # one stamp per (fg, flip, size) in this shard: the grid's five columns of a row share it
    keys = {(int(r[1]), int(r[2]), int(r[7])) for r in arrays["recipes"]}
    assert len(arrays["stamp_offsets"]) - 1 == len(keys) < n
    assert len(arrays["truth_offsets"]) - 1 < n  # equal mask and depth patches stored once
    for slot in (0, 7, 33, n - 1):
        _bg, fg, flip, _row, _col, x, y, size = (int(v) for v in arrays["recipes"][slot])
        _premult, alpha = fit_fg(sources.fg(fg), size, bool(flip))
        soft = int(np.count_nonzero((alpha > 0) & (alpha < 1)))  # the box lies inside the 150 px image here
        stored = int(arrays["value_offsets"][slot + 1] - arrays["value_offsets"][slot])
        assert stored == 3 * soft
        h, w = alpha.shape
        assert tuple(arrays["boxes"][slot]) == (y + size - h, x + (size - w) // 2, h, w)
    raw = sum(int(b[2] * b[3]) * 3 for b in arrays["boxes"])  # fg_bg of every box, as format 1 stored it
    assert arrays["value_offsets"][-1] - arrays["value_offsets"][0] < raw / 5


def test_shards_of_the_first_format_are_refused_with_the_fix(tmp_path: Path, shards: Path) -> None:
    out = tmp_path / "old"
    (out / "shards").mkdir(parents=True)
    (out / "dataset.json").write_text((shards / "dataset.json").read_text().replace('"chunks": 3', '"chunks": 1'))
    with np.load(shards / "shards" / "shard_000000.npz") as npz:
        kept = {name: npz[name] for name in ("recipes", "bg_ids", "bg", "depth_ref", "pixels")}
    np.savez(out / "shards" / "shard_000000.npz", offsets=np.zeros(71, np.int64), rects=np.zeros((70, 4)), **kept)
    with pytest.raises(DatasetError, match="shard format 1, this losslab reads format 2; regenerate"):
        open_dataset(out)


def test_virtual_matches_other_generators_and_ground_truth(tmp_path: Path) -> None:
    """Random placement, the diff mask and layer depth too (no cache keys on that path)."""
    generator = RandomPlacementGenerator(per_pair=4)
    for layout in ("shards", "seed"):
        out = _generate(tmp_path / layout, layout=layout, image_format="png" if layout == "seed" else "jpg",
                        generator="random", generator_params={"per_pair": 4}, mask="diff", depth="layers",
                        image_size=96)
        samples = open_dataset(out)
        _assert_same(samples, _virtual(generator, DiffMask(), LayerDepth(), size=96), range(len(samples)))
    names = {p.name for p in (tmp_path / "seed" / "fgbg_1").iterdir()}
    assert all(re.match(r"^bg1_x\d+_y\d+_s\d+_(flip_)?fg_\d\.png$", name) for name in names)


def test_seed_jpeg_decodes_to_a_plain_quality_95_encode(seed_jpg: Path) -> None:
    samples, virtual = open_dataset(seed_jpg), _virtual()
    indices = [0, 33, 77, 159]
    got, want = samples.get(indices)["fg_bg"], virtual.get(indices)["fg_bg"]
    for g, w in zip(got, want, strict=True):
        _ok, plain = cv2.imencode(".jpg", cv2.cvtColor(w, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.testing.assert_array_equal(g, cv2.cvtColor(cv2.imdecode(plain, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))


# -- options ---------------------------------------------------------------------------------------------


def test_grid_and_image_size_are_configurable(tmp_path: Path) -> None:
    out = _generate(tmp_path / "ds", generator_params={"rows": 2, "cols": 3, "sizes": [60, 40]}, image_size=96)
    samples = open_dataset(out)
    assert len(samples) == N_BG * N_FG * 2 * 2 * 3
    assert samples.get([0])["fg_bg"].shape == (1, 96, 96, 3)
    assert set(np.unique(samples.recipes[:, 7])) == {round(60 * 96 / 150), round(40 * 96 / 150)}


def test_workers_and_chunking_do_not_change_a_byte(tmp_path: Path, seed_jpg: Path) -> None:
    out = tmp_path / "ds"
    report = generate(GenerationPlan(InputSpec.synthetic(N_BG, N_FG), chunk_size=50), out, workers=2,
                      progress=False, log=lambda _m: None)
    assert report.complete
    for rel in ("fgbg_2/bg2_3_4_flip_fg_2.jpg", "mask_fgbg_1/mask_bg1_1_2_fg_2.png", "bg/bg_2.jpg",
                "depth_fgbg_2/depth_bg2_0_0_flip_fg_1.png", "manifest.jsonl"):
        assert (out / rel).read_bytes() == (seed_jpg / rel).read_bytes(), rel


def test_identical_ground_truth_files_are_hard_links(tmp_path: Path) -> None:
    """A mask from alpha does not depend on the bg: one placement's masks on every bg share one file."""
    linked = _generate(tmp_path / "links", image_size=64)
    a, b = linked / "mask_fgbg_1" / "mask_bg1_1_1_fg_1.png", linked / "mask_fgbg_2" / "mask_bg2_1_1_fg_1.png"
    assert os.path.samefile(a, b)
    copies = _generate(tmp_path / "copies", image_size=64, links=False)
    c, d = copies / "mask_fgbg_1" / "mask_bg1_1_1_fg_1.png", copies / "mask_fgbg_2" / "mask_bg2_1_1_fg_1.png"
    assert not os.path.samefile(c, d) and c.read_bytes() == d.read_bytes() == a.read_bytes()
    assert dataset_bytes(linked) < dataset_bytes(copies)  # a linked file is counted once


# -- the fast paths equal the reference implementations ---------------------------------------------------


def test_batch_compositor_matches_the_reference_byte_for_byte() -> None:
    sources = SyntheticSources(3, 4, size=96)
    recipes = GridGenerator().recipes(range(3), range(4), (96, 96))
    recipes += RandomPlacementGenerator(per_pair=3, max_size=120).recipes(range(3), range(4), (96, 96))
    recipes += [Recipe(0, 1, True, -1, -1, -30, -20, 60), Recipe(1, 2, False, -1, -1, 80, 70, 50),
                Recipe(2, 3, False, -1, -1, 200, 0, 40)]  # clipped at the borders, and wholly outside
    want = Compositor(sources).compose_batch(recipes)
    fast = BatchCompositor(sources)
    got = fast.compose_batch(recipes)
    for key in ("bg", "fg_bg", "alpha"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for i, (rect, patch) in enumerate(fast.patches(recipes)):
        y0, x0, h, w = rect
        np.testing.assert_array_equal(patch, want["fg_bg"][i, y0 : y0 + h, x0 : x0 + w])
        outside = want["fg_bg"][i].copy()
        outside[y0 : y0 + h, x0 : x0 + w] = want["bg"][i, y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_array_equal(outside, want["bg"][i])  # nothing changes outside the box


@pytest.mark.parametrize("size", [150, 64, 33])
def test_band_jpeg_is_the_full_encode_byte_for_byte(size: int) -> None:
    sources = SyntheticSources(2, 2, size=size)
    recipes = GridGenerator().recipes([0, 1], [0, 1], (size, size))[::3]
    composed = BatchCompositor(sources).compose_batch(recipes)
    encoder = BandEncoder(95)
    for i, recipe in enumerate(recipes):
        y0, _x0, h, _w = composed["rects"][i]
        band = encoder.encode(composed["fg_bg"][i], recipe.bg, composed["bg"][i], int(y0), int(y0 + h))
        assert band == encoder.encode_full(composed["fg_bg"][i])
