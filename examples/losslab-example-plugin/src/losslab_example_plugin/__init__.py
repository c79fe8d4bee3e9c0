"""losslab-example-plugin: the hook implementations losslab calls.

This module is the plugin: the entry point ``example = "losslab_example_plugin"``
in pyproject.toml names it, losslab imports it once when it builds its
catalog, and calls each ``@hookimpl`` function below with the registry of
that kind. Registering is all a hook does; losslab builds the components
later, with the ``params`` an experiment gives them.
"""

from __future__ import annotations

from losslab.core import Registry, hookimpl

from losslab_example_plugin.losses import LogCoshLoss, log_cosh_loss
from losslab_example_plugin.metrics import FBetaScore, fbeta_score

__all__ = [
    "FBetaScore",
    "LogCoshLoss",
    "fbeta_score",
    "lab_register_losses",
    "lab_register_metrics",
    "log_cosh_loss",
]


@hookimpl
def lab_register_losses(registry: Registry) -> None:
    """Add the ``log-cosh`` depth loss; its task and input kind come from the class."""
    registry.add("log-cosh", LogCoshLoss, summary="log-cosh depth loss: quadratic below scale, linear above")


@hookimpl
def lab_register_metrics(registry: Registry) -> None:
    """Add the ``f2-score`` mask metric (recall weighted four times precision)."""
    registry.add("f2-score", FBetaScore, summary="per-image F2 of the thresholded mask (recall-heavy)")
