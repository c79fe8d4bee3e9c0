"""Structural-similarity depth losses: SSIM (single scale, via kornia) and MS-SSIM (multi-scale).

SSIM compares local means, variances and covariance in a Gaussian window
(sigma 1.5), so it rewards a depth map whose local structure (edges, slopes)
matches the target even where its absolute values are off; it is usually
paired with an L1 term. Depth is normalised to [0, 1], so the dynamic range
is 1 (``C1 = 0.01^2``, ``C2 = 0.03^2``).

Both losses are reported as :math:`(1 - \\text{SSIM}) / 2`, in [0, 1], so that
swapping one for the other keeps a term's weight meaningful.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, Literal

import kornia
import torch
import torch.nn.functional as F
from losslab.core.components import InputKind, Loss, Task
from losslab.plugins.losses._checks import as_float, check_pair

#: Wang et al. (2003) weights of the five scales, finest first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_C1 = 0.01**2
_C2 = 0.03**2
_SIGMA = 1.5


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
    Computed by :func:`kornia.losses.ssim_loss`.

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
    check_pair("ssim", pred, target, min_hw=window_size if padding == "valid" else 1)
    p, t = as_float(pred, target)
    return kornia.losses.ssim_loss(p, t, window_size, max_val=1.0, padding=padding)


def ms_ssim_min_size(window_size: int = 11, scales: int = 5) -> int:
    """Smallest image side MS-SSIM can use with ``scales`` scales: the coarsest must hold one window."""
    return window_size * 2 ** (scales - 1)


def _ssim_terms(p: torch.Tensor, t: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term over the valid windows, shape (B,)."""
    k = kernel.numel()
    kx = kernel.view(1, 1, 1, k)
    ky = kernel.view(1, 1, k, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kx), ky)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p.pow(2)
    var_t = blur(t * t) - mu_t.pow(2)
    cov = blur(p * t) - mu_p * mu_t
    cs = (2 * cov + _C2) / (var_p + var_t + _C2)
    lum = (2 * mu_p * mu_t + _C1) / (mu_p.pow(2) + mu_t.pow(2) + _C1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


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
    kernel = kornia.filters.get_gaussian_kernel1d(window_size, _SIGMA, device=p.device, dtype=p.dtype)
    kernel = kernel.reshape(-1)
    result = torch.ones(p.shape[0], device=p.device, dtype=p.dtype)
    for j, w in enumerate(weights):
        ssim_j, cs_j = _ssim_terms(p, t, kernel)
        last = j == len(weights) - 1
        factor = ssim_j if last else cs_j
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
