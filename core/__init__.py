"""losslab's engine. The public API for plugin authors is what this module exports.

Everything else under ``losslab.core`` is engine-internal and may change.

The exports are resolved lazily, so ``from losslab.core import hookimpl``
(all a plugin module needs at import time) does not import torch; the
``TYPE_CHECKING`` imports give type checkers the real types.
"""

from typing import TYPE_CHECKING, Any

from losslab.core.plugin.markers import hookimpl, hookspec

if TYPE_CHECKING:
    from losslab.core.data.recipes import Recipe
    from losslab.core.plugin.contracts import (
        Augmentation,
        Baseline,
        Batch,
        Generator,
        GroundTruth,
        InputKind,
        Loss,
        Metric,
        Task,
        Weighting,
    )
    from losslab.core.plugin.host_sync import loss_host_round_trips
    from losslab.core.plugin.manager import load_catalog
    from losslab.core.plugin.registry import Catalog, Component, Registry, RegistryError

__all__ = [
    "Augmentation",
    "Baseline",
    "Batch",
    "Catalog",
    "Component",
    "Generator",
    "GroundTruth",
    "InputKind",
    "Loss",
    "Metric",
    "Recipe",
    "Registry",
    "RegistryError",
    "Task",
    "Weighting",
    "hookimpl",
    "hookspec",
    "load_catalog",
    "loss_host_round_trips",
]

_COMPONENTS = ("Augmentation", "Baseline", "Batch", "Generator", "GroundTruth", "InputKind", "Loss", "Metric",
               "Task", "Weighting")
_REGISTRY = ("Registry", "Component", "Catalog", "RegistryError")


def __getattr__(name: str) -> Any:  # lazy: `from losslab.core import hookimpl` must not import torch
    if name in _COMPONENTS:
        from losslab.core.plugin import contracts as components

        return getattr(components, name)
    if name in _REGISTRY:
        from losslab.core.plugin import registry

        return getattr(registry, name)
    if name == "load_catalog":
        from losslab.core.plugin.manager import load_catalog

        return load_catalog
    if name == "loss_host_round_trips":
        from losslab.core.plugin.host_sync import loss_host_round_trips

        return loss_host_round_trips
    if name == "Recipe":
        from losslab.core.data.recipes import Recipe

        return Recipe
    raise AttributeError(f"module 'losslab.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
