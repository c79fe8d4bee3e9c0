"""``lab tune``: the command around ``worker.run_tune``.

Every error a user can cause (a bad search block, an unreachable storage, a
study resumed with another config) reaches them as one red message without a
traceback. SIGTERM is handled like Ctrl-C, so a worker stopped by a scheduler
closes its trial and queues it again instead of leaving it to the heartbeat.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer

from losslab.core.experiment.tuning.options import TuneOptions


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _dashboard_hint(storage: str) -> str:
    """How to browse the study: optuna-dashboard when installed, else the extra that installs it."""
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is not None:
        return f" (`optuna-dashboard {storage}` to browse it)"
    return " (to browse it: pip install 'losslab[dashboard]', then `optuna-dashboard " + storage + "`)"


def tune(experiment: Path, options: TuneOptions, report: bool = True) -> None:
    """Run (or join, or resume) the study and print its best trials; with ``report``, build its report."""
    from losslab.core.cli.report_commands import end_of_run_report
    from losslab.core.config import ConfigError
    from losslab.core.experiment.tracking import TrackingError
    from losslab.core.experiment.tuning.study import StudyError
    from losslab.core.experiment.tuning.worker import run_tune
    from losslab.core.paths import UnsafePathError
    from losslab.core.plugin.manager import PluginError
    from losslab.core.plugin.registry import RegistryError

    try:
        previous: Any = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    name = options.study
    hook = end_of_run_report(lambda message: typer.echo(message, err=True)) if report else None
    try:
        result = run_tune(experiment, options, on_finished=hook)
    except (ConfigError, PluginError, RegistryError, StudyError, TrackingError, UnsafePathError) as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        again = " ".join(sys.argv[1:]) if sys.argv[1:2] == ["tune"] else f"tune {experiment} --trials {options.trials}"
        _fail(f"interrupted; the running trial is queued again. Resume the study{f' {name!r}' if name else ''} "
              f"with the same command: lab {again}", code=130)
        return
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    typer.echo("")
    typer.echo(result.table)
    typer.echo("")
    if result.best_path is not None:
        typer.echo(f"best config: {result.best_path}  (run it with `lab run {result.best_path}`)")
    typer.echo(f"MLflow parent run {result.parent_run_id} in {result.tracking_uri} (`lab ui` to browse)")
    typer.echo(f"Optuna study {result.study!r} in {result.storage}{_dashboard_hint(result.storage)}")
    if result.plots:
        typer.echo(f"plots: {', '.join(str(p) for p in result.plots)} (artifacts of the parent run)")
    for fmt, path in result.report.items():
        typer.echo(f"report ({fmt}): {path}")
    if result.gave_up:
        _fail(f"stopped early: {result.stopped}", code=1)
    elif result.stopped:
        typer.secho(f"stopped early: {result.stopped}; run the same command again to continue the study",
                    fg=typer.colors.YELLOW, err=True)
