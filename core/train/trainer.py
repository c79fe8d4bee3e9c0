"""The trainer: one network, one config, one seed; a thin facade over builder, loop and callbacks.

``Trainer(cfg, seed, catalog, run_dir, logger).fit(resume=...)`` is what the
experiment runner and the tuner call. The work is done by three parts that
know nothing of each other's insides:

- ``builder.build`` turns the config into :class:`~losslab.core.train.builder.Parts`
  (model and wrappers, data and loaders, augmentations, objective, metrics,
  optimizer, scheduler, scaler);
- ``loop.TrainLoop`` runs those parts (steps, epochs, evaluation, best epoch);
- ``callbacks`` checkpoint, write the evaluation artifacts, log through a
  ``RunLogger`` (MLflow in ``lab run``, nothing by default) and show progress,
  in the order documented there.

Checkpoints are plain data written atomically (``checkpoint.py``), so a killed
run resumes from its last completed epoch with ``--resume``, bit for bit on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from losslab.core.config import ExperimentConfig
from losslab.core.plugin.registry import Catalog
from losslab.core.train.builder import Parts, build
from losslab.core.train.callbacks import EpochCallback, NullLogger, RunLogger, default_callbacks
from losslab.core.train.errors import CheckpointError, TrainingError
from losslab.core.train.evaluation import evaluate
from losslab.core.train.fit_check import FitCheck
from losslab.core.train.loop import TrainLoop, TrainResult

__all__ = ["CheckpointError", "NullLogger", "RunLogger", "TrainResult", "Trainer", "TrainingError"]


class Trainer:
    """Builds everything a config names (``self.parts``), then runs ``fit`` through ``self.loop``."""

    def __init__(self, cfg: ExperimentConfig, seed: int, catalog: Catalog, run_dir: Path,
                 logger: RunLogger | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger: RunLogger = logger or NullLogger()
        self.parts: Parts = build(cfg, seed, catalog)
        self.loop = TrainLoop(self.parts, self.run_dir)

    def fit(self, resume: bool = False, on_epoch: EpochCallback | None = None) -> TrainResult:
        """Train every remaining epoch with ``lab run``'s callbacks; ``resume`` continues from ``last.pt``."""
        self.loop.callbacks = [*default_callbacks(self.run_dir, self.logger, resume=resume, on_epoch=on_epoch),
                               FitCheck(self.run_dir)]
        return self.loop.fit()

    def train_step(self, batch: dict[str, torch.Tensor], check: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        """One optimisation step (``TrainLoop.run_step``)."""
        return self.loop.run_step(batch, check)

    def evaluate(self, keep: int = 0) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, np.ndarray]]:
        """Held-out losses and metrics, per-image rows and ``keep`` sample images (``evaluation.evaluate``)."""
        return evaluate(self.parts, keep)

    @property
    def best_metrics(self) -> dict[str, float]:
        return self.loop.state.best_metrics
