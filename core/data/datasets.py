"""Datasets: sample sets (virtual or materialized), the bg-disjoint split, and the batch loader.

A *sample set* answers ``get(indices)`` with numpy arrays at its native
resolution; the loader resizes them to ``data.image_size``, turns them into
tensors on the device and normalises depth by ``data.max_depth``. The virtual
set composes every batch on the fly from recipes and sources and writes
nothing to disk.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol, cast, runtime_checkable

import cv2
import numpy as np
import torch

from losslab.core.config import DataSpec
from losslab.core.data.batch_compositor import BatchCompositor
from losslab.core.data.geometry import SceneGeometry
from losslab.core.data.recipes import Recipe
from losslab.core.data.sources import FolderSources, Sources, SyntheticSources
from losslab.core.device import upload
from losslab.core.plugin.registry import Catalog


@runtime_checkable
class SampleSet(Protocol):
    """What the trainer reads. ``get`` returns ``bg``/``fg_bg`` (N,H,W,3) uint8 RGB,
    ``mask`` (N,H,W) uint8 {0,1} and ``depth`` (N,H,W) float32 metres.

    A set may also offer ``recipe(index) -> Recipe``; the per-image validation
    rows then name each image's bg, fg, flip, row and column.
    """

    def __len__(self) -> int: ...

    def bg_ids(self) -> np.ndarray: ...

    def get(self, indices: Sequence[int]) -> dict[str, np.ndarray]: ...


class ScaledSources:
    """Sources seen at another resolution: bgs resized once (area) and cached, fgs as they are.

    Composing at the training resolution from full-resolution fgs costs a
    fraction of composing at the source resolution and resizing afterwards,
    and fits each fg from its full-resolution pixels.
    """

    def __init__(self, sources: Sources, size: int) -> None:
        self.inner, self.size = sources, size
        self._bg: dict[int, np.ndarray] = {}

    @property
    def n_bg(self) -> int:
        return self.inner.n_bg

    @property
    def n_fg(self) -> int:
        return self.inner.n_fg

    def bg(self, index: int) -> np.ndarray:
        if index not in self._bg:
            self._bg[index] = cv2.resize(self.inner.bg(index), (self.size, self.size), interpolation=cv2.INTER_AREA)
        return self._bg[index]

    def fg(self, index: int) -> np.ndarray:
        return self.inner.fg(index)

    def geometry(self, index: int) -> SceneGeometry:
        return self.inner.geometry(index)

    def anchors(self, index: int) -> np.ndarray:
        """Depth anchors as fractions of the bg (resolution-free), as the inner sources give them."""
        of = getattr(self.inner, "anchors", None)
        return of(index) if of is not None else np.zeros((0, 3))


def scale_recipe(recipe: Recipe, factor: float) -> Recipe:
    """The same placement at ``factor`` times the resolution (base row kept on the ground)."""
    size = max(1, round(recipe.size * factor))
    base = round(recipe.base_y * factor)
    return replace(recipe, x=round(recipe.x * factor), y=base - size, size=size)


class VirtualSamples:
    """Samples composed on the fly from recipes and sources; nothing is written.

    With ``out_size`` set (the training resolution), samples are composed
    directly at that size: bgs are resized once, recipes scaled, fgs fitted
    from their full-resolution pixels.
    """

    def __init__(self, sources: Sources, recipes: Sequence[Recipe], mask_gt: Any, depth_gt: Any,
                 out_size: int | None = None) -> None:
        self.sources = sources
        self.recipes = list(recipes)
        self.mask_gt, self.depth_gt = mask_gt, depth_gt
        native = sources.bg(0).shape[0] if len(self.recipes) else 0
        self.factor = 1.0
        if out_size is not None and native and out_size != native:
            self.factor = out_size / native
            sources = ScaledSources(sources, out_size)
        self.compose_sources = sources
        self.compositor = BatchCompositor(sources)  # same bytes as Compositor, about twice as fast
        self._bg_ids = np.fromiter((r.bg for r in self.recipes), dtype=np.int64, count=len(self.recipes))

    def __len__(self) -> int:
        return len(self.recipes)

    def bg_ids(self) -> np.ndarray:
        return self._bg_ids

    def recipe(self, index: int) -> Recipe:
        return self.recipes[int(index)]

    def with_mask(self, mask_gt: Any) -> VirtualSamples:
        """The same samples (sources, recipes, composition, depth) labelled by another mask producer.

        The held-out split of a study with ``data.ground_truth.val_mask`` is read through one of these;
        the bgs resized once are shared, so the second labelling costs no second set of sources.
        """
        twin = copy.copy(self)
        twin.mask_gt = mask_gt
        return twin

    def get(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        recipes = [self.recipes[int(i)] for i in indices]
        if self.factor != 1.0:
            recipes = [scale_recipe(r, self.factor) for r in recipes]
        composed = self.compositor.compose_batch(recipes)
        return {
            "bg": composed["bg"],
            "fg_bg": composed["fg_bg"],
            "mask": self.mask_gt(composed, recipes, self.compose_sources).astype(np.uint8),
            "depth": self.depth_gt(composed, recipes, self.compose_sources).astype(np.float32),
        }


def build_samples(data: DataSpec, catalog: Catalog) -> SampleSet:
    """The sample set a config's ``data`` section describes."""
    source = data.source
    if source.kind == "dataset":
        from losslab.core.data.readers import open_dataset

        return open_dataset(source.path)  # type: ignore[arg-type]
    sources: Sources
    if source.kind == "synthetic":
        sources = SyntheticSources(source.n_bg, source.n_fg, seed=source.seed, size=source.size,
                                   geometry=SceneGeometry(far=data.max_depth))
    else:
        # no geometry passed: a photo's comes from its sidecar or the depth's params, never a default
        sources = FolderSources(source.bg_dir, source.fg_dir, size=source.size)  # type: ignore[arg-type]
        sources.base_geometry = SceneGeometry(far=data.max_depth)  # defaults for fields nobody stated, not "stated"
    generator = catalog.create("generator", data.generator.name, **data.generator.params)
    size = source.size
    bg_ids, fg_ids = list(range(sources.n_bg)), list(range(sources.n_fg))
    if isinstance(sources, FolderSources):
        # read every file once before training: a bad file is skipped with a warning, never a crash mid-run
        check = sources.check()
        for problem in check.problems:
            print(f"losslab: {problem}", file=sys.stderr)
        if len(check.bg_ids) < 2 or not check.fg_ids:
            raise ValueError(f"data.source: after skipping unusable files, {len(check.bg_ids)} bg and "
                             f"{len(check.fg_ids)} fg remain in {source.bg_dir} and {source.fg_dir}; "
                             "at least 2 bg and 1 fg are needed")
        bg_ids, fg_ids = check.bg_ids, check.fg_ids
    recipes = generator.recipes(bg_ids, fg_ids, (size, size))
    mask_gt = catalog.create("ground_truth", data.ground_truth.mask.name, **data.ground_truth.mask.params)
    depth_gt = catalog.create("ground_truth", data.ground_truth.depth.name, **data.ground_truth.depth.params)
    for producer in (mask_gt, depth_gt):
        _check_producer(producer, sources, bg_ids)
    return VirtualSamples(sources, recipes, mask_gt, depth_gt, out_size=data.image_size)


def _check_producer(producer: Any, sources: Sources, bg_ids: Sequence[int]) -> None:
    """Refuse, before training, what a producer cannot do with these sources."""
    if hasattr(producer, "check"):
        producer.check()
    if hasattr(producer, "check_sources"):
        producer.check_sources(sources, bg_ids)


def validation_samples(samples: SampleSet, data: DataSpec, catalog: Catalog) -> SampleSet:
    """The sample set the held-out split is read (and scored) from.

    ``samples`` itself, unless ``data.ground_truth.val_mask`` names another mask producer: then the
    same samples labelled by it (:meth:`VirtualSamples.with_mask`). Training reads ``samples``.
    """
    spec = data.ground_truth.val_mask
    if spec is None or spec == data.ground_truth.mask:
        return samples
    if not isinstance(samples, VirtualSamples):  # the config refuses val_mask with a materialized dataset
        raise ValueError("data.ground_truth.val_mask needs samples composed from recipes and sources "
                         "(source kind 'synthetic' or 'folders')")
    producer = catalog.create("ground_truth", spec.name, **spec.params)
    _check_producer(producer, samples.sources, sorted({int(b) for b in samples.bg_ids()}))
    return samples.with_mask(producer)


def split_by_bg(samples: SampleSet, val_split: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with disjoint backgrounds: validation never sees a training bg."""
    bg_ids = samples.bg_ids()
    unique = np.unique(bg_ids)
    if len(unique) < 2:
        raise ValueError(
            f"cannot hold out backgrounds for validation: the data has {len(unique)} bg; use at least 2"
        )
    n_val = held_out_count(len(unique), val_split)
    rng = np.random.default_rng([seed, 7919])
    held_out = np.sort(rng.choice(unique, size=n_val, replace=False))
    is_val = np.isin(bg_ids, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def held_out_count(n_bg: int, val_split: float) -> int:
    """How many of ``n_bg`` backgrounds ``split_by_bg`` holds out: round(val_split * n_bg), at least 1,
    and at most n_bg - 1 (training keeps one)."""
    return min(n_bg - 1, max(1, round(val_split * n_bg)))


def describe_split(samples: SampleSet, val_idx: np.ndarray, val_split: float) -> str:
    """One line saying how ``val_split`` rounded: backgrounds held out, and samples on each side."""
    bg_ids = samples.bg_ids()
    n_bg = len(np.unique(bg_ids))
    n_val_bg = held_out_count(n_bg, val_split)  # val_idx may be a val_limit subset of the held-out samples
    exact = val_split * n_bg
    note = "" if abs(exact - n_val_bg) < 1e-9 else f" ({val_split:g} x {n_bg} = {exact:g}, rounded to {n_val_bg})"
    return (f"validation holds out {n_val_bg} of {n_bg} backgrounds{note}; {len(val_idx)} of {len(bg_ids)} "
            "samples evaluated (no held-out background is seen in training)")


def held_out_split(samples: SampleSet, data: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """The trainer's split of a config's data: training indices, and the held-out ones it evaluates.

    Backgrounds split by :func:`split_by_bg` (seeded by the source seed), then ``data.val_limit``
    held-out samples drawn by their own seeded generator. The floors are fitted and scored on this
    same split, so a floor and a variant are scored on the same images.
    """
    train_idx, val_idx = split_by_bg(samples, data.val_split, seed=data.source.seed)
    if data.val_limit is not None:
        pick = np.random.default_rng([data.source.seed, 104729]).permutation(val_idx)[: data.val_limit]
        val_idx = np.sort(pick)
    return train_idx, val_idx


def resize_arrays(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Resize a batch to ``size`` x ``size``: area for images, area-then-threshold for mask, nearest for depth.

    Nearest for depth keeps every depth value one that exists in the input
    (no invented depths at object boundaries).
    """
    _, h, w = arrays["mask"].shape
    if (h, w) == (size, size):
        return arrays
    out = {k: v for k, v in arrays.items() if k not in ("bg", "fg_bg", "mask", "depth")}
    for key in ("bg", "fg_bg"):
        out[key] = np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in arrays[key]])
    mask = np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
                     for m in arrays["mask"]])
    out["mask"] = (mask >= 0.5).astype(np.uint8)
    out["depth"] = np.stack([cv2.resize(d, (size, size), interpolation=cv2.INTER_NEAREST) for d in arrays["depth"]])
    return out


def to_tensors(arrays: dict[str, np.ndarray], max_depth: float, device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 images -> float [0,1] (B,3,H,W); mask -> float (B,1,H,W); depth -> metres/max_depth in [0,1]."""

    def images(x: np.ndarray) -> torch.Tensor:
        t = upload(torch.from_numpy(np.ascontiguousarray(x)), device)
        return t.permute(0, 3, 1, 2).float().div_(255.0)

    mask = upload(torch.from_numpy(np.ascontiguousarray(arrays["mask"])), device).unsqueeze(1).float()
    depth = upload(torch.from_numpy(np.ascontiguousarray(arrays["depth"])), device)
    depth = depth.unsqueeze(1).float().div_(max_depth).clamp_(0.0, 1.0)
    return {"bg": images(arrays["bg"]), "fg_bg": images(arrays["fg_bg"]), "mask": mask, "depth": depth}


class BatchLoader:
    """Batches of a sample set as tensors on the device, in a seeded order.

    ``batch_size`` is the global batch; with ``world_size`` > 1 (DDP) each rank
    takes every ``world_size``-th sample of each global batch, so the ranks
    together see exactly what a single process sees.

    ``limit`` draws a fresh random subset of that many samples each epoch (the
    whole set when None); the order depends only on (seed, epoch), so a resumed
    run sees the same batches it would have seen.
    """

    def __init__(
        self, samples: SampleSet, indices: np.ndarray, *, batch_size: int, image_size: int, max_depth: float,
        device: torch.device, shuffle: bool, seed: int = 0, limit: int | None = None, drop_last: bool = False,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        if len(indices) == 0:
            raise ValueError("no samples to load: the split left this set empty")
        self.samples, self.indices = samples, np.asarray(indices)
        self.batch_size, self.image_size, self.max_depth = batch_size, image_size, max_depth
        self.device, self.shuffle, self.seed, self.limit = device, shuffle, seed, limit
        self.drop_last = drop_last and len(self.epoch_indices(0)) >= batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        if self.limit is not None:
            order = order[: self.limit]
        return order

    def __len__(self) -> int:
        n = len(self.epoch_indices(self.epoch))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def chunks(self) -> Iterator[np.ndarray]:
        """The sample indices of each batch of the current epoch."""
        order = self.epoch_indices(self.epoch)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            chunk = chunk[self.rank :: self.world_size]
            if len(chunk):
                yield chunk

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Composed in the training thread on purpose: a prefetch thread competes with torch's own
        # threads for the cores and made the whole step slower on a 2-core CPU (benchmarks/train_step.py).
        for chunk in self.chunks():
            yield self._indexed(chunk)

    def _indexed(self, chunk: np.ndarray) -> dict[str, torch.Tensor]:
        batch = self.load(cast(Sequence[int], chunk))  # an int array indexes like a sequence of ints
        batch["index"] = torch.from_numpy(chunk.astype(np.int64))
        return batch

    def load(self, chunk: Sequence[int]) -> dict[str, torch.Tensor]:
        arrays = resize_arrays(self.samples.get(chunk), self.image_size)
        return to_tensors(arrays, self.max_depth, self.device)
