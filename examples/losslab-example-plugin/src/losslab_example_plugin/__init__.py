"""losslab-example-plugin: the hook implementations losslab calls.

This module is the plugin: the entry point ``example = "losslab_example_plugin"``
in pyproject.toml names it, losslab imports it once when it builds its
catalog, and calls each ``@hookimpl`` function below with the registry of
that kind. Registering is all a hook does; losslab builds the components
later, with the ``params`` an experiment gives them.

The factories are registered lazily, as ``"module:attr"`` import strings with
their task and input kind stated here: building the catalog then imports
neither torch nor ``losses.py``/``metrics.py``, so ``lab plugins`` and
``lab --help`` stay fast. losslab imports the module when the component is
built, and checks the stated metadata against the class.
"""

from __future__ import annotations

from typing import Any

from losslab.core import Registry, hookimpl

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
    """Add the ``log-cosh`` depth loss (imported when an experiment builds it)."""
    registry.add("log-cosh", "losslab_example_plugin.losses:LogCoshLoss",
                 summary="log-cosh depth loss: quadratic below scale, linear above", task="depth",
                 input_kind="depth")


@hookimpl
def lab_register_metrics(registry: Registry) -> None:
    """Add the ``f2-score`` mask metric (recall weighted four times precision)."""
    registry.add("f2-score", "losslab_example_plugin.metrics:FBetaScore",
                 summary="per-image F2 of the thresholded mask (recall-heavy)", task="mask",
                 higher_is_better=True)


def __getattr__(name: str) -> Any:  # the components, imported on first use (they import torch)
    if name in ("LogCoshLoss", "log_cosh_loss"):
        from losslab_example_plugin import losses

        return getattr(losses, name)
    if name in ("FBetaScore", "fbeta_score"):
        from losslab_example_plugin import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'losslab_example_plugin' has no attribute {name!r}")
