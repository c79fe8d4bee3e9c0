"""Built-in batch augmentations: ``geometric`` and ``photometric``, with Kornia, on the batch's device.

A batch is ``{"bg": (B,3,H,W), "fg_bg": (B,3,H,W), "mask": (B,1,H,W), "depth":
(B,1,H,W)}``, all float; an augmentation returns a new dict with the same keys
and shapes, on the same device (other entries pass through untouched).

Reproducibility: Kornia draws its random parameters from torch's global CPU
generator. Each augmentation owns a ``torch.Generator`` seeded with ``seed``;
every call takes one number from it, and runs Kornia inside
``torch.random.fork_rng`` with the global generator seeded from that number.
So the same seed and the same sequence of batches give the same outputs on
any machine, and the caller's own random stream is left exactly as it was
(fork_rng restores it). Random tensors that live on the device (noise) come
from a device generator seeded from the same stream, never from the global
device RNG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import kornia.augmentation as K
import torch

from losslab.core.markers import hookimpl
from losslab.core.registry import Registry

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
    """Base of the built-ins: a private random stream, forked global RNG around each Kornia call."""

    name = "augmentation"

    def __init__(self, seed: int) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise AugmentationError(f"augmentation {self.name!r}: seed must be an int, got {seed!r}")
        self.seed = seed
        self._stream = torch.Generator().manual_seed(seed)

    def _next_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._stream).item())

    @contextmanager
    def _seeded(self) -> Iterator[int]:
        """Run the body with torch's global CPU generator seeded from this augmentation's stream."""
        call_seed = self._next_seed()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(call_seed)
            yield call_seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


class Geometric(SeededAugmentation):
    """Horizontal flip and random affine, with the same parameters for bg, fg_bg, mask and depth.

    bg and fg_bg are stacked on channels and warped with bilinear
    interpolation; mask and depth are stacked as a 2-channel Kornia ``mask``
    and warped with nearest interpolation, so no mask or depth value appears
    that was not in the input. Each sample of the batch draws its own
    parameters. Borders uncovered by rotation, translation or zoom-out are
    filled by ``padding_mode``: ``"reflection"`` (default) or ``"border"``
    copy existing pixels (so depth values stay those of the input, and the
    mask stays consistent with the images); ``"zeros"`` fills images, mask and
    depth with 0.

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
        self.padding_mode = padding_mode
        self.pipeline = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip_p),
            K.RandomAffine(
                degrees=degrees,
                translate=(translate, translate) if translate > 0 else None,
                scale=scale_range,
                padding_mode=padding_mode,
                resample=image_resample,
                p=affine_p,
            ),
            data_keys=["input", "mask"],  # "mask" keys are resampled with nearest interpolation
        )

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_batch(batch, self.name)
        images = torch.cat([batch["bg"], batch["fg_bg"]], dim=1)
        targets = torch.cat([batch["mask"], batch["depth"]], dim=1)
        with self._seeded():
            images, targets = self.pipeline(images, targets)
        out = dict(batch)
        out["bg"], out["fg_bg"] = images[:, :3].contiguous(), images[:, 3:].contiguous()
        out["mask"], out["depth"] = targets[:, :1].contiguous(), targets[:, 1:].contiguous()
        return out


class Photometric(SeededAugmentation):
    """Colour jitter (brightness, contrast, saturation, hue) and optional gaussian noise, images only.

    With ``independent=False`` (default) bg and fg_bg of a sample get the same
    jitter and the same noise, so pixels the fg does not cover stay equal in
    both images; with ``independent=True`` each image draws its own jitter and
    noise, simulating a lighting change between the two shots. Mask and depth
    are returned untouched. Outputs are clamped to [0, 1].

    The jitter is Kornia's ``ColorJiggle``, whose four steps are per pixel
    (brightness adds, contrast scales, saturation and hue act in HSV), so a
    pixel's result depends only on its value and the drawn factors: that is
    what keeps uncovered pixels equal in bg and fg_bg. A pair is jittered in
    one call, side by side on the width axis, so it shares one parameter
    draw; independent images are stacked on the batch axis instead, so each
    draws its own.

    ``hue`` defaults to 0 because it is by far the dearest step on a CPU (an
    RGB -> HSV -> RGB round trip, several times the cost of the other three
    together); set it, e.g. ``hue: 0.05``, where colour shifts matter.

    Args:
        seed: seed of the random stream.
        brightness, contrast, saturation: jitter strength (factor drawn from ``[1 - v, 1 + v]``).
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
        self.noise_std, self.noise_p, self.independent = float(noise_std), float(noise_p), bool(independent)
        self.pipeline = K.AugmentationSequential(
            K.ColorJiggle(brightness, contrast, saturation, hue, p=jitter_p), data_keys=["input"]
        )

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b, _, w = check_batch(batch, self.name)
        with self._seeded() as call_seed:
            if self.independent:  # 2B samples: every image draws its own factors
                both = self.pipeline(torch.cat([batch["bg"], batch["fg_bg"]], dim=0))
                bg, fg_bg = both[:b], both[b:]
            else:  # B samples of width 2W: one draw per pair
                both = self.pipeline(torch.cat([batch["bg"], batch["fg_bg"]], dim=3))
                bg, fg_bg = both[..., :w], both[..., w:]
        if self.noise_std > 0:
            gen = torch.Generator(device=bg.device).manual_seed(call_seed)
            bg, fg_bg = self._add_noise(bg, fg_bg, gen)
        out = dict(batch)
        out["bg"], out["fg_bg"] = bg.contiguous(), fg_bg.contiguous()
        return out

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


def _check_prob(where: str, label: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise AugmentationError(f"augmentation {where!r}: {label} is a probability in [0, 1], got {p}")


@hookimpl
def lab_register_augmentations(registry: Registry) -> None:
    registry.add("geometric", Geometric, summary="flip and affine, identical on bg, fg_bg, mask and depth")
    registry.add("photometric", Photometric, summary="colour jitter and optional noise, on images only")
