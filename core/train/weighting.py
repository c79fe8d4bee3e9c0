"""The weighting glue: build ``loss.weighting``, find the shared parameters, feed it each step and epoch.

The method itself is a plugin (:class:`losslab.core.plugin.contracts.Weighting`);
this module holds what the engine must decide around it: which parameters
are shared between the tasks, whether the method may run under DDP, and each
task's epoch-mean loss computed from the logged terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from losslab.core import names
from losslab.core.config import ComponentSpec
from losslab.core.plugin.contracts import Weighting
from losslab.core.plugin.registry import Catalog
from losslab.core.train.errors import TrainingError


class WeightingError(TrainingError):
    """``loss.weighting`` cannot be built or used as configured; the message says what to change."""


def shared_parameters(model: nn.Module) -> tuple[list[nn.Parameter], str]:
    """The parameters both tasks use, and where that answer came from.

    An architecture declares them with ``shared_parameters()``. Without it the
    fallback is the parameters of its ``encoder`` attribute (the usual shape of
    a two-decoder network), and without an encoder every parameter that does
    not sit in a module whose name mentions a task head (``mask``/``depth``).
    """
    declared = getattr(model, "shared_parameters", None)
    if callable(declared):
        params = [p for p in declared() if p.requires_grad]
        return params, f"{type(model).__name__}.shared_parameters()"
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return [p for p in encoder.parameters() if p.requires_grad], f"{type(model).__name__}.encoder"
    params = [p for name, p in model.named_parameters()
              if p.requires_grad and not any(t in name.split(".")[0] for t in ("mask", "depth"))]
    return params, f"the parameters of {type(model).__name__} outside its mask/depth modules"


def build_weighting(spec: ComponentSpec, catalog: Catalog, world_size: int = 1) -> Weighting:
    """The configured method, checked against the contract and against DDP."""
    component = catalog.get("weighting", spec.name)
    origin = f"plugin {component.plugin!r} ({component.distribution})"
    try:
        weighting = component.create(**spec.params)
    except Exception as exc:
        raise WeightingError(f"loss.weighting: could not build {spec.name!r} with params {spec.params} "
                             f"from {origin}: {exc}") from exc
    if not isinstance(weighting, Weighting):
        raise WeightingError(f"loss.weighting {spec.name!r} from {origin} built a {type(weighting).__name__}, "
                             "not a losslab.core.Weighting")
    if world_size > 1 and weighting.distributed:
        raise WeightingError(f"loss.weighting {spec.name!r} cannot run under DDP ({world_size} processes): "
                             f"{weighting.distributed}. Run it in one process, or choose a weighting that "
                             "works under DDP (static, dwa)")
    return weighting


def check_shared(weighting: Weighting, name: str, shared: Sequence[nn.Parameter], source: str) -> None:
    if weighting.needs_task_gradients and not shared:
        raise WeightingError(f"loss.weighting {name!r} needs the parameters the tasks share, but {source} "
                             "gives none; declare them with shared_parameters() on the architecture")


def epoch_task_losses(terms: Sequence[tuple[str, str, float]], means: dict[str, float]) -> dict[str, float]:
    """Each task's epoch-mean loss, ``sum(weight * mean(term))``, from ``(task, key, weight)`` and ``train/`` means."""
    out: dict[str, float] = {}
    for task, key, weight in terms:
        value = means.get(f"{names.TRAIN_PREFIX}{task}/{key}")
        if weight and value is not None:
            out[task] = out.get(task, 0.0) + weight * value
    return out


def parameter_groups(model: nn.Module, weighting: Weighting) -> list[dict[str, Any]]:
    """The optimizer's groups: the network's parameters, then the weighting's own (no weight decay), if any."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    own = [p for p in weighting.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own, "weight_decay": 0.0})
    return groups


def backward(weighting: Weighting, weighted: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
             scaler: torch.amp.GradScaler | None) -> None:
    """One step's gradients: the weighting combines the terms; a returned total is (scaled and) back-propagated.

    A gradient method gets the AMP loss scale as a device tensor (no host sync) and leaves ``.grad`` at
    that scale, so the caller's ``scaler.unscale_``/``scaler.step`` treat both kinds alike.
    """
    scale = None
    if scaler is not None and weighting.needs_task_gradients:
        scale = scaler.scale(torch.ones((), device=next(iter(weighted.values())).device))
    total = weighting.combine(weighted, shared, scale)
    if total is not None:
        (scaler.scale(total) if scaler is not None else total).backward()


def end_epoch(weighting: Weighting, terms: Sequence[tuple[str, str, float]],
              train_means: dict[str, float]) -> dict[str, float]:
    """The epoch's ``weighting/<task>`` metrics (read before the method moves on), then ``end_epoch``."""
    logged = {f"weighting/{task}": float(value) for task, value in weighting.weights().items()}
    weighting.end_epoch(epoch_task_losses(terms, train_means))
    return logged
