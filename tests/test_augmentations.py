"""Augmentations: geometry shared by images and targets, colour on images only, seeded streams."""

from __future__ import annotations

import pytest
import torch

from losslab.core.compositor import Compositor
from losslab.core.plugin_manager import load_catalog
from losslab.core.sources import SyntheticSources
from losslab.plugins.augmentations import AugmentationError, Geometric, Photometric
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import GroundPlaneDepth

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors on one thread: on a shared 2-core box, spinning OpenMP threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _composited(size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A real batch (synthetic scenes, grid recipes, ground-plane depth) and its compositing alpha."""
    sources = SyntheticSources(n_bg=2, n_fg=4, seed=0, size=size)
    recipes = GridGenerator().recipes([0, 1], [0, 1, 2, 3], (size, size))[::5]
    composed = Compositor(sources).compose_batch(recipes)
    depth = GroundPlaneDepth()(composed, recipes, sources)

    def image(a):
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0

    alpha = torch.from_numpy(composed["alpha"])[:, None]
    batch = {
        "bg": image(composed["bg"]),
        "fg_bg": image(composed["fg_bg"]),
        "mask": (alpha >= 0.5).float(),
        "depth": torch.from_numpy(depth)[:, None].float(),
    }
    return batch, alpha


@pytest.fixture(scope="module")
def scene64():
    return _composited(64)


def _alpha_batch(batch: dict[str, torch.Tensor], alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """The alpha composite of a white fg over a black bg: its fg_bg *is* alpha, warped like an image."""
    return {
        "bg": torch.zeros_like(batch["bg"]),
        "fg_bg": alpha.expand(-1, 3, -1, -1).clone(),
        "mask": batch["mask"],
        "depth": batch["depth"],
    }


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return ((a & b).sum() / (a | b).sum()).item()


STRONG = {"affine_p": 1.0, "degrees": 20.0, "translate": 0.15, "scale": (0.8, 1.2)}


# -- registration and input checks ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["geometric", "photometric"])
def test_registered_and_seeded_through_the_catalog(name, scene64):
    catalog = load_catalog(fresh=True)
    component = catalog.get("augmentation", name)
    assert component.plugin == "losslab.augmentations" and component.summary
    batch, _ = scene64
    a = catalog.create("augmentation", name, seed=7)(batch)
    b = catalog.create("augmentation", name, seed=7)(batch)
    assert set(a) == set(batch)
    for key in batch:
        assert a[key].shape == batch[key].shape and a[key].dtype == batch[key].dtype
        assert a[key].device == batch[key].device and a[key].is_contiguous()
        assert torch.equal(a[key], b[key])


def test_bad_batches_and_params_are_explained(scene64):
    batch, _ = scene64
    with pytest.raises(AugmentationError, match="lacks depth"):
        Geometric()({k: v for k, v in batch.items() if k != "depth"})
    with pytest.raises(AugmentationError, match=r"mask must have shape"):
        Photometric()({**batch, "mask": batch["mask"][:, :, :10]})
    with pytest.raises(AugmentationError, match="float"):
        Geometric()({**batch, "bg": (batch["bg"] * 255).to(torch.uint8)})
    with pytest.raises(AugmentationError, match="padding_mode"):
        Geometric(padding_mode="wrap")
    with pytest.raises(AugmentationError, match="probability"):
        Photometric(jitter_p=1.5)


# -- geometric -----------------------------------------------------------------------------------------


def test_flip_is_exactly_a_flip_of_all_four(scene64):
    batch, _ = scene64
    out = Geometric(seed=0, hflip_p=1.0, affine_p=0.0)(batch)
    for key in batch:
        assert torch.equal(out[key], batch[key].flip(-1)), key


def test_nearest_warp_keeps_mask_equal_to_the_warped_alpha_composite(scene64):
    """With nearest images, the mask thresholded from the warped composite is the warped mask, exactly."""
    batch, alpha = scene64
    params = {**STRONG, "image_resample": "nearest"}
    warped = Geometric(seed=3, **params)(_alpha_batch(batch, alpha))
    assert _iou(warped["fg_bg"][:, :1] >= 0.5, warped["mask"]) >= 0.99
    assert torch.equal((warped["fg_bg"][:, :1] >= 0.5).float(), warped["mask"])
    # the check can fail: another seed's geometry does not match
    other = Geometric(seed=4, **params)(_alpha_batch(batch, alpha))
    assert _iou(other["fg_bg"][:, :1] >= 0.5, warped["mask"]) < 0.7


@pytest.mark.parametrize("seed", [0, 1])
def test_bilinear_warp_keeps_mask_consistent_with_images(scene64, seed):
    """Default (bilinear) images and nearest mask: exact bounds on the warped alpha, and real pixels agree.

    Bilinear sampling gives the nearest source pixel a weight of at least 1/4, so where the
    nearest-warped mask is 1 (source alpha >= 0.5) the warped alpha is >= 1/8, and where it is 0 the
    warped alpha is <= 7/8. IoU stays below 1 only by rasterisation: about a quarter of the fg pixels
    have a soft (anti-aliased) alpha, which nearest and bilinear threshold differently.
    """
    batch, alpha = scene64
    warped_alpha = Geometric(seed=seed, **STRONG)(_alpha_batch(batch, alpha))["fg_bg"][:, :1]
    out = Geometric(seed=seed, **STRONG)(batch)
    mask = out["mask"].bool()
    assert warped_alpha[mask].min() >= 0.125 - 1e-6
    assert warped_alpha[~mask].max() <= 0.875 + 1e-6
    assert _iou(warped_alpha >= 0.5, mask) >= 0.93
    # where no fg reaches a pixel, the real warped fg_bg equals the warped bg: same geometry for both
    clear = (warped_alpha == 0).expand(-1, 3, -1, -1)
    assert clear.float().mean() > 0.5
    assert torch.equal(out["fg_bg"][clear], out["bg"][clear])
    assert not torch.equal(out["bg"], batch["bg"])


@pytest.mark.parametrize("padding_mode", ["reflection", "border", "zeros"])
def test_no_new_mask_or_depth_values(scene64, padding_mode):
    batch, _ = scene64
    out = Geometric(seed=1, padding_mode=padding_mode, **STRONG)(batch)
    allowed = set(batch["depth"].unique().tolist())
    if padding_mode == "zeros":  # documented fill value
        allowed.add(0.0)
    new_values = set(out["depth"].unique().tolist()) - allowed
    assert not new_values, f"{len(new_values)} depth values not in the input"
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out["depth"], batch["depth"])


def test_zeros_padding_fills_uncovered_border_with_zero(scene64):
    batch, _ = scene64
    out = Geometric(seed=2, padding_mode="zeros", affine_p=1.0, degrees=0.0, translate=0.0,
                    scale=(0.5, 0.5), hflip_p=0.0)(batch)
    # a zoom-out by 2 leaves the outer quarter on each side uncovered
    for key in batch:
        assert (out[key][..., :, :8] == 0).all() and (out[key][..., :8, :] == 0).all(), key


@pytest.mark.parametrize("padding_mode", ["reflection", "border"])
def test_mask_and_depth_share_the_geometry_exactly(scene64, padding_mode):
    """depth = f(mask) before the warp implies depth = f(mask) after it, pixel for pixel."""
    batch, _ = scene64
    tied = {**batch, "depth": batch["mask"] * 3.0 + 1.0}
    out = Geometric(seed=6, padding_mode=padding_mode, **STRONG)(tied)
    assert torch.equal(out["depth"], out["mask"] * 3.0 + 1.0)
    assert not torch.equal(out["mask"], batch["mask"])


# -- photometric ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"hue": 0.1}, {"noise_std": 0.05, "noise_p": 1.0}])
def test_photometric_same_jitter_keeps_uncovered_pixels_equal(scene64, params):
    batch, _ = scene64
    out = Photometric(seed=5, jitter_p=1.0, **params)(batch)
    equal_before = (batch["fg_bg"] == batch["bg"]).all(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert equal_before.float().mean() > 0.5
    assert torch.equal(out["fg_bg"][equal_before], out["bg"][equal_before])
    assert not torch.equal(out["bg"], batch["bg"]), "the jitter did nothing"
    assert out["bg"].min() >= 0 and out["bg"].max() <= 1


def test_photometric_leaves_targets_untouched(scene64):
    batch, _ = scene64
    for aug in (Photometric(seed=1, jitter_p=1.0, hue=0.1, noise_std=0.05),
                Photometric(seed=1, independent=True)):
        out = aug(batch)
        assert torch.equal(out["mask"], batch["mask"]) and torch.equal(out["depth"], batch["depth"])


def test_photometric_independent_changes_the_pair_differently(scene64):
    batch, _ = scene64
    out = Photometric(seed=5, jitter_p=1.0, independent=True)(batch)
    equal_before = (batch["fg_bg"] == batch["bg"]).all(dim=1)
    differs_after = (out["fg_bg"] != out["bg"]).any(dim=1)
    # almost every sample has uncovered pixels that now differ (a lighting change between the shots)
    per_sample = (equal_before & differs_after).flatten(1).float().mean(1)
    assert (per_sample > 0.3).float().mean() > 0.8


# -- reproducibility -----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [lambda s: Geometric(seed=s, **STRONG),
                                     lambda s: Photometric(seed=s, noise_std=0.03, independent=True)])
def test_same_seed_same_stream_and_global_rng_untouched(scene64, factory):
    batch, _ = scene64
    first, second, other = factory(11), factory(11), factory(12)
    outs_a, outs_b = [], []
    for step in range(3):
        torch.manual_seed(100 + step)  # the caller's global RNG must not matter ...
        state = torch.get_rng_state()
        outs_a.append(first(batch))
        assert torch.equal(state, torch.get_rng_state())  # ... and must not be consumed
        torch.manual_seed(999)
        outs_b.append(second(batch))
    for a, b in zip(outs_a, outs_b, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in batch)
    assert not torch.equal(outs_a[0]["fg_bg"], outs_a[1]["fg_bg"]), "each call draws new parameters"
    assert not torch.equal(other(batch)["fg_bg"], outs_a[0]["fg_bg"]), "another seed, another stream"


def test_float64_batches_stay_float64(scene64):
    batch, _ = scene64
    double = {k: v.double() for k, v in batch.items()}
    for aug in (Geometric(seed=0, **STRONG), Photometric(seed=0, noise_std=0.02)):
        out = aug(double)
        assert all(out[k].dtype == torch.float64 and out[k].device == double[k].device for k in double)
