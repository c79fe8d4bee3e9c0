"""The loop's callbacks: checkpoints, evaluation artifacts, metric logging, progress, a per-epoch hook.

A callback may implement any of these, all called with the loop:

- ``before_fit(loop)``: once, before the first epoch (after ``--resume`` has restored the state);
- ``after_step(loop)``: after each optimisation step;
- ``after_epoch(loop, end)``: after each epoch's evaluation, with its :class:`EpochEnd`;
- ``after_fit(loop)``: once, when every epoch has run;
- ``close(loop)``: always, last, also when the run stops on an error or a kill.

They run in list order. :func:`default_callbacks` gives the order ``lab run`` uses, which is what makes a
killed run resume exactly:

1. :class:`EvalArtifacts` writes the best epoch's per-image table and sample images;
2. :class:`Checkpointer` restores ``last.pt`` before the fit (``--resume``), writes ``best.pt`` when the
   epoch improved and ``last.pt`` after every epoch, both atomically;
3. :class:`MetricLogger` logs the epoch's metrics, *after* ``last.pt`` holds the epoch, and records how many
   epochs it has logged in ``last.logged``. A kill before ``last.pt`` re-runs the epoch, which then logs
   once; a kill between ``last.pt`` and the log is made good on resume from the history in ``last.pt``.
   So no epoch is logged twice or never (a kill inside the few instructions between the logger's return and
   the ``last.logged`` write, which no step runs in, is the one window left);
4. :class:`Progress` (tqdm bar), then :class:`EpochHook` (the caller's ``on_epoch``, e.g. Optuna pruning).

``Trainer.fit`` adds ``fit_check.FitCheck`` last: after the fit it scores the best weights on training
samples (fit or generalization).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from losslab.core import names
from losslab.core.train import checkpoint, distributed
from losslab.core.train.builder import Parts
from losslab.core.train.errors import CheckpointError

EpochCallback = Callable[[int, dict[str, float]], None]


class RunLogger(Protocol):
    """Where metrics and files go: MLflow in ``lab run`` (``MlflowRunLogger``), nothing in :class:`NullLogger`."""

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def artifact(self, path: Path, artifact_path: str | None = None) -> None: ...


class NullLogger:
    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class EpochEnd:
    """One finished epoch: its index, all its metrics, whether it is the best so far, its evaluation."""

    epoch: int
    metrics: dict[str, float]
    improved: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # the mask's calibration bins (core/train/calibration.py)


class LoopView(Protocol):
    """What a callback sees of the loop (``loop.TrainLoop``); a protocol, so this module does not import the loop.

    Not named ``TrainLoop`` itself: one class per name across core/ (tests/test_architecture.py).
    """

    parts: Parts
    run_dir: Path

    @property
    def state(self) -> Any: ...  # loop.LoopState: epoch, step, best_*, history

    def checkpoint_state(self) -> dict[str, Any]: ...

    def load_checkpoint_state(self, state: dict[str, Any], path: Path) -> None: ...


class Callback:
    """Does nothing at every point; subclasses implement the points they need."""

    def before_fit(self, loop: LoopView) -> None:
        pass

    def after_step(self, loop: LoopView) -> None:
        pass

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        pass

    def after_fit(self, loop: LoopView) -> None:
        pass

    def close(self, loop: LoopView) -> None:
        pass


class Checkpointer(Callback):
    """``best.pt`` and ``last.pt`` in the run folder; restores ``last.pt`` when resuming."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir, self.resume = Path(run_dir), resume

    @property
    def last_path(self) -> Path:
        return self.run_dir / names.LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.run_dir / names.BEST_CHECKPOINT

    def before_fit(self, loop: LoopView) -> None:
        if self.resume and self.last_path.exists():
            self.restore(loop, self.last_path)

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        if loop.parts.dist.is_main:
            if end.improved:
                checkpoint.save(loop.checkpoint_state(), self.best_path)
            checkpoint.save(loop.checkpoint_state(), self.last_path)
        distributed.barrier()

    def after_fit(self, loop: LoopView) -> None:
        if loop.parts.dist.is_main and not self.best_path.exists():
            checkpoint.save(loop.checkpoint_state(), self.best_path)

    def restore(self, loop: LoopView, path: Path) -> None:
        fix = ("delete it to train this run again from epoch 0 (`lab run ... --resume` then continues the "
               "other runs), or restore it from a backup")
        state = checkpoint.load(path, loop.parts.device, fix=fix)
        checkpoint.require_format(state, path)
        if state.get("config") != loop.parts.cfg.to_dict():
            raise CheckpointError(f"{path}: checkpoint was written by a different config; resume with the "
                                  "same experiment and --set values, or start a new run")
        loop.load_checkpoint_state(state, path)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-image rows as CSV (the first row's keys are the header), replaced atomically; nothing when empty."""
    if not rows:
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class EvalArtifacts(Callback):
    """The best epoch's ``val_per_image.csv``, ``val_samples.npz`` and ``val_calibration.json``, replaced atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        if not end.improved or not loop.parts.dist.is_main:
            return
        write_rows(self.run_dir / names.PER_IMAGE_FILE, end.rows)
        if end.samples:
            tmp = self.run_dir / "val_samples.tmp.npz"
            np.savez_compressed(tmp, **end.samples)  # type: ignore[arg-type]  # numpy's stub mistypes **arrays
            os.replace(tmp, self.run_dir / names.SAMPLES_FILE)
        if end.calibration is not None:
            tmp = self.run_dir / f"{names.CALIBRATION_FILE}.tmp"
            tmp.write_text(json.dumps(end.calibration))
            os.replace(tmp, self.run_dir / names.CALIBRATION_FILE)


def read_per_image(run_dir: Path) -> list[dict[str, Any]]:
    """The rows :class:`EvalArtifacts` wrote (a resumed run whose best epoch came before the kill)."""
    path = Path(run_dir) / names.PER_IMAGE_FILE
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []


class MetricLogger(Callback):
    """Each epoch's metrics to the run's logger, once per epoch also across kills (see the module docstring)."""

    def __init__(self, logger: RunLogger, run_dir: Path) -> None:
        self.logger, self.marker = logger, Path(run_dir) / "last.logged"

    def _logged(self) -> int:
        try:
            return int(self.marker.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _log(self, loop: LoopView, entries: list[dict[str, float]]) -> None:
        if not loop.parts.dist.is_main or not entries:
            return
        for entry in entries:
            self.logger.metrics({k: v for k, v in entry.items() if k != "epoch"}, step=int(entry["epoch"]))
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(str(len(loop.state.history)))
        os.replace(tmp, self.marker)

    def before_fit(self, loop: LoopView) -> None:
        self._log(loop, loop.state.history[self._logged():])  # what a kill after last.pt left unlogged

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        self._log(loop, [loop.state.history[-1]])


class Progress(Callback):
    """A progress bar over the run's steps (on the main process, when ``train.progress`` is on); plain lines
    where stderr is not a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def before_fit(self, loop: LoopView) -> None:
        from losslab.core.progress import progress_bar  # tqdm on a terminal, plain lines in a log

        p, per_epoch = loop.parts, len(loop.parts.train_loader)
        self.bar = progress_bar(total=per_epoch * p.cfg.train.epochs, initial=per_epoch * loop.state.epoch,
                                unit="step", desc=f"{p.cfg.variant} seed {p.seed}", leave=False,
                                dynamic_ncols=True, disable=not p.cfg.train.progress or not p.dist.is_main)

    def after_step(self, loop: LoopView) -> None:
        self.bar.update(1)

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        shown = (loop.parts.cfg.train.monitor, names.VAL_LOSS)
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in end.metrics.items()
                              if k.startswith(names.VAL_PREFIX) and k in shown})

    def close(self, loop: LoopView) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochHook(Callback):
    """The caller's ``on_epoch(epoch, metrics)``, e.g. Optuna's pruning; it may raise to stop the run."""

    def __init__(self, fn: EpochCallback) -> None:
        self.fn = fn

    def after_epoch(self, loop: LoopView, end: EpochEnd) -> None:
        self.fn(end.epoch, end.metrics)


def default_callbacks(run_dir: Path, logger: RunLogger | None = None, *, resume: bool = False,
                      on_epoch: EpochCallback | None = None) -> list[Callback]:
    """The callbacks of ``lab run``, in the documented order."""
    callbacks: list[Callback] = [EvalArtifacts(run_dir), Checkpointer(run_dir, resume),
                                 MetricLogger(logger or NullLogger(), run_dir), Progress()]
    if on_epoch is not None:
        callbacks.append(EpochHook(on_epoch))
    return callbacks
