"""Training label noise: how often a variant's training mask truth disagrees with the validation truth.

A study that trains on one mask producer and scores on another (``data.ground_truth.mask`` against
``data.ground_truth.val_mask``, e.g. the documented differencing masks against the alpha masks) should
say how wrong the training labels are before it says what that costs. :func:`measure_label_noise`
applies both producers to the *same training samples* (a seeded draw of at most
:data:`LABEL_NOISE_SAMPLES` of the training split, at the training resolution, exactly as the loader
gives them) and counts, per region of :mod:`losslab.core.train.regions` (fg interior, boundary band,
ground, wall or sky, defined by the *validation* truth's mask and the true depth), the pixels whose
training label differs from the validation label. A rate is pooled over the images: wrong pixels of
the region over all pixels of the region (``all``: over every pixel).

:func:`study_label_noise` measures it once per distinct (data, training truth) of a study, logs
``labelnoise/<variant>/<region>`` on the parent run (``core/names.py``) and returns the records the
runner keeps in the parent's ``summary.json`` (``label_noise``), which the report's section reads:
the metrics, the terminal line and the report's words come from these same counts.
Held-out samples are never read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from losslab.core import names
from losslab.core.config import ComponentSpec, ExperimentConfig
from losslab.core.plugin.registry import Catalog

#: Training images measured per variant (a seeded draw of the training split; all of it when smaller).
LABEL_NOISE_SAMPLES = 256
#: Images composed at a time.
CHUNK = 64
#: The levels reported: every pixel, then the regions of core/train/regions.py.
ALL = "all"

Echo = Callable[[str], None]


def truth_name(spec: ComponentSpec) -> str:
    """A producer as the report names it: ``diff``, or ``diff {'threshold': 8}`` with params."""
    return spec.name + (f" {spec.params}" if spec.params else "")


@dataclass
class LabelNoise:
    """One variant's training labels against the validation truth: wrong and total pixels per level."""

    variant: str
    train_truth: str
    val_truth: str
    n_images: int
    n_train: int
    image_size: int
    wrong: dict[str, int]
    pixels: dict[str, int]

    def rates(self) -> dict[str, float]:
        """level -> share of its pixels labelled wrongly (NaN for a level with no pixel)."""
        return {k: self.wrong[k] / self.pixels[k] if self.pixels[k] else float("nan") for k in self.pixels}

    def metrics(self) -> dict[str, float]:
        """``labelnoise/<variant>/<level>``: the parent run's metrics (levels without pixels left out)."""
        return {f"{names.LABEL_NOISE_PREFIX}{self.variant}/{k}": v for k, v in self.rates().items() if v == v}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_errors(noisy: np.ndarray, truth: np.ndarray, depth: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    """Wrong and total pixels per level of ``noisy`` labels against ``truth`` (both (N, H, W) in {0, 1}).

    The regions come from ``truth`` and the true ``depth`` (N, H, W) (:func:`regions.region_masks`,
    band width by the image height), so a label is judged by where the true fg is.
    """
    import torch

    from losslab.core.train.regions import REGIONS, region_masks

    if noisy.shape != truth.shape or truth.shape != depth.shape:
        raise ValueError(f"label noise: noisy {noisy.shape}, truth {truth.shape} and depth {depth.shape} must be "
                         "one (N, H, W) shape")
    t = torch.from_numpy((np.asarray(truth) > 0).astype(np.float32)).unsqueeze(1)
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).unsqueeze(1)
    bad = torch.from_numpy((np.asarray(noisy) > 0) != (np.asarray(truth) > 0)).unsqueeze(1)
    regions = region_masks(t, d)
    wrong = {ALL: int(bad.sum())}
    pixels = {ALL: int(bad.numel())}
    for name in REGIONS:
        wrong[name] = int((bad & regions[name]).sum())
        pixels[name] = int(regions[name].sum())
    return wrong, pixels


def trains_off_truth(cfg: ExperimentConfig) -> bool:
    """True when the variant's training mask truth is not the one it is scored against."""
    truth = cfg.data.ground_truth
    return truth.val_mask is not None and truth.val_mask != truth.mask


def measure_label_noise(cfg: ExperimentConfig, catalog: Catalog, limit: int = LABEL_NOISE_SAMPLES,
                        ) -> LabelNoise | None:
    """Both mask producers on the same (at most ``limit``) training samples; None when they are one producer."""
    from losslab.core.data.datasets import build_samples, held_out_split, resize_arrays, validation_samples

    if not trains_off_truth(cfg):
        return None
    data = cfg.data
    samples = build_samples(data, catalog)
    train_idx, _ = held_out_split(samples, data)  # the training side only: held-out images are never read here
    reference = validation_samples(samples, data, catalog)
    pick = np.sort(np.random.default_rng([data.source.seed, 15485863]).permutation(train_idx)[:limit])
    wrong: dict[str, int] = {}
    pixels: dict[str, int] = {}
    for start in range(0, len(pick), CHUNK):
        chunk = [int(i) for i in pick[start : start + CHUNK]]
        noisy = resize_arrays(samples.get(chunk), data.image_size)["mask"]
        truth = resize_arrays(reference.get(chunk), data.image_size)
        w, p = count_errors(noisy, truth["mask"], truth["depth"])
        for k in p:
            wrong[k], pixels[k] = wrong.get(k, 0) + w[k], pixels.get(k, 0) + p[k]
    gt = data.ground_truth
    return LabelNoise(cfg.variant, truth_name(gt.mask), truth_name(gt.validation_mask()), len(pick), len(train_idx),
                      data.image_size, wrong, pixels)


def describe(noise: LabelNoise) -> str:
    """One sentence: "diff labels 3.1% of training pixels wrongly (against alpha): 0.4% of the fg interior, ..."."""
    from losslab.core.train.regions import REGIONS

    labels = {"fg": "the fg interior", "boundary": "the boundary band", "ground": "the ground",
              "wall-sky": "the wall or sky"}
    rates = noise.rates()
    parts = [f"{percent(rates[r])} of {labels[r]}" for r in REGIONS if r in rates and rates[r] == rates[r]]
    return (f"{noise.train_truth} labels {percent(rates[ALL])} of training pixels wrongly against "
            f"{noise.val_truth}: " + ", ".join(parts)
            + f" ({noise.n_images} of {noise.n_train} training images at {noise.image_size} px)")


def percent(rate: float) -> str:
    """A rate as a percentage with two significant digits below 10%: 0.031 -> '3.1%', 0.0004 -> '0.04%'."""
    if rate != rate:
        return "n/a"
    value = 100.0 * rate
    if value == 0:
        return "0%"
    if value >= 10:
        return f"{value:.0f}%"
    return f"{value:.2g}%"


def study_label_noise(configs: Sequence[ExperimentConfig], catalog: Catalog, tracker: Any, parent_id: str,
                      echo: Echo) -> list[dict[str, Any]]:
    """Measure every variant that trains off the validation truth; log it on the parent and return the records.

    Variants with the same data and training truth share one measurement (it does not depend on
    anything else). Returns ``[]`` when every variant trains on the truth it is scored against.
    """
    done: dict[str, LabelNoise] = {}
    records: list[dict[str, Any]] = []
    for cfg in configs:
        if not trains_off_truth(cfg):
            continue
        key = cfg.data.model_dump_json()
        if key not in done:
            measured = measure_label_noise(cfg, catalog)
            assert measured is not None  # trains_off_truth holds
            done[key] = measured
        noise = LabelNoise(**{**asdict(done[key]), "variant": cfg.variant})
        tracker.log_metrics(parent_id, noise.metrics(), 0)
        echo(f"losslab: label noise of {cfg.variant}: {describe(noise)}")
        records.append(noise.to_dict())
    return records
