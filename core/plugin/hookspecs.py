"""Hook specifications of losslab, in the order the engine calls them.

Every hook is a *registration* hook (tox's style): the engine hands a
:class:`~losslab.core.plugin.registry.Registry` for one kind of component to every
plugin, and each plugin adds the components it provides with
``registry.add(name, factory, summary=...)``. Registration happens once, when
the catalog is built (``losslab.core.load_catalog``), before any
config is validated, so that an experiment can name any registered component
and an unknown name is reported with its nearest registered neighbours.

A plugin implements any subset of these hooks with ``@hookimpl``; built-in
components are registered through the very same hooks
(``losslab.plugins.*``), so nothing a third party writes is second class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from losslab.core.plugin.markers import hookspec

if TYPE_CHECKING:
    from losslab.core.plugin.registry import Registry


# -- data: where samples come from -----------------------------------------------------------------


@hookspec
def lab_register_generators(registry: Registry) -> None:
    """Register data generators: recipe makers.

    Called once when the catalog is built. A generator factory is called with
    the generator's ``params`` from the experiment config and returns an
    object with ``recipes(bg_ids, fg_ids, image_hw) -> list[Recipe]``
    (see :class:`losslab.core.plugin.contracts.Generator`). A recipe fully
    determines a sample: the same recipe and sources give the same bytes.
    """


@hookspec
def lab_register_ground_truth(registry: Registry) -> None:
    """Register ground-truth producers for the ``mask`` and ``depth`` targets.

    Called once when the catalog is built. A factory is called with the
    producer's ``params`` and returns a
    :class:`losslab.core.plugin.contracts.GroundTruth`: called with the composed
    batch (``bg``, ``fg_bg``, ``alpha``), its recipes and the sources, it
    returns the ``(N, H, W)`` target (mask uint8 in {0, 1}, depth float32 in
    metres, never stretched per image). Its ``target`` attribute, and the
    ``target=`` metadata given to ``registry.add``, say which one it produces.
    """


@hookspec
def lab_register_augmentations(registry: Registry) -> None:
    """Register batch augmentations.

    Called once when the catalog is built. A factory is called with the
    augmentation's ``params`` (plus ``seed``) and returns a callable that takes
    a batch dict ``{"bg", "fg_bg", "mask", "depth"}`` of tensors on the
    device and returns a batch dict of the same shapes. Geometry must be
    identical across the four tensors; colour changes touch images only.
    """


@hookspec
def lab_register_architectures(registry: Registry) -> None:
    """Register network architectures.

    Called once when the catalog is built. A factory is called with the
    architecture's ``params`` and returns an ``nn.Module`` whose forward takes
    a ``(B, 6, H, W)`` float tensor (bg and fg_bg stacked on channels) and
    returns ``{"mask": logits (B,1,H,W), "depth": (B,1,H,W)}`` for any H, W.
    """


@hookspec
def lab_register_losses(registry: Registry) -> None:
    """Register loss terms.

    Called once when the catalog is built. A factory is called with the term's
    ``params`` and returns a :class:`losslab.core.plugin.contracts.Loss`: an
    ``nn.Module`` with ``forward(pred, target) -> scalar tensor`` that declares
    its ``task`` ("mask" or "depth") and its ``input_kind`` ("logits",
    "probabilities" or "depth"). The engine weights, sums and logs terms.
    """


@hookspec
def lab_register_metrics(registry: Registry) -> None:
    """Register evaluation metrics.

    Called once when the catalog is built. A factory is called with the
    metric's ``params`` and returns a :class:`losslab.core.plugin.contracts.Metric`
    that reports per-image values on held-out data for its ``task``; the
    engine aggregates them (mean over images) and logs them per epoch.
    """


@hookspec
def lab_register_weightings(registry: Registry) -> None:
    """Register loss weightings: how the two tasks' losses become one update.

    Called once when the catalog is built. A factory is called with
    ``loss.weighting.params`` and returns a
    :class:`losslab.core.plugin.contracts.Weighting`. Every training step the
    engine hands it the weighted loss terms (``{"mask/bce": tensor, ...}``;
    a task's loss is the sum of its terms) and the architecture's shared
    parameters; it returns the total to back-propagate, or sets the gradients
    itself and returns ``None`` (gradient methods). Its ``state_dict`` is
    checkpointed with the run and its ``weights()`` are logged each epoch as
    ``weighting/<task>``.
    """


# -- floors: what a predictor that learns nothing scores ------------------------------------------


@hookspec
def lab_register_baselines(registry: Registry) -> None:
    """Register baselines: the floors every variant of a study is judged against.

    Called once when the catalog is built. A factory is called with the
    baseline's ``params`` and returns a
    :class:`losslab.core.plugin.contracts.Baseline` for one ``task`` (also
    given as ``task=`` metadata to ``registry.add``): ``fit(batches)`` on the
    training split only, with no gradient training, then ``predict(batch)``
    -> ``(B, 1, H, W)`` mask probability or depth in metres, scored by the
    variants' own metrics on the same held-out samples. Registered with
    ``default=True``, it runs in every experiment that does not switch the
    floors off; otherwise an experiment names it under ``baselines.add``.
    """
