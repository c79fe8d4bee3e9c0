"""The objective: a config's loss terms, each kept apart for logging, weighted for the weighting to combine.

The engine, not each loss, turns mask logits into what a term expects
(``input_kind``), checks that each term returns a finite scalar, and names
the plugin and distribution of a term that breaks a rule, so a run is never
silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from losslab.core.config import LossSpec, LossTermSpec
from losslab.core.plugin.registry import Catalog, Component, create_module


class LossFault(RuntimeError):
    """A loss term broke its contract (non-scalar, wrong type) or produced NaN/inf."""


@dataclass
class Term:
    task: str
    key: str  # unique log name within the task, e.g. "bce", "bce#2"
    weight: float
    module: nn.Module
    input_kind: str
    component: Component

    @property
    def origin(self) -> str:
        return self.component.origin


class Objective(nn.Module):
    """All loss terms of a config; ``forward`` returns the total and each unweighted term."""

    def __init__(self, spec: LossSpec, catalog: Catalog) -> None:
        super().__init__()
        self.terms: list[Term] = []
        modules = nn.ModuleList()
        for task in ("mask", "depth"):
            seen: dict[str, int] = {}
            term_spec: LossTermSpec
            for term_spec in getattr(spec, task):
                component = catalog.get("loss", term_spec.name)
                origin = component.origin
                module = create_module(component, term_spec.params, where=f"loss.{task}", error=LossFault,
                                       hint="; return a losslab.core.Loss")
                declared_task = getattr(module, "task", component.meta.get("task", task))
                if declared_task != task:
                    raise LossFault(
                        f"loss {term_spec.name!r} from {origin} "
                        f"is a {declared_task} loss but is listed under loss.{task}; move it to "
                        f"loss.{declared_task}"
                    )
                default_kind = "logits" if task == "mask" else "depth"
                input_kind = getattr(module, "input_kind", component.meta.get("input_kind", default_kind))
                if input_kind not in ("logits", "probabilities", "depth"):
                    raise LossFault(
                        f"loss {term_spec.name!r} from {origin} declares input_kind "
                        f"{input_kind!r}; expected 'logits', 'probabilities' or 'depth'"
                    )
                count = seen.get(term_spec.name, 0) + 1
                seen[term_spec.name] = count
                key = term_spec.name if count == 1 else f"{term_spec.name}#{count}"
                modules.append(module)
                self.terms.append(Term(task, key, term_spec.weight, module, input_kind, component))
        self._modules_list = modules

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], step: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total weighted loss and ``{"mask/bce": value, ...}`` (unweighted, detached later by the caller)."""
        values, weighted = self.term_values(outputs, batch, step)
        return self.total(weighted, outputs["mask"]), values

    def term_values(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], step: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each term unweighted (for logging) and weighted (``weight * value`` in float32, weight-0 terms left
        out), both keyed ``"task/key"`` in config order: what a :class:`~losslab.core.Weighting` combines."""
        probs = None
        values: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        for term in self.terms:
            if term.task == "mask":
                if term.input_kind == "probabilities":
                    if probs is None:
                        probs = torch.sigmoid(outputs["mask"].float())
                    pred = probs
                else:
                    pred = outputs["mask"]
                target = batch["mask"]
            else:
                pred, target = outputs["depth"], batch["depth"]
            try:
                value = term.module(pred, target)
            except torch.OutOfMemoryError:
                raise  # the trainer's batch-size search must see it as it is
            except Exception as exc:
                raise LossFault(
                    f"loss term {term.task}/{term.key} from {term.origin} failed on pred "
                    f"{tuple(pred.shape)} {pred.dtype} and target {tuple(target.shape)} {target.dtype}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._check(term, value, step)
            values[f"{term.task}/{term.key}"] = value
            if term.weight:
                weighted[f"{term.task}/{term.key}"] = term.weight * value.float()
        return values, weighted

    @staticmethod
    def total(weighted: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The static sum: a float32 zero plus each weighted term in config order (the ``static`` weighting's sum)."""
        total = like.new_zeros((), dtype=torch.float32)
        for value in weighted.values():
            total = total + value
        return total

    def _check(self, term: Term, value: object, step: int | None) -> None:
        if not isinstance(value, torch.Tensor):
            raise LossFault(
                f"loss term {term.task}/{term.key} from {term.origin} returned {type(value).__name__}, "
                "expected a scalar torch.Tensor"
            )
        if value.dim() != 0:
            raise LossFault(
                f"loss term {term.task}/{term.key} from {term.origin} returned a tensor of shape "
                f"{tuple(value.shape)}, expected a scalar (reduce it, e.g. with .mean())"
            )

    def assert_finite(self, values: dict[str, torch.Tensor], step: int | None = None) -> None:
        """Stop on the first NaN or infinite term, naming it, its plugin and the step.

        Kept apart from ``forward`` because it reads values back to the host:
        the trainer calls it every step on CPU and at logging intervals on CUDA.
        """
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if bool(torch.isfinite(stacked).all()):
            return
        where = f" at step {step}" if step is not None else ""
        for term in self.terms:
            value = values.get(f"{term.task}/{term.key}")
            if value is not None and not bool(torch.isfinite(value.detach()).all()):
                raise LossFault(
                    f"loss term {term.task}/{term.key} from {term.origin} is {value.item()}{where}; "
                    "the run stops here. Lower train.lr, set train.grad_clip, or check the loss for "
                    "log(0) or division by zero"
                )
        bad = {key: float(value.detach().float()) for key, value in values.items()
               if not bool(torch.isfinite(value.detach()).all())}
        raise LossFault(
            f"{', '.join(f'{k} = {v}' for k, v in bad.items())}{where} although every loss term is finite "
            f"(terms: {', '.join(f'{t.task}/{t.key} x {t.weight}' for t in self.terms)}); a weight times "
            "a large term overflows. Lower the weights or check the terms' scale"
        )
