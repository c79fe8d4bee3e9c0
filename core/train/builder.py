"""The builder: an experiment config (and a seed) turned into the built parts a training loop runs.

Everything a config names is built here, in this order, and nowhere else:
the process (threads, device, DDP ranks, precision, global seeds); the data
(samples, the split by background, the loaders and their device-side twins);
the model and its wrappers (SyncBatchNorm, DDP, ``torch.compile``); the
objective and the loss weighting (with the parameters the tasks share); the
batch size (``auto`` probes the plain model); the augmentations; the
metrics; the optimizer, scheduler and gradient scaler.
The loop (``loop.py``) receives the result, :class:`Parts`, and builds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from losslab.core.config import ExperimentConfig, TrainSpec
from losslab.core.data.datasets import BatchLoader, build_samples, held_out_split, validation_samples
from losslab.core.device import Precision, precision_for, resolve_device, seed_everything
from losslab.core.plugin.contracts import Weighting
from losslab.core.plugin.registry import Catalog, Component, create_module
from losslab.core.train import distributed
from losslab.core.train.errors import TrainingError
from losslab.core.train.objective import Objective
from losslab.core.train.optim import build_optimizer
from losslab.core.train.weighting import build_weighting, check_shared, parameter_groups, shared_parameters


@dataclass
class Parts:
    """What one (config, seed) trains with. ``model`` is the plain module (checkpoints, evaluation);
    ``forward`` the training wrapper around it (DDP and compiled as configured)."""

    cfg: ExperimentConfig
    seed: int
    device: torch.device
    dist: distributed.DistInfo
    precision: Precision
    samples: Any  # what training reads
    val_samples: Any  # what the held-out split is scored on: ``samples``, or relabelled by data.ground_truth.val_mask
    train_idx: np.ndarray
    val_idx: np.ndarray
    model: nn.Module
    model_component: Component
    forward: nn.Module
    objective: Objective
    batch_size: int
    train_loader: BatchLoader
    val_loader: BatchLoader
    train_batches: Any  # the loaders above, or their device-composed twins
    val_batches: Any
    augment: list[Any]
    metrics: dict[str, nn.Module]
    metric_components: dict[str, Component]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler | None
    weighting: Weighting  # loss.weighting: how the tasks' losses become one update
    shared: list[nn.Parameter]  # the parameters the tasks share (the architecture says which)


def build(cfg: ExperimentConfig, seed: int, catalog: Catalog) -> Parts:
    """Every part of a training run, in the order of the module docstring."""
    train = cfg.train
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    device = resolve_device(train.device)
    dist = distributed.init(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = precision_for(device, train.amp, train.channels_last)
    seed_everything(seed, deterministic=device.type == "cpu")

    samples, val_samples, train_idx, val_idx = build_split(cfg, catalog)
    component = catalog.get("architecture", cfg.model.name)
    model = build_model(cfg, catalog, device, dist, precision)
    forward = wrap_model(model, train, device, dist)
    objective = Objective(cfg.loss, catalog).to(device)
    weighting = build_weighting(cfg.loss.weighting, catalog, dist.world_size).to(device)
    shared, shared_from = shared_parameters(model)
    check_shared(weighting, cfg.loss.weighting.name, shared, shared_from)
    batch_size = _batch_size(cfg, model, objective, precision, device, dist)
    common: dict[str, Any] = dict(image_size=cfg.data.image_size, max_depth=cfg.data.max_depth, device=device,
                  rank=dist.rank, world_size=dist.world_size)
    train_loader = BatchLoader(samples, train_idx, batch_size=batch_size, shuffle=True, seed=seed,
                               limit=cfg.data.train_limit, drop_last=True, **common)
    val_loader = BatchLoader(val_samples, val_idx, batch_size=batch_size, shuffle=False, **common)
    train_batches, val_batches = device_loaders(cfg.data.device_compose, samples, device, train_loader, val_loader,
                                                val_samples)
    aug_seed = seed + 100_003 * dist.rank  # each rank draws its own augmentations
    augment = [catalog.create("augmentation", a.name, seed=aug_seed, **a.params) for a in cfg.augment]
    metrics, metric_components = build_metrics(cfg, catalog, device)
    optimizer = optimizer_for(train, model, weighting)
    scheduler = scheduler_for(train, optimizer, max(1, len(train_loader)) * train.epochs)
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
    return Parts(cfg, seed, device, dist, precision, samples, val_samples, train_idx, val_idx, model, component,
                 forward, objective, batch_size, train_loader, val_loader, train_batches, val_batches, augment, metrics,
                 metric_components, optimizer, scheduler, scaler, weighting, shared)


def build_split(cfg: ExperimentConfig, catalog: Catalog) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """The training samples, the held-out samples (relabelled where ``data.ground_truth.val_mask`` says) and
    the train / validation indices (split by background; ``val_limit`` seeded)."""
    samples = build_samples(cfg.data, catalog)
    train_idx, val_idx = held_out_split(samples, cfg.data)  # the floors use the very same split
    return samples, validation_samples(samples, cfg.data, catalog), train_idx, val_idx


def build_model(cfg: ExperimentConfig, catalog: Catalog, device: torch.device, dist: distributed.DistInfo,
                precision: Precision) -> nn.Module:
    """The plain architecture on its device (SyncBatchNorm under DDP on CUDA; channels_last as configured)."""
    spec = cfg.model
    model = create_module(catalog.get("architecture", spec.name), spec.params, where="model", error=TrainingError)
    if dist.enabled and device.type == "cuda":
        # one set of batch statistics across ranks, as on one process (PyTorch has SyncBatchNorm on CUDA only;
        # on CPU each rank normalises its own shard, so results match a single process within tolerance)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_model(model: nn.Module, train: TrainSpec, device: torch.device, dist: distributed.DistInfo) -> nn.Module:
    """The training wrapper: DDP across ranks, then ``torch.compile`` as configured."""
    forward: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(forward, device_ids=ids)
    if train.compile:  # over DDP, not under it: DDP's optimizer then splits the graph at its buckets
        mode = "default" if train.compile is True else train.compile
        forward = torch.compile(forward, mode=mode)  # type: ignore[assignment]
    return forward


def _batch_size(cfg: ExperimentConfig, model: nn.Module, objective: Objective, precision: Precision,
                device: torch.device, dist: distributed.DistInfo) -> int:
    batch_size = cfg.train.batch_size
    if not isinstance(batch_size, int):
        from losslab.core.train.batch_size import find_batch_size

        batch_size = find_batch_size(model, objective, precision, device, cfg.data.image_size, dist)
    if batch_size % dist.world_size:
        raise TrainingError(f"train.batch_size {batch_size} is the global batch and must be divisible by "
                            f"the {dist.world_size} processes; choose a multiple of {dist.world_size}")
    return batch_size


def device_loaders(mode: bool | str, samples: Any, device: torch.device, train_loader: BatchLoader,
                   val_loader: BatchLoader, val_samples: Any = None) -> tuple[Any, Any]:
    """Compose batches on the device (CUDA by default) when every ground truth has a device plan.

    ``val_samples`` (default ``samples``) is what the held-out split is read from; when it is relabelled
    (``data.ground_truth.val_mask``) it is uploaded on its own, and both sides need a device plan.
    """
    from losslab.core.data.device_data import DeviceBatchLoader, DeviceSamples, supports_device

    val_samples = samples if val_samples is None else val_samples
    wanted = device.type == "cuda" if mode == "auto" else bool(mode)
    if not wanted:
        return train_loader, val_loader
    if not (supports_device(samples) and supports_device(val_samples)):
        if mode is True:
            raise TrainingError("data.device_compose is true, but this data is not a virtual dataset whose "
                                "ground truths all have a device plan; set data.device_compose: auto")
        return train_loader, val_loader
    on_device = DeviceSamples(samples, device)
    val_on_device = on_device if val_samples is samples else DeviceSamples(val_samples, device)
    return DeviceBatchLoader(on_device, train_loader), DeviceBatchLoader(val_on_device, val_loader)


def build_metrics(cfg: ExperimentConfig, catalog: Catalog,
                  device: torch.device) -> tuple[dict[str, nn.Module], dict[str, Component]]:
    """``{"mask_iou": module, ...}`` on the device, and the component behind each (for messages)."""
    metrics: dict[str, nn.Module] = {}
    components: dict[str, Component] = {}
    for task in ("mask", "depth"):
        for name in getattr(cfg.metrics, task):
            component = catalog.get("metric", name)
            metrics[f"{task}_{name}"] = create_module(component, {}, where=f"metrics.{task}",
                                                      error=TrainingError).to(device)
            components[f"{task}_{name}"] = component
    return metrics, components


def optimizer_for(train: TrainSpec, model: nn.Module, weighting: Weighting | None = None) -> torch.optim.Optimizer:
    """The network's parameters, and a learned weighting's own in a group without weight decay."""
    params: Any = parameter_groups(model, weighting) if weighting is not None else model.parameters()
    return build_optimizer(train.optimizer, params, lr=train.lr, weight_decay=train.weight_decay)


def scheduler_for(train: TrainSpec, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if train.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.lr, total_steps=total_steps,
                                                   pct_start=0.15)
    return None
