"""The training loop: built parts in, epochs of steps out, everything else in callbacks.

In the manner of detectron2's ``SimpleTrainer``: :class:`TrainLoop` receives
:class:`~losslab.core.train.builder.Parts` (it builds nothing), runs
:meth:`TrainLoop.run_step` over the training batches, evaluates once per epoch
(``evaluation.evaluate``, then ``evaluation.check_finite``), keeps the best
epoch by ``train.monitor``, and hands each finished epoch to its callbacks
(``callbacks.py``: checkpoints, artifacts, logging, progress) in list order.
Its own state, :class:`LoopState`, and every random state go into the
checkpoint, so a killed run resumes bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from losslab.core import names
from losslab.core.train import checkpoint, distributed
from losslab.core.train import weighting as weighting_glue
from losslab.core.train.builder import Parts
from losslab.core.train.callbacks import Callback, EpochEnd, read_per_image
from losslab.core.train.diagnostics import Diagnostics, build_diagnostics
from losslab.core.train.errors import CheckpointError, TrainingError
from losslab.core.train.evaluation import check_finite, evaluate
from losslab.core.train.objective import LossFault
from losslab.core.train.step import check_outputs, model_inputs, run_model


@dataclass
class TrainResult:
    best: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    total_s: float
    run_dir: Path
    best_checkpoint: Path
    per_image: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, float] = field(default_factory=dict)  # ``fit/<metric>``: the best weights on training samples


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


@dataclass
class LoopState:
    """The loop's counters and record: plain data, saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_value: float | None = None
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, metrics: dict[str, float], monitor: str, mode: str) -> EpochEnd:
        """Add a finished epoch to the history; note it when it is the best so far."""
        epoch = self.epoch
        self.history.append({"epoch": epoch, **metrics})
        improved = _is_better(metrics[monitor], self.best_value, mode)
        self.epoch += 1
        if improved:
            self.best_value, self.best_epoch = metrics[monitor], epoch
            self.best_metrics = {k: v for k, v in metrics.items() if k.startswith(names.VAL_PREFIX)}
        return EpochEnd(epoch, metrics, improved)


class TrainLoop:
    """Runs built parts for ``cfg.train.epochs`` epochs, calling ``callbacks`` (see ``callbacks.py``)."""

    def __init__(self, parts: Parts, run_dir: Path, callbacks: list[Callback] | None = None) -> None:
        self.parts, self.run_dir = parts, Path(run_dir)
        self.callbacks: list[Callback] = list(callbacks or [])
        self.state = LoopState()
        self.best_rows: list[dict[str, Any]] = []
        self.fit_metrics: dict[str, float] = {}  # set by fit_check.FitCheck after the fit
        self._outputs_checked = False
        self.diagnostics: Diagnostics | None = build_diagnostics(parts)  # train.diagnostics; None when off

    # -- one step ------------------------------------------------------------------------------------

    def run_step(self, batch: dict[str, torch.Tensor], check: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        """One optimisation step on a loaded batch: augment, forward, every loss term, backward, step.

        Returns the batch size and the unweighted term values (detached, still on the device).
        ``check`` reads the values back to stop on NaN or inf (every step on CPU, at intervals on CUDA).
        """
        p, step = self.parts, self.state.step
        for aug in p.augment:
            batch = aug(batch)
        x = model_inputs(batch, p.precision)
        out = run_model(p.forward, x, p.precision, p.device)
        if not self._outputs_checked:
            check_outputs(out, x, p.model_component)
            self._outputs_checked = True
        values, weighted = p.objective.term_values(out, batch, step=step)
        with torch.no_grad():  # the logged loss: the static sum, whatever the weighting trains on
            values = {"loss": p.objective.total(weighted, out["mask"]), **values}
        if check or step == 0:
            p.objective.assert_finite(values, step=step)
        self._backward(weighted)
        self.state.step += 1
        return x.shape[0], {k: v.detach() for k, v in values.items()}

    def _backward(self, weighted: dict[str, torch.Tensor]) -> None:
        p, clip = self.parts, self.parts.cfg.train.grad_clip
        p.optimizer.zero_grad(set_to_none=True)
        weighting_glue.backward(p.weighting, weighted, p.shared, p.scaler)  # static: the former total.backward()
        if p.scaler:
            if clip:
                p.scaler.unscale_(p.optimizer)
                nn.utils.clip_grad_norm_(p.model.parameters(), clip)
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            if clip:
                nn.utils.clip_grad_norm_(p.model.parameters(), clip)
            p.optimizer.step()
        if p.scheduler:
            p.scheduler.step()

    # -- one epoch -----------------------------------------------------------------------------------

    def train_epoch(self) -> dict[str, float]:
        """Every training batch of the current epoch; the epoch's mean terms, throughput and learning rate."""
        p = self.parts
        p.model.train()
        loader = p.train_batches
        loader.epoch = self.state.epoch
        sums: dict[str, torch.Tensor] = {}
        count = 0
        started = time.perf_counter()
        check_every = 1 if p.device.type == "cpu" else 25
        for i, batch in enumerate(loader):
            n, values = self.run_step(batch, check=i % check_every == 0)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value.float() * n
            count += n
            for callback in self.callbacks:
                callback.after_step(self)
        p.objective.assert_finite(dict(sums), step=self.state.step)
        totals = distributed.all_reduce_sum({**{k: float(v.item()) for k, v in sums.items()}, "#count": count},
                                            p.device)
        count = int(totals.pop("#count"))
        elapsed = time.perf_counter() - started
        result = {f"{names.TRAIN_PREFIX}{k}": v / max(count, 1) for k, v in totals.items()}
        result[names.SAMPLES_PER_S] = count / max(elapsed, 1e-9)
        result["lr"] = float(p.optimizer.param_groups[0]["lr"])
        terms = [(t.task, t.key, t.weight) for t in p.objective.terms]
        result.update(weighting_glue.end_epoch(p.weighting, terms, result))  # weighting/<task>, then its epoch end
        return result

    def run_epoch(self) -> EpochEnd:
        """Train, evaluate, check, record; then every callback's ``after_epoch``."""
        train = self.parts.cfg.train
        t0 = time.perf_counter()
        try:
            train_metrics = self.train_epoch()
            if self.diagnostics is not None and self.diagnostics.due(self.state.epoch):
                train_metrics.update(self.diagnostics.measure())
            extras: dict[str, Any] = {}
            val_metrics, rows, samples = evaluate(self.parts, keep=train.val_samples, extras=extras)
        except LossFault as exc:
            raise TrainingError(str(exc)) from None
        metrics = {**train_metrics, **val_metrics, names.EPOCH_TIME: time.perf_counter() - t0}
        if train.monitor not in metrics:
            known = ", ".join(sorted(k for k in metrics if k.startswith(names.VAL_PREFIX)))
            raise TrainingError(f"train.monitor is {train.monitor!r}, which this run does not compute; "
                                f"choose one of: {known}")
        check_finite(self.parts, val_metrics, rows, self.state.epoch)
        end = self.state.record(metrics, train.monitor, train.monitor_mode)
        end.rows, end.samples, end.calibration = rows, samples, extras.get("calibration")
        if end.improved:
            self.best_rows = rows
        for callback in self.callbacks:
            callback.after_epoch(self, end)
        return end

    # -- the run -------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Every remaining epoch (all of them, unless a callback restored a checkpoint in ``before_fit``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            for callback in self.callbacks:
                callback.before_fit(self)
            while self.state.epoch < self.parts.cfg.train.epochs:
                self.run_epoch()
            for callback in self.callbacks:
                callback.after_fit(self)
        finally:
            for callback in self.callbacks:
                callback.close(self)
        s = self.state
        return TrainResult(best=dict(s.best_metrics), best_epoch=s.best_epoch, history=s.history,
                           total_s=time.perf_counter() - started, run_dir=self.run_dir,
                           best_checkpoint=self.run_dir / names.BEST_CHECKPOINT,
                           per_image=self.best_rows or read_per_image(self.run_dir), fit=dict(self.fit_metrics))

    # -- checkpoint state ----------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain data (see ``checkpoint.py``)."""
        p = self.parts
        return {
            "format": checkpoint.FORMAT,
            "model": p.model.state_dict(),  # the plain module: no DDP or compile prefixes
            "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler else None,
            "scaler": p.scaler.state_dict() if p.scaler else None,
            "weighting": p.weighting.state_dict(),
            **asdict(self.state),
            "config": p.cfg.to_dict(),
            "seed": p.seed,
            "rng": checkpoint.rng_state(),
            "augment": [checkpoint.augment_state(aug) for aug in p.augment],
            "loader": {"seed": p.train_loader.seed, "epoch": self.state.epoch},  # the order is f(seed, epoch)
        }

    def load_checkpoint_state(self, state: dict[str, Any], path: Path) -> None:
        """Put back what :meth:`checkpoint_state` saved (the caller has checked format and config)."""
        p = self.parts
        checkpoint.load_weights(p.model, state["model"], path, p.cfg.model)
        p.optimizer.load_state_dict(state["optimizer"])
        if p.scheduler and state["scheduler"]:
            p.scheduler.load_state_dict(state["scheduler"])
        if p.scaler and state["scaler"]:
            p.scaler.load_state_dict(state["scaler"])
        if not isinstance(state.get("weighting"), dict):
            raise CheckpointError(f"{path}: holds no loss-weighting state (written before loss.weighting existed?); "
                                  "delete it to train this run again")
        try:
            p.weighting.load_state_dict(state["weighting"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: its loss-weighting state does not fit loss.weighting "
                                  f"{p.cfg.loss.weighting.name!r}: {exc}") from None
        self.state = LoopState(**{k: state[k] for k in asdict(LoopState())})
        if len(state["augment"]) != len(p.augment) or state["loader"]["seed"] != p.train_loader.seed:
            raise CheckpointError(f"{path}: its augmentations or loader seed do not match this run's; "
                                  "resume with the same experiment, seed and --set values")
        for spec, aug, saved in zip(p.cfg.augment, p.augment, state["augment"], strict=True):
            checkpoint.load_augment_state(aug, saved, f"augmentation {spec.name!r}", path)
        checkpoint.restore_rng(state["rng"])
