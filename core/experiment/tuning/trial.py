"""One trial: sample, build and validate its config, train with per-epoch pruning, record the outcome.

A trial that raises (a ``TrainingError`` for NaN losses, an invalid sampled
config, an out-of-memory batch size) is told to Optuna as FAIL with its reason
in the ``fail_reason`` user attribute and ``losslab.error`` on its MLflow run;
the study goes on. Ctrl-C (or SIGTERM) closes the trial as failed, queues the
same parameters again for the next run of ``lab tune``, and stops the worker.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from losslab.core import names
from losslab.core.config import ExperimentConfig
from losslab.core.experiment.tuning.records import StudyRecords
from losslab.core.experiment.tuning.space import SearchSpace, build_config, is_finite, sample
from losslab.core.experiment.tuning.study import (
    FAIL_REASON_ATTR,
    RUN_ATTR,
    Heartbeat,
    StaleTrialHandler,
)
from losslab.core.plugin.registry import Catalog

if TYPE_CHECKING:
    from losslab.core.experiment.floors import Floors

Echo = Callable[[str], None]


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete | pruned | failed
    values: list[float] | None
    params: dict[str, Any]
    seconds: float
    run_id: str = ""
    error: str = ""
    epochs: int = 0
    floor_verdict: dict[str, Any] | None = None  # set when the study has floors and the trial was scored


@dataclass
class TuneContext:
    """What every trial of one worker shares."""

    space: SearchSpace
    base: dict[str, Any]
    base_cfg: ExperimentConfig
    catalog: Catalog
    records: StudyRecords
    study: Any
    storage: Any
    handler: StaleTrialHandler
    worker: str
    seed: int
    runs_root: Path
    echo: Echo
    floors: Floors | None = None  # the study's floors (``tuning/trial_floors.py``); None: not measured
    outcomes: list[TrialOutcome] = field(default_factory=list)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_trial(ctx: TuneContext, trial: Any, retry_of: int | None) -> TrialOutcome:
    """Run one claimed trial to its end; return what happened (re-raise only KeyboardInterrupt)."""
    started = time.perf_counter()
    number = trial.number
    with Heartbeat(ctx.storage, trial._trial_id, ctx.space.heartbeat.interval):
        overrides, shown, run_id = _open_trial(ctx, trial, retry_of)
        outcome = TrialOutcome(number, "failed", None, shown, 0.0, run_id)
        run_dir = ctx.runs_root / f"trial-{number}"
        best = _train_trial(ctx, trial, overrides, outcome, run_dir)
        outcome.seconds = time.perf_counter() - started
        if outcome.floor_verdict is not None:
            trial.set_user_attr(names.FLOOR_VERDICT_ATTR, outcome.floor_verdict)
        _tell(ctx, trial, outcome)
        below = outcome.floor_verdict["below"] if outcome.floor_verdict is not None else None
        ctx.records.finish_trial(run_id, outcome.state, outcome.values, best, outcome.seconds, outcome.error,
                                 below_floor=below)
    shutil.rmtree(run_dir, ignore_errors=True)
    ctx.echo(_summary(ctx, outcome))
    return outcome


def _open_trial(ctx: TuneContext, trial: Any, retry_of: int | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Sample the trial's parameters and start its MLflow run; the overrides and run id are stored on the
    trial so a retry or ``lab tune --resume`` can find them. Returns (overrides, shown, run id)."""
    overrides, shown = sample(trial, ctx.space)
    trial.set_user_attr(names.OVERRIDES_ATTR, overrides)
    run_id = ctx.records.start_trial(trial.number, shown, retry_of)
    trial.set_user_attr(RUN_ATTR, run_id)
    described = ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
    again = f" (retry of trial {retry_of})" if retry_of is not None else ""
    ctx.echo(f"losslab: trial {trial.number}{again}: {described}")
    return overrides, shown, run_id


def _train_trial(ctx: TuneContext, trial: Any, overrides: dict[str, Any], outcome: TrialOutcome,
                 run_dir: Path) -> dict[str, float]:
    """Train the trial, filling ``outcome`` (complete, pruned or failed); returns the best metrics to record.

    A failure is recorded, not raised, so one bad trial does not stop the study; Ctrl-C marks the trial
    interrupted and propagates.
    """
    import optuna

    from losslab.core.experiment.runner import MlflowRunLogger
    from losslab.core.experiment.tuning.trial_floors import trial_verdict
    from losslab.core.train.trainer import Trainer

    reported: list[float] = []
    planned: list[int] = []  # the trial's epochs, once its config is built
    best: dict[str, float] = {}
    trainer: Any = None
    cfg: ExperimentConfig | None = None
    try:
        cfg = build_config(ctx.base, overrides, ctx.catalog, f"trial-{trial.number}")
        ctx.records.log_config(outcome.run_id, cfg)
        planned.append(cfg.train.epochs)
        trainer = Trainer(cfg, ctx.seed, ctx.catalog, run_dir, MlflowRunLogger(ctx.records.tracker, outcome.run_id))
        result = trainer.fit(on_epoch=_epoch_hook(ctx.space, trial, outcome, reported, planned))
        best = dict(result.best)
        outcome.values = _objective_values(ctx.space, best)
        outcome.state = "complete"
        _log_artifacts(ctx, outcome.run_id, run_dir, result.best_checkpoint)
    except optuna.TrialPruned as exc:
        outcome.state, outcome.error = "pruned", str(exc)
        outcome.values = [reported[-1]] if reported else None
        best = dict(trainer.best_metrics) if trainer is not None else {}
        if trainer is not None:  # its best checkpoint so far: `lab predict --run` works on a pruned trial
            _log_artifacts(ctx, outcome.run_id, run_dir, run_dir / names.BEST_CHECKPOINT)
    except KeyboardInterrupt:
        _interrupted(ctx, trial, outcome.run_id)
        raise
    except Exception as exc:
        outcome.state, outcome.error = "failed", _reason(exc)
    if ctx.floors is not None and outcome.state != "failed" and best:
        outcome.floor_verdict = trial_verdict(ctx.floors, cfg, best, trial.number)
    return best


def _epoch_hook(space: SearchSpace, trial: Any, outcome: TrialOutcome, reported: list[float],
                planned: list[int]) -> Callable[[int, dict[str, float]], None]:
    """The trainer's per-epoch callback: count epochs, report the objective to Optuna and prune when told.

    A multi-objective study is never pruned (Optuna cannot), and a trial that ran all ``planned`` epochs
    is complete, ranked by its result, never "pruned".
    """
    import optuna

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        outcome.epochs = epoch + 1
        if space.multi:
            return
        metric = space.objectives[0].metric
        value = metrics.get(metric)
        if value is None:
            return
        reported.append(float(value))
        trial.report(float(value), epoch)
        if planned and epoch + 1 >= planned[0]:
            return  # it ran all its epochs: a complete trial, ranked by its result, never "pruned"
        if trial.should_prune():
            of = f" of {planned[0]}" if planned else ""
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}{of} ({metric} = {value:.4f})")

    return on_epoch


def _objective_values(space: SearchSpace, best: dict[str, float]) -> list[float]:
    """The objectives at the best epoch; a trial missing one (or with a NaN) cannot be ranked and fails."""
    from losslab.core.train.trainer import TrainingError

    values = [best.get(m) for m in space.metrics]
    missing = [m for m, v in zip(space.metrics, values, strict=True) if not is_finite(v)]
    if missing:
        found = ", ".join(f"{m} = {best.get(m)}" for m in missing)
        raise TrainingError(f"objective {', '.join(missing)} is missing or not finite at the best epoch "
                            f"({found}); the trial cannot be ranked")
    return [float(v) for v in values]  # type: ignore[arg-type]


def _reason(exc: Exception) -> str:
    """Our own errors already say what and how to fix; anything else keeps its type for the bug report."""
    from losslab.core.config import ConfigError
    from losslab.core.train.trainer import TrainingError

    if isinstance(exc, TrainingError | ConfigError) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _tell(ctx: TuneContext, trial: Any, outcome: TrialOutcome) -> None:
    from optuna.trial import TrialState

    if outcome.state == "complete":
        ctx.study.tell(trial, outcome.values if ctx.space.multi else outcome.values[0])  # type: ignore[index]
    elif outcome.state == "pruned":
        ctx.study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(FAIL_REASON_ATTR, outcome.error[:2000])
        ctx.study.tell(trial, state=TrialState.FAIL)


def _interrupted(ctx: TuneContext, trial: Any, run_id: str) -> None:
    """Queue the same parameters again (as a dead worker's trial would be), then close this one."""
    from optuna.trial import TrialState

    reason = "interrupted (Ctrl-C or SIGTERM); queued again with the same parameters"
    frozen = next((t for t in ctx.study.get_trials(deepcopy=False) if t.number == trial.number), None)
    if frozen is not None:
        ctx.handler.retry(ctx.study, frozen)
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    ctx.study.tell(trial, state=TrialState.FAIL)
    ctx.records.kill_trial(run_id, reason)


def _log_artifacts(ctx: TuneContext, run_id: str, run_dir: Path, checkpoint: Path) -> None:
    """The trial's best checkpoint and prediction grid, as ``lab run`` logs them (``lab predict --run`` works)."""
    from losslab.core.experiment.visualize import save_prediction_grid

    if checkpoint.exists():
        ctx.records.log_artifact(run_id, checkpoint, names.CHECKPOINT_DIR)
    samples_file = run_dir / names.SAMPLES_FILE
    if samples_file.exists():
        import numpy as np

        with np.load(samples_file) as data:
            samples = {k: data[k] for k in data.files}
        if len(samples.get("fg_bg", [])):
            ctx.records.log_artifact(run_id, save_prediction_grid(samples, run_dir / names.PREDICTIONS_FILE))


def _summary(ctx: TuneContext, o: TrialOutcome) -> str:
    took = f"{o.seconds:.1f}s"
    if o.state == "complete":
        values = ", ".join(f"{m} = {v:.4f}" for m, v in zip(ctx.space.metrics, o.values or [], strict=False))
        return f"losslab: trial {o.number} complete in {took}: {values}{_floor_note(o)}"
    if o.state == "pruned":
        return f"losslab: trial {o.number} {o.error} in {took}{_floor_note(o)}"
    return f"losslab: trial {o.number} failed in {took}: {o.error}"


def _floor_note(o: TrialOutcome) -> str:
    if o.floor_verdict is None:
        return ""
    below = o.floor_verdict["below"]
    return f" (below floor on {', '.join(below)})" if below else " (above every floor)"
