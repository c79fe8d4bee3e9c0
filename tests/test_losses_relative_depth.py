"""The relative-depth losses (MiDaS's ssi and its gradient matching) against NumPy references.

The references align each image with ``np.linalg.lstsq`` (an independent
solver of the same least squares) and compute the errors and the
sub-sampled forward differences with NumPy; the properties that define the
losses (invariance to a per-image scale and shift, zero at an affine map of
the target) are checked on their own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.core.plugin.manager import load_catalog
from losslab.plugins.losses import SSIGradientLoss, SSILoss, align_scale_shift, ssi_gradient_loss, ssi_loss


def _pair(seed: int = 0, shape=(3, 1, 20, 17)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64) + 0.2
    pred = 3.0 * target - 1.0 + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
    return pred, target


def _aligned_np(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.empty_like(pred)
    for b in range(pred.shape[0]):
        p, d = pred[b].ravel(), target[b].ravel()
        (s, t), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), d, rcond=None)
        out[b] = (s * p + t).reshape(pred[b].shape)
    return out


def ssi_np(pred: np.ndarray, target: np.ndarray, error: str) -> float:
    r = _aligned_np(pred, target) - target
    return float(0.5 * np.mean(r**2)) if error == "sq" else float(np.mean(np.abs(r)))


def gradient_np(pred: np.ndarray, target: np.ndarray, scales: int) -> float:
    r = _aligned_np(pred, target) - target
    total = 0.0
    for k in range(scales):
        rk = r[..., :: 2**k, :: 2**k]
        total += (np.abs(np.diff(rk, axis=-1)).sum() + np.abs(np.diff(rk, axis=-2)).sum()) / rk.size
    return total


@pytest.mark.parametrize("error", ["sq", "abs"])
def test_ssi_matches_numpy(error: str) -> None:
    pred, target = _pair()
    got = ssi_loss(pred, target, error).item()
    assert got == pytest.approx(ssi_np(pred.numpy(), target.numpy(), error), rel=1e-10)
    assert SSILoss(error)(pred, target).item() == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("scales", [1, 2, 4])
def test_gradient_matching_matches_numpy(scales: int) -> None:
    pred, target = _pair(1)
    got = ssi_gradient_loss(pred, target, scales).item()
    assert got == pytest.approx(gradient_np(pred.numpy(), target.numpy(), scales), rel=1e-10)
    assert SSIGradientLoss(scales)(pred, target).item() == pytest.approx(got, rel=1e-12)


def test_invariant_to_a_scale_and_shift_per_image() -> None:
    pred, target = _pair(2)
    s = torch.tensor([0.5, -2.0, 7.0], dtype=torch.float64).view(3, 1, 1, 1)
    t = torch.tensor([1.0, 0.0, -3.0], dtype=torch.float64).view(3, 1, 1, 1)
    for fn in (ssi_loss, ssi_gradient_loss):
        assert fn(s * pred + t, target).item() == pytest.approx(fn(pred, target).item(), rel=1e-9)
        assert fn(s * target + t, target).item() == pytest.approx(0.0, abs=1e-12)


def test_alignment_recovers_a_known_scale_and_shift() -> None:
    _, target = _pair(3)
    pred = (target - 0.25) / 4.0  # target = 4 * pred + 0.25
    np.testing.assert_allclose(align_scale_shift(pred, target).numpy(), target.numpy(), rtol=1e-12)


def test_a_constant_prediction_gets_its_best_constant_fit_and_finite_gradients() -> None:
    _, target = _pair(4)
    pred = torch.full_like(target, 0.3, requires_grad=True)
    loss = ssi_loss(pred, target)
    mean = target.mean(dim=(1, 2, 3), keepdim=True)
    assert loss.item() == pytest.approx(0.5 * (target - mean).pow(2).mean().item(), rel=1e-10)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_gradients_are_correct() -> None:
    pred, target = _pair(5, shape=(2, 1, 9, 9))
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: ssi_loss(p, target), (pred,))
    assert torch.autograd.gradcheck(lambda p: ssi_loss(p, target, "abs"), (pred,))
    assert torch.autograd.gradcheck(lambda p: ssi_gradient_loss(p, target, 2), (pred,))


def test_float16_inputs_compute_in_float32() -> None:
    pred, target = _pair(6)
    half = ssi_loss(pred.half(), target.half())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(ssi_loss(pred.half().double(), target.half().double()).item(), rel=1e-4)


def test_bad_arguments_are_explained() -> None:
    pred, target = _pair()
    with pytest.raises(ValueError, match="error must be 'sq'"):
        SSILoss("l1")
    with pytest.raises(ValueError, match="scales must be a whole number"):
        SSIGradientLoss(0)
    with pytest.raises(ValueError, match="at least 9x9 pixels"):
        ssi_gradient_loss(pred[..., :8, :8], target[..., :8, :8], scales=4)
    with pytest.raises(ValueError, match=r"must have shape \(B, 1, H, W\)"):
        ssi_loss(pred[:, 0], target[:, 0])


def test_registered_as_depth_losses() -> None:
    registry = load_catalog(fresh=True)["loss"]
    for name, cls in (("ssi", SSILoss), ("ssi-gradient", SSIGradientLoss)):
        component = registry.get(name)
        assert component.meta["task"] == "depth" and component.meta["input_kind"] == "depth"
        assert isinstance(component.create(), cls) and component.summary
