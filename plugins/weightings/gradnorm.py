"""GradNorm (Chen et al., ICML 2018): task weights learned so the tasks' gradient norms train at equal rates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from losslab.core.plugin.contracts import TASKS, Weighting
from losslab.plugins.weightings.gradient import PER_TASK_BACKWARD


class GradNorm(Weighting):
    """GradNorm: learned task weights ``w_t`` that pull each task's gradient norm toward a common target.

    Each step, with ``G_t = |grad_shared(w_t L_t)|``, ``Gbar`` their mean,
    ``r_t = (L_t / L_t(0)) / mean_k(L_k / L_k(0))`` the task's relative inverse
    training rate: ``L_grad = sum_t |G_t - Gbar r_t^alpha|`` with the target held
    constant, so ``dL_grad/dw_t = sign(G_t - target_t) |grad_shared L_t|``. The
    weights are trained by the run's optimizer from that gradient and renormalized
    to sum to the number of tasks before each use. The network itself trains on
    ``sum_t w_t L_t``; one backward per task gives both (``L_t(0)`` is the first step's loss).
    The norms are taken over all the shared parameters (the paper takes the last shared layer).

    Args:
        alpha: the restoring force (0: equal gradient norms; larger: slow tasks get more).
    """

    needs_task_gradients = True
    distributed = PER_TASK_BACKWARD
    initial: torch.Tensor

    def __init__(self, alpha: float = 1.5) -> None:
        super().__init__()
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"weighting 'gradnorm': alpha must be a finite number >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.task_weight = nn.Parameter(torch.ones(len(TASKS)))
        self.register_buffer("initial", torch.ones(len(TASKS)))
        self.has_initial = False

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> None:
        losses = self.task_losses(terms)
        index = [TASKS.index(t) for t in losses]
        with torch.no_grad():  # renormalize after the optimizer's last step: sum of the tasks' weights = K
            w = self.task_weight[index].clamp_min(1e-6)
            self.task_weight[index] = w * (len(index) / w.sum())
        w = self.task_weight.detach()[index]
        now = torch.stack([loss.detach() for loss in losses.values()]).to(self.initial.dtype)
        if not self.has_initial:
            with torch.no_grad():
                self.initial[index] = now
            self.has_initial = True
        weighted = {task: w[k] * loss for k, (task, loss) in enumerate(losses.items())}
        G = self.task_gradients(weighted, shared, scale)
        if scale is not None:
            G = G / scale
        norms = G.norm(dim=1)  # G_t = w_t |g_t|
        ratio = now / self.initial[index]
        rate = ratio / ratio.mean()
        target = norms.mean() * rate.pow(self.alpha)
        grad_w = torch.sign(norms - target) * norms / w
        full = torch.zeros_like(self.task_weight)
        full[index] = (grad_w if scale is None else grad_w * scale).to(full.dtype)
        self.task_weight.grad = full
        combined = G.sum(dim=0)
        self.set_shared_gradient(shared, combined if scale is None else combined * scale)
        return None

    def weights(self) -> dict[str, float]:
        w = self.task_weight.detach().clamp_min(1e-6)
        return dict(zip(TASKS, (w * (len(TASKS) / w.sum())).tolist(), strict=True))

    def get_extra_state(self) -> Any:
        return {"has_initial": self.has_initial}

    def set_extra_state(self, state: Any) -> None:
        self.has_initial = bool(state.get("has_initial", False))
