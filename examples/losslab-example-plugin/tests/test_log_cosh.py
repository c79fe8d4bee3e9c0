"""The log-cosh loss against hand-worked values, a direct formula, and its two limits."""

from __future__ import annotations

import math

import pytest
import torch
from losslab.core import Registry

from losslab_example_plugin import LogCoshLoss, lab_register_losses, log_cosh_loss


def test_hand_worked_value() -> None:
    pred = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.zeros(1, 1, 1, 2)
    expected = (math.log(math.cosh(0.0)) + math.log(math.cosh(2.0))) / 2
    assert log_cosh_loss(pred, target, scale=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_matches_direct_formula_on_random_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    scale = 0.3
    direct = (scale**2 * torch.log(torch.cosh((pred - target) / scale))).mean()
    assert log_cosh_loss(pred, target, scale).item() == pytest.approx(direct.item(), rel=1e-12)


def test_quadratic_for_small_and_linear_for_large_errors() -> None:
    zero = torch.zeros(1, 1, 1, 1)
    small = torch.full((1, 1, 1, 1), 1e-3)
    assert log_cosh_loss(small, zero, scale=1.0).item() == pytest.approx(0.5e-6, rel=1e-3)
    big = torch.full((1, 1, 1, 1), 1e4)  # torch.cosh overflows here; the loss must not
    value = log_cosh_loss(big, zero, scale=0.1).item()
    assert value == pytest.approx(0.1 * 1e4 - 0.01 * math.log(2.0), rel=1e-6)


def test_zero_at_target_and_finite_gradients() -> None:
    target = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert log_cosh_loss(target, target).item() == 0.0
    pred = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: log_cosh_loss(p, target, 0.2), (pred,))


def test_rejects_mismatched_shapes_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"log-cosh.*\(B, 1, H, W\)"):
        log_cosh_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="scale must be > 0"):
        LogCoshLoss(scale=0)


def test_hook_registers_a_depth_loss() -> None:
    registry = Registry("loss")
    lab_register_losses(registry=registry)
    component = registry.get("log-cosh")
    loss = component.create(scale=0.5)
    assert isinstance(loss, LogCoshLoss)
    assert (loss.task, loss.input_kind, loss.scale) == ("depth", "depth", 0.5)
    assert component.summary.startswith("log-cosh")
