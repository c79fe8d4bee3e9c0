"""The forward half of a training step, shared by the loop, evaluation and the batch-size search.

Kept apart from the loop so that ``batch_size`` (which probes the plain model
before any loader exists) and the benchmarks run exactly the step the loop
runs: the same input layout, the same autocast, the same output check.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losslab.core.device import Precision
from losslab.core.plugin.registry import Component
from losslab.core.train.errors import TrainingError


def model_inputs(batch: dict[str, torch.Tensor], precision: Precision) -> torch.Tensor:
    """The network's input: ``cat([bg, fg_bg])`` on channels, channels_last where the run uses it."""
    x = torch.cat([batch["bg"], batch["fg_bg"]], dim=1)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def run_model(module: nn.Module, x: torch.Tensor, precision: Precision,
              device: torch.device) -> dict[str, torch.Tensor]:
    """``module(x)`` under the run's autocast (none in float32)."""
    dtype = precision.autocast_dtype
    if dtype is None:
        return module(x)
    with torch.autocast(device.type, dtype=dtype):
        return module(x)


def check_outputs(out: Any, x: torch.Tensor, component: Component) -> None:
    """Stop with the plugin's name when an architecture breaks its output contract."""
    who = f"architecture {component.name!r} (plugin {component.plugin!r}, {component.distribution})"
    expected = (x.shape[0], 1, x.shape[2], x.shape[3])
    if not isinstance(out, dict) or "mask" not in out or "depth" not in out:
        raise TrainingError(f"{who} returned {type(out).__name__}; expected a dict with 'mask' and 'depth' tensors")
    for key in ("mask", "depth"):
        if tuple(out[key].shape) != expected:
            raise TrainingError(f"{who} returned {key} of shape {tuple(out[key].shape)}; "
                                f"expected {expected} for input {tuple(x.shape)}")
