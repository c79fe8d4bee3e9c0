"""Architectures: the contract (shapes, any size, channels_last, both heads learn) and profiling counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losslab.core.plugin.manager import load_catalog
from losslab.core.train.profiling import count_params, profile_model
from losslab.plugins.architectures.blocks import Head

NAMES = ("unet", "resnet-unet", "nested-unet")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(fresh=True)


def _build(catalog, name: str, **params) -> nn.Module:
    torch.manual_seed(0)
    return catalog.create("architecture", name, **params)


def _heads(model: nn.Module) -> list[Head]:
    return [m for m in model.modules() if isinstance(m, Head)]


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_summary(catalog, name):
    component = catalog.get("architecture", name)
    assert component.plugin == "losslab.architectures"
    assert component.summary
    assert isinstance(component.create(), nn.Module)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(61, 77), (64, 64), (150, 150), (5, 3)])
def test_output_shapes_any_size(catalog, name, hw):
    model = _build(catalog, name)
    out = model(torch.rand(2, 6, *hw))
    assert set(out) == {"mask", "depth"}
    for key in ("mask", "depth"):
        assert out[key].shape == (2, 1, *hw)
        assert out[key].dtype == torch.float32
        assert out[key].is_contiguous()
        assert torch.isfinite(out[key]).all()


@pytest.mark.parametrize("name", NAMES)
def test_samples_do_not_leak_across_the_batch(catalog, name):
    """Two samples of one batch do not leak into each other (eval mode: BN uses running stats)."""
    model = _build(catalog, name).eval()
    x = torch.rand(3, 6, 61, 77)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together["mask"][1:2], alone["mask"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together["depth"][1:2], alone["depth"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("internal_cl", [True, False])
def test_channels_last_matches_contiguous(catalog, name, internal_cl):
    model = _build(catalog, name, channels_last=internal_cl).eval()
    # non-trivial running stats, so BN is not the identity in eval mode
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 6, 48, 48))
    model.eval()
    x = torch.rand(2, 6, 61, 77)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    for key in ("mask", "depth"):
        assert got[key].shape == ref[key].shape
        torch.testing.assert_close(got[key], ref[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_both_heads_and_stay_separate(catalog, name):
    model = _build(catalog, name)
    heads = _heads(model)
    assert len(heads) == 2, "an architecture has one mask head and one depth head"
    x = torch.rand(2, 6, 40, 40)

    out = model(x)
    (out["mask"].square().mean() + out["depth"].square().mean()).backward()
    for head in heads:
        assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname

    # a mask-only loss leaves exactly one head without gradient: the tasks have their own heads
    model.zero_grad(set_to_none=True)
    model(x)["mask"].mean().backward()
    with_grad = [h for h in heads if h.proj.weight.grad is not None and h.proj.weight.grad.abs().sum() > 0]
    assert len(with_grad) == 1


@pytest.mark.parametrize("name", NAMES)
def test_training_step_at_64px(catalog, name):
    """Regression: a 1x1 stride-2 conv on channels_last crashed torch 2.13's CPU backward at this size."""
    model = _build(catalog, name)
    for _ in range(2):
        out = model(torch.rand(8, 6, 64, 64))
        (out["mask"].mean() + out["depth"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_learns_a_tiny_batch():
    """A few Adam steps fit mask = (fg_bg differs from bg) and depth = a constant per image."""
    torch.manual_seed(0)
    from losslab.plugins.architectures import UNet

    model = UNet()
    bg = torch.rand(4, 3, 32, 32)
    fg_bg = bg.clone()
    fg_bg[:, :, 8:20, 10:24] = torch.rand(4, 3, 1, 1)
    mask = torch.zeros(4, 1, 32, 32)
    mask[:, :, 8:20, 10:24] = 1
    depth = torch.linspace(0.2, 0.8, 4).view(4, 1, 1, 1).expand(4, 1, 32, 32)
    x = torch.cat([bg, fg_bg], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        out = model(x)
        return F.binary_cross_entropy_with_logits(out["mask"], mask) + F.mse_loss(out["depth"], depth)

    first = loss_fn().item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.3 * first


def test_unet_params_and_variants(catalog):
    classic = _build(catalog, "unet", base_channels=4, depth=2, convs_per_stage=2, merge="concat")
    out = classic(torch.rand(1, 6, 33, 35))
    assert out["mask"].shape == (1, 1, 33, 35)
    # wider and deeper networks have more parameters
    assert count_params(_build(catalog, "unet", base_channels=16)) > count_params(_build(catalog, "unet"))


@pytest.mark.parametrize(
    ("name", "params"),
    [("unet", {"base_channels": 0}), ("unet", {"merge": "sum"}), ("resnet-unet", {"depth": 0}),
     ("nested-unet", {"base_channels": -1})],
)
def test_bad_params_are_explained(catalog, name, params):
    with pytest.raises(ValueError, match=name):
        _build(catalog, name, **params)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_is_explained(catalog, name):
    model = _build(catalog, name)
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 6, 32, 32, dtype=torch.uint8))


# -- profiling ---------------------------------------------------------------------------------------


def test_profile_single_conv_by_hand():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=True)
    got = profile_model(conv, image_size=10, batch=2)
    # params: 8 filters of 3x3x3 weights plus 8 biases
    assert got["params"] == 8 * 3 * 3 * 3 + 8 == 224
    # FLOPs: every output value (2 * 8 * 10 * 10 of them) costs 3*3*3 multiply-adds = 2 FLOPs each
    assert got["flops"] == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3) == 86_400


def test_profile_tiny_net_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1, bias=False),  # 9x9 -> 5x5
        nn.ReLU(),
        nn.Conv2d(4, 2, kernel_size=1),
    )
    net.train()
    got = profile_model(net, image_size=9)
    assert got["params"] == (4 * 3 * 9) + (2 * 4 + 2) == 118
    assert got["flops"] == 2 * (4 * 25 * 27) + 2 * (2 * 25 * 4) == 5_800
    assert net.training, "profiling must restore the training mode"


def test_profile_counts_shared_params_once_and_explains_missing_channels():
    shared = nn.Conv2d(2, 2, 1, bias=False)
    assert count_params(nn.Sequential(shared, shared)) == 4
    with pytest.raises(ValueError, match="in_channels"):
        profile_model(nn.ReLU(), image_size=4)
    assert profile_model(nn.ReLU(), image_size=4, in_channels=3)["flops"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_profile_architectures_scales_with_area(catalog, name):
    model = _build(catalog, name)
    small, large = profile_model(model, 32), profile_model(model, 64)
    assert small["params"] == large["params"] == count_params(model) > 0
    # conv FLOPs grow with the pixel count: 4x the area, 4x the FLOPs (32 and 64 need no padding)
    assert large["flops"] == 4 * small["flops"]


def test_coordinate_maps_by_hand():
    from losslab.plugins.architectures.unet import coordinate_maps

    maps = coordinate_maps(torch.zeros(2, 6, 3, 5))
    assert maps.shape == (2, 2, 3, 5)
    torch.testing.assert_close(maps[1, 0, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # x: the column
    torch.testing.assert_close(maps[0, 1, :, 4], torch.tensor([-1.0, 0.0, 1.0]))  # y: the row


@pytest.mark.parametrize("coords", [False, True])
def test_coords_let_a_uniform_image_vary_by_position(coords):
    """A uniform input gives an output periodic with the stride away from the borders; coordinates break that."""
    from losslab.plugins.architectures import UNet

    torch.manual_seed(0)
    model = UNet(coords=coords).eval()
    with torch.no_grad():
        depth = model(torch.full((1, 6, 192, 192), 0.5))["depth"][0, 0]
    # one pixel per stride-8 cell, far from the borders (where zero padding breaks translation symmetry)
    lattice = depth[64:129:8, 64:129:8]
    spread = (lattice.max() - lattice.min()).item()
    if coords:
        assert spread > 1e-3
    else:
        assert spread < 1e-5
    assert UNet(coords=coords).encoder[0][0][0].in_channels == 9 + (2 if coords else 0)


def test_mask_path_feeds_the_mask_head_only():
    """``mask_path``: a full-resolution branch that reaches the mask's logits and never the depth."""
    from losslab.plugins.architectures import UNet

    torch.manual_seed(0)
    model = UNet(mask_path=8, coords=True, depth_output="log")
    assert model.mask_decoder.head.proj.in_channels == 8 + 8  # decoder's last width + the path's
    out = model(torch.rand(2, 6, 61, 77))  # not a multiple of the stride: the path is padded to meet the decoder
    assert out["mask"].shape == out["depth"].shape == (2, 1, 61, 77)
    out["depth"].mean().backward()
    assert all(p.grad is None for p in model.mask_path.parameters())
    model.zero_grad()
    model(torch.rand(2, 6, 61, 77))["mask"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask_path.parameters())
    with pytest.raises(ValueError, match="mask_path"):
        UNet(mask_path=-1)


def test_mask_path_sees_each_pixel_at_full_resolution():
    """A change of one pixel moves the mask logits only within the path's 3-conv (7x7) reach plus the decoder's."""
    from losslab.plugins.architectures import UNet

    torch.manual_seed(0)
    with_path = UNet(mask_path=8).eval()
    x = torch.rand(1, 6, 32, 32)
    y = x.clone()
    y[0, 3:6, 16, 16] += 0.5
    with torch.no_grad():
        base = with_path(x)["mask"]
        moved = with_path(y)["mask"]
        path_only = with_path.mask_path(torch.cat([y, (y[:, 3:6] - y[:, :3]).abs()], 1)) - with_path.mask_path(
            torch.cat([x, (x[:, 3:6] - x[:, :3]).abs()], 1)
        )
    assert (moved - base).abs()[0, 0, 16, 16] > 0
    changed = path_only.abs().sum(1)[0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.min() >= 13 and rows.max() <= 19 and cols.min() >= 13 and cols.max() <= 19


def test_propagate_up_by_hand():
    """out[y] = g[y] out[y + 1] + (1 - g[y]) v[y], bottom row first, worked by hand on one column."""
    from losslab.plugins.architectures.blocks import propagate_up

    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 4, 1)
    gate = torch.tensor([0.5, 1.0, 0.25, 0.9]).view(1, 1, 4, 1)  # the bottom row's gate is never read
    # row 3: 4; row 2: 0.25 * 4 + 0.75 * 3 = 3.25; row 1: 3.25; row 0: 0.5 * 3.25 + 0.5 * 1 = 2.125
    assert propagate_up(value, gate).flatten().tolist() == [2.125, 3.25, 3.25, 4.0]
    v, g = torch.rand(2, 2, 6, 5), torch.rand(2, 2, 6, 5)
    assert torch.equal(propagate_up(v, torch.zeros_like(g)), v)  # shut gates: every pixel its own value
    opened = propagate_up(v, torch.ones_like(g))  # open gates: every pixel the column's bottom value
    assert torch.equal(opened, v[..., -1:, :].expand_as(v))
    v64, g64 = v.double().requires_grad_(), g.double().requires_grad_()
    assert torch.autograd.gradcheck(propagate_up, (v64, g64))


def test_layered_depth_blends_two_layers_by_the_detached_mask():
    from losslab.plugins.architectures import UNet
    from losslab.plugins.architectures.blocks import composite_layers

    layers = torch.tensor([[[[2.0]], [[10.0]]]])  # fg layer 2, bg layer 10
    for logit, expected in ((40.0, 2.0), (-40.0, 10.0), (0.0, 6.0)):
        assert composite_layers(layers, torch.tensor([[[[logit]]]])).item() == pytest.approx(expected)
    torch.manual_seed(0)
    model = UNet(mask_path=8, coords=True, depth_output="log", layered=True, propagate=True)
    assert model.depth_decoder.head.proj.out_channels == 4  # two layers, a gate each
    x = torch.rand(2, 6, 61, 77)
    out = model(x)
    assert out["depth"].shape == out["mask"].shape == (2, 1, 61, 77) and (out["depth"] > 0).all()
    out["depth"].mean().backward()  # the depth loss never trains the mask: the mask is read detached
    assert model.mask_decoder.head.proj.weight.grad is None
    assert all(p.grad is None for p in model.mask_path.parameters())
    model.zero_grad(set_to_none=True)
    model(x)["mask"].mean().backward()
    assert model.depth_decoder.head.proj.weight.grad is None
