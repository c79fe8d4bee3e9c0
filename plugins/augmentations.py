"""Built-in batch augmentations: ``geometric`` and ``photometric``, with Kornia's functional API, on the batch's device.

A batch is ``{"bg": (B,3,H,W), "fg_bg": (B,3,H,W), "mask": (B,1,H,W), "depth":
(B,1,H,W)}``, all float; an augmentation returns a new dict with the same keys
and shapes, on the same device (other entries pass through untouched).

Why functional, not ``kornia.augmentation``: an ``AugmentationSequential`` of
``RandomHorizontalFlip`` + ``RandomAffine`` and one of ``ColorJiggle`` cost
10-18 ms per batch of 32 at 64x64 on a 2-core CPU, most of it parameter
generation, validation and per-call bookkeeping, against about 3 ms for the
warps and colour ops themselves (this module: about 5 ms for both). So each augmentation draws its own
parameters (a few dozen numbers per batch) and calls Kornia's functional
building blocks (``get_affine_matrix2d``, ``normalize_homography``,
``kornia.enhance.adjust_*``) directly, with the same conventions as the
Kornia modules they replace.

Reproducibility: each augmentation owns a CPU ``torch.Generator`` seeded with
``seed`` and draws every random parameter from it (on the CPU, then queued to
the batch's device once per call with ``losslab.core.device.upload``, so the
host never waits for the device). So the same seed and the same sequence of
batches give the same outputs on any machine and device, and torch's global
random generators are never read or advanced. Random tensors that live on the
device (noise) come from a device generator seeded from the same stream.
``state()`` and ``load_state()`` hand that stream's position to the checkpoint
and back, so a resumed run draws what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue
from kornia.geometry.conversions import convert_affinematrix_to_homography, normalize_homography
from kornia.geometry.transform import get_affine_matrix2d, invert_affine_transform

from losslab.core.device import upload

IMAGE_KEYS = ("bg", "fg_bg")
TARGET_KEYS = ("mask", "depth")
PADDING_MODES = ("reflection", "border", "zeros")


class AugmentationError(ValueError):
    """A batch or a parameter an augmentation cannot use; the message says what was expected."""


def check_batch(batch: dict[str, torch.Tensor], where: str) -> tuple[int, int, int]:
    """Validate the four keys' shapes and devices; return (B, H, W)."""
    missing = [k for k in (*IMAGE_KEYS, *TARGET_KEYS) if k not in batch]
    if missing:
        raise AugmentationError(
            f"augmentation {where!r}: batch lacks {', '.join(missing)}; a batch is a dict with bg, fg_bg "
            f"(B,3,H,W), mask and depth (B,1,H,W) tensors (got keys {sorted(batch)})"
        )
    ref = batch["bg"]
    if not isinstance(ref, torch.Tensor) or ref.ndim != 4:
        raise AugmentationError(
            f"augmentation {where!r}: bg must be a (B,3,H,W) tensor, got {_describe(ref)}"
        )
    b, _, h, w = ref.shape
    for key in (*IMAGE_KEYS, *TARGET_KEYS):
        t = batch[key]
        channels = 3 if key in IMAGE_KEYS else 1
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (b, channels, h, w):
            raise AugmentationError(
                f"augmentation {where!r}: {key} must have shape {(b, channels, h, w)} to match bg, "
                f"got {_describe(t)}"
            )
        if not t.is_floating_point():
            raise AugmentationError(
                f"augmentation {where!r}: {key} must be a float tensor (images in [0, 1]), got {t.dtype}; "
                "convert with .float() (and / 255 for uint8 images) before augmenting"
            )
        if t.device != ref.device:
            raise AugmentationError(
                f"augmentation {where!r}: {key} is on {t.device} but bg is on {ref.device}; "
                "move the whole batch to one device first"
            )
    return b, h, w


def _describe(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


class SeededAugmentation:
    """Base of the built-ins: a private CPU random stream that every random parameter comes from."""

    name = "augmentation"

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise AugmentationError(f"augmentation {self.name!r}: seed must be an int, got {seed!r}")
        self.seed = seed
        self._stream = torch.Generator().manual_seed(seed)

    def _uniform(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) float64 draws from this augmentation's stream, on the CPU."""
        return torch.rand(shape, generator=self._stream, dtype=torch.float64)

    def _next_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._stream).item())

    def state(self) -> dict[str, torch.Tensor]:
        """The random stream's position, as plain data for the checkpoint (a resumed run draws on from it)."""
        return {"stream": self._stream.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the stream from where :meth:`state` was taken."""
        self._stream.set_state(state["stream"].cpu())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class Geometric(SeededAugmentation):
    """Horizontal flip and random affine, with the same parameters for bg, fg_bg, mask and depth.

    Each sample draws its own parameters: with probability ``hflip_p`` a
    horizontal flip, and with probability ``affine_p`` an affine with a
    rotation in ``[-degrees, degrees]`` about the image centre, a shift of up
    to ``translate`` times the width and height, and a zoom in ``scale`` (the
    distributions and pixel conventions of ``kornia.augmentation.RandomAffine``).
    Flip and affine are composed into one 2x3 matrix per sample (the flip is a
    mirror about the centre column, applied first), so each pixel is
    resampled once: bg and fg_bg are stacked on channels and sampled in one
    ``grid_sample`` call (bilinear by default), mask and depth in another with
    nearest interpolation, so no mask or depth value appears that was not in
    the input.

    Both calls share one sampling grid, built here rather than by two
    ``kornia.geometry.transform.warp_affine`` calls: the result is the same
    (same matrices, same pixel-centre convention, ``align_corners=False`` as
    in ``RandomAffine``), but ``warp_affine`` rebuilds its grid on every call,
    which on a CPU costs more than the sampling itself.

    Samples without an affine are flipped (or left) exactly with
    ``torch.flip`` instead of warped: a bilinear warp by the flip or identity
    matrix is off by up to ~1e-5 in float32 (rounding in the sampling grid),
    and untouched pixels should stay bit-identical. Only the samples that drew
    an affine are warped, which is also cheaper than warping the whole batch.

    Borders uncovered by rotation, translation or zoom-out are filled by
    ``padding_mode``: ``"reflection"`` (default) or ``"border"`` copy existing
    pixels (so depth values stay those of the input, and the mask stays
    consistent with the images); ``"zeros"`` fills images, mask and depth
    with 0.

    Args:
        seed: seed of the random stream.
        hflip_p: probability of a horizontal flip.
        affine_p: probability of a random affine.
        degrees: rotation drawn from ``[-degrees, degrees]``.
        translate: maximum shift as a fraction of width and height.
        scale: zoom factor range ``(low, high)``.
        padding_mode: ``"reflection"``, ``"border"`` or ``"zeros"``.
        image_resample: interpolation of bg and fg_bg, ``"bilinear"`` (default) or
            ``"nearest"`` (every output pixel is then a copy of an input pixel, so a
            mask thresholded from the warped images equals the warped mask exactly).
    """

    name = "geometric"

    def __init__(
        self,
        seed: int = 0,
        hflip_p: float = 0.5,
        affine_p: float = 0.5,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.9, 1.1),
        padding_mode: str = "reflection",
        image_resample: str = "bilinear",
    ) -> None:
        super().__init__(seed)
        _check_prob("geometric", "hflip_p", hflip_p)
        _check_prob("geometric", "affine_p", affine_p)
        if degrees < 0 or not 0 <= translate < 1:
            raise AugmentationError(
                f"augmentation 'geometric': need degrees >= 0 and 0 <= translate < 1, "
                f"got degrees={degrees}, translate={translate}"
            )
        scale_range = tuple(float(s) for s in scale)
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise AugmentationError(
                f"augmentation 'geometric': scale must be a (low, high) pair, 0 < low <= high; got {scale!r}"
            )
        if padding_mode not in PADDING_MODES:
            raise AugmentationError(
                f"augmentation 'geometric': padding_mode must be one of {', '.join(PADDING_MODES)}, "
                f"got {padding_mode!r}"
            )
        if image_resample not in ("bilinear", "nearest"):
            raise AugmentationError(
                f"augmentation 'geometric': image_resample is 'bilinear' or 'nearest', got {image_resample!r}"
            )
        self.hflip_p, self.affine_p = float(hflip_p), float(affine_p)
        self.degrees, self.translate, self.scale = float(degrees), float(translate), scale_range
        self.padding_mode, self.image_resample = padding_mode, image_resample

    def draw(self, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw one call's parameters, on the CPU: flip (B,) bool, affine (B,) bool, matrices (B, 2, 3).

        ``matrices`` are Kornia's source-to-destination pixel matrices (pixel
        centres at integer coordinates), float64: the flip ``x -> (w - 1) - x``
        where a sample flips, then the affine where it drew one.
        """
        u = self._uniform(b, 6)
        flip, affine = u[:, 0] < self.hflip_p, u[:, 1] < self.affine_p
        f64 = torch.float64
        angle = (2 * u[:, 2] - 1) * self.degrees
        shift = (2 * u[:, 3:5] - 1) * self.translate * torch.tensor([w, h], dtype=f64)
        low, high = self.scale
        zoom = (low + (high - low) * u[:, 5:6]).expand(b, 2)
        centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]], dtype=f64).expand(b, 2)
        eye = torch.eye(3, dtype=f64).expand(b, 3, 3)
        move = torch.where(affine[:, None, None], get_affine_matrix2d(shift, centre, zoom, angle), eye)
        mirror = eye.clone()
        mirror[flip, 0, 0], mirror[flip, 0, 2] = -1.0, w - 1.0
        return flip, affine, (move @ mirror)[:, :2].contiguous()

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, h, w = check_batch(batch, self.name)
        flip, affine, matrices = self.draw(b, h, w)
        dev = batch["bg"].device
        out = dict(batch)
        grid = self._grid(matrices[affine], h, w, dev, batch["bg"].dtype) if bool(affine.any()) else None
        if grid is not None and bool(affine.all()):  # every sample warps: two calls, no bookkeeping
            images = self._sample(torch.cat([batch["bg"], batch["fg_bg"]], dim=1), grid, self.image_resample)
            targets = self._sample(torch.cat([batch["mask"], batch["depth"]], dim=1), grid, "nearest")
            out["bg"], out["fg_bg"] = images[:, :3].contiguous(), images[:, 3:].contiguous()
            out["mask"], out["depth"] = targets[:, :1].contiguous(), targets[:, 1:].contiguous()
            return out
        # Otherwise three kinds of sample: warped (drew an affine; its flip is folded into its matrix),
        # flipped only (exact torch.flip), untouched (copied as they are). Copies of the four tensors
        # receive the first two kinds by index, so each pixel is written at most twice.
        keys = (*IMAGE_KEYS, *TARGET_KEYS)
        for key in keys:
            out[key] = batch[key].clone(memory_format=torch.contiguous_format)
        if (flip_idx := _indices(flip & ~affine, dev)) is not None:
            for key in keys:
                out[key].index_copy_(0, flip_idx, batch[key].index_select(0, flip_idx).flip(-1))
        if grid is not None and (warp_idx := _indices(affine, dev)) is not None:
            for pair, mode in ((IMAGE_KEYS, self.image_resample), (TARGET_KEYS, "nearest")):
                stacked = torch.cat([batch[key].index_select(0, warp_idx) for key in pair], dim=1)
                warped = self._sample(stacked, grid, mode)
                split = batch[pair[0]].shape[1]
                out[pair[0]].index_copy_(0, warp_idx, warped[:, :split])
                out[pair[1]].index_copy_(0, warp_idx, warped[:, split:])
        return out

    @staticmethod
    def _grid(matrices: torch.Tensor, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The (N, H, W, 2) ``grid_sample`` grid of source-to-destination pixel matrices (N, 2, 3).

        What ``warp_affine`` computes, once: the destination-to-source matrix in
        normalized coordinates (float64, on the CPU), applied to the
        destination pixel centres.
        """
        inverse = convert_affinematrix_to_homography(invert_affine_transform(matrices))
        theta = normalize_homography(inverse, (h, w), (h, w), align_corners=False)[:, :2]
        t = upload(theta.to(dtype), device)[:, None, None]  # (N, 1, 1, 2, 3); cast on the host (no float64 on MPS)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=device, dtype=dtype)[None, None, :, None]
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=device, dtype=dtype)[None, :, None, None]
        return xs * t[..., 0] + (ys * t[..., 1] + t[..., 2])

    def _sample(self, x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
        return _grid_sample(x, grid, mode, self.padding_mode)


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``F.grid_sample`` with pixel centres (``align_corners=False``), as every warp of this module samples."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        # torch's CPU half-precision grid_sample returns wrong values on larger images (see kornia's
        # warp_affine, which samples these in float32 for the same reason)
        return _grid_sample(x.float(), grid.float(), mode, padding_mode).to(x.dtype)
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


class Photometric(SeededAugmentation):
    """Colour jitter (brightness, contrast, saturation, hue) and optional gaussian noise, images only.

    With ``independent=False`` (default) bg and fg_bg of a sample get the same
    jitter and the same noise, so pixels the fg does not cover stay equal in
    both images; with ``independent=True`` each image draws its own jitter and
    noise, simulating a lighting change between the two shots. Mask and depth
    are returned untouched. Outputs are clamped to [0, 1].

    A jittered sample goes through four Kornia functional steps in this fixed
    order (``ColorJiggle``'s conventions; ColorJiggle itself shuffles the order
    per batch unless told otherwise): brightness adds a shift drawn from
    ``[-brightness, brightness]`` (``adjust_brightness``), contrast multiplies
    by a factor from ``[1 - contrast, 1 + contrast]`` (``adjust_contrast``, a
    per-pixel scale, not the mean-based variant), saturation blends each pixel
    with its own luma by a factor from ``[1 - saturation, 1 + saturation]``
    (``gray + f * (rgb - gray)`` with Kornia's ``rgb_to_grayscale``: the
    PIL/torchvision definition, a tenth of the cost of Kornia's HSV
    ``adjust_saturation`` on a CPU), clamped to [0, 1]; hue rotates by a shift from ``[-hue, hue]`` turns
    of the hue circle (``adjust_hue``, in radians). A step whose strength is 0
    is skipped. Every step is per pixel, so a pixel's result depends only on
    its value and its sample's factors: that is what keeps uncovered pixels
    equal in bg and fg_bg. Samples not drawn for the jitter (``jitter_p``) are
    left exactly as they were.

    ``hue`` defaults to 0 because it is by far the dearest step on a CPU (an
    RGB -> HSV -> RGB round trip, several times the cost of the other three
    together); set it, e.g. ``hue: 0.05``, where colour shifts matter.

    Args:
        seed: seed of the random stream.
        brightness, contrast, saturation: jitter strength (see above for the ranges).
        hue: hue shift drawn from ``[-hue, hue]`` turns of the hue circle (at most 0.5).
        jitter_p: probability of the colour jitter per sample.
        noise_std: standard deviation of additive gaussian noise (0 disables it).
        noise_p: probability of the noise per sample.
        independent: jitter (and noise) bg and fg_bg independently.
    """

    name = "photometric"

    def __init__(
        self,
        seed: int = 0,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.0,
        jitter_p: float = 0.8,
        noise_std: float = 0.0,
        noise_p: float = 0.5,
        independent: bool = False,
    ) -> None:
        super().__init__(seed)
        _check_prob("photometric", "jitter_p", jitter_p)
        _check_prob("photometric", "noise_p", noise_p)
        for label, value, high in (("brightness", brightness, 1.0), ("contrast", contrast, 1.0),
                                   ("saturation", saturation, 1.0), ("hue", hue, 0.5)):
            if not 0 <= value <= high:
                raise AugmentationError(
                    f"augmentation 'photometric': {label} must be in [0, {high}], got {value}"
                )
        if noise_std < 0:
            raise AugmentationError(f"augmentation 'photometric': noise_std must be >= 0, got {noise_std}")
        self.strengths = (float(brightness), float(contrast), float(saturation), float(hue))
        self.jitter_p = float(jitter_p)
        self.noise_std, self.noise_p, self.independent = float(noise_std), float(noise_p), bool(independent)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` samples' jitter, on the CPU: on (n,) bool and factors (n, 4) float64.

        The factors are the arguments of ``adjust_brightness``, ``adjust_contrast``,
        ``adjust_saturation`` and ``adjust_hue`` (radians), in that order.
        """
        u = self._uniform(n, 5)
        on = u[:, 0] < self.jitter_p
        spread = (2 * u[:, 1:] - 1) * torch.tensor(self.strengths, dtype=torch.float64)
        factors = spread + torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
        factors[:, 3] *= 2 * math.pi
        return on, factors

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, _, _ = check_batch(batch, self.name)
        both = torch.cat([batch["bg"], batch["fg_bg"]], dim=0)  # (2B, 3, H, W): bg then fg_bg
        if self.independent:  # every image draws its own factors
            on, factors = self.draw(2 * b)
        else:  # one draw per pair, shared by its bg and fg_bg
            on, factors = self.draw(b)
            on, factors = on.repeat(2), factors.repeat(2, 1)
        factors = upload(factors[on].to(both.dtype), both.device)  # cast on the host, then one copy
        if bool(on.all()):
            both = self._jitter(both, factors)
        elif (idx := _indices(on, both.device)) is not None:  # jitter only the drawn samples, in place
            both.index_copy_(0, idx, self._jitter(both.index_select(0, idx), factors))
        bg, fg_bg = both[:b], both[b:]
        if self.noise_std > 0:
            gen = torch.Generator(device=bg.device).manual_seed(self._next_seed())
            bg, fg_bg = self._add_noise(bg, fg_bg, gen)
        out = dict(batch)
        out["bg"], out["fg_bg"] = bg.contiguous(), fg_bg.contiguous()
        return out

    def _jitter(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """The four steps in their fixed order on fresh (N, 3, H, W) images (clamped in place) with (N, 4) factors."""
        brightness, contrast, saturation, hue = self.strengths
        x = x.clamp_(0.0, 1.0)
        if brightness > 0:
            x = adjust_brightness(x, factors[:, 0])
        if contrast > 0:
            x = adjust_contrast(x, factors[:, 1])
        if saturation > 0:
            x = _blend_with_gray(x, factors[:, 2])
        if hue > 0:
            x = adjust_hue(x, factors[:, 3])
        return x.clamp_(0.0, 1.0)

    def _add_noise(
        self, bg: torch.Tensor, fg_bg: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian noise on the samples selected with ``noise_p``; one field per pair unless independent."""
        b, dev, dtype = bg.shape[0], bg.device, bg.dtype
        on = (torch.rand(b, 1, 1, 1, generator=gen, device=dev) < self.noise_p).to(dtype) * self.noise_std
        noise = torch.randn(bg.shape, generator=gen, device=dev, dtype=dtype) * on
        fg_noise = noise
        if self.independent:
            fg_noise = torch.randn(bg.shape, generator=gen, device=dev, dtype=dtype) * on
        return (bg + noise).clamp_(0.0, 1.0), (fg_bg + fg_noise).clamp_(0.0, 1.0)


def _blend_with_gray(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Saturation as a per-pixel blend with the pixel's luma (factor 0: gray, 1: unchanged)."""
    gray = rgb_to_grayscale(x)
    return (gray + factor.view(-1, 1, 1, 1) * (x - gray)).clamp_(0.0, 1.0)


def _indices(selected: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The positions of a CPU bool mask as an index tensor on ``device``; None where nothing is selected."""
    if not bool(selected.any()):
        return None
    return upload(selected.nonzero().squeeze(1), device)


def _check_prob(where: str, label: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise AugmentationError(f"augmentation {where!r}: {label} is a probability in [0, 1], got {p}")


class ChannelMix(SeededAugmentation):
    """Per sample, the colour channels in a random order and, with ``invert_p``, inverted (1 - x); images only.

    The same permutation and inversion go to a sample's bg and fg_bg, so ``|fg_bg - bg|`` (what marks the
    mask) is unchanged, and so are every pixel's depth and the scene's geometry. What changes is each
    background's colour fingerprint: one of 6 channel orders (times 2 with inversion). Why: with few backgrounds
    a net can learn a per-background quantity (a wall's depth) by the background's colours instead of by a rule
    that holds on new ones; here the colours stop naming the background. In ``depth_losses`` (silog, 3 seeds)
    it raised held-out delta1 from 0.836 to 0.873 and cut AbsRel from 0.107 to 0.096 (docs/findings.md);
    inversion (``invert_p: 0.5``) cost mask IoU there (0.944 against 0.958, 2 seeds), so it is off by default.

    Args:
        p: probability that a sample is mixed at all.
        invert_p: probability that a mixed sample is also inverted.
    """

    name = "channel-mix"

    def __init__(self, seed: int = 0, p: float = 1.0, invert_p: float = 0.0) -> None:
        super().__init__(seed)
        _check_prob(self.name, "p", p)
        _check_prob(self.name, "invert_p", invert_p)
        self.p, self.invert_p = float(p), float(invert_p)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples' channel orders (n, 3) long and inversion flags (n,) bool, on the CPU."""
        u = self._uniform(n, 3)
        order = torch.argsort(torch.rand(n, 3, generator=self._stream, dtype=torch.float64), dim=1)
        mixed = u[:, 0] < self.p
        order = torch.where(mixed[:, None], order, torch.arange(3).expand(n, 3))
        invert = mixed & (u[:, 1] < self.invert_p)
        return order, invert

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, h, w = check_batch(batch, self.name)
        order, invert = self.draw(b)
        device = batch["bg"].device
        index = upload(order, device).view(b, 3, 1, 1).expand(b, 3, h, w)
        flip = upload(invert, device).view(b, 1, 1, 1)
        out = dict(batch)
        for key in ("bg", "fg_bg"):
            x = torch.gather(batch[key], 1, index)
            out[key] = torch.where(flip, 1.0 - x, x).contiguous()
        return out


class HorizonZoom(SeededAugmentation):
    """Zoom in by ``s`` about a point on the horizon row and divide the depth by ``s`` (Eigen et al. 2014's scale).

    Eigen, Puhrsch and Fergus (NeurIPS 2014) train monocular depth with "input and target images scaled by
    s in [1, 1.5], and the depths divided by s": a picture enlarged s times shows what the same camera would
    see of a scene s times nearer. For a level camera over a ground plane this is exact, not an
    approximation, when the zoom is centred on the horizon row: a ground point at depth Z seen ``f h / Z``
    rows below the horizon lands ``s f h / Z`` rows below it, where that camera sees ground at depth
    ``Z / s``; an upright object of height H at depth Z stays one of height H at ``Z / s``, standing where
    the ground is that far; a wall at depth Z is a wall at ``Z / s``. So every pixel's depth stays the
    row's ground depth where it is ground, and the scene stays one the camera could have taken. The
    centre column is drawn anywhere along the row (depth does not depend on the column), which is
    Eigen's random crop. Pixels at or beyond ``far`` (the sky, the far plane: depth / max_depth = 1 by
    default) keep their depth; ground that was capped there (within a row or two of the horizon) stays
    capped.

    Why: with few backgrounds a network can learn each training wall's depth by how the wall looks
    instead of by where it meets the ground; a zoomed copy shows the same wall nearer, so its
    looks stop telling its depth, and only the rule that holds on new backgrounds is left.

    Images are resampled bilinearly, mask and depth with nearest (no new mask or depth value is
    made, only the depth divided). With ``s >= 1`` every output pixel comes from inside the input,
    so no border is invented. A sample that does not zoom (probability ``1 - p``) is left bit-identical.

    Args:
        p: probability that a sample is zoomed.
        scale: range ``(low, high)`` of ``s``, ``1 <= low <= high``.
        horizon: the horizon row, as a fraction of the height from the top (the synthetic scenes'
            camera: 1/3).
        far: depth (in the batch's units, depth / max_depth) at or beyond which a pixel keeps its depth.
    """

    name = "horizon-zoom"

    def __init__(
        self,
        seed: int = 0,
        p: float = 0.5,
        scale: Sequence[float] = (1.0, 1.5),
        horizon: float = 1.0 / 3.0,
        far: float = 1.0,
    ) -> None:
        super().__init__(seed)
        _check_prob(self.name, "p", p)
        scale_range = tuple(float(s) for s in scale)
        if len(scale_range) != 2 or not 1.0 <= scale_range[0] <= scale_range[1]:
            raise AugmentationError(
                f"augmentation {self.name!r}: scale must be a (low, high) pair with 1 <= low <= high "
                f"(a zoom in; zooming out would invent a border), got {scale!r}"
            )
        if not 0.0 <= horizon <= 1.0:
            raise AugmentationError(
                f"augmentation {self.name!r}: horizon is the horizon row's fraction of the height, "
                f"from 0 (top) to 1 (bottom); got {horizon!r}"
            )
        if not far > 0:
            raise AugmentationError(f"augmentation {self.name!r}: far must be above 0, got {far!r}")
        self.p, self.scale, self.horizon, self.far = float(p), scale_range, float(horizon), float(far)

    def draw(self, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One call's parameters, on the CPU: zoomed (B,) bool, s (B,) float64, matrices (B, 2, 3).

        ``matrices`` are source-to-destination pixel matrices (pixel centres at integer coordinates,
        as in :class:`Geometric`): ``x -> s (x - cx) + cx``, ``y -> s (y - cy) + cy`` with ``cy`` the
        horizon row's centre coordinate ``horizon h - 1/2`` and ``cx`` uniform on ``[0, w - 1]``.
        """
        u = self._uniform(b, 3)
        zoomed = u[:, 0] < self.p
        low, high = self.scale
        s = torch.where(zoomed, low + (high - low) * u[:, 1], torch.ones(b, dtype=torch.float64))
        cx, cy = u[:, 2] * (w - 1), torch.full((b,), self.horizon * h - 0.5, dtype=torch.float64)
        matrices = torch.zeros(b, 2, 3, dtype=torch.float64)
        matrices[:, 0, 0], matrices[:, 1, 1] = s, s
        matrices[:, 0, 2], matrices[:, 1, 2] = cx * (1 - s), cy * (1 - s)
        return zoomed, s, matrices

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, h, w = check_batch(batch, self.name)
        zoomed, s, matrices = self.draw(b, h, w)
        out = dict(batch)
        dev = batch["bg"].device
        if (idx := _indices(zoomed, dev)) is None:
            return out
        grid = Geometric._grid(matrices[zoomed], h, w, dev, batch["bg"].dtype)
        factor = upload(s[zoomed].to(batch["depth"].dtype), dev).view(-1, 1, 1, 1)
        stacked = torch.cat([batch[key].index_select(0, idx) for key in IMAGE_KEYS], dim=1)
        images = _grid_sample(stacked, grid, "bilinear", "border")  # s >= 1: the border is never reached
        mask, depth, nearest = self._zoom_targets(
            batch["mask"].index_select(0, idx), batch["depth"].index_select(0, idx), grid
        )
        depth = torch.where(nearest >= self.far, nearest, depth / factor)  # the far plane stays where it is
        for key, part in zip((*IMAGE_KEYS, *TARGET_KEYS), (images[:, :3], images[:, 3:], mask, depth), strict=True):
            out[key] = batch[key].clone(memory_format=torch.contiguous_format)
            out[key].index_copy_(0, idx, part.contiguous())
        return out

    @staticmethod
    def _zoom_targets(
        mask: torch.Tensor, depth: torch.Tensor, grid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask by nearest; depth by nearest on the fg, by bilinear inverse depth over the background alone.

        Returns the mask, that depth, and the nearest depth everywhere (which says where the far plane is:
        an interpolated 50 m may round below 50).

        Nearest depth would copy a neighbour row's value: on the ground, whose depth changes every
        row, that is off by up to half a source row (a quarter of the depth a few rows below the
        horizon). The background's inverse depth is linear in the row on the ground, constant on a
        wall or the sky and continuous where they meet, so its bilinear interpolation is exact up to
        that kink; the fg pixels are left out of it (a normalized interpolation), so no fg depth bleeds
        into the background. A fg has one depth, so nearest is exact there.
        """
        nearest = _grid_sample(torch.cat([mask, depth], dim=1), grid, "nearest", "border")
        mask_out, nearest_depth = nearest[:, :1], nearest[:, 1:]
        background = (mask < 0.5).to(depth.dtype)
        inverse = background / depth.clamp_min(1e-6)
        num = _grid_sample(torch.cat([inverse, background], dim=1), grid, "bilinear", "border")
        covered = num[:, 1:] > 1e-6
        bg_depth = torch.where(covered, num[:, 1:] / num[:, :1].clamp_min(1e-12), nearest_depth)
        return mask_out, torch.where(mask_out >= 0.5, nearest_depth, bg_depth), nearest_depth
