"""Contracts between the engine and plugins: what each kind of component must provide.

These are the public base classes and protocols of losslab. A plugin author
subclasses :class:`Loss` or :class:`Metric`, or returns any object that
satisfies :class:`Generator`, :class:`GroundTruth` or :class:`Augmentation`.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def describe_params(obj: Any) -> str:
    """A short, stable description of a component for logs."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
