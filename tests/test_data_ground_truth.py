"""Ground truth: the documented diff mask's failure modes, the model depth, and cache keys.

The diff mask is checked on a hand-made 1 x 4 image whose every pixel is
worked out below; the model depth against a tiny network whose output the
test computes itself (a 1x1 convolution that returns the gray level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from losslab.core.data.compositor import Compositor
from losslab.core.data.geometry import SceneGeometry
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import SyntheticSources
from losslab.plugins.generators import GridGenerator, RandomPlacementGenerator
from losslab.plugins.ground_truth import AlphaMask, DiffMask, GroundPlaneDepth, LayerDepth, ModelDepth


def _hand_made() -> dict[str, np.ndarray]:
    """One bg row of four gray pixels (100, 100, 100) and what the compositor would make of four cases.

    0: fg pixel, opaque, red (200, 0, 0)                -> diff (100, 156, 156): marked, rightly
    1: fg pixel, opaque, the bg's own colour            -> diff 0: missed (equal colour)
    2: bg pixel under a faint edge (alpha 0.01), 1 darker -> 99 - 100 wraps to 255: marked, wrongly
    3: bg pixel under a faint edge, 1 brighter          -> diff (1, 0, 0), gray 0: not marked
    """
    bg = np.full((1, 1, 4, 3), 100, np.uint8)
    fg_bg = bg.copy()
    fg_bg[0, 0, 0] = (200, 0, 0)
    fg_bg[0, 0, 2] = (99, 100, 100)
    fg_bg[0, 0, 3] = (101, 100, 100)
    alpha = np.array([[[1.0, 1.0, 0.01, 0.01]]], np.float32)
    return {"bg": bg, "fg_bg": fg_bg, "alpha": alpha}


def test_diff_mask_misses_equal_colours_and_wraps_around() -> None:
    composed = _hand_made()
    recipes = [Recipe(0, 0, False, 0, 0, 0, 0, 4)]
    diff = DiffMask()(composed, recipes, None)
    alpha = AlphaMask()(composed, recipes, None)
    np.testing.assert_array_equal(alpha[0, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(diff[0, 0], [1, 0, 1, 0])
    # the wrap-around: uint8 99 - 100 is 255, whose gray (0.299 * 255) is 76, far above the threshold
    assert (composed["fg_bg"][0, 0, 2] - composed["bg"][0, 0, 2])[0] == 255


def test_diff_mask_disagrees_with_alpha_on_real_composites() -> None:
    """On composited samples the two masks differ (the label noise a study can measure), never wildly."""
    sources = SyntheticSources(2, 2, size=96)
    recipes = GridGenerator().recipes([0, 1], [0, 1], (96, 96))
    composed = Compositor(sources).compose_batch(recipes)
    alpha = AlphaMask()(composed, recipes, sources)
    diff = DiffMask()(composed, recipes, sources)
    disagree = (alpha != diff).mean()
    assert 0 < disagree < 0.05


def test_ground_plane_cache_key_means_same_output() -> None:
    """Recipes with equal keys get equal depth and masks, across bgs of one geometry (the writers rely on it)."""
    geometry = SceneGeometry()

    class SameGeometry(SyntheticSources):
        def geometry(self, index: int) -> SceneGeometry:
            return geometry

    sources = SameGeometry(3, 2, size=64)
    recipes = GridGenerator().recipes([0, 1, 2], [0, 1], (64, 64)) + RandomPlacementGenerator(per_pair=3).recipes(
        [0, 1, 2], [0, 1], (64, 64)
    )
    composed = Compositor(sources).compose_batch(recipes)
    for producer in (AlphaMask(), GroundPlaneDepth(), LayerDepth()):
        out = producer(composed, recipes, sources)
        by_key: dict = {}
        for i, recipe in enumerate(recipes):
            by_key.setdefault(producer.cache_key(recipe, sources), []).append(i)
        assert any(len(group) == 3 for group in by_key.values())  # one placement on three bgs
        for group in by_key.values():
            for i in group[1:]:
                np.testing.assert_array_equal(out[i], out[group[0]])
    assert not hasattr(DiffMask(), "cache_key")  # it reads the bg's pixels: never cached


# -- the model depth -------------------------------------------------------------------------------------


def _gray_net() -> nn.Module:
    net = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0 / 3.0)
    return net.eval()


@pytest.fixture
def gray_model(tmp_path: Path) -> Path:
    path = tmp_path / "gray.pt"
    torch.jit.script(_gray_net()).save(str(path))
    return path


@pytest.fixture
def samples() -> tuple[dict[str, np.ndarray], list[Recipe], SyntheticSources]:
    sources = SyntheticSources(2, 2, size=64)
    recipes = GridGenerator().recipes([0, 1], [0, 1], (64, 64))[::7]
    return Compositor(sources).compose_batch(recipes), recipes, sources


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(axis=-1) / 255.0


def test_model_depth_runs_once_per_bg_and_stands_the_fg_on_the_ground(gray_model, samples) -> None:
    composed, recipes, sources = samples
    depth = ModelDepth(str(gray_model), scale=10.0, shift=0.5)(composed, recipes, sources)
    for i in range(len(recipes)):
        bg_depth = 10.0 * _gray(composed["bg"][i]) + 0.5
        fg = composed["alpha"][i] >= 0.5
        np.testing.assert_allclose(depth[i][~fg], bg_depth[~fg], atol=1e-4)
        foot = np.flatnonzero(fg.any(axis=1))[-1]
        ground = np.median(bg_depth[foot, fg[foot]])
        np.testing.assert_allclose(depth[i][fg], ground, atol=1e-4)


def test_model_depth_per_sample_and_inverse_output(gray_model, samples) -> None:
    composed, recipes, sources = samples
    per_sample = ModelDepth(str(gray_model), scale=10.0, per_sample=True)(composed, recipes, sources)
    for i in range(len(recipes)):
        np.testing.assert_allclose(per_sample[i], 10.0 * _gray(composed["fg_bg"][i]), atol=1e-4)
    inverse = ModelDepth(str(gray_model), output="inverse", scale=2.0, shift=0.1, max_depth=8.0, per_sample=True)
    got = inverse(composed, recipes, sources)
    expected = np.clip(1.0 / (2.0 * _gray(composed["fg_bg"][0]) + 0.1), 0.0, 8.0)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)


def test_model_depth_from_a_state_dict_and_a_registered_architecture(tmp_path: Path, samples) -> None:
    from losslab.plugins.architectures import UNet

    composed, recipes, sources = samples
    torch.manual_seed(0)
    net = UNet(base_channels=4, depth=2).eval()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, path)  # a losslab checkpoint's shape
    producer = ModelDepth(str(path), architecture="unet", arch_params={"base_channels": 4, "depth": 2},
                          scale=50.0, per_sample=True)
    got = producer(composed, recipes[:2], sources)
    x = torch.cat([torch.from_numpy(composed[k][:1]).permute(0, 3, 1, 2).float() / 255 for k in ("bg", "fg_bg")], 1)
    with torch.no_grad():
        expected = (net(x)["depth"][0, 0] * 50.0).clamp(0.0, 65.535).numpy()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)


def test_model_depth_from_an_exported_program(tmp_path: Path, samples) -> None:
    composed, recipes, sources = samples
    dim = torch.export.Dim("side", min=8, max=1024)
    program = torch.export.export(_gray_net(), (torch.zeros(1, 3, 64, 64),), dynamic_shapes=({2: dim, 3: dim},))
    path = tmp_path / "gray.pt2"
    torch.export.save(program, str(path))
    got = ModelDepth(str(path), scale=4.0, per_sample=True)(composed, recipes[:1], sources)
    np.testing.assert_allclose(got[0], 4.0 * _gray(composed["fg_bg"][0]), atol=1e-4)


def test_model_depth_errors_say_what_to_do(tmp_path: Path, gray_model) -> None:
    with pytest.raises(ValueError, match=r"no model file at .*missing\.pt"):
        ModelDepth(str(tmp_path / "missing.pt"))
    state = tmp_path / "state.pt"
    torch.save(_gray_net().state_dict(), state)
    with pytest.raises(ValueError, match=r"not a TorchScript archive.*architecture=<registered name>"):
        ModelDepth(str(state)).model()
    with pytest.raises(ValueError, match="do not fit architecture 'unet'"):
        ModelDepth(str(state), architecture="unet").model()
    with pytest.raises(ValueError, match="unknown architecture 'unett'"):
        ModelDepth(str(state), architecture="unett").model()
    with pytest.raises(ValueError, match="output must be 'depth' or 'inverse'"):
        ModelDepth(str(gray_model), output="disparity")
