"""Tests of the built-in metrics (losslab.plugins.metrics): hand-worked values, empty-mask
conventions, torchmetrics / NumPy / SciPy references, and global versus per-image aggregation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from losslab.core.plugin.contracts import Metric
from losslab.core.plugin.manager import load_catalog
from losslab.plugins import metrics as M

MASK = ["iou", "dice", "precision", "recall", "accuracy", "boundary-f"]
DEPTH = ["rmse", "mae", "absrel", "sqrel", "log10", "rmse-log", "delta1", "delta2", "delta3", "ssim"]
HIGHER = {"iou", "dice", "precision", "recall", "accuracy", "boundary-f",
          "delta1", "delta2", "delta3", "ssim"}


def t4(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), len(rows[0]))


@pytest.fixture(scope="module")
def registry():
    return load_catalog(fresh=True)["metric"]


def test_all_required_metrics_registered(registry):
    assert set(MASK + DEPTH) <= set(registry.names())
    for name in MASK + DEPTH:
        comp = registry.get(name)
        metric = comp.create()
        assert isinstance(metric, Metric)
        assert comp.meta["task"] == metric.task == ("mask" if name in MASK else "depth")
        assert comp.meta["higher_is_better"] == metric.higher_is_better == (name in HIGHER)
        pred = torch.rand(3, 1, 16, 16) * (1 if name in MASK else 10)
        target = (torch.rand(3, 1, 16, 16) > 0.5).float() if name in MASK else torch.rand(3, 1, 16, 16) * 10
        out = metric(pred, target)
        assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MASK + DEPTH)
def test_shape_error_names_metric(registry, name):
    with pytest.raises(ValueError, match=rf"{name}.*\(B, 1, H, W\)"):
        registry.get(name).create()(torch.rand(2, 16, 16), torch.rand(2, 16, 16))
    if name == "ssim":
        with pytest.raises(ValueError, match="too small"):
            registry.get(name).create()(torch.rand(1, 1, 4, 4) + 1, torch.rand(1, 1, 4, 4) + 1)


# -- mask -------------------------------------------------------------------------------------------


def test_mask_metrics_by_hand(registry):
    # binarised at > 0.5: [[1, 1], [0, 0]] (0.5 itself is background); target [[1, 0], [1, 0]]
    pred, target = t4([[0.9, 0.6], [0.4, 0.5]]), t4([[1, 0], [1, 0]])
    # TP = 1, FP = 1, FN = 1, TN = 1
    expected = {"iou": 1 / 3, "dice": 2 / 4, "precision": 1 / 2, "recall": 1 / 2, "accuracy": 2 / 4}
    for name, value in expected.items():
        assert registry.get(name).create()(pred, target).item() == pytest.approx(value)
    assert registry.get("iou").create(threshold=0.3)(pred, target).item() == pytest.approx(2 / 4)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (0, 0, {"iou": 1, "dice": 1, "precision": 1, "recall": 1, "accuracy": 1, "boundary-f": 1}),
        (0, 1, {"iou": 0, "dice": 0, "precision": 0, "recall": 0, "boundary-f": 0}),
        (1, 0, {"iou": 0, "dice": 0, "precision": 0, "recall": 0, "boundary-f": 0}),
    ],
)
def test_empty_mask_conventions(registry, pred, target, expected):
    p = torch.zeros(1, 1, 8, 8)
    t = torch.zeros(1, 1, 8, 8)
    if pred:
        p[..., 2:5, 2:5] = 0.9
    if target:
        t[..., 3:6, 3:6] = 1
    for name, value in expected.items():
        assert registry.get(name).create()(p, t).item() == value, name


def test_mask_metrics_match_torchmetrics(registry):
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_f1_score,
        binary_jaccard_index,
        binary_precision,
        binary_recall,
    )

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 1, 20, 20, generator=g)
    target = (torch.rand(4, 1, 20, 20, generator=g) > 0.7).float()
    refs = {"iou": binary_jaccard_index, "dice": binary_f1_score, "precision": binary_precision,
            "recall": binary_recall, "accuracy": binary_accuracy}
    for name, fn in refs.items():
        ours = registry.get(name).create()(pred, target)
        ref = torch.stack([fn(pred[i], target[i].long()) for i in range(4)])
        assert ours.numpy() == pytest.approx(ref.double().numpy(), rel=1e-6), name


def test_boundary_f_by_hand(registry):
    target = torch.zeros(1, 1, 4, 4)
    target[..., 1:3, 1:3] = 1  # all four pixels are boundary
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., 1:3, 2:4] = 1  # shifted one pixel right; all four are boundary too
    # tolerance 0: two of four boundary pixels coincide -> P = R = 1/2 -> F = 1/2
    assert registry.get("boundary-f").create(tolerance=0)(pred, target).item() == pytest.approx(0.5)
    # tolerance 1: every boundary pixel is within one pixel of the other boundary -> F = 1
    assert registry.get("boundary-f").create(tolerance=1)(pred, target).item() == pytest.approx(1.0)


def scipy_boundary_f(pred: np.ndarray, target: np.ndarray, tol: int) -> float:
    """Boundary F with SciPy: boundaries by binary erosion, matches by Euclidean distance transform."""
    def boundary(m: np.ndarray) -> np.ndarray:
        return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), border_value=1)

    bp, bt = boundary(pred), boundary(target)
    if not bp.any() and not bt.any():
        return 1.0
    dist_to_t = ndimage.distance_transform_edt(~bt) if bt.any() else np.full(bt.shape, np.inf)
    dist_to_p = ndimage.distance_transform_edt(~bp) if bp.any() else np.full(bp.shape, np.inf)
    precision = (dist_to_t[bp] <= tol).mean() if bp.any() else 1.0
    recall = (dist_to_p[bt] <= tol).mean() if bt.any() else 1.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("tol", [0, 1, 3])
def test_boundary_f_matches_scipy(registry, tol):
    g = torch.Generator().manual_seed(tol)
    # blobby masks: smoothed noise, thresholded
    noise = torch.rand(3, 1, 24, 24, generator=g)
    blur = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    target = (blur > 0.5).float()
    pred = (torch.nn.functional.avg_pool2d(noise + 0.3 * torch.rand(noise.shape, generator=g), 5, 1, 2)
            > 0.65).float()
    ours = registry.get("boundary-f").create(tolerance=tol)(pred, target)
    ref = [scipy_boundary_f(pred[i, 0].numpy() > 0.5, target[i, 0].numpy() > 0.5, tol) for i in range(3)]
    assert ours.numpy() == pytest.approx(ref, rel=1e-9)


# -- depth ------------------------------------------------------------------------------------------


def test_depth_metrics_by_hand(registry):
    pred, target = t4([[1.0, 4.0]]), t4([[2.0, 2.0]])
    expected = {
        "rmse": math.sqrt((1 + 4) / 2), "mae": (1 + 2) / 2, "absrel": (0.5 + 1.0) / 2,
        "sqrel": (1 / 2 + 4 / 2) / 2, "log10": math.log10(2), "rmse-log": math.log(2),
    }
    for name, value in expected.items():
        assert registry.get(name).create()(pred, target).item() == pytest.approx(value, rel=1e-6), name
    # ratios 1.1, 1.1, 1.5, 1.9: delta1 < 1.25, delta2 < 1.5625, delta3 < 1.953125
    pred, target = t4([[1.1, 2.0, 3.0, 3.8]]), t4([[1.0, 2.2, 2.0, 2.0]])
    for name, value in {"delta1": 2 / 4, "delta2": 3 / 4, "delta3": 4 / 4}.items():
        assert registry.get(name).create()(pred, target).item() == pytest.approx(value), name


def test_depth_metrics_match_numpy(registry):
    g = torch.Generator().manual_seed(1)
    target = torch.rand(3, 1, 16, 16, generator=g) * 9 + 1
    pred = target * torch.exp(0.3 * torch.randn(target.shape, generator=g))
    p, t = pred.double().numpy().reshape(3, -1), target.double().numpy().reshape(3, -1)
    ratio = np.maximum(p / t, t / p)
    refs = {
        "rmse": np.sqrt(((p - t) ** 2).mean(1)), "mae": np.abs(p - t).mean(1),
        "absrel": (np.abs(p - t) / t).mean(1), "sqrel": ((p - t) ** 2 / t).mean(1),
        "log10": np.abs(np.log10(p) - np.log10(t)).mean(1),
        "rmse-log": np.sqrt(((np.log(p) - np.log(t)) ** 2).mean(1)),
        "delta1": (ratio < 1.25).mean(1), "delta2": (ratio < 1.25**2).mean(1),
        "delta3": (ratio < 1.25**3).mean(1),
    }
    for name, ref in refs.items():
        assert registry.get(name).create()(pred, target).numpy() == pytest.approx(ref, rel=1e-5), name


def test_depth_ssim_matches_torchmetrics_on_scaled_maps(registry):
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 24, 24, generator=g, dtype=torch.float64) * 20 + 1
    pred = target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)  # stays > eps
    ours = registry.get("ssim").create()(pred, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [tm_ssim(pred[i:i + 1] / target[i].max(), target[i:i + 1] / target[i].max(),
                       data_range=1.0).item() for i in range(2)]
    assert ours.numpy() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("name", DEPTH)
def test_depth_metrics_finite_at_zero_and_negative_depth(registry, name):
    pred, target = t4([[0.0, -1.0, 2.0]]), t4([[0.0, 1.0, 2.0]])
    if name == "ssim":
        pred, target = pred.repeat(1, 1, 8, 3), target.repeat(1, 1, 8, 3)
    assert torch.isfinite(registry.get(name).create()(pred, target)).all()


def test_perfect_depth(registry):
    t = torch.rand(2, 1, 16, 16) * 5 + 0.5
    for name in DEPTH:
        value = registry.get(name).create()(t, t)
        best = 1.0 if name in HIGHER else 0.0
        assert value.numpy() == pytest.approx([best, best], abs=1e-6), name


# -- global aggregation -----------------------------------------------------------------------------


def test_global_versus_per_image_by_hand():
    p1, t1 = t4([[1, 0, 0, 0]]), t4([[1, 0, 0, 0]])  # TP 1 -> IoU 1
    p2, t2 = t4([[1, 1, 0, 0]]), t4([[1, 0, 1, 1]])  # TP 1, FP 1, FN 2 -> IoU 1/4
    iou = M.MaskIoU()
    per_image = iou(torch.cat([p1, p2]), torch.cat([t1, t2]))
    assert per_image.tolist() == pytest.approx([1.0, 0.25])
    assert per_image.mean().item() == pytest.approx(0.625)
    assert M.global_metric(iou, [(p1, t1), (p2, t2)]) == pytest.approx(2 / (2 + 1 + 2))
    agg = M.GlobalAggregator({"rmse": M.RMSE(), "mae": M.MAE()})
    d1, d3 = t4([[1.0, 1.0, 1.0, 1.0]]), t4([[3.0, 3.0, 3.0, 3.0]])
    agg.update(d1, d1)  # errors 0
    agg.update(d3, d1)  # errors 2
    out = agg.compute()
    # global RMSE sqrt((4 * 0 + 4 * 4) / 8) = sqrt(2); per image RMSE 0 and 2, mean 1; MAE 1 either way
    assert out["rmse"] == pytest.approx(math.sqrt(2))
    assert out["mae"] == pytest.approx(1.0)
    assert M.RMSE()(torch.cat([d1, d3]), torch.cat([d1, d1])).mean().item() == pytest.approx(1.0)
    agg.reset()
    assert math.isnan(agg.compute()["rmse"])


def test_global_aggregation_matches_one_big_image():
    g = torch.Generator().manual_seed(4)
    pred = torch.rand(6, 1, 8, 8, generator=g)
    target = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float()
    for metric in (M.MaskIoU(), M.MaskDice(), M.MaskPrecision(), M.MaskAccuracy()):
        batches = [(pred[:2], target[:2]), (pred[2:], target[2:])]
        one_image = metric(pred.reshape(1, 1, 48, 8), target.reshape(1, 1, 48, 8)).item()
        assert M.global_metric(metric, batches) == pytest.approx(one_image)


def test_global_aggregation_refuses_metrics_without_statistics():
    class Opaque(Metric):
        def forward(self, pred, target):
            return pred.mean(dim=(1, 2, 3))

    with pytest.raises(TypeError, match="cannot be aggregated globally"):
        M.GlobalAggregator({"opaque": Opaque()})
    assert math.isnan(M.GlobalAggregator({"iou": M.MaskIoU()}).compute()["iou"])
