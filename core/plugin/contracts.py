"""Contracts between the engine and plugins: what each kind of component must provide.

These are the public base classes and protocols of losslab. A plugin author
subclasses :class:`Loss`, :class:`Metric` or :class:`Weighting`, or returns any
object that satisfies :class:`Generator`, :class:`GroundTruth`,
:class:`Augmentation` or :class:`Baseline`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    import numpy as np

    from losslab.core.data.recipes import Recipe
    from losslab.core.data.sources import Sources

Task = Literal["mask", "depth"]
InputKind = Literal["logits", "probabilities", "depth"]
Batch = dict[str, torch.Tensor]


class Loss(nn.Module):
    """Base class of a loss term.

    Subclasses set :attr:`task` and :attr:`input_kind` and implement
    ``forward(pred, target) -> scalar tensor``. The engine hands ``pred`` as
    the raw mask logits (``input_kind = "logits"``), their sigmoid
    (``"probabilities"``), or the predicted depth (``"depth"``), always with
    shape ``(B, 1, H, W)``; ``target`` has the same shape (mask in {0, 1},
    depth normalised to [0, 1] by ``data.max_depth``).
    """

    task: ClassVar[Task] = "mask"
    input_kind: ClassVar[InputKind] = "logits"
    #: The term needs a positive depth prediction (it takes a log). The config check then gives the
    #: built-in architectures ``depth_output: log``, and refuses a head that can reach zero or below.
    positive_depth: ClassVar[bool] = False
    #: Why this term cannot train its task on its own (e.g. it compares only neighbouring pixels, so
    #: it leaves the depth's level free); empty when it can. The config check refuses a task whose
    #: weighted terms all say so.
    needs_partner: ClassVar[str] = ""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(pred, target)")


class Metric(nn.Module):
    """Base class of an evaluation metric: one value per image.

    ``forward(pred, target)`` returns a ``(B,)`` tensor. For the mask task
    ``pred`` is the probability map; for depth it is the predicted depth in
    metres and ``target`` the true depth in metres. The engine averages over
    all held-out images (per image, then mean).
    """

    task: ClassVar[Task] = "mask"
    higher_is_better: ClassVar[bool] = True

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(pred, target)")


TASKS: tuple[Task, ...] = ("mask", "depth")


class Weighting(nn.Module):
    """Base class of a loss weighting: how the tasks' losses become one update.

    Every training step the engine calls :meth:`combine` with the *weighted*
    loss terms, ``{"mask/bce": w * value, "depth/l1": ..., ...}`` in config
    order (a task's loss is the sum of its terms: :meth:`task_losses`), and the
    parameters the architecture shares between the tasks. A loss-based method
    returns the scalar to back-propagate (the engine scales it for AMP and calls
    ``backward``); a gradient method (``needs_task_gradients = True``) runs one
    backward per task itself (:meth:`task_gradients`), writes the combined
    gradient into the shared parameters' ``.grad`` (:meth:`set_shared_gradient`)
    and returns ``None``.

    ``scale`` is the AMP loss scale as a 0-d tensor on the device (``None``
    without a GradScaler). Back-propagate ``loss * scale`` and leave what you
    write into ``.grad`` at that scale: the engine's GradScaler unscales it
    (and skips the step on inf/NaN) before the optimizer steps. Divide by
    ``scale`` only where a method needs the true magnitude.

    Learnable parameters (``nn.Parameter`` attributes) are trained by the run's
    optimizer in their own group without weight decay; buffers and
    :meth:`get_extra_state` are checkpointed with the run, so a resumed run
    continues with the same weights. :meth:`weights` is logged each epoch as
    ``weighting/<task>``; :meth:`end_epoch` receives each task's mean training
    loss of the finished epoch (over all processes). ``distributed`` is
    ``None`` when the method is correct under DDP, else the reason it is not:
    the engine then refuses to start with that reason.
    """

    needs_task_gradients: ClassVar[bool] = False
    distributed: ClassVar[str | None] = None

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> torch.Tensor | None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement combine(terms, shared, scale)")

    def weights(self) -> dict[str, float]:
        """The current weight of each task (logged per epoch); reading them may sync with the device."""
        return {}

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        """Called once per finished epoch with each task's mean training loss; default: nothing."""

    @staticmethod
    def task_losses(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's loss, the sum of its weighted terms in config order: ``{"mask": ..., "depth": ...}``."""
        out: dict[str, torch.Tensor] = {}
        for key, value in terms.items():
            task = key.split("/", 1)[0]
            out[task] = value if task not in out else out[task] + value
        return out

    @staticmethod
    def task_gradients(losses: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                       scale: torch.Tensor | None = None) -> torch.Tensor:
        """One backward per task: the ``(tasks, n_shared)`` matrix of gradients on the shared parameters.

        Each task's loss (times ``scale``) is back-propagated in turn, keeping the graph for the next;
        the shared parameters' gradients are taken out after each, so the other (task-specific)
        parameters end with the sum of the tasks' gradients, as a plain backward of the sum gives them.
        A shared parameter a task does not reach gets zeros in that task's row.
        """
        rows = []
        tasks = list(losses)
        for i, task in enumerate(tasks):
            loss = losses[task] if scale is None else losses[task] * scale
            loss.backward(retain_graph=i < len(tasks) - 1)
            parts = []
            for p in shared:
                if p.grad is None:
                    parts.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype))
                else:
                    parts.append(p.grad.detach().reshape(-1))
                    p.grad = None
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    @staticmethod
    def set_shared_gradient(shared: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
        """Write a flat gradient (as :meth:`task_gradients` lays it out) into the shared parameters' ``.grad``."""
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
            offset += n


@runtime_checkable
class Generator(Protocol):
    """Makes recipes: where each fg goes on each bg."""

    def recipes(
        self, bg_ids: Sequence[int], fg_ids: Sequence[int], image_hw: tuple[int, int]
    ) -> list[Recipe]: ...


@runtime_checkable
class GroundTruth(Protocol):
    """Produces one target (``mask`` or ``depth``) for a batch of composed samples.

    ``composed`` holds ``bg`` and ``fg_bg`` (N, H, W, 3) uint8 RGB and ``alpha``
    (N, H, W) float32 in [0, 1]; the result is (N, H, W): uint8 {0, 1} for the
    mask, float32 metres for depth.
    """

    target: ClassVar[Task]

    def __call__(
        self, composed: dict[str, np.ndarray], recipes: Sequence[Recipe], sources: Sources
    ) -> np.ndarray: ...


@runtime_checkable
class Augmentation(Protocol):
    """Transforms a batch dict on the device, keeping geometry identical across its tensors."""

    def __call__(self, batch: Batch) -> Batch: ...


@runtime_checkable
class Baseline(Protocol):
    """A floor: a predictor for one task that learns nothing by gradient.

    The engine calls ``fit(batches)`` once with the batches of the *training
    split only* (never a held-out image), then ``predict(batch)`` on each
    held-out batch, and scores the predictions with the very metric
    components that score the variants (per image, then mean). Batches are
    dicts of ``(B, C, H, W)`` float tensors on the CPU: ``bg`` and ``fg_bg``
    RGB in [0, 1], ``mask`` in {0, 1} and ``depth`` **in metres**; ``fit`` may
    iterate its batches more than once. Held-out batches hold ``bg`` and ``fg_bg`` only.
    ``predict`` returns ``(B, 1, H, W)``: the foreground probability for the
    mask task (the metrics binarise it at 0.5), the depth in metres for the
    depth task. Same training batches, same predictions: no randomness.
    """

    task: ClassVar[Task]

    def fit(self, batches: Iterable[Batch]) -> None: ...

    def predict(self, batch: Batch) -> torch.Tensor: ...


def describe_params(obj: Any) -> str:
    """A short, stable description of a component for logs."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
