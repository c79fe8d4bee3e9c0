"""Depth ground truth for photos: stated geometry, local depth models, and their alignment to the scene.

Nothing is downloaded: the transformers models are tiny, randomly initialised
ones built from their config classes and saved to ``tmp_path``; the torch.hub
model is a ``hubconf.py`` written here. Every expected value comes from an
independent computation: the model called directly through transformers,
``np.linalg.lstsq`` for the fits, the geometry's formula for the ground, and
synthetic cases whose true scale and shift are known.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from losslab.core.cli.data_commands import data_app
from losslab.core.data.compositor import Compositor
from losslab.core.data.datasets import VirtualSamples
from losslab.core.data.generate import GenerationError, GenerationPlan, InputSpec, generate
from losslab.core.data.generate.resume import merge_records
from losslab.core.data.geometry import GeometryUnknown, SceneGeometry
from losslab.core.data.readers import open_dataset
from losslab.core.data.scene_files import fitted_anchors, read_sidecar
from losslab.core.data.sources import FolderSources, SourceError, SyntheticSources
from losslab.plugins.depth_alignment import AlignmentError, align, fit_scale_shift, ground_target, to_metres
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import AlphaMask, GroundPlaneDepth, LayerDepth, ModelDepth

transformers = pytest.importorskip("transformers")
runner = CliRunner()
SIZE = 64


def invoke(*args: object):
    return runner.invoke(data_app, [str(a) for a in args])


def _spread(model: torch.nn.Module) -> None:
    """Random weights with a unit gain, so a random network's output varies over the image (HF's init is tiny)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))


def save_tiny_depth_anything(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                             image: int = 56) -> Path:
    """A Depth Anything (V2 layout) with a tiny DINOv2 backbone (~84k parameters), saved like a hub download."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=2 * hidden, patch_size=14, image_size=image,
                            out_features=["stage1", f"stage{layers}"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=[16, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, reassemble_factors=[1, 0.5],
                                 patch_size=14, depth_estimation_type="relative")
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    _spread(model)
    with torch.no_grad():
        model.head.conv3.bias.fill_(1.0)  # keep the final ReLU mostly open
    model.save_pretrained(folder)
    with warnings.catch_warnings():  # without torchvision, transformers 5 says it falls back to its PIL processor
        warnings.simplefilter("ignore")
        DPTImageProcessor(size={"height": image, "width": image}, keep_aspect_ratio=True, ensure_multiple_of=14,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def save_tiny_glpn(folder: Path) -> Path:
    """A tiny GLPN (a metric depth model), with its image processor."""
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor

    config = GLPNConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 8, 8],
                        num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=8,
                        max_depth=10)
    torch.manual_seed(0)
    GLPNForDepthEstimation(config).eval().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GLPNImageProcessor(size_divisor=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_da(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_depth_anything(tmp_path_factory.mktemp("depth-anything-tiny"))


def _direct(folder: Path, images: list[np.ndarray]) -> np.ndarray:
    """The reference: the transformers model and processor called by hand, bicubic back to the image size."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).eval()
    out = []
    for img in images:
        with torch.no_grad():
            y = model(**processor(images=img, return_tensors="pt")).predicted_depth
        y = torch.nn.functional.interpolate(y[:, None], size=img.shape[:2], mode="bicubic", align_corners=False)
        out.append(y[0, 0].double().numpy())
    return np.stack(out)


def _photos(root: Path, shapes: list[tuple[int, int]], seed: int = 0) -> tuple[Path, Path]:
    """bg photos of the given (h, w) (textured, a ground-like gradient) and two RGBA fgs."""
    rng = np.random.default_rng(seed)
    bg_dir, fg_dir = root / "photos", root / "fgs"
    bg_dir.mkdir(parents=True)
    fg_dir.mkdir(parents=True)
    for i, (h, w) in enumerate(shapes):
        grad = np.linspace(40, 220, h)[:, None, None] * np.ones((1, w, 3))
        img = np.clip(grad + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(bg_dir / f"p{i}.png"), img)
    for j in range(2):
        rgba = np.zeros((30, 20, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 255, 3)
        alpha = np.zeros((30, 20), np.uint8)
        cv2.ellipse(alpha, (10, 15), (9, 14), 0, 0, 360, 255, -1)
        rgba[..., 3] = alpha
        Image.fromarray(rgba, mode="RGBA").save(fg_dir / f"f{j}.png")
    return bg_dir, fg_dir


def _sidecar(bg_dir: Path, name: str, **content: object) -> None:
    (bg_dir / f"{name}.geometry.json").write_text(json.dumps(content))


# -- 1. photos never get an invented geometry ----------------------------------------------------------


def test_photos_without_geometry_are_refused_with_the_choices(tmp_path: Path) -> None:
    bg_dir, fg_dir = _photos(tmp_path, [(64, 64), (64, 80)])
    sources = FolderSources(bg_dir, fg_dir, size=SIZE)
    with pytest.raises(GeometryUnknown, match=r"p0\.png: the photo's geometry is unknown"):
        sources.geometry(0)
    for depth, params in (("ground-plane", ()), ("ground-plane", ("--depth-param", "horizon=0.4")),
                          ("layers", ())):
        result = invoke("generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--image-size", SIZE,
                        "--out", tmp_path / f"ds-{depth}-{len(params)}", "--no-progress", "--depth", depth, *params)
        assert result.exit_code == 1, result.output
        text = " ".join(result.output.split())
        assert "2 of 2 bg(s) are photos" in text, text
        assert "--depth model --depth-param path=DIR" in text, text
        if depth == "ground-plane":
            assert "horizon=0.45 --depth-param camera_height=1.6" in text and "p0.geometry.json" in text, text
        else:
            assert "background=METRES" in text, text
    assert not (tmp_path / "ds-ground-plane-0").exists() or not any((tmp_path / "ds-ground-plane-0").iterdir())


def test_stated_geometry_in_params_or_sidecars_is_used(tmp_path: Path) -> None:
    bg_dir, fg_dir = _photos(tmp_path, [(64, 64), (100, 60)])  # p1 is portrait: its centre square is cropped
    _sidecar(bg_dir, "p1", horizon=0.4, camera_height=2.0, focal=0.9, far=40)
    sources = FolderSources(bg_dir, fg_dir, size=SIZE)
    geo = sources.geometry(1)
    # the photo's horizon row 0.4 * 100 = 40 lies 20 rows into the crop (rows 20..79), of 60: 1/3
    assert geo.horizon == pytest.approx((0.4 * 100 - 20) / 60)
    assert geo.focal == pytest.approx(0.9 * 100 / 60) and geo.camera_height == 2.0 and geo.far == 40
    with pytest.raises(GeometryUnknown):
        sources.geometry(0)
    gp = GroundPlaneDepth()
    with pytest.raises(ValueError, match=r"1 of 2 bg\(s\) are photos"):
        gp.check_sources(sources, [0, 1])
    gp.check_sources(sources, [1])
    stated = GroundPlaneDepth(horizon=0.5, camera_height=1.5)
    stated.check_sources(sources, [0, 1])
    assert stated.geometry(sources, 0) == SceneGeometry(horizon=0.5, camera_height=1.5)
    assert stated.geometry(sources, 1).focal == pytest.approx(0.9 * 100 / 60)  # the sidecar's, params on top
    LayerDepth(background=30.0).check_sources(sources, [0, 1])
    out = tmp_path / "ds"
    result = invoke("generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--image-size", SIZE, "--out", out,
                    "--no-progress", "--depth-param", "horizon=0.5", "--depth-param", "camera_height=1.5",
                    "--workers", 1)
    assert result.exit_code == 0, result.output
    depth = open_dataset(out).get([0])["depth"][0]
    bottom = SceneGeometry(horizon=0.5, camera_height=1.5).ground_depth_at(SIZE - 1, SIZE)
    assert depth[-1, 0] == pytest.approx(bottom, abs=1e-3)


def test_sidecar_errors_and_anchor_frames(tmp_path: Path) -> None:
    bg_dir, fg_dir = _photos(tmp_path, [(100, 60), (64, 64)])
    _sidecar(bg_dir, "p1", horizon=1.5)
    sources = FolderSources(bg_dir, fg_dir, size=SIZE)
    check = sources.check()
    assert check.bg_ids == [0] and "'horizon' must be in (0, 1), got 1.5" in check.skipped[0].message
    (bg_dir / "p1.geometry.json").unlink()
    os.mkfifo(bg_dir / "p1.geometry.json")  # would block a plain open forever
    check = FolderSources(bg_dir, fg_dir, size=SIZE).check()
    assert check.bg_ids == [0] and "is a FIFO (named pipe), not a regular file" in check.skipped[0].message
    (bg_dir / "p1.geometry.json").unlink()
    _sidecar(bg_dir, "p1", horizon=0.5, colour="red")
    with pytest.raises(SourceError, match=r"unknown key\(s\) \['colour'\]"):
        FolderSources(bg_dir, fg_dir, size=SIZE).geometry(1)
    _sidecar(bg_dir, "p0", anchors=[[30, 50, 3.0], {"x": 10, "y": 5, "depth": 9.0}])
    notes = read_sidecar(bg_dir / "p0.png")
    assert notes is not None
    a = fitted_anchors(notes, 100, 60, SIZE, "crop")
    # photo (x=30, y=50) -> crop rows 20..79: (30.5 / 60, 30.5 / 60); (10, 5) lies above the crop and is dropped
    np.testing.assert_allclose(a, [[30.5 / 60, 30.5 / 60, 3.0]])
    np.testing.assert_allclose(FolderSources(bg_dir, fg_dir, size=SIZE).anchors(0), a)


# -- 3. the alignment --------------------------------------------------------------------------------------


def test_alignment_recovers_a_known_scale_and_shift_on_the_ground() -> None:
    geo = SceneGeometry(horizon=0.35, camera_height=1.4, far=60.0)
    depth, mask = ground_target(geo, 48, 40)
    s_true, t_true = 0.037, 0.0125
    pred = (1.0 / depth - t_true) / s_true  # what a relative model would say, up to its scale and shift
    pred[~mask] = np.random.default_rng(0).uniform(-5, 5, (~mask).sum())  # sky: not used by the fit
    fit = align(pred, depth, mask, "inverse", "ground")
    assert fit.scale == pytest.approx(s_true, rel=1e-6) and fit.shift == pytest.approx(t_true, rel=1e-6)
    assert fit.rmse < 1e-6 and fit.abs_rel < 1e-6 and fit.points == mask.sum()  # float32 depth map
    metres = to_metres(pred, fit.scale, fit.shift, "inverse", 0.0, 65.535)
    np.testing.assert_allclose(metres[mask], depth[mask], rtol=1e-5)


def test_fit_matches_numpy_least_squares_on_noisy_data() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 3, 500)
    y = 2.5 * p - 0.7 + rng.normal(0, 0.1, 500)
    mask = rng.random(500) < 0.6
    s, t = fit_scale_shift(p, y, mask)
    (s_ref, t_ref), *_ = np.linalg.lstsq(np.stack([p[mask], np.ones(mask.sum())], 1), y[mask], rcond=None)
    assert s == pytest.approx(s_ref, rel=1e-10) and t == pytest.approx(t_ref, rel=1e-10)
    with pytest.raises(AlignmentError, match="constant"):
        fit_scale_shift(np.ones(10), y[:10])
    with pytest.raises(AlignmentError, match="at least 2"):
        fit_scale_shift(p[:1], y[:1])


def test_per_sample_records_merge_by_weight() -> None:
    rows = [
        {"bg": 0, "per": "sample", "fits": 2, "points": 10, "scale": 1.0, "shift": 0.0, "rmse": 0.1, "abs_rel": 0.1,
         "abs_rel_max": 0.2, "method": "ground"},
        {"bg": 0, "per": "sample", "fits": 6, "points": 30, "scale": 3.0, "shift": 1.0, "rmse": 0.3, "abs_rel": 0.3,
         "abs_rel_max": 0.5, "method": "ground"},
        {"bg": 1, "per": "bg", "fits": 1, "points": 5, "scale": 2.0, "shift": 0.0, "rmse": 0.0, "abs_rel": 0.0,
         "abs_rel_max": 0.0, "method": "anchors"},
    ]
    merged = merge_records([*rows, rows[2]])  # a per-bg fit seen in two chunks is kept once
    assert len(merged) == 2 and merged[1] == rows[2]
    assert merged[0]["fits"] == 8 and merged[0]["points"] == 40 and merged[0]["abs_rel_max"] == 0.5
    assert merged[0]["scale"] == pytest.approx((2 * 1.0 + 6 * 3.0) / 8)


# -- 2. loading the models people use ----------------------------------------------------------------------


def test_transformers_model_loads_locally_and_matches_the_direct_call(tiny_da: Path) -> None:
    producer = ModelDepth(str(tiny_da), batch=3)
    net = producer.model()
    assert net.native_output == "inverse" and producer.space() == "inverse"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, SIZE, SIZE, 3), dtype=np.uint8)
    got = producer.run(images)  # batches of 3 and 2
    np.testing.assert_allclose(got, _direct(tiny_da, list(images)), rtol=1e-4, atol=1e-5)
    assert got.std() > 1e-3  # the tiny model's output varies, so the fits below are not degenerate
    n_params = sum(p.numel() for p in net.model.parameters())
    assert 50_000 < n_params < 200_000


def test_transformers_errors_say_what_to_do(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "depth_anything"}')
    with pytest.raises(ValueError, match=r"cannot be loaded as a transformers depth model.*huggingface-cli download"):
        ModelDepth(str(broken)).check()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"without config\.json .* or hubconf\.py"):
        ModelDepth(str(empty)).check()
    with pytest.raises(ValueError, match=r"no model file at .*nowhere.*huggingface-cli download"):
        ModelDepth(str(tmp_path / "nowhere"))


def test_a_metric_transformers_model_is_used_as_metres(tmp_path: Path) -> None:
    folder = save_tiny_glpn(tmp_path / "glpn")
    sources = SyntheticSources(1, 1, size=SIZE)
    producer = ModelDepth(str(folder))
    assert producer.space() == "depth" and producer.method(sources, 0) == "none"
    bg = sources.bg(0)
    depth = producer.bg_depths([0], bg[None], sources)[0]
    np.testing.assert_allclose(depth, np.clip(_direct(folder, [bg])[0], 0, 65.535), rtol=1e-4, atol=1e-4)


HUBCONF = '''
import torch
from torch import nn

dependencies = ["torch"]


def tiny_midas(pretrained=True, width=4):
    """A MiDaS-shaped entry point: a small conv net whose weights come from a URL."""
    net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1), nn.Softplus())
    if pretrained:
        state = torch.hub.load_state_dict_from_url("https://example.invalid/weights/tiny_midas.pt",
                                                   map_location="cpu")
        net.load_state_dict(state)
    return net
'''


def test_torch_hub_model_from_a_local_folder_never_downloads(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1),
                                    torch.nn.Softplus()).eval()
    with pytest.raises(ValueError, match=r"wants the weights tiny_midas\.pt .*never downloads"):
        ModelDepth(str(hub), name="tiny_midas").check()
    (hub / "checkpoints").mkdir()
    torch.save(reference.state_dict(), hub / "checkpoints" / "tiny_midas.pt")
    with pytest.raises(ValueError, match="name its entry point with name="):
        ModelDepth(str(hub)).check()
    sources = SyntheticSources(2, 1, size=SIZE)
    producer = ModelDepth(str(hub), name="tiny_midas", mean=[0.5] * 3, std=[0.25] * 3)
    assert producer.space() == "inverse" and producer.method(sources, 0) == "ground"
    images = np.stack([sources.bg(0), sources.bg(1)])
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = reference(x)[:, 0].double().numpy()
    np.testing.assert_allclose(producer.run(images), expected, rtol=1e-5, atol=1e-6)


# -- 3./4. the full path: photos, alignment, 16-bit PNG, CLI -------------------------------------------


def test_model_depth_is_aligned_to_the_stated_ground(tiny_da: Path) -> None:
    sources = SyntheticSources(2, 2, size=SIZE)  # geometry known: the fit is to the scene's ground plane
    recipes = GridGenerator().recipes([0, 1], [0, 1], (SIZE, SIZE))[::9]
    composed = Compositor(sources).compose_batch(recipes)
    producer = ModelDepth(str(tiny_da))
    depth = producer(composed, recipes, sources)
    for i, recipe in enumerate(recipes):
        raw = _direct(tiny_da, [sources.bg(recipe.bg)])[0]
        geo = sources.geometry(recipe.bg)
        truth, mask = ground_target(geo, SIZE, SIZE)
        design = np.stack([raw[mask], np.ones(mask.sum())], 1)
        (s, t), *_ = np.linalg.lstsq(design, 1.0 / truth[mask], rcond=None)
        y = s * raw + t
        expected = np.clip(np.where(y > 0, 1.0 / np.maximum(y, 1e-300), 65.535), 0, 65.535)
        fg = composed["alpha"][i] >= 0.5
        np.testing.assert_allclose(depth[i][~fg], expected[~fg], rtol=2e-3, atol=2e-3)
    rows = producer.drain_records([0, 1])
    assert [r["bg"] for r in rows] == [0, 1] and all(r["method"] == "ground" and r["rmse_unit"] == "1/m"
                                                     for r in rows)


def test_generate_with_a_transformers_model_on_photos_end_to_end(tmp_path: Path, tiny_da: Path) -> None:
    bg_dir, fg_dir = _photos(tmp_path, [(64, 64), (72, 96), (96, 64)])
    _sidecar(bg_dir, "p0", horizon=0.4, camera_height=1.6)
    _sidecar(bg_dir, "p1", anchors=[[10, 70, 1.5], [50, 40, 6.0], [80, 20, 20.0], [30, 60, 2.5]])
    out = tmp_path / "ds"
    args = ("generate", "--bg-dir", bg_dir, "--fg-dir", fg_dir, "--image-size", SIZE, "--no-progress",
            "--rows", 2, "--cols", 2, "--sizes", "60,50", "--depth", "model", "--depth-param", f"path={tiny_da}")
    result = invoke(*args, "--out", tmp_path / "refused")
    assert result.exit_code == 1 and "1 of 3 bg(s) have none (first:" in " ".join(result.output.split())
    _sidecar(bg_dir, "p2", horizon=0.3, camera_height=1.2, anchors=[[5, 90, 2.0]])  # one anchor: ground fit
    result = invoke(*args, "--out", out, "--workers", 2, "--chunk-size", 7)
    assert result.exit_code == 0, result.output
    samples = open_dataset(out)
    assert len(samples) == 3 * 2 * 2 * 2 * 2
    png = cv2.imread(str(next(out.glob("depth_fgbg_1/*.png"))), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == (SIZE, SIZE)

    sources = FolderSources(bg_dir, fg_dir, size=SIZE)
    recipes = GridGenerator(rows=2, cols=2, sizes=[60, 50]).recipes([0, 1, 2], [0, 1], (SIZE, SIZE))
    virtual = VirtualSamples(sources, recipes, AlphaMask(), ModelDepth(str(tiny_da)))
    stored = samples.get(range(len(samples)))["depth"]
    expected = virtual.get(range(len(recipes)))["depth"]
    # 1 mm steps of the 16-bit PNG; float rounding of batched inference, amplified at far depths (1/d)
    np.testing.assert_allclose(stored, expected, atol=0.0005 + 1e-4, rtol=2e-5)

    meta = json.loads((out / "dataset.json").read_text())
    fits = {row["bg"]: row for row in meta["depth_alignment"]}
    assert {b: r["method"] for b, r in fits.items()} == {0: "ground", 1: "anchors", 2: "ground"}
    assert fits[1]["points"] == 3  # p1 is 96 wide: its centre crop starts at x=12, so (10, 70) is cut away
    result = invoke("stats", out, "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["depth_alignment"]
    assert summary["bgs"] == 3 and summary["methods"] == {"anchors": 1, "ground": 2}
    assert summary["abs_rel_max"] == pytest.approx(max(r["abs_rel_max"] for r in fits.values()))
    table = invoke("stats", out, "--no-progress").output
    assert "depth fit        3 bg (anchors 1, ground 2; per bg): rel. error mean" in table


def test_per_sample_mode_fits_every_fg_bg(tmp_path: Path, tiny_da: Path) -> None:
    out = tmp_path / "ds"
    result = invoke("generate", "--synthetic", 2, 1, "--image-size", SIZE, "--out", out, "--no-progress",
                    "--rows", 1, "--cols", 2, "--sizes", "40", "--depth", "model", "--depth-param", f"path={tiny_da}",
                    "--depth-param", "per_sample=true", "--workers", 1)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "dataset.json").read_text())["depth_alignment"]
    assert [(r["bg"], r["per"], r["fits"]) for r in rows] == [(0, "sample", 4), (1, "sample", 4)]
    samples = open_dataset(out)
    sources = SyntheticSources(2, 1, size=SIZE)
    recipes = GridGenerator(rows=1, cols=2, sizes=[40]).recipes([0, 1], [0], (SIZE, SIZE))
    composed = Compositor(sources).compose_batch(recipes[:1])
    raw = _direct(tiny_da, [composed["fg_bg"][0]])[0]
    truth, mask = ground_target(sources.geometry(0), SIZE, SIZE)
    mask &= composed["alpha"][0] < 0.5  # the pasted fg hides the ground
    (s, t), *_ = np.linalg.lstsq(np.stack([raw[mask], np.ones(mask.sum())], 1), 1.0 / truth[mask], rcond=None)
    expected = np.clip(1.0 / (s * raw + t), 0, 65.535)
    np.testing.assert_allclose(samples.get([0])["depth"][0], expected, atol=0.0005 + 2e-3, rtol=2e-3)


def test_a_plan_without_geometry_fails_before_writing(tmp_path: Path) -> None:
    bg_dir, fg_dir = _photos(tmp_path, [(64, 64)])
    plan = GenerationPlan(InputSpec.folders(bg_dir, fg_dir, image_size=SIZE))
    with pytest.raises(GenerationError, match="photos with no stated geometry"):
        generate(plan, tmp_path / "ds", workers=1, progress=False)
    assert not (tmp_path / "ds").exists()


def test_an_experiment_on_photos_needs_their_geometry_too(tmp_path: Path) -> None:
    from losslab.core.config import DataSpec
    from losslab.core.data.datasets import build_samples
    from losslab.core.plugin.manager import load_catalog

    bg_dir, fg_dir = _photos(tmp_path, [(64, 64), (80, 64)])
    source = {"kind": "folders", "bg_dir": str(bg_dir), "fg_dir": str(fg_dir), "size": SIZE}
    with pytest.raises(ValueError, match=r"(?s)2 of 2 bg\(s\) are photos.*--depth model"):
        build_samples(DataSpec(source=source, image_size=32), load_catalog())
    stated = {"depth": {"name": "ground-plane", "params": {"horizon": 0.5, "camera_height": 1.5}}}
    samples = build_samples(DataSpec(source=source, image_size=32, ground_truth=stated), load_catalog())
    expected = SceneGeometry(horizon=0.5, camera_height=1.5, far=50.0).depth_map(32, 32)
    sample = samples.get([0])
    bg = sample["mask"][0] == 0
    np.testing.assert_allclose(sample["depth"][0][bg], expected[bg], rtol=1e-6)
