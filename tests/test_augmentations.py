"""Augmentations: geometry shared by images and targets, colour on images only, seeded streams."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
import pytest
import torch

from losslab.core.data.compositor import Compositor
from losslab.core.data.geometry import SceneGeometry
from losslab.core.data.sources import SyntheticSources
from losslab.core.plugin.manager import load_catalog
from losslab.plugins.augmentations import AugmentationError, ChannelMix, Geometric, HorizonZoom, Photometric
from losslab.plugins.generators import GridGenerator
from losslab.plugins.ground_truth import GroundPlaneDepth

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


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


@pytest.mark.parametrize("name", ["geometric", "photometric", "channel-mix", "horizon-zoom"])
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


def test_flip_only_samples_are_exact_flips_or_untouched(scene64):
    """hflip_p=0.5, no affine: each sample is bit-identical to its input or to its mirror, all four alike."""
    batch, _ = scene64
    out = Geometric(seed=3, hflip_p=0.5, affine_p=0.0)(batch)
    flip, _, _ = Geometric(seed=3, hflip_p=0.5, affine_p=0.0).draw(len(batch["bg"]), 64, 64)
    assert 0 < int(flip.sum()) < len(flip)
    for key in batch:
        for i, flipped in enumerate(flip.tolist()):
            expected = batch[key][i].flip(-1) if flipped else batch[key][i]
            assert torch.equal(out[key][i], expected), (key, i)


@pytest.mark.parametrize(("padding_mode", "np_mode"), [("reflection", "symmetric"), ("border", "edge"),
                                                       ("zeros", "constant")])
def test_translation_with_nearest_is_a_padded_integer_shift(scene64, padding_mode, np_mode):
    """degrees=0, scale=1: a shift by t pixels, nearest-sampled, is numpy.pad then a crop shifted by round(t).

    The fill of the uncovered border follows the documented padding: ``reflection`` mirrors about the
    image edge (numpy's "symmetric"), ``border`` repeats the edge pixel, ``zeros`` fills 0.
    """
    batch, _ = scene64
    params = {"hflip_p": 0.0, "affine_p": 1.0, "degrees": 0.0, "translate": 0.15, "scale": (1.0, 1.0),
              "padding_mode": padding_mode, "image_resample": "nearest"}
    b, _, h, w = batch["bg"].shape
    _, _, matrices = Geometric(seed=8, **params).draw(b, h, w)
    assert torch.equal(matrices[:, :, :2], torch.eye(2, dtype=matrices.dtype).expand(b, 2, 2))
    shifts = matrices[:, :, 2]  # (tx, ty) in pixels: content moves right / down
    assert (shifts[:, 0].abs() <= 0.15 * w).all() and (shifts[:, 1].abs() <= 0.15 * h).all()
    assert ((shifts - shifts.floor() - 0.5).abs() > 1e-3).all(), "a shift too close to a rounding tie"
    out = Geometric(seed=8, **params)(batch)
    pad = 10
    for key in batch:
        padded = np.pad(batch[key].numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=np_mode)
        for i, (tx, ty) in enumerate(shifts.round().long().tolist()):
            expected = padded[i, :, pad - ty:pad - ty + h, pad - tx:pad - tx + w]
            assert np.array_equal(out[key][i].numpy(), expected), (key, i, tx, ty)
    assert (shifts.round().abs().sum(1) > 0).all()


@pytest.mark.parametrize(("padding_mode", "border"), [("reflection", cv2.BORDER_REFLECT),
                                                      ("border", cv2.BORDER_REPLICATE),
                                                      ("zeros", cv2.BORDER_CONSTANT)])
def test_flip_and_affine_warp_like_opencv(scene64, padding_mode, border):
    """The drawn matrices (flip folded in) applied by cv2.warpAffine, an independent implementation."""
    batch, _ = scene64
    params = {"hflip_p": 0.5, "affine_p": 1.0, "degrees": 30.0, "translate": 0.2, "scale": (0.7, 1.3),
              "padding_mode": padding_mode}
    b, _, h, w = batch["bg"].shape
    flip, _, matrices = Geometric(seed=9, **params).draw(b, h, w)
    assert 0 < int(flip.sum()) < b
    out = Geometric(seed=9, **params)(batch)
    for i in range(b):
        m = matrices[i].numpy()
        for key, flags in (("fg_bg", cv2.INTER_LINEAR), ("depth", cv2.INTER_NEAREST)):
            src = batch[key][i].permute(1, 2, 0).numpy()
            ref = cv2.warpAffine(src, m, (w, h), flags=flags, borderMode=border, borderValue=0)
            ref = torch.from_numpy(ref.reshape(h, w, -1)).permute(2, 0, 1)
            if flags == cv2.INTER_LINEAR:
                assert (out[key][i] - ref).abs().max() < 1e-4, (key, i)
            else:  # nearest: only exact rounding ties may differ
                assert (out[key][i] == ref).float().mean() > 0.998, (key, i)


def test_drawn_affines_cover_their_ranges():
    """Decompose the drawn matrices: rotation, zoom and shift stay within, and reach across, their ranges."""
    h, w, n = 40, 60, 4000
    aug = Geometric(seed=0, hflip_p=0.3, affine_p=0.6, degrees=15.0, translate=0.1, scale=(0.8, 1.25))
    flip, affine, m = aug.draw(n, h, w)
    assert abs(flip.double().mean().item() - 0.3) < 0.03 and abs(affine.double().mean().item() - 0.6) < 0.03
    a = m[affine]
    linear = a[:, :, :2].clone()
    linear[:, :, 0] *= torch.where(flip[affine], -1.0, 1.0).to(a.dtype)[:, None]  # undo the mirror x -> -x
    zoom = torch.linalg.det(linear).sqrt()
    angle = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=a.dtype)
    shift = (a[:, :, :2] @ centre + a[:, :, 2]) - centre  # where the image centre goes (the mirror keeps it)
    assert torch.allclose(linear[:, 0, 0], linear[:, 1, 1]) and torch.allclose(linear[:, 0, 1], -linear[:, 1, 0])
    for values, low, high in ((angle, -15.0, 15.0), (zoom, 0.8, 1.25), (shift[:, 0], -6.0, 6.0),
                              (shift[:, 1], -4.0, 4.0)):
        assert values.min() >= low - 1e-9 and values.max() <= high + 1e-9
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low)
    untouched = m[~affine & ~flip]
    assert torch.equal(untouched, torch.eye(2, 3, dtype=m.dtype).expand_as(untouched))


def test_flip_is_applied_before_the_affine(scene64):
    """A flip folded into the matrix equals flipping the input first, then the same affine."""
    batch, _ = scene64
    params = {"affine_p": 1.0, "degrees": 20.0, "translate": 0.15, "scale": (0.8, 1.2)}
    combined = Geometric(seed=4, hflip_p=1.0, **params)(batch)
    separate = Geometric(seed=4, hflip_p=0.0, **params)({k: v.flip(-1) for k, v in batch.items()})
    assert (combined["bg"] - separate["bg"]).abs().max() < 1e-4
    assert (combined["depth"] == separate["depth"]).float().mean() > 0.998
    unflipped = Geometric(seed=4, hflip_p=0.0, **params)(batch)
    assert (unflipped["bg"] - separate["bg"]).abs().max() > 0.1


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


def _reference_jitter(rgb: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The documented steps pixel by pixel: add, multiply, blend with luma, rotate H with colorsys (turns), clip."""
    shift, contrast, saturation, hue = factors
    out = np.empty_like(rgb)
    for y in range(rgb.shape[1]):
        for x in range(rgb.shape[2]):
            r, g, b = np.clip(np.clip(rgb[:, y, x] + shift, 0, 1) * contrast, 0, 1)
            luma = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601, as PIL and torchvision
            r, g, b = np.clip(luma + saturation * (np.array([r, g, b]) - luma), 0, 1)
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
            hh = (hh + hue / (2 * math.pi)) % 1.0
            out[:, y, x] = colorsys.hsv_to_rgb(hh, ss, vv)
    return np.clip(out, 0, 1)


def test_photometric_matches_a_colorsys_reference():
    """Factors from a twin's draw; the fixed order brightness, contrast, saturation, hue; jitter_p respected."""
    gen = torch.Generator().manual_seed(0)
    bg = torch.rand(8, 3, 5, 6, generator=gen, dtype=torch.float64)
    batch = {"bg": bg, "fg_bg": bg.flip(-1), "mask": torch.zeros(8, 1, 5, 6, dtype=torch.float64),
             "depth": torch.ones(8, 1, 5, 6, dtype=torch.float64)}
    params = {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.2, "jitter_p": 0.6}
    on, factors = Photometric(seed=2, **params).draw(8)
    assert 0 < int(on.sum()) < 8
    assert (factors[:, 0].abs() <= 0.3).all() and ((factors[:, 1] - 1).abs() <= 0.4).all()
    assert ((factors[:, 2] - 1).abs() <= 0.5).all() and (factors[:, 3].abs() <= 0.2 * 2 * math.pi).all()
    out = Photometric(seed=2, **params)(batch)
    for key in ("bg", "fg_bg"):
        for i in range(8):
            if on[i]:
                expected = torch.from_numpy(_reference_jitter(batch[key][i].numpy(), factors[i].numpy()))
                assert torch.allclose(out[key][i], expected, atol=1e-6), (key, i)
            else:
                assert torch.equal(out[key][i], batch[key][i]), (key, i)


def test_drawn_jitter_covers_its_ranges():
    """Shift in [-b, b], contrast and saturation in [1 - v, 1 + v], hue in [-h, h] turns (radians / 2 pi)."""
    on, factors = Photometric(seed=0, brightness=0.1, contrast=0.2, saturation=0.3, hue=0.05, jitter_p=0.7).draw(4000)
    assert abs(on.double().mean().item() - 0.7) < 0.03
    turns = factors[:, 3] / (2 * math.pi)
    for values, low, high in ((factors[:, 0], -0.1, 0.1), (factors[:, 1], 0.8, 1.2), (factors[:, 2], 0.7, 1.3),
                              (turns, -0.05, 0.05)):
        assert values.min() >= low - 1e-12 and values.max() <= high + 1e-12
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low)


# -- reproducibility -----------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [lambda s: Geometric(seed=s, **STRONG),
                                     lambda s: Photometric(seed=s, noise_std=0.03, independent=True),
                                     lambda s: ChannelMix(seed=s, invert_p=0.5),
                                     lambda s: HorizonZoom(seed=s, p=1.0, far=50.0)])
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


# -- channel-mix ---------------------------------------------------------------------------------------


def test_channel_mix_is_one_channel_order_per_pair_and_keeps_the_difference(scene64):
    batch, _ = scene64
    out = ChannelMix(seed=3)(batch)
    order, _ = ChannelMix(seed=3).draw(batch["bg"].shape[0])
    for i, perm in enumerate(order.tolist()):
        assert sorted(perm) == [0, 1, 2]
        for key in ("bg", "fg_bg"):  # output channel c is input channel perm[c], in both images alike
            assert torch.equal(out[key][i], batch[key][i, perm])
    diff_in = (batch["fg_bg"] - batch["bg"]).abs().sort(dim=1).values
    diff_out = (out["fg_bg"] - out["bg"]).abs().sort(dim=1).values
    assert torch.equal(diff_in, diff_out)  # what marks the mask is unchanged, per pixel
    assert out["mask"] is batch["mask"] and out["depth"] is batch["depth"]


def test_channel_mix_inverts_and_switches_off_as_asked(scene64):
    batch, _ = scene64
    b = batch["bg"].shape[0]
    out = ChannelMix(seed=5, invert_p=1.0)(batch)
    order, invert = ChannelMix(seed=5, invert_p=1.0).draw(b)
    assert bool(invert.all())
    for i, perm in enumerate(order.tolist()):
        assert torch.allclose(out["fg_bg"][i], 1.0 - batch["fg_bg"][i, perm])
    still = ChannelMix(seed=5, p=0.0)(batch)
    assert all(torch.equal(still[k], batch[k]) for k in ("bg", "fg_bg"))
    with pytest.raises(AugmentationError, match=r"channel-mix.*invert_p"):
        ChannelMix(seed=0, invert_p=1.5)


def test_channel_mix_draws_every_order_about_equally():
    order, invert = ChannelMix(seed=0).draw(6000)
    counts = {tuple(p): 0 for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]}
    for perm in order.tolist():
        counts[tuple(perm)] += 1
    # 1000 expected each; a binomial's standard deviation is about 29, so 5 sigma either side
    assert all(850 < c < 1150 for c in counts.values()) and not bool(invert.any())


# -- horizon-zoom --------------------------------------------------------------------------------------


def _scene_batch(h: int, w: int, wall: float | None, fg: tuple[int, int, int] | None = None) -> dict:
    """A ground-plane scene drawn from SceneGeometry (metres): bg depth, and a fg box standing on base row."""
    geo = SceneGeometry(wall_depth=wall)
    depth = torch.from_numpy(geo.depth_map(h, w))[None, None].double()
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    if fg is not None:
        top, base, left = fg
        mask[..., top : base + 1, left : left + 6] = 1.0
        depth = torch.where(mask > 0, geo.ground_depth_at(base, h), depth)
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return {"bg": image, "fg_bg": image.clone(), "mask": mask, "depth": depth}


@pytest.mark.parametrize("wall", [13.43, 7.0, None])
def test_horizon_zoom_is_the_same_camera_seeing_a_nearer_scene(wall):
    """Zoom s about the horizon, depth / s: the ground-plane depth of the same camera, the wall s times nearer.

    The reference is SceneGeometry's own depth map (the data's ground truth) for a wall at depth / s; only
    the row where wall and ground meet is interpolated across the kink, and the far plane (the sky, 50 m)
    keeps its depth.
    """
    h = w = 48
    batch = _scene_batch(h, w, wall)
    zoom = HorizonZoom(seed=1, p=1.0, scale=(1.5, 1.5), far=50.0)
    out = zoom(batch)
    expected = torch.from_numpy(SceneGeometry(wall_depth=wall / 1.5 if wall else None).depth_map(h, w)).double()
    got = out["depth"][0, 0]
    if wall is None:  # the sky keeps 50 m; the ground below it is the same camera's, nearer rows exact
        sky = batch["depth"][0, 0] >= 50.0
        assert torch.equal(got[sky[:, :1].expand(h, w)], torch.full_like(got[sky[:, :1].expand(h, w)], 50.0))
        # ground that the source capped at 50 m stays capped (the docstring's caveat): its first two rows
        ground_rows = torch.nonzero(expected[:, 0] < 50.0 / 1.5)[:, 0][2:]
        assert torch.equal(got[ground_rows[0] - 2], torch.full((w,), 50.0, dtype=torch.float64))
    else:
        kink = int(torch.nonzero(expected[:, 0] < wall / 1.5 - 1e-4)[0, 0])  # the first ground row
        ground_rows = torch.tensor([r for r in range(h) if abs(r - kink) > 1])
        assert torch.allclose(got[kink - 1], expected[kink - 1], rtol=0.04)  # within the kink's blend
    rel = ((got[ground_rows] - expected[ground_rows]).abs() / expected[ground_rows]).max()
    assert rel < 1e-6, float(rel)


def test_horizon_zoom_keeps_a_fg_standing_where_the_ground_is_as_far():
    h = w = 48
    batch = _scene_batch(h, w, 13.43, fg=(14, 30, 18))
    fg_depth = float(batch["depth"][0, 0, 30, 20])
    out = HorizonZoom(seed=2, p=1.0, scale=(1.4, 1.4), far=50.0)(batch)
    fg = out["mask"][0, 0] > 0.5
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest: no new mask value
    assert torch.allclose(out["depth"][0, 0][fg], torch.full((int(fg.sum()),), fg_depth / 1.4, dtype=torch.float64))
    base = int(torch.nonzero(fg)[:, 0].max())  # the zoomed fg's lowest row stands on ground as far as it is
    standing = SceneGeometry(wall_depth=13.43 / 1.4).ground_depth_at(base, h)
    step = SceneGeometry().ground_depth_at(base - 1, h) - standing
    assert abs(standing - fg_depth / 1.4) <= step


def test_horizon_zoom_warps_images_like_opencv(scene64):
    """The drawn matrices applied by cv2.warpAffine (bilinear, replicated border), an independent implementation."""
    batch, _ = scene64
    b, _, h, w = batch["bg"].shape
    zoom = HorizonZoom(seed=4, p=1.0, scale=(1.0, 1.5), far=50.0)
    zoomed, s, matrices = HorizonZoom(seed=4, p=1.0, scale=(1.0, 1.5), far=50.0).draw(b, h, w)
    out = zoom(batch)
    assert zoomed.all() and (s >= 1).all() and (s <= 1.5).all()
    assert torch.allclose(matrices[:, 1, 2], (h / 3 - 0.5) * (1 - s))  # centred on the horizon row
    for i in range(b):
        src = batch["fg_bg"][i].permute(1, 2, 0).numpy()
        ref = cv2.warpAffine(src, matrices[i].numpy(), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert (out["fg_bg"][i] - torch.from_numpy(ref).permute(2, 0, 1)).abs().max() < 1e-4, i


def test_horizon_zoom_leaves_unzoomed_samples_bit_identical_and_refuses_bad_params(scene64):
    batch, _ = scene64
    b = batch["bg"].shape[0]
    assert all(torch.equal(v, batch[k]) for k, v in HorizonZoom(seed=0, p=0.0)(batch).items())
    zoom = HorizonZoom(seed=6, p=0.5, far=50.0)
    zoomed, _, _ = HorizonZoom(seed=6, p=0.5, far=50.0).draw(b, 64, 64)
    assert 0 < int(zoomed.sum()) < b
    out = zoom(batch)
    for key in batch:
        assert torch.equal(out[key][~zoomed], batch[key][~zoomed]), key
        assert not torch.equal(out[key][zoomed], batch[key][zoomed]) or key == "mask", key
    for params, match in (({"scale": (0.8, 1.2)}, "zoom in"), ({"horizon": 1.5}, "horizon"),
                          ({"far": 0.0}, "far"), ({"p": 2.0}, "probability")):
        with pytest.raises(AugmentationError, match=match):
            HorizonZoom(**params)
