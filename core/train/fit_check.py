"""Fit or generalization: the best weights scored once more, on backgrounds the run trained on.

A held-out score that is low says *that* a variant failed, not *why*. It may not fit the scenes at all
(the same low score on the training backgrounds: a capacity, schedule or loss problem), or it may fit
them and not carry the fit to new backgrounds (high on training, low held out: what it learned is tied
to the backgrounds it saw). Those call for opposite remedies, so at the end of each run
:class:`FitCheck` scores the best epoch's weights on ``train.fit_check`` training samples with the very
code that scores the held-out ones (``evaluation.evaluate``: the same metrics, the same region columns),
and writes them as ``train_per_image.csv`` beside ``val_per_image.csv``. The report's "fit or
generalization" section sets the two side by side, per region (``reports/generalization.py``).

The samples are evenly strided over the training split in index order (so every training background is
in when there are enough of them), with no augmentation: the score of what the net sees at test time.
It costs one evaluation pass per run; it changes no weight, no random state and nothing the run logged
before, so a run with it trains the same bits as a run without.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslab.core import names
from losslab.core.data.datasets import BatchLoader
from losslab.core.train import checkpoint
from losslab.core.train.builder import Parts
from losslab.core.train.callbacks import Callback, LoopView, write_rows
from losslab.core.train.evaluation import evaluate


def fit_indices(train_idx: np.ndarray, count: int) -> np.ndarray:
    """``count`` training indices evenly strided over ``train_idx`` in index order (all when fewer)."""
    ordered = np.sort(np.asarray(train_idx))
    if count <= 0 or len(ordered) == 0:
        return ordered[:0]
    if count >= len(ordered):
        return ordered
    picks = np.floor(np.arange(count) * (len(ordered) / count)).astype(np.int64)
    return ordered[picks]


def fit_loader(parts: Parts, count: int) -> Any:
    """Batches of the strided training samples, built like the held-out loader (device-composed alike)."""
    data = parts.cfg.data
    loader = BatchLoader(parts.samples, fit_indices(parts.train_idx, count), batch_size=parts.batch_size,
                         shuffle=False, image_size=data.image_size, max_depth=data.max_depth, device=parts.device,
                         rank=parts.dist.rank, world_size=parts.dist.world_size)
    from losslab.core.data.device_data import DeviceBatchLoader

    if isinstance(parts.train_batches, DeviceBatchLoader):  # the training set already lives on the device
        return DeviceBatchLoader(parts.train_batches.samples, loader)
    return loader


@torch.no_grad()
def score_training_fit(parts: Parts, best_checkpoint: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The best weights' means (``fit/<metric>``) and per-image rows on the strided training samples.

    The model's current weights are put back afterwards, so nothing the caller holds changes.
    """
    count = parts.cfg.train.fit_check
    if count <= 0 or len(parts.train_idx) == 0 or not best_checkpoint.exists():
        return {}, []
    state = checkpoint.load(best_checkpoint, parts.device, fix="delete the run folder and train it again")
    current = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    try:
        checkpoint.load_weights(parts.model, state["model"], best_checkpoint, parts.cfg.model)
        result, rows, _ = evaluate(parts, batches=fit_loader(parts, count), samples=parts.samples)
    finally:
        parts.model.load_state_dict(current)
    means = {f"{names.FIT_PREFIX}{k[len(names.VAL_PREFIX):]}": v for k, v in result.items()
             if k.startswith(names.VAL_PREFIX)}
    return means, rows


class FitCheck(Callback):
    """After the fit: score the best weights on training samples (see the module docstring).

    The means land in ``loop.fit_metrics`` (the run logs them as ``fit/<metric>``, and what the check took as
    ``time/fit_check_s``), the rows in ``train_per_image.csv`` in the run folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def after_fit(self, loop: LoopView) -> None:
        started = time.perf_counter()
        means, rows = score_training_fit(loop.parts, self.run_dir / names.BEST_CHECKPOINT)
        if means:
            means[names.FIT_CHECK_TIME] = time.perf_counter() - started
        loop.fit_metrics = means  # type: ignore[attr-defined]  # TrainLoop has it; the protocol lists no setters
        if loop.parts.dist.is_main:
            write_rows(self.run_dir / names.TRAIN_PER_IMAGE_FILE, rows)
