"""What one ``lab tune`` is asked to do, defined once.

The ``lab tune`` command takes its flags' defaults from here, ``core/cli/tune_commands.py`` hands the filled
options on, and the worker reads them: a new option is one field here and one flag in the CLI, never three
parallel parameter lists that can drift apart. Standard library only, so ``lab --help`` can read the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TuneOptions:
    """The study's budget, where it is stored and tracked, and the overrides of the experiment."""

    trials: int = 12  # in total across the workers of the study
    storage: str | None = None  # Optuna storage URL; None: sqlite optuna.db beside the MLflow store
    study: str | None = None  # None: the experiment's name
    timeout: float | None = None  # stop starting trials after this many seconds
    sets: tuple[str, ...] = ()  # --set key=value overrides, in order
    tracking_uri: str | None = None
    runs_dir: Path = Path("lab-runs")  # trial checkpoints go to runs_dir/<experiment>/tune-<study>/
