"""Why a loss wins, from training: per-term gradients on the shared parameters, once per epoch.

A multi-task loss can lose because one term's gradient drowns the other's, or because the
tasks pull the shared encoder in opposite directions. Both are visible in the gradients on the
parameters the tasks share, so every ``train.diagnostics.every`` epochs (after the epoch's
training) the trainer measures, on ``train.diagnostics.batches`` fixed training batches (the
first batches of epoch 0's order, loaded once, never augmented):

- ``diag/grad_norm/<task>/<term>``: the L2 norm of the term's *weighted* gradient
  (``weight * d term / d shared``) over all shared parameters, averaged over the batches;
- ``diag/grad_norm/<task>``: the same for the task's summed terms;
- ``diag/task_cosine``: the cosine between the mask and the depth gradients there (task
  interference: below 0 the tasks pull against each other), averaged over the batches;
- ``diag/loss_share/<task>/<term>``: the term's share of the total weighted loss.

The gradients come from ``torch.autograd.grad``, so ``.grad`` and the optimizer's state are
untouched; the forward pass runs in training mode (the gradients training sees) with the
normalisation layers' running statistics and the random number generators restored
afterwards, so a run with diagnostics trains bit for bit as one without.

Shared parameters: the builder's ``Parts.shared``, the same list gradient-based weightings use
(``core/train/weighting.shared_parameters``: the architecture's ``shared_parameters()``, else
its ``encoder``, else every parameter outside its modules named after a task).

The terms are weighted by their static ``weight`` from the config (the total that is logged as
``train/loss``), whatever ``loss.weighting`` trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from losslab.core.train.objective import Objective


class Diagnostics:
    """Measures the per-epoch diagnostics of one run (see the module's docstring)."""

    def __init__(self, model: nn.Module, objective: Objective, batches: Sequence[dict[str, torch.Tensor]],
                 forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                 shared: Sequence[nn.Parameter], every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"train.diagnostics.every must be at least 1, got {every}")
        if not shared:
            raise ValueError(f"{type(model).__name__} declares no shared parameters to measure the diagnostics "
                             "on; give it a shared_parameters() method or set train.diagnostics: false")
        self.model, self.objective, self.batches, self.forward = model, objective, list(batches), forward
        self.every = every
        self.params = list(shared)

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is measured: every ``every``-th, counting from the first."""
        return bool(self.batches) and epoch % self.every == 0

    def _restoring(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        buffers = list(self.model.buffers())
        return buffers, [b.detach().clone() for b in buffers]

    def measure(self) -> dict[str, float]:
        """One measurement: the values above, read back to the host once."""
        terms = [t for t in self.objective.terms if t.weight]
        names = [f"{t.task}/{t.key}" for t in terms]
        buffers, saved = self._restoring()
        was_training = self.model.training
        device = self.params[0].device
        cuda = [device.index or 0] if device.type == "cuda" else []
        sums: dict[str, torch.Tensor] = {}

        def add(key: str, value: torch.Tensor) -> None:
            sums[key] = sums.get(key, 0.0) + value.detach().float()

        with torch.random.fork_rng(devices=cuda):
            self.model.train()
            try:
                for batch in self.batches:
                    out = {k: v.float() for k, v in self.forward(batch).items()}
                    total, values = self.objective(out, batch)
                    task_grad: dict[str, torch.Tensor] = {}
                    for term, name in zip(terms, names, strict=True):
                        weighted = term.weight * values[name].float()
                        grads = torch.autograd.grad(weighted, self.params, retain_graph=True, allow_unused=True)
                        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                          for g, p in zip(grads, self.params, strict=True)])
                        add(f"diag/grad_norm/{name}", flat.norm())
                        add(f"diag/loss_share/{name}", weighted / total.float())
                        task_grad[term.task] = task_grad[term.task] + flat if term.task in task_grad else flat
                    for task, g in task_grad.items():
                        add(f"diag/grad_norm/{task}", g.norm())
                    if len(task_grad) == 2:
                        g_m, g_d = task_grad["mask"], task_grad["depth"]
                        den = (g_m.norm() * g_d.norm()).clamp_min(1e-30)
                        add("diag/task_cosine", (g_m @ g_d) / den)
            finally:
                with torch.no_grad():
                    for b, s in zip(buffers, saved, strict=True):
                        b.copy_(s)
                self.model.train(was_training)
        if not sums:
            return {}
        keys = list(sums)
        values_back = (torch.stack([sums[k] for k in keys]) / len(self.batches)).tolist()  # the one read-back
        return dict(zip(keys, values_back, strict=True))


def build_diagnostics(parts: Any) -> Diagnostics | None:
    """The run's diagnostics from its built parts (``builder.Parts``), or None when ``train.diagnostics`` is off."""
    spec = parts.cfg.train.diagnostics
    if spec is False:
        return None
    from losslab.core.train.step import model_inputs, run_model

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return run_model(parts.model, model_inputs(batch, parts.precision), parts.precision, parts.device)

    return Diagnostics(parts.model, parts.objective, fixed_batches(parts.train_loader, spec.batches), forward,
                       parts.shared, every=spec.every)


def fixed_batches(loader: Any, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` batches of epoch 0's order, loaded once (the loader's own epoch is untouched)."""
    order = loader.epoch_indices(0)
    size = loader.batch_size
    chunks = [order[i * size:(i + 1) * size] for i in range(count) if len(order[i * size:(i + 1) * size])]
    return [loader.load(chunk) for chunk in chunks]
