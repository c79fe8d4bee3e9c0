"""HD95 and normalized surface Dice against independent references.

References: hand-built shapes whose answers are known in closed form (two
squares offset by k pixels), and scipy.ndimage's distance transform and
erosion on random blobs, reduced with numpy's percentile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from losslab.core.plugin.manager import load_catalog
from losslab.plugins.metrics import GlobalAggregator, mask_contour, squared_distance_transform


@pytest.fixture(scope="module")
def registry():
    return load_catalog(fresh=True)["metric"]


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top:top + side, left:left + side] = True
    return m


def _t(*masks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))


def _scipy_contour(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), dtype=bool), border_value=0)


def _scipy_hd95_nsd(p: np.ndarray, t: np.ndarray, tol: float) -> tuple[float, float]:
    cp, ct = _scipy_contour(p), _scipy_contour(t)
    to_t = ndimage.distance_transform_edt(~ct)
    to_p = ndimage.distance_transform_edt(~cp)
    d_pt, d_tp = to_t[cp], to_p[ct]
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    nsd = ((d_pt <= tol).sum() + (d_tp <= tol).sum()) / (cp.sum() + ct.sum())
    return float(hd95), float(nsd)


def test_distance_transform_matches_scipy():
    rng = np.random.default_rng(0)
    feats = rng.random((3, 23, 31)) > 0.97
    ours = squared_distance_transform(_t(*feats))[:, 0].numpy()
    ref = np.stack([ndimage.distance_transform_edt(~f) ** 2 for f in feats])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    assert torch.isinf(squared_distance_transform(torch.zeros(1, 1, 5, 5))).all()


def test_contour_counts_the_image_edge_as_outside():
    full = torch.ones(1, 1, 4, 4)
    contour = mask_contour(full)[0, 0]
    assert contour.sum() == 12 and contour[1:3, 1:3].sum() == 0  # the frame, not the inside


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_squares_offset_by_k_pixels_have_hd95_k(registry, k):
    """Two 20-px squares, the second shifted k px right: each contour's farthest 5%+ lies exactly k away."""
    p, t = _square(40, 10, 8 + k, 20), _square(40, 10, 8, 20)
    assert registry.get("hd95").create()(_t(p), _t(t)).item() == pytest.approx(k)


def test_nsd_by_hand():
    """Two 20-px squares, the predicted one 3 px right of the true one; tolerance 2 px.

    Each contour has 76 pixels (20 + 20 on the top and bottom rows, 18 + 18 in the side columns).
    Of the predicted contour, the pixels farther than 2 px from the true contour are:
    - top and bottom rows: the 3 pixels past the true corner lie 1, 2, 3 px from it: 1 each, 2 in all;
    - left column (3 px inside the true square): rows 11, 12 and 27, 28 lie 1-2 px from the true top
      or bottom row; the other 14 lie 3 px from the nearest true side: 14;
    - right column (3 px outside): every one of its 18 pixels is at least 3 px away: 18.
    34 unmatched, and by symmetry 34 on the true contour: NSD = 2 * (76 - 34) / 152 = 42 / 76.
    """
    p, t = _square(40, 10, 11, 20), _square(40, 10, 8, 20)
    nsd = load_catalog()["metric"].get("nsd").create(tolerance=2)(_t(p), _t(t)).item()
    assert nsd == pytest.approx(42 / 76)
    assert _scipy_hd95_nsd(p, t, 2)[1] == pytest.approx(42 / 76)


@pytest.mark.parametrize("tol", [0, 1, 2, 3.5])
def test_hd95_and_nsd_match_scipy_on_random_blobs(registry, tol):
    rng = np.random.default_rng(7)
    preds, targets = [], []
    for _ in range(4):
        base = ndimage.gaussian_filter(rng.random((48, 40)), 3)
        targets.append(base > np.quantile(base, 0.6))
        noisy = ndimage.gaussian_filter(base + 0.03 * rng.standard_normal(base.shape), 1)
        preds.append(noisy > np.quantile(noisy, 0.55))
    hd = registry.get("hd95").create()(_t(*preds), _t(*targets)).numpy()
    nsd = registry.get("nsd").create(tolerance=tol)(_t(*preds), _t(*targets)).numpy()
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        ref_hd, ref_nsd = _scipy_hd95_nsd(p, t, tol)
        assert hd[i] == pytest.approx(ref_hd, abs=1e-5)
        assert nsd[i] == pytest.approx(ref_nsd, abs=1e-9)


def test_empty_mask_conventions(registry):
    empty, square = np.zeros((16, 12), dtype=bool), _square(16, 2, 2, 6)[:, :12]
    hd, nsd = registry.get("hd95").create(), registry.get("nsd").create()
    assert hd(_t(empty), _t(empty)).item() == 0 and nsd(_t(empty), _t(empty)).item() == 1
    assert hd(_t(square), _t(empty)).item() == pytest.approx(math.hypot(15, 11))
    assert hd(_t(empty), _t(square)).item() == pytest.approx(math.hypot(15, 11))
    assert nsd(_t(square), _t(empty)).item() == 0
    assert hd(_t(square), _t(square)).item() == 0 and nsd(_t(square), _t(square)).item() == 1


def test_probabilities_are_thresholded(registry):
    t = _t(_square(20, 4, 4, 8))
    soft = t * 0.8 + 0.1  # 0.9 inside, 0.1 outside: the same mask at threshold 0.5
    assert registry.get("hd95").create()(soft, t).item() == 0
    assert registry.get("nsd").create(tolerance=0)(soft, t).item() == 1


def test_registry_metadata_and_global_aggregation(registry):
    assert registry.get("hd95").meta["higher_is_better"] is False
    assert registry.get("nsd").meta["higher_is_better"] is True
    with pytest.raises(TypeError, match="percentile"):
        GlobalAggregator({"hd95": registry.get("hd95").create()})
    with pytest.raises(ValueError, match="tolerance"):
        registry.get("nsd").create(tolerance=-1)


def test_large_batches_are_chunked_with_the_same_answer(monkeypatch):
    import losslab.plugins.metrics as metrics

    rng = np.random.default_rng(3)
    feats = _t(*(rng.random((5, 12, 12)) > 0.9))
    whole = squared_distance_transform(feats)
    monkeypatch.setattr(metrics, "EDT_MAX_ELEMENTS", 12 * 12 * 12 * 2)  # two images per chunk
    assert torch.equal(metrics.squared_distance_transform(feats), whole)


@pytest.mark.parametrize("name", ["hd95", "nsd"])
def test_boundary_metrics_never_wait_for_the_device(registry, name):
    """The meta-device audit (losslab.core.plugin.host_sync) finds no read-back, upload or host-built tensor."""
    from losslab.core.plugin.host_sync import DEVICE, host_round_trips

    metric = registry.get(name).create().to(DEVICE)
    pred = torch.empty(4, 1, 24, 20, device=DEVICE)
    target = torch.empty(4, 1, 24, 20, device=DEVICE)
    with host_round_trips() as audit:
        out = metric(pred, target)
    assert audit.found == [], "\n".join(map(str, audit.found))
    assert out.shape == (4,) and out.device == DEVICE


def test_region_scores_and_calibration_never_wait_for_the_device():
    from losslab.core.plugin.host_sync import DEVICE, host_round_trips
    from losslab.core.train.calibration import CalibrationCounts
    from losslab.core.train.regions import region_scores

    x = torch.empty(4, 1, 24, 20, device=DEVICE)
    counts = CalibrationCounts(DEVICE)
    with host_round_trips() as audit:
        out = region_scores(x, x, x, x, max_depth=50.0)
        counts.update(x, x)
    assert audit.found == [], "\n".join(map(str, audit.found))
    assert all(v.shape == (4,) for v in out.values())


@pytest.mark.parametrize("shape", [(4, 1, 9, 23), (4, 1, 23, 9), (3, 1, 1, 7), (3, 1, 7, 1)])
def test_distance_transform_on_non_square_images_and_empty_columns(shape):
    """Sparse features leave whole columns and rows empty: the running-maximum pass must still be exact."""
    g = torch.Generator().manual_seed(3)
    features = (torch.rand(shape, generator=g) < 0.08).float()
    features[0] = 0.0
    features[1, 0, 0, 0] = 1.0
    d2 = squared_distance_transform(features)
    assert torch.isinf(d2[0]).all()  # no feature pixel at all
    for i in range(1, shape[0]):
        f = features[i, 0].numpy() > 0.5
        if f.any():
            reference = (ndimage.distance_transform_edt(~f) ** 2).astype(np.float32)
            np.testing.assert_array_equal(d2[i, 0].numpy(), reference)


def test_hd95_and_nsd_share_distances_but_see_in_place_changes(registry):
    """The shared contour distances of one batch must never serve a tensor that changed since."""
    hd95, nsd = registry.get("hd95").create(), registry.get("nsd").create()
    pred = _t(_square(16, 2, 2, 6), _square(16, 4, 4, 8))
    target = _t(_square(16, 3, 3, 6), _square(16, 4, 4, 8))
    first = (hd95(pred, target).clone(), nsd(pred, target).clone())
    pred[0] = torch.from_numpy(_square(16, 8, 8, 6).astype(np.float32))  # in place: same object, new version
    moved = (hd95(pred, target), nsd(pred, target))
    fresh = (hd95(pred.clone(), target.clone()), nsd(pred.clone(), target.clone()))
    for a, b in zip(moved, fresh, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], moved[0])
    assert first[0][1] == moved[0][1] == 0.0  # the unchanged, identical pair
