"""No silent collapse: every built-in depth loss, alone with the default architecture, keeps a living depth map.

A depth head that has collapsed sits on the evaluation clamp (nearly every pixel at or below 0, or at max
depth) or on a constant; a head only a few steps into training may still be wrong in many pixels, which is
not a collapse (a linear head under l1 or mse has a gradient everywhere and moves on). Each loss trains a
few steps on the tiny synthetic data; the held-out depth must then spread across pixels and stay off both
clamps. A negative control shows the check catches a collapse:
``ssim`` or ``ms-ssim`` on a linear head (which the config check now refuses) drives the depth below zero
within the same few steps. (``silog`` on a linear head collapses too, over a longer run: 6 epochs of the
main job left AbsRel at 0.9998; the config check refuses that pairing, see tests/test_floors.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch

from losslab.core.config import ConfigError, resolve_variants
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.step import model_inputs
from losslab.core.train.trainer import Trainer
from losslab.plugins.architectures import UNet
from losslab.plugins.builtin import LOSSES
from tests.conftest import TINY

DEPTH_LOSSES = [name for name, (_, task, _, _) in LOSSES.items() if task == "depth"]
ALONE = [name for name in DEPTH_LOSSES if not getattr(load_catalog()["loss"].get(name).factory, "needs_partner", "")]


def alone(name: str, **model_params) -> dict:
    raw = copy.deepcopy(TINY)
    raw["model"] = {"name": "unet", "params": model_params}  # the default architecture, its default sizes
    raw["loss"] = {"mask": [], "depth": [{"name": name}], "allow_empty": ["mask"]}
    raw["data"].update(train_limit=48, val_limit=16)
    raw["train"].update(epochs=3, batch_size=8, val_samples=0)
    return raw


def held_out_depth(trainer: Trainer) -> torch.Tensor:
    """The depth the evaluation scores, as a fraction of max depth: the head's output clamped to [0, 1]."""
    parts = trainer.parts
    parts.model.eval()
    with torch.no_grad():
        batch = next(iter(parts.val_batches))
        return parts.model(model_inputs(batch, parts.precision))["depth"]


def collapse(depth: torch.Tensor) -> str:
    """Why a depth map has collapsed, or '' when it has not."""
    at_zero = float((depth <= 0).float().mean())
    at_max = float((depth >= 1).float().mean())
    spread = float(depth.clamp(0, 1).flatten(1).std(dim=1).mean())
    if at_zero > 0.9:
        return f"{at_zero:.0%} of pixels at or below 0"
    if at_max > 0.9:
        return f"{at_max:.0%} of pixels at max depth"
    if spread < 0.02:
        return f"nearly constant (spread {spread:.4f} of max depth)"
    return ""


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_every_depth_loss_is_covered():
    assert set(DEPTH_LOSSES) >= {"l1", "mse", "huber", "berhu", "ssim", "ms-ssim", "gradient", "smoothness",
                                 "silog"}
    # refused alone (test_floors): they leave the depth's level (and, for ssi, its scale) free
    assert set(DEPTH_LOSSES) - set(ALONE) == {"gradient", "smoothness", "ssi", "ssi-gradient"}


@pytest.mark.filterwarnings("ignore:ms-ssim")
@pytest.mark.parametrize("name", ALONE)
def test_a_depth_loss_alone_does_not_collapse_the_depth(catalog, tmp_path, name):
    cfg = resolve_variants(alone(name), None, catalog)[0]
    trainer = Trainer(cfg, 0, catalog, tmp_path)
    trainer.fit()
    problem = collapse(held_out_depth(trainer))
    assert not problem, f"{name} alone (model params {cfg.model.params}): the depth collapsed: {problem}"


@pytest.mark.filterwarnings("ignore:ms-ssim")
@pytest.mark.parametrize("name", ["ssim", "ms-ssim"])
def test_the_check_catches_a_collapsed_head(catalog, tmp_path, name):
    raw = alone(name, depth_output="linear")
    with pytest.raises(ConfigError, match="needs a depth that stays positive"):
        resolve_variants(raw, None, catalog)
    cfg = resolve_variants(raw)[0]  # without the catalog the pairing check is skipped: the old behaviour
    trainer = Trainer(cfg, 0, catalog, tmp_path)
    trainer.fit()
    assert collapse(held_out_depth(trainer)).endswith("at or below 0")


def _linear_and(output: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The depth of a linear-head UNet and of one with head ``output``, same initialisation and input."""
    torch.manual_seed(0)
    linear = UNet(depth_output="linear")
    torch.manual_seed(0)
    other = UNet(depth_output=output)
    x = torch.rand(2, 6, 16, 16)
    linear.eval()
    other.eval()
    with torch.no_grad():
        return linear(x)["depth"], other(x)["depth"]


def test_a_log_head_is_positive_and_its_log_is_the_linear_heads_output():
    a, b = _linear_and("log")
    assert (b > 0).all()
    assert torch.allclose(torch.log(b), a, atol=1e-5)
    with pytest.raises(ValueError, match="depth_output must be one of linear, log"):
        UNet(depth_output="softplus")


def test_an_inverse_head_returns_the_depth_of_its_softplus_inverse():
    """Worked by hand: the conv's output q is an inverse depth, the head returns 1 / (softplus(q + 4) + 0.01)."""
    q, d = _linear_and("inverse")
    assert (d > 0).all() and (d <= 100.0).all()  # at most 100 x max_depth, however negative q is
    assert torch.allclose(1.0 / d - 0.01, torch.log1p(torch.exp(q + 4.0)), atol=1e-4)


@pytest.mark.parametrize("name", ["l1", "silog"])
def test_a_loss_on_an_inverse_head_scores_its_own_space(name):
    """The head hands the loss depth, so l1 scores depth and silog log depth; the gradient on q is the chain rule.

    Hand-worked: with d = 1 / (softplus(q + 4) + e), dd/dq = -sigmoid(q + 4) d**2. For l1 the loss's gradient on d is
    sign(d - t) / n; for silog with variance_focus 0 (the RMS log error r), it is (log d - log t) / (n r d).
    """
    from losslab.plugins.architectures.blocks import Head

    torch.manual_seed(1)
    head = Head(4, "inverse")
    feats = torch.randn(1, 4, 3, 5)
    target = torch.rand(1, 1, 3, 5) * 0.9 + 0.05
    q = head.proj(feats).detach().requires_grad_(True)
    depth = 1.0 / (torch.nn.functional.softplus(q + 4.0) + 0.01)
    loss_factory = load_catalog()["loss"].get(name).factory
    loss = loss_factory(variance_focus=0.0) if name == "silog" else loss_factory()
    value = loss(depth, target)
    value.backward()
    n = target.numel()
    d = depth.detach()
    if name == "l1":
        assert torch.isclose(value, (d - target).abs().mean())
        dloss_dd = torch.sign(d - target) / n
    else:
        g = torch.log(d) - torch.log(target)
        r = g.pow(2).mean().sqrt()
        assert torch.isclose(value, r, atol=1e-6)
        dloss_dd = g / (n * r * d)
    expected = dloss_dd * (-torch.sigmoid(q.detach() + 4.0) * d.pow(2))
    assert torch.allclose(q.grad, expected, rtol=1e-4, atol=1e-7)
    assert torch.allclose(head(feats), depth.detach(), atol=1e-6)  # the head computes the same depth


def test_the_config_check_takes_an_inverse_head_as_positive(catalog):
    cfg = resolve_variants(alone("silog", depth_output="inverse"), None, catalog)[0]
    assert cfg.model.params["depth_output"] == "inverse"  # kept: only a head left unset gets log


@pytest.mark.parametrize("name", ["l1", "silog"])
def test_a_depth_loss_alone_on_an_inverse_head_does_not_collapse(catalog, tmp_path, name):
    cfg = resolve_variants(alone(name, depth_output="inverse"), None, catalog)[0]
    trainer = Trainer(cfg, 0, catalog, tmp_path)
    trainer.fit()
    problem = collapse(held_out_depth(trainer))
    assert not problem, f"{name} alone on an inverse head: the depth collapsed: {problem}"
