"""Tests of the built-in loss catalog (losslab.plugins.losses).

Each loss is checked four ways: a tiny example worked by hand from its
formula, a second implementation on random inputs (torch.nn.functional,
kornia, torchmetrics, scikit-image, SciPy or a NumPy formula), finite
gradients (``gradcheck`` in float64 for the smooth ones), and its minimum
where the prediction equals the target.
"""

from __future__ import annotations

import math
import warnings

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from losslab.core.plugin.contracts import Loss
from losslab.core.plugin.manager import load_catalog
from losslab.plugins import losses as L
from losslab.plugins.losses.ssim import MS_SSIM_WEIGHTS

MASK_LOSSES = ["bce", "dice", "iou", "tversky", "focal", "focal-tversky", "lovasz", "boundary-bce"]
DEPTH_LOSSES = ["l1", "mse", "huber", "berhu", "ssim", "ms-ssim", "gradient", "smoothness", "silog"]
LOGIT_LOSSES = {"bce", "focal", "lovasz", "boundary-bce"}


def t4(rows: list[list[float]], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (1, 1, H, W) tensor from nested lists."""
    return torch.tensor(rows, dtype=dtype).view(1, 1, len(rows), len(rows[0]))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def registry():
    return load_catalog(fresh=True)["loss"]


def random_mask_pair(seed: int = 0, shape=(2, 1, 12, 12), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype) * 2
    target = (torch.rand(shape, generator=g, dtype=dtype) > 0.6).to(dtype)
    return logits, target


def random_depth_pair(seed: int = 0, shape=(2, 1, 24, 24), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=dtype) * 0.8 + 0.1
    pred = target + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    return pred, target


def model_input(name: str, logits: torch.Tensor) -> torch.Tensor:
    """What the engine hands the loss: logits, or their sigmoid for probability losses."""
    return logits if name in LOGIT_LOSSES else torch.sigmoid(logits)


# -- catalog and contract ---------------------------------------------------------------------------


def test_all_required_names_registered_with_task_and_input_kind(registry):
    assert set(MASK_LOSSES + DEPTH_LOSSES) <= set(registry.names())
    for name in MASK_LOSSES + DEPTH_LOSSES:
        comp = registry.get(name)
        loss = comp.create()  # every param has a default
        assert isinstance(loss, Loss)
        assert comp.meta["task"] == loss.task == ("mask" if name in MASK_LOSSES else "depth")
        mask_kind = "logits" if name in LOGIT_LOSSES else "probabilities"
        expected_kind = mask_kind if name in MASK_LOSSES else "depth"
        assert comp.meta["input_kind"] == loss.input_kind == expected_kind
        assert comp.summary


@pytest.mark.parametrize("name", MASK_LOSSES + DEPTH_LOSSES)
def test_scalar_float32_under_half_precision_inputs(registry, name):
    """AMP safety: half-precision inputs give a finite float32 loss whose gradient reaches the input."""
    if name in MASK_LOSSES:
        logits, target = random_mask_pair(shape=(2, 1, 16, 16), dtype=torch.float32)
        pred = model_input(name, logits)
    else:
        pred, target = random_depth_pair(shape=(2, 1, 32, 32), dtype=torch.float32)
    ref = registry.get(name).create(**({"small_images": "reduce"} if name == "ms-ssim" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ref(pred, target)
        half_pred = pred.to(torch.bfloat16).requires_grad_(True)
        half = ref(half_pred, target.to(torch.bfloat16))
    assert half.shape == () and half.dtype == torch.float32 and torch.isfinite(half)
    assert half.item() == pytest.approx(full.item(), rel=0.05, abs=2e-3)
    half.backward()
    assert half_pred.grad is not None and half_pred.grad.dtype == torch.bfloat16
    assert torch.isfinite(half_pred.grad.float()).all()


@pytest.mark.parametrize("name", MASK_LOSSES + DEPTH_LOSSES)
def test_shape_errors_name_the_expected_shape(registry, name):
    loss = registry.get(name).create()
    good = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        loss(good[:, 0], good[:, 0])
    with pytest.raises(ValueError, match=name):
        loss(good, torch.rand(2, 1, 32, 31))


@pytest.mark.parametrize(
    ("name", "params", "word"),
    [("bce", {"pos_weight": 0}, "pos_weight"), ("tversky", {"alpha": -1}, "alpha"),
     ("focal", {"alpha": 2}, "alpha"), ("focal", {"gamma": -1}, "gamma"), ("huber", {"delta": 0}, "delta"),
     ("ssim", {"window_size": 4}, "window_size"), ("silog", {"variance_focus": 2}, "variance_focus"),
     ("boundary-bce", {"width": 0}, "width"), ("ms-ssim", {"small_images": "pad"}, "small_images")],
)
def test_bad_params_are_refused_by_name(registry, name, params, word):
    with pytest.raises(ValueError, match=word):
        registry.get(name).create(**params)


# -- hand-worked examples ---------------------------------------------------------------------------

X = [[0.0, 2.0], [-1.0, 3.0]]  # logits
T = [[1.0, 0.0], [0.0, 1.0]]  # mask
XF, TF = [v for row in X for v in row], [v for row in T for v in row]
P = [[0.9, 0.2], [0.4, 0.7]]  # probabilities


def test_bce_by_hand():
    w = 2.0
    terms = [-(w * t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))
             for x, t in zip(XF, TF, strict=True)]
    assert L.bce_loss(t4(X), t4(T), pos_weight=w).item() == pytest.approx(sum(terms) / 4, rel=1e-12)


def test_dice_iou_tversky_by_hand():
    # TP = 0.9 + 0.7 = 1.6; FP = 0.2 + 0.4 = 0.6; FN = 0.1 + 0.3 = 0.4; sum p = 2.2; sum t = 2
    s = 1.0
    assert L.dice_loss(t4(P), t4(T), smooth=s).item() == pytest.approx(1 - (2 * 1.6 + s) / (2.2 + 2 + s))
    assert L.iou_loss(t4(P), t4(T), smooth=s).item() == pytest.approx(1 - (1.6 + s) / (2.2 + 2 - 1.6 + s))
    ti = (1.6 + s) / (1.6 + 0.3 * 0.6 + 0.7 * 0.4 + s)
    assert L.tversky_loss(t4(P), t4(T), 0.3, 0.7, s).item() == pytest.approx(1 - ti)
    assert L.focal_tversky_loss(t4(P), t4(T), 0.3, 0.7, 0.75, s).item() == pytest.approx((1 - ti) ** 0.75)


def test_per_image_averages_image_scores():
    p = torch.cat([t4(P), t4([[0.0, 0.0], [0.0, 0.0]])])
    t = torch.cat([t4(T), t4([[0.0, 0.0], [0.0, 0.0]])])
    first = 1 - (3.2 + 1) / (4.2 + 1)
    assert L.dice_loss(p, t, per_image=True).item() == pytest.approx((first + 0.0) / 2)
    assert L.dice_loss(p, t, per_image=False).item() == pytest.approx(first)  # zeros add nothing


def test_focal_by_hand():
    a, g = 0.25, 2.0
    total = 0.0
    for x, t in zip(XF, TF, strict=True):
        pt = sig(x) if t == 1 else 1 - sig(x)
        at = a if t == 1 else 1 - a
        total += -at * (1 - pt) ** g * math.log(pt)
    assert L.focal_loss(t4(X), t4(T), alpha=a, gamma=g).item() == pytest.approx(total / 4, rel=1e-10)


def lovasz_by_sets(logits: list[float], labels: list[int]) -> float:
    """Lovasz extension of the Jaccard loss, evaluated from its set-function definition."""
    errors = [1 - x * (2 * y - 1) for x, y in zip(logits, labels, strict=True)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    truth = {i for i, y in enumerate(labels) if y == 1}

    def jaccard_loss(wrong: set[int]) -> float:
        # pixels in ``wrong`` are mispredicted: predicted set = truth xor wrong
        pred = truth ^ wrong
        union = truth | pred
        return 1 - len(truth & pred) / len(union) if union else 0.0

    total, prefix = 0.0, set()
    for i in order:
        before = jaccard_loss(prefix)
        prefix = prefix | {i}
        total += max(errors[i], 0.0) * (jaccard_loss(prefix) - before)
    return total


def test_lovasz_by_hand_and_by_set_function():
    # errors: 1 - x * sign = [1, 3, 0, -2]; sorted: pixel1 (3), pixel0 (1), pixel2 (0), pixel3 (-2)
    # truth {0, 3}. J({1}) = 1 - 2/3 = 1/3; J({1, 0}) = 1 - 1/3 = 2/3 -> loss = 3 * 1/3 + 1 * 1/3 = 4/3
    assert L.lovasz_hinge_loss(t4(X), t4(T)).item() == pytest.approx(4 / 3)
    assert lovasz_by_sets(XF, [1, 0, 0, 1]) == pytest.approx(4 / 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 3, 4, generator=g, dtype=torch.float64)
    y = (torch.rand(1, 1, 3, 4, generator=g) > 0.5).double()
    ref = lovasz_by_sets(x.flatten().tolist(), [int(v) for v in y.flatten().tolist()])
    assert L.lovasz_hinge_loss(x, y).item() == pytest.approx(ref, rel=1e-10)


def test_boundary_band_and_bce_by_hand():
    target = t4([[1.0, 1.0, 0.0, 0.0]])
    # width 1: dilation [1, 1, 1, 0], erosion [1, 0, 0, 0] (outside the image is ignored)
    assert L.boundary_band(target, 1).flatten().tolist() == [0.0, 1.0, 1.0, 0.0]
    x = [0.5, -0.5, 1.0, -2.0]
    w = 3.0
    weights = [1.0, 1 + w, 1 + w, 1.0]
    ce = [-math.log(sig(x[0])), -math.log(sig(x[1])), -math.log(1 - sig(x[2])), -math.log(1 - sig(x[3]))]
    expected = sum(a * b for a, b in zip(weights, ce, strict=True)) / sum(weights)
    assert L.boundary_bce_loss(t4([x]), target, weight=w, width=1).item() == pytest.approx(expected)


def test_regression_losses_by_hand():
    pred, target = t4([[0.1, 0.5], [-1.0, 0.3]]), t4([[0.0, 0.0], [0.0, 0.3]])
    err = [0.1, 0.5, 1.0, 0.0]
    assert L.l1_loss(pred, target).item() == pytest.approx(sum(err) / 4)
    assert L.mse_loss(pred, target).item() == pytest.approx(sum(e * e for e in err) / 4)
    d = 0.2
    hub = [0.5 * e * e if e <= d else d * (e - 0.5 * d) for e in err]
    assert L.huber_loss(pred, target, delta=d).item() == pytest.approx(sum(hub) / 4)
    c = 0.2 * 1.0  # threshold * max |error|
    ber = [e if e <= c else (e * e + c * c) / (2 * c) for e in err]
    assert L.berhu_loss(pred, target, threshold=0.2).item() == pytest.approx(sum(ber) / 4)


def test_ssim_by_hand_constant_images():
    a, b = 0.3, 0.6
    c1 = 0.01**2
    expected = (1 - (2 * a * b + c1) / (a * a + b * b + c1)) / 2  # variances are 0, so cs = 1
    pred, target = torch.full((1, 1, 11, 11), a, dtype=torch.float64), torch.full((1, 1, 11, 11), b,
                                                                                     dtype=torch.float64)
    # kornia's E[x^2] - E[x]^2 leaves ~1e-17 of rounding in the variances, hence rel=1e-6
    assert L.ssim_loss(pred, target, 11, padding="valid").item() == pytest.approx(expected, rel=1e-6)
    assert L.ssim_loss(pred, target, 11, padding="same").item() == pytest.approx(expected, rel=1e-6)
    # MS-SSIM of constants: every cs is 1, the coarsest scale's SSIM is the luminance term
    ms = L.ms_ssim(pred, target, window_size=3, weights=[0.4, 0.6])
    assert ms.item() == pytest.approx((1 - 2 * expected) ** 0.6, rel=1e-6)


def test_ssim_by_hand_three_by_three_window():
    g = [math.exp(-(k * k) / (2 * 1.5**2)) for k in (-1, 0, 1)]
    g = [v / sum(g) for v in g]
    w = [[gi * gj for gj in g] for gi in g]
    p = [[0.1, 0.4, 0.2], [0.9, 0.5, 0.3], [0.0, 0.7, 0.6]]
    t = [[0.2, 0.4, 0.1], [0.8, 0.6, 0.3], [0.1, 0.5, 0.7]]

    def wmean(f):
        return sum(w[i][j] * f(i, j) for i in range(3) for j in range(3))

    mp, mt = wmean(lambda i, j: p[i][j]), wmean(lambda i, j: t[i][j])
    vp = wmean(lambda i, j: p[i][j] ** 2) - mp**2
    vt = wmean(lambda i, j: t[i][j] ** 2) - mt**2
    cov = wmean(lambda i, j: p[i][j] * t[i][j]) - mp * mt
    c1, c2 = 0.01**2, 0.03**2
    ssim = (2 * mp * mt + c1) * (2 * cov + c2) / ((mp**2 + mt**2 + c1) * (vp + vt + c2))
    assert L.ssim_loss(t4(p), t4(t), 3, padding="valid").item() == pytest.approx((1 - ssim) / 2, rel=1e-9)
    assert L.ms_ssim(t4(p), t4(t), 3, weights=[1.0]).item() == pytest.approx(ssim, rel=1e-9)


def test_gradient_and_smoothness_by_hand():
    pred = t4([[0.0, 0.5], [0.2, 0.2]])
    target = t4([[0.0, 0.1], [0.0, 0.6]])
    # x diffs: pred [0.5, 0.0], target [0.1, 0.6]; y diffs: pred [0.2, -0.3], target [0.0, 0.5]
    grad = (abs(0.5 - 0.1) + abs(0.0 - 0.6)) / 2 + (abs(0.2 - 0.0) + abs(-0.3 - 0.5)) / 2
    assert L.gradient_loss(pred, target).item() == pytest.approx(grad)
    b = 10.0
    smooth = ((0.5 * math.exp(-b * 0.1) + 0.0 * math.exp(-b * 0.6)) / 2
              + (0.2 * math.exp(-b * 0.0) + 0.3 * math.exp(-b * 0.5)) / 2)
    assert L.smoothness_loss(pred, target, edge_weight=b).item() == pytest.approx(smooth)


def test_silog_by_hand():
    pred, target = t4([[0.5, 0.5]]), t4([[0.25, 0.5]])
    g = [math.log(2.0), 0.0]
    lam = 0.85
    var = sum(v * v for v in g) / 2 - lam * (sum(g) / 2) ** 2
    assert L.silog_loss(pred, target, lam).item() == pytest.approx(math.sqrt(var))
    assert L.silog_loss(pred, target, lam, root=False).item() == pytest.approx(var)
    # fully scale-invariant: a prediction off by a global factor costs nothing
    assert L.silog_loss(2 * target, target, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_silog_is_finite_for_non_positive_depth():
    pred = t4([[-0.3, 0.0], [0.2, 0.5]]).requires_grad_(True)
    loss = L.silog_loss(pred, t4([[0.0, 0.4], [0.2, 0.5]]), eps=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


# -- second implementations on random inputs --------------------------------------------------------


def np_bce(x: np.ndarray, t: np.ndarray, pw: float = 1.0) -> np.ndarray:
    logp = -np.logaddexp(0, -x)
    log1mp = -np.logaddexp(0, x)
    return -(pw * t * logp + (1 - t) * log1mp)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_losses_match_references(seed):
    x, t = random_mask_pair(seed)
    p = torch.sigmoid(x)
    xn, tn, pn = x.numpy(), t.numpy(), p.numpy()
    assert L.bce_loss(x, t, 3.0).item() == pytest.approx(np_bce(xn, tn, 3.0).mean(), rel=1e-10)
    tp, fp, fn = (pn * tn).sum(), (pn * (1 - tn)).sum(), ((1 - pn) * tn).sum()
    assert L.dice_loss(p, t).item() == pytest.approx(1 - (2 * tp + 1) / (pn.sum() + tn.sum() + 1))
    assert L.iou_loss(p, t).item() == pytest.approx(1 - (tp + 1) / (tp + fp + fn + 1))
    # identities: Tversky(0.5, 0.5) is Dice, Tversky(1, 1) is Jaccard, focal Tversky with gamma 1 is Tversky
    # (with smooth = 0: smooth enters Tversky once and Dice's doubled form once)
    dice0 = L.dice_loss(p, t, smooth=0).item()
    assert L.tversky_loss(p, t, 0.5, 0.5, smooth=0).item() == pytest.approx(dice0)
    assert L.tversky_loss(p, t, 1.0, 1.0).item() == pytest.approx(L.iou_loss(p, t).item())
    assert L.focal_tversky_loss(p, t, 0.2, 0.8, 1.0).item() == pytest.approx(
        L.tversky_loss(p, t, 0.2, 0.8).item())
    per_image = [1 - (2 * (pn[i] * tn[i]).sum() + 1) / (pn[i].sum() + tn[i].sum() + 1) for i in range(2)]
    assert L.dice_loss(p, t, per_image=True).item() == pytest.approx(np.mean(per_image))
    for a, g in [(0.25, 2.0), (0.6, 0.5)]:
        ref = kornia.losses.binary_focal_loss_with_logits(x, t, alpha=a, gamma=g, reduction="mean")
        assert L.focal_loss(x, t, a, g).item() == pytest.approx(ref.item(), rel=1e-9)
    assert L.focal_loss(x, t, None, 0.0).item() == pytest.approx(np_bce(xn, tn).mean(), rel=1e-10)
    ref = kornia.losses.lovasz_hinge_loss(x, t[:, 0].long())
    assert L.lovasz_hinge_loss(x, t).item() == pytest.approx(ref.item(), rel=1e-9)
    flat = lovasz_by_sets(x.flatten().tolist(), [int(v) for v in t.flatten().tolist()])
    assert L.lovasz_hinge_loss(x, t, per_image=False).item() == pytest.approx(flat, rel=1e-9)
    # boundary-bce: the band from SciPy's grey morphology, weights from the formula
    fp_ = np.ones((5, 5), bool)
    band = np.stack([ndimage.grey_dilation(tn[i, 0], footprint=fp_, mode="nearest")
                     - ndimage.grey_erosion(tn[i, 0], footprint=fp_, mode="nearest")
                     for i in range(2)])[:, None]
    w = 1 + 4.0 * band
    ref = (w * np_bce(xn, tn)).sum() / w.sum()
    assert L.boundary_bce_loss(x, t, weight=4.0, width=2).item() == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_losses_match_references(seed):
    import torchmetrics.functional.image as tmf
    from skimage.metrics import structural_similarity

    pred, target = random_depth_pair(seed)
    pn, tn = pred.numpy(), target.numpy()
    assert L.l1_loss(pred, target).item() == pytest.approx(F.l1_loss(pred, target).item())
    assert L.mse_loss(pred, target).item() == pytest.approx(F.mse_loss(pred, target).item())
    e = np.abs(pn - tn)
    d = 0.05
    assert L.huber_loss(pred, target, d).item() == pytest.approx(
        np.where(e <= d, 0.5 * e**2, d * (e - 0.5 * d)).mean())
    c = 0.2 * e.max()
    assert L.berhu_loss(pred, target, 0.2).item() == pytest.approx(
        np.where(e <= c, e, (e**2 + c**2) / (2 * c)).mean())
    # SSIM: "same" padding agrees with torchmetrics (reflect-padded), "valid" with scikit-image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = tmf.structural_similarity_index_measure(pred, target, data_range=1.0)
    assert L.ssim_loss(pred, target, 11).item() == pytest.approx((1 - tm.item()) / 2, rel=1e-7)
    sk = np.mean([structural_similarity(pn[i, 0], tn[i, 0], gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0) for i in range(2)])
    assert L.ssim_loss(pred, target, 11, padding="valid").item() == pytest.approx((1 - sk) / 2, rel=1e-7)
    assert L.ms_ssim(pred, target, 11, weights=[1.0]).numpy() == pytest.approx(
        [structural_similarity(pn[i, 0], tn[i, 0], gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1.0) for i in range(2)], rel=1e-7)
    # gradients: torchmetrics' forward differences (zero-padded last row / column)
    dy_p, dx_p = tmf.image_gradients(pred)
    dy_t, dx_t = tmf.image_gradients(target)
    n, h, w = pred.shape[0], pred.shape[2], pred.shape[3]
    ref = ((dx_p - dx_t).abs().sum() / (n * h * (w - 1)) + (dy_p - dy_t).abs().sum() / (n * (h - 1) * w))
    assert L.gradient_loss(pred, target).item() == pytest.approx(ref.item())
    # smoothness: kornia's inverse-depth smoothness with the target depth (times beta) as the guide image
    ref = kornia.losses.inverse_depth_smoothness_loss(pred, 7.0 * target)
    assert L.smoothness_loss(pred, target, edge_weight=7.0).item() == pytest.approx(ref.item())
    g = np.log(np.maximum(pn, 1e-3)) - np.log(np.maximum(tn, 1e-3))
    g = g.reshape(2, -1)
    ref = np.sqrt((g**2).mean(1) - 0.85 * g.mean(1) ** 2).mean()
    assert L.silog_loss(pred, target, 0.85).item() == pytest.approx(ref)


@pytest.mark.parametrize(("window", "shape"), [(3, (2, 1, 20, 33)), (7, (2, 1, 20, 33)), (11, (2, 1, 20, 33)),
                                               (11, (1, 1, 100, 150)), (5, (1, 1, 131, 40))])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ssim_equals_kornia_on_non_square_images(window, shape, padding):
    """The matrix-product blur (dense, and banded above 96 px) reproduces kornia's SSIM and its gradients."""
    pred, target = random_depth_pair(7, shape=shape)
    ours_p, ours_t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    ref_p, ref_t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    ours = L.ssim_loss(ours_p, ours_t, window, padding=padding)
    ref = kornia.losses.ssim_loss(ref_p, ref_t, window, padding=padding)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    ours.backward()
    ref.backward()
    assert torch.allclose(ours_p.grad, ref_p.grad, rtol=1e-6, atol=1e-15)
    assert torch.allclose(ours_t.grad, ref_t.grad, rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize(("n", "window", "padding"), [(40, 11, "same"), (150, 11, "same"), (150, 7, "valid"),
                                                       (97, 3, "same")])
def test_axis_blur_matches_its_matrix_and_adjoint(n, window, padding):
    from losslab.plugins.losses.ssim import AxisBlur, blur_operator

    dense = blur_operator(n, window, padding)
    axis = AxisBlur(n, window, padding, torch.float64, torch.device("cpu"))
    assert (len(axis.bands) > 1) == (dense.shape[0] > 96)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, dense.shape[0], 5, generator=g, dtype=torch.float64)
    assert torch.allclose(axis.rows(x), dense @ x)
    assert torch.allclose(axis.last(x.transpose(1, 2)), (dense @ x).transpose(1, 2))
    assert torch.allclose(axis.rows_adjoint(y), dense.T @ y)
    assert torch.allclose(axis.last_adjoint(y.transpose(1, 2)), (dense.T @ y).transpose(1, 2))
    # each row of the "same" operator sums to 1 (reflection keeps the window's mass)
    if padding == "same":
        assert torch.allclose(dense.sum(dim=1), torch.ones(n, dtype=torch.float64))


def test_ms_ssim_matches_torchmetrics_at_full_size():
    """Five scales on 176 px: torchmetrics pads the coarsest SSIM (reflect), we keep valid windows."""
    import torchmetrics.functional.image as tmf

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 176, 176, generator=g, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tmf.multiscale_structural_similarity_index_measure(pred, target, data_range=1.0,
                                                                 reduction="none")
    ours = L.ms_ssim(pred, target)
    assert ours.numpy() == pytest.approx(ref.numpy(), abs=2e-3)
    assert L.ms_ssim_loss(pred, target).item() == pytest.approx(((1 - ours) / 2).mean().item())


def test_ms_ssim_small_images_reduce_or_error():
    pred, target = random_depth_pair(0, shape=(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"too small.*176"):
        L.ms_ssim(pred, target, small_images="error")
    with pytest.warns(UserWarning, match="fit only 3 of 5 scales"):
        reduced = L.ms_ssim(pred, target)
    w = [0.0448, 0.2856, 0.3001]
    total = sum(MS_SSIM_WEIGHTS)
    explicit = L.ms_ssim(pred, target, weights=[v * total / sum(w) for v in w])
    assert reduced.numpy() == pytest.approx(explicit.numpy(), rel=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        L.ms_ssim(pred[..., :8, :8], target[..., :8, :8])


# -- gradients --------------------------------------------------------------------------------------

SMOOTH = ["bce", "dice", "iou", "tversky", "focal", "focal-tversky", "boundary-bce",
          "l1", "mse", "huber", "ssim", "ms-ssim", "gradient", "smoothness", "silog"]


@pytest.mark.parametrize("name", SMOOTH)
def test_gradcheck_float64(registry, name):
    params = {"ms-ssim": {"window_size": 3, "weights": [0.5, 0.5]}, "ssim": {"window_size": 5}}.get(name, {})
    loss = registry.get(name).create(**params)
    if name in MASK_LOSSES:
        x, t = random_mask_pair(1, shape=(2, 1, 6, 6))
        pred = model_input(name, x).detach()
    else:
        pred, t = random_depth_pair(1, shape=(2, 1, 8, 8))
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, t), (pred,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", MASK_LOSSES + DEPTH_LOSSES)
def test_gradients_finite_at_random_and_at_the_target(registry, name):
    loss = registry.get(name).create(**({"window_size": 3} if name == "ms-ssim" else {}))
    if name in MASK_LOSSES:
        x, t = random_mask_pair(2, shape=(2, 1, 16, 16))
        points = [model_input(name, x), model_input(name, 30 * (2 * t - 1)) if name in LOGIT_LOSSES else t]
    else:
        pred, t = random_depth_pair(2, shape=(2, 1, 48, 48))
        points = [pred, t]
    for point in points:
        p = point.detach().clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss(p, t).backward()
        assert torch.isfinite(p.grad).all(), name


def test_berhu_gradient_matches_its_formula():
    pred, target = random_depth_pair(4, shape=(1, 1, 5, 5))
    pred.requires_grad_(True)
    L.berhu_loss(pred, target, 0.3).backward()
    e = (pred - target).detach()
    c = 0.3 * e.abs().max()
    expected = torch.where(e.abs() <= c, e.sign(), e / c) / e.numel()
    assert torch.allclose(pred.grad, expected)


# -- minimum where prediction equals target ---------------------------------------------------------


@pytest.mark.parametrize("name", MASK_LOSSES + DEPTH_LOSSES)
def test_minimum_at_the_target(registry, name):
    loss = registry.get(name).create(**({"window_size": 3} if name == "ms-ssim" else {}))
    if name in MASK_LOSSES:
        x, t = random_mask_pair(5, shape=(2, 1, 16, 16))
        perfect = 30 * (2 * t - 1) if name in LOGIT_LOSSES else t
        noisy = model_input(name, x)
    else:
        noisy, t = random_depth_pair(5, shape=(2, 1, 48, 48))
        perfect = t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at_target, off_target = loss(perfect, t).item(), loss(noisy, t).item()
        if name == "smoothness":
            # a regulariser: its minimum is a flat prediction; target edges lower the cost of the target
            flat = torch.full_like(t, 0.5)
            assert loss(flat, t).item() == 0.0
            assert at_target < registry.get(name).create(edge_weight=0.0)(t, t).item()
            return
    assert at_target == pytest.approx(0.0, abs=1e-4)
    assert off_target > at_target + 1e-3


def test_overlap_losses_zero_for_empty_mask_predicted_empty():
    empty = torch.zeros(2, 1, 8, 8)
    for fn in (L.dice_loss, L.iou_loss, L.tversky_loss):
        assert fn(empty, empty).item() == 0.0
    assert L.lovasz_hinge_loss(torch.full_like(empty, -5.0), empty).item() == 0.0


def test_focal_stable_for_huge_logits():
    t = t4([[1.0, 0.0]], torch.float32)
    x = t4([[-200.0, 200.0]], torch.float32).requires_grad_(True)
    loss = L.focal_loss(x, t, None, 2.0)
    loss.backward()
    assert loss.item() == pytest.approx(200.0, rel=1e-4)  # (1 - p_t)^2 = 1, -log p_t = 200
    assert torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", MASK_LOSSES + DEPTH_LOSSES)
def test_cuda_matches_cpu(registry, name):
    loss = registry.get(name).create(**({"window_size": 3} if name == "ms-ssim" else {}))
    if name in MASK_LOSSES:
        x, t = random_mask_pair(6, shape=(2, 1, 32, 32), dtype=torch.float32)
        pred = model_input(name, x)
    else:
        pred, t = random_depth_pair(6, shape=(2, 1, 48, 48), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = loss(pred, t)
        with torch.autocast("cuda", dtype=torch.float16):
            gpu = loss(pred.cuda().half(), t.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert gpu.item() == pytest.approx(cpu.item(), rel=0.02, abs=1e-3)


@pytest.mark.parametrize("module", ["bce", "focal", "gradient", "lovasz", "overlap", "regression", "ssim"])
def test_docstring_examples_hold(module):
    """Each loss's docstring example is a value worked by hand: run it."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"losslab.plugins.losses.{module}"))
    assert result.attempted > 0 and result.failed == 0
