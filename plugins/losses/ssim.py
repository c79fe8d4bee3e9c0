"""Structural-similarity depth losses: SSIM (single scale) and MS-SSIM (multi-scale).

SSIM compares local means, variances and covariance in a Gaussian window
(sigma 1.5), so it rewards a depth map whose local structure (edges, slopes)
matches the target even where its absolute values are off; it is usually
paired with an L1 term. Depth is normalised to [0, 1], so the dynamic range
is 1 (``C1 = 0.01^2``, ``C2 = 0.03^2``).

Both losses are reported as :math:`(1 - \\text{SSIM}) / 2`, in [0, 1], so that
swapping one for the other keeps a term's weight meaningful.

Why not call ``kornia.losses.ssim_loss`` directly: its differentiable CPU
path (single-channel ``conv2d`` forward and backward) cost about half of the
default U-Net's own forward + backward at batch 16, 64x64 (see
``benchmarks/losses.py``). The Gaussian blur is linear and separable, so
here it is applied as small matrix products, ``A_h @ x @ A_w^T``, where ``A``
is the blur operator of one axis with kornia's reflect padding folded in (or
cropped to the valid windows), cut into bands on long sides
(:class:`AxisBlur`); and the SSIM loss has its chain rule written out
(:class:`_SSIMLossFunction`) instead of recorded op by op. The window is
kornia's (``kornia.filters.get_gaussian_kernel1d``) and the arithmetic is
kornia's, eps included: the tests check values and gradients against
``kornia.losses.ssim_loss``, and values against torchmetrics and
scikit-image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, Literal

import kornia
import torch
import torch.nn.functional as F

from losslab.core.plugin.contracts import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair

#: Wang et al. (2003) weights of the five scales, finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_C1 = 0.01**2
_C2 = 0.03**2
_SIGMA = 1.5
_EPS = 1e-12  # kornia's default, added to SSIM's denominator


#: Sides up to this many output pixels are blurred with one dense matrix; longer ones in bands.
_DENSE_MAX = 96
#: Output rows per band: each band multiplies by a (_BAND, _BAND + window - 1) block only.
_BAND = 32


def blur_operator(n: int, window_size: int, padding: str) -> torch.Tensor:
    """The 1-D Gaussian blur (sigma 1.5) of a side of ``n`` pixels as an ``(m, n)`` float64 matrix.

    ``padding="same"``: ``m = n``, out-of-image taps reflect (kornia's
    ``"reflect"``: index -1 reads pixel 1); needs ``n > window_size // 2``.
    ``padding="valid"``: ``m = n - window_size + 1``, full windows only.
    """
    r = window_size // 2
    kernel = kornia.filters.get_gaussian_kernel1d(window_size, _SIGMA, dtype=torch.float64).reshape(-1)
    idx = torch.arange(n).view(-1, 1) + torch.arange(-r, r + 1).view(1, -1)
    idx = idx.abs()
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    op = torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, idx, kernel.expand(n, -1).contiguous())
    return op[r : n - r] if padding == "valid" else op


class AxisBlur:
    """The blur of one image axis as a few matrix products, and its adjoint.

    A short side uses the dense ``(m, n)`` operator. A long one is cut into
    bands of :data:`_BAND` output pixels; a band reads only the
    ``_BAND + window - 1`` input pixels its windows touch (reflection
    included), so the cost grows with the window, not with the side.
    """

    def __init__(self, n: int, window_size: int, padding: str, dtype: torch.dtype,
                 device: torch.device) -> None:
        op = blur_operator(n, window_size, padding)
        self.n, self.m = n, op.shape[0]
        step = self.m if self.m <= _DENSE_MAX else _BAND
        self.bands: list[tuple[int, int, int, int, torch.Tensor]] = []
        for lo in range(0, self.m, step):
            hi = min(self.m, lo + step)
            used = op[lo:hi].abs().sum(dim=0).nonzero().flatten()
            first, last = (0, n) if step == self.m else (int(used.min()), int(used.max()) + 1)
            self.bands.append((lo, hi, first, last, op[lo:hi, first:last].to(dtype=dtype, device=device)))

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """Blur along the last axis: ``(..., n) -> (..., m)``."""
        if len(self.bands) == 1:
            return x @ self.bands[0][4].T
        return torch.cat([x[..., a:b] @ band.T for _, _, a, b, band in self.bands], dim=-1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Blur along the second-to-last axis: ``(..., n, w) -> (..., m, w)``."""
        if len(self.bands) == 1:
            return self.bands[0][4] @ x
        return torch.cat([band @ x[..., a:b, :] for _, _, a, b, band in self.bands], dim=-2)

    def last_adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`last`: ``(..., m) -> (..., n)`` (no autograd)."""
        if len(self.bands) == 1:
            return g @ self.bands[0][4]
        out = g.new_zeros(*g.shape[:-1], self.n)
        for lo, hi, a, b, band in self.bands:
            out[..., a:b] += g[..., lo:hi] @ band
        return out

    def rows_adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`rows`: ``(..., m, w) -> (..., n, w)`` (no autograd)."""
        if len(self.bands) == 1:
            return self.bands[0][4].T @ g
        out = g.new_zeros(*g.shape[:-2], self.n, g.shape[-1])
        for lo, hi, a, b, band in self.bands:
            out[..., a:b, :] += band.T @ g[..., lo:hi, :]
        return out


#: Axis blurs, keyed by (side, window, padding, dtype, device); a handful of image sizes per run.
_AXES: dict[tuple[int, int, str, torch.dtype, torch.device], AxisBlur] = {}


def _axis(n: int, window_size: int, padding: str, like: torch.Tensor) -> AxisBlur:
    key = (n, window_size, padding, like.dtype, like.device)
    axis = _AXES.get(key)
    if axis is None:
        if len(_AXES) >= 64:
            _AXES.clear()
        axis = _AXES[key] = AxisBlur(n, window_size, padding, like.dtype, like.device)
    return axis


def _blur(x: torch.Tensor, axis_h: AxisBlur, axis_w: AxisBlur) -> torch.Tensor:
    """Separable blur of the last two axes (``A_h @ x @ A_w^T``); differentiable."""
    return axis_h.rows(axis_w.last(x))


def _blur_adjoint(g: torch.Tensor, axis_h: AxisBlur, axis_w: AxisBlur) -> torch.Tensor:
    """Adjoint of :func:`_blur` (``A_h^T @ g @ A_w``): a gradient on the blurred maps back to the images."""
    return axis_w.last_adjoint(axis_h.rows_adjoint(g))


def ssim_maps(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11,
              padding: str = "same") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM and contrast-structure maps of float tensors, ``(B, 1, H', W')`` each.

    Matches ``kornia.metrics.ssim`` (same window, padding and eps). Runs with
    autocast off: ``E[x^2] - E[x]^2`` in float16 would lose the variances.
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):
        h, w = pred.shape[-2:]
        op_h, op_w = _axis(h, window_size, padding, pred), _axis(w, window_size, padding, pred)
        mu_p, e_pp, e_pt = _blur(torch.cat([pred, pred * pred, pred * target], dim=1), op_h, op_w).unbind(1)
        mu_t, e_tt = _blur(torch.cat([target, target * target], dim=1), op_h, op_w).unbind(1)
        mu_pt = mu_p * mu_t
        mu_pp, mu_tt = mu_p.pow(2), mu_t.pow(2)
        cs_num = 2 * (e_pt - mu_pt) + _C2
        cs_den = (e_pp - mu_pp) + (e_tt - mu_tt) + _C2
        lum_num = 2 * mu_pt + _C1
        lum_den = mu_pp + mu_tt + _C1
        ssim = (lum_num * cs_num) / (lum_den * cs_den + _EPS)
        cs = cs_num / cs_den
    return ssim.unsqueeze(1), cs.unsqueeze(1)


class _SSIMLossFunction(torch.autograd.Function):
    """Mean of clamp((1 - SSIM) / 2, 0, 1) with a hand-derived backward.

    Autograd through :func:`ssim_maps` records some thirty elementwise ops and
    their backward; here the forward keeps a few maps and the backward is the
    chain rule written out: with :math:`S = L_n C_n / (L_d C_d)` (luminance
    and contrast-structure numerators and denominators of the blurred moments
    :math:`\\mu_p, E[p^2], E[pt]`), the gradient on each moment is an
    elementwise map, and one adjoint blur of the three maps gives the
    gradient on ``pred``: :math:`B^T g_\\mu + 2p\\,B^T g_{pp} + t\\,B^T g_{pt}`
    (symmetrically for ``target`` when it needs one). ``gradcheck`` and
    kornia's autograd gradient are the tests' references.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, window_size: int,
                padding: str) -> torch.Tensor:
        h, w = pred.shape[-2:]
        op_h, op_w = _axis(h, window_size, padding, pred), _axis(w, window_size, padding, pred)
        stack = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
        mu_p, mu_t, e_pp, e_tt, e_pt = _blur(stack, op_h, op_w).unbind(1)
        l_n = 2 * mu_p * mu_t + _C1
        l_d = mu_p * mu_p + mu_t * mu_t + _C1
        c_n = 2 * (e_pt - mu_p * mu_t) + _C2
        c_d = (e_pp - mu_p * mu_p) + (e_tt - mu_t * mu_t) + _C2
        den = l_d * c_d + _EPS
        ssim = l_n * c_n / den
        half = (1 - ssim) / 2
        ctx.save_for_backward(pred, target, mu_p, mu_t, l_n, l_d, c_n, c_d, den, ssim)
        ctx.ops = (op_h, op_w)
        ctx.inside = (half >= 0) & (half <= 1)  # clamp's gradient mask
        return half.clamp(0, 1).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pred, target, mu_p, mu_t, l_n, l_d, c_n, c_d, den, ssim = ctx.saved_tensors
        op_h, op_w = ctx.ops
        need_p, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=pred.device.type, enabled=False):
            # d loss / d S, per pixel
            g = ctx.inside.to(ssim.dtype) * (-0.5 * grad_out / ssim.numel())
            d_ln, d_cn = g * c_n / den, g * l_n / den
            d_ld, d_cd = -g * ssim * c_d / den, -g * ssim * l_d / den
            maps = []
            if need_p:
                maps.append(2 * mu_t * (d_ln - d_cn) + 2 * mu_p * (d_ld - d_cd))
            if need_t:
                maps.append(2 * mu_p * (d_ln - d_cn) + 2 * mu_t * (d_ld - d_cd))
            maps += [d_cd, 2 * d_cn]  # on E[x^2] (same for p and t) and on E[pt]
            back = _blur_adjoint(torch.stack(maps, dim=1), op_h, op_w)
            g_sq, g_pt = back[:, -2:-1], back[:, -1:]
            grad_p = back[:, :1] + 2 * pred * g_sq + target * g_pt if need_p else None
            k = int(need_p)
            grad_t = back[:, k : k + 1] + 2 * target * g_sq + pred * g_pt if need_t else None
        return grad_p, grad_t, None, None


def _check_window(name: str, window_size: int) -> int:
    if int(window_size) != window_size or window_size < 3 or window_size % 2 == 0:
        raise ValueError(f"loss {name!r}: window_size must be an odd integer >= 3, got {window_size}")
    return int(window_size)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11,
              padding: Literal["same", "valid"] = "same") -> torch.Tensor:
    r"""SSIM loss :math:`\frac{1}{N}\sum_i \frac{1 - \text{SSIM}_i}{2}` over the per-pixel SSIM map.

    .. math::

        \text{SSIM} = \frac{(2\mu_p\mu_t + C_1)(2\sigma_{pt} + C_2)}
                           {(\mu_p^2 + \mu_t^2 + C_1)(\sigma_p^2 + \sigma_t^2 + C_2)}

    with local statistics in a Gaussian window (sigma 1.5) of ``window_size``
    pixels, :math:`C_1 = 0.01^2`, :math:`C_2 = 0.03^2` (dynamic range 1).
    Equal to :func:`kornia.losses.ssim_loss` (computed by :func:`ssim_maps`, faster on CPU).

    Args:
        pred: predicted depth, normalised (values slightly outside [0, 1] are fine).
        target: true depth normalised to [0, 1].
        window_size: odd window side in pixels (>= 3); at most the image size with ``"valid"``.
        padding: ``"same"`` (reflect-padded map of the image's size) or ``"valid"``
            (only full windows, as in the original paper's MATLAB code).

    Shape:
        - pred, target: :math:`(B, 1, H, W)`.
        - output: scalar in [0, 1]; 0 where pred equals target.

    Example:
        >>> d = torch.rand(1, 1, 16, 16)
        >>> ssim_loss(d, d).item() < 1e-6
        True
    """
    window_size = _check_window("ssim", window_size)
    if padding not in ("same", "valid"):
        raise ValueError(f"loss 'ssim': padding must be 'same' or 'valid', got {padding!r}")
    check_pair("ssim", pred, target, min_hw=window_size if padding == "valid" else window_size // 2 + 1)
    p, t = as_float(pred, target)
    with torch.autocast(device_type=p.device.type, enabled=False):
        return _SSIMLossFunction.apply(p, t, window_size, padding)


def ms_ssim_min_size(window_size: int = 11, scales: int = 5) -> int:
    """Smallest image side MS-SSIM can use with ``scales`` scales: the coarsest must hold one window."""
    return window_size * 2 ** (scales - 1)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11,
            weights: Sequence[float] = MS_SSIM_WEIGHTS,
            small_images: Literal["reduce", "error"] = "reduce") -> torch.Tensor:
    r"""Per-image multi-scale SSIM (Wang, Simoncelli and Bovik, 2003), shape ``(B,)``.

    .. math::

        \text{MS-SSIM} = \text{SSIM}_M^{\,w_M} \prod_{j=1}^{M-1} \text{CS}_j^{\,w_j}

    where scale :math:`j` halves the image (2x2 average pooling) ``j - 1``
    times, :math:`\text{CS}_j` is the mean contrast-structure term and
    :math:`\text{SSIM}_M` the mean SSIM at the coarsest scale, over valid
    (unpadded) Gaussian windows. Each factor is clamped at 1e-6 before its
    power (the "relu" normalisation of torchmetrics, kept strictly positive
    so gradients stay finite).

    Minimum size: the coarsest scale must hold a whole window, i.e. the
    image side must be at least ``window_size * 2**(M - 1)`` (176 px for the
    default 11-px window and 5 scales). For a smaller image,
    ``small_images="reduce"`` (the default) drops the coarsest scales that do
    not fit, renormalises the remaining weights to the original total, and
    warns once; ``small_images="error"`` raises instead. Pass fewer
    ``weights`` or a smaller ``window_size`` to silence the warning (e.g.
    ``window_size=7, weights=[0.0448, 0.2856, 0.3001, 0.2363]`` fits 56 px).

    Args:
        pred, target: depth maps :math:`(B, 1, H, W)`.
        window_size: odd side in px of the Gaussian window (>= 3).
        weights: exponent of each scale, finest first; their number is the number of scales.
        small_images: ``"reduce"`` (drop the scales that do not fit, warn once) or ``"error"``.
    """
    window_size = _check_window("ms-ssim", window_size)
    weights = [float(w) for w in weights]
    if not weights or any(w < 0 for w in weights):
        raise ValueError(f"loss 'ms-ssim': weights must be a non-empty list of non-negative floats, "
                         f"got {weights}")
    if small_images not in ("reduce", "error"):
        raise ValueError(f"loss 'ms-ssim': small_images must be 'reduce' or 'error', got {small_images!r}")
    check_pair("ms-ssim", pred, target, min_hw=window_size)
    side = min(pred.shape[-2:])
    fit = 1
    while fit < len(weights) and side // 2**fit >= window_size:
        fit += 1
    if fit < len(weights):
        need = ms_ssim_min_size(window_size, len(weights))
        if small_images == "error":
            raise ValueError(
                f"loss 'ms-ssim': images of {pred.shape[-2]}x{pred.shape[-1]} px are too small for "
                f"{len(weights)} scales with a {window_size}-px window (needs >= {need} px); use fewer "
                f"weights (at most {fit}), a smaller window_size, or small_images='reduce'"
            )
        warnings.warn(
            f"ms-ssim: {pred.shape[-2]}x{pred.shape[-1]} px images fit only {fit} of {len(weights)} scales "
            f"with a {window_size}-px window (needs >= {need} px); using the {fit} finest with weights "
            "renormalised",
            stacklevel=2,
        )
        total = sum(weights)
        kept = weights[:fit]
        weights = [w * total / sum(kept) for w in kept] if sum(kept) > 0 else [total / fit] * fit
    p, t = as_float(pred, target)
    result = torch.ones(p.shape[0], device=p.device, dtype=p.dtype)
    for j, w in enumerate(weights):
        last = j == len(weights) - 1
        ssim_map, cs_map = ssim_maps(p, t, window_size, "valid")
        factor = (ssim_map if last else cs_map).mean(dim=(1, 2, 3))
        result = result * factor.clamp_min(1e-6).pow(w)
        if not last:
            p, t = F.avg_pool2d(p, 2), F.avg_pool2d(t, 2)
    return result


def ms_ssim_loss(pred: torch.Tensor, target: torch.Tensor, window_size: int = 11,
                 weights: Sequence[float] = MS_SSIM_WEIGHTS,
                 small_images: Literal["reduce", "error"] = "reduce") -> torch.Tensor:
    r"""MS-SSIM loss :math:`\frac{1}{B}\sum_b \frac{1 - \text{MS-SSIM}_b}{2}` (see :func:`ms_ssim`).

    Args:
        pred: predicted depth, normalised.
        target: true depth normalised to [0, 1].
        window_size: odd Gaussian window side (sigma 1.5).
        weights: per-scale exponents, finest first; their count is the number of scales.
        small_images: ``"reduce"`` or ``"error"`` for images below the minimum size.

    Shape:
        - pred, target: :math:`(B, 1, H, W)`, sides >= ``window_size``.
        - output: scalar in [0, 0.5]; (almost) 0 where pred equals target.
    """
    return ((1 - ms_ssim(pred, target, window_size, weights, small_images)) / 2).mean()


class SSIMLoss(Loss):
    """(1 - SSIM) / 2 of the depth maps, Gaussian window of ``window_size`` (see :func:`ssim_loss`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    #: SSIM's luminance and contrast terms assume non-negative signals; alone on a linear head it drove
    #: the depth below zero almost everywhere (99.8% of pixels after 24 steps), so it gets a positive head
    positive_depth: ClassVar[bool] = True

    def __init__(self, window_size: int = 11, padding: Literal["same", "valid"] = "same") -> None:
        super().__init__()
        self.window_size = _check_window("ssim", window_size)
        if padding not in ("same", "valid"):
            raise ValueError(f"loss 'ssim': padding must be 'same' or 'valid', got {padding!r}")
        self.padding: Literal["same", "valid"] = padding

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim_loss(pred, target, self.window_size, self.padding)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, padding={self.padding!r}"


class MSSSIMLoss(Loss):
    """(1 - MS-SSIM) / 2 of the depth maps; drops coarse scales on small images (see :func:`ms_ssim`)."""

    task: ClassVar[Task] = "depth"
    input_kind: ClassVar[InputKind] = "depth"
    positive_depth: ClassVar[bool] = True  # as ssim: non-negative signals only

    def __init__(self, window_size: int = 11, weights: Sequence[float] = MS_SSIM_WEIGHTS,
                 small_images: Literal["reduce", "error"] = "reduce") -> None:
        super().__init__()
        self.window_size = _check_window("ms-ssim", window_size)
        self.weights = [float(w) for w in weights]
        if not self.weights or any(w < 0 for w in self.weights):
            raise ValueError(f"loss 'ms-ssim': weights must be a non-empty list of non-negative floats, "
                             f"got {list(weights)}")
        if small_images not in ("reduce", "error"):
            raise ValueError(f"loss 'ms-ssim': small_images must be 'reduce' or 'error', "
                             f"got {small_images!r}")
        self.small_images: Literal["reduce", "error"] = small_images

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ms_ssim_loss(pred, target, self.window_size, self.weights, self.small_images)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, weights={self.weights}, small_images={self.small_images!r}"
