"""Weightings that only rescale the tasks' losses: static, uncertainty, dwa.

Each returns the total to back-propagate; none needs the task gradients, so
each costs what the static sum costs (one backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from losslab.core.plugin.contracts import TASKS, Weighting

LEARNED = ("its learned parameters live outside the DDP-wrapped network, so their gradients would not be "
           "averaged across processes and each process would learn different weights")


class Static(Weighting):
    """The weighted sum of the terms as the config gives them: the objective before weightings, bit for bit.

    The terms arrive weighted and in config order; summing them from a float32
    zero in that order repeats the engine's former total operation for operation.
    """

    def __init__(self) -> None:  # no params: a typo under loss.weighting.params is caught at validation
        super().__init__()

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> torch.Tensor:
        values = list(terms.values())
        if not values:
            raise ValueError("weighting 'static': every loss term has weight 0, so there is nothing to train; "
                             "give at least one term a positive weight")
        total = values[0].new_zeros((), dtype=torch.float32)
        for value in values:
            total = total + value
        return total

    def weights(self) -> dict[str, float]:
        return {task: 1.0 for task in TASKS}


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    Each task has a learned log-variance ``s = log sigma^2``; the total is
    ``sum_t exp(-s_t) / 2 * L_t + s_t / 2``, so a task's weight is
    ``exp(-s_t) / 2`` and the ``s_t / 2`` term keeps it from vanishing.

    Args:
        init: the starting log-variance of every task (0: sigma = 1, weight 0.5).
    """

    distributed = LEARNED

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(init):
            raise ValueError(f"weighting 'uncertainty': init must be a finite number, got {init}")
        self.log_var = nn.Parameter(torch.full((len(TASKS),), float(init)))

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for task, loss in self.task_losses(terms).items():
            s = self.log_var[TASKS.index(task)]
            part = 0.5 * torch.exp(-s) * loss + 0.5 * s
            total = part if total is None else total + part
        if total is None:
            raise ValueError("weighting 'uncertainty': no loss term has a positive weight")
        return total

    def weights(self) -> dict[str, float]:
        values = (0.5 * torch.exp(-self.log_var.detach())).tolist()
        return dict(zip(TASKS, values, strict=True))


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019).

    A task whose loss fell less over the last epoch gets more weight:
    ``w_t = K * softmax_t(r_t / T)`` with ``r_t = L_t(e-1) / L_t(e-2)``, the
    ratio of its epoch-mean losses, over the K tasks; all weights are 1 for
    the first two epochs. The epoch means come from the engine (averaged over
    all processes), so DWA is correct under DDP.

    Args:
        temperature: the softmax temperature T (larger: weights closer to 1).
    """

    current: torch.Tensor

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"weighting 'dwa': temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []
        self.register_buffer("current", torch.ones(len(TASKS)))

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        self.history.append({k: float(v) for k, v in task_losses.items()})
        self._update()

    def _update(self) -> None:
        weights = [1.0] * len(TASKS)
        if len(self.history) >= 2:
            last, before = self.history[-1], self.history[-2]
            tasks = [t for t in TASKS if t in last and before.get(t, 0.0) > 0]
            ratios = [last[t] / before[t] / self.temperature for t in tasks]
            top = max(ratios, default=0.0)
            exps = [math.exp(r - top) for r in ratios]
            for t, e in zip(tasks, exps, strict=True):
                weights[TASKS.index(t)] = len(tasks) * e / sum(exps)
        with torch.no_grad():
            self.current.copy_(torch.tensor(weights, dtype=self.current.dtype))

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for task, loss in self.task_losses(terms).items():
            part = self.current[TASKS.index(task)] * loss
            total = part if total is None else total + part
        if total is None:
            raise ValueError("weighting 'dwa': no loss term has a positive weight")
        return total

    def weights(self) -> dict[str, float]:
        return dict(zip(TASKS, self.current.tolist(), strict=True))

    def get_extra_state(self) -> Any:
        return {"history": [dict(h) for h in self.history]}

    def set_extra_state(self, state: Any) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self._update()
