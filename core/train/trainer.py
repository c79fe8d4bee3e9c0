"""The trainer: one network, one config, one seed.

It owns the loop and nothing else: data comes from ``datasets``, losses from
``objective``, logging goes through a ``RunLogger`` (MLflow in ``lab run``, a
no-op in tests that want none). Checkpoints are written atomically, so a
killed run resumes from its last completed epoch with ``--resume``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from losslab.core.config import ExperimentConfig
from losslab.core.data.datasets import BatchLoader, build_samples, split_by_bg
from losslab.core.device import precision_for, resolve_device, seed_everything
from losslab.core.plugin.registry import Catalog
from losslab.core.train import distributed
from losslab.core.train.objective import LossFault, Objective
from losslab.core.train.optim import build_optimizer


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class RunLogger(Protocol):
    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def artifact(self, path: Path, artifact_path: str | None = None) -> None: ...


class NullLogger:
    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass


@dataclass
class TrainResult:
    best: dict[str, float]
    best_epoch: int
    history: list[dict[str, float]]
    total_s: float
    run_dir: Path
    best_checkpoint: Path
    per_image: list[dict[str, Any]] = field(default_factory=list)


EpochCallback = Callable[[int, dict[str, float]], None]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


class Trainer:
    """Builds everything a config names, then runs ``fit``."""

    def __init__(self, cfg: ExperimentConfig, seed: int, catalog: Catalog, run_dir: Path,
                 logger: RunLogger | None = None) -> None:
        self.cfg, self.seed, self.catalog = cfg, seed, catalog
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger: RunLogger = logger or NullLogger()
        train = cfg.train
        if train.num_threads:
            torch.set_num_threads(train.num_threads)
        self.device = resolve_device(train.device)
        self.dist = distributed.init(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = precision_for(self.device, train.amp, train.channels_last)
        seed_everything(seed, deterministic=self.device.type == "cpu")

        data = cfg.data
        self.samples = build_samples(data, catalog)
        self.train_idx, self.val_idx = split_by_bg(self.samples, data.val_split, seed=data.source.seed)
        if data.val_limit is not None:
            pick = np.random.default_rng([data.source.seed, 104729]).permutation(self.val_idx)[: data.val_limit]
            self.val_idx = np.sort(pick)

        model = self._build_model()
        if self.dist.enabled and self.device.type == "cuda":
            # one set of batch statistics across ranks, as on one process (PyTorch has SyncBatchNorm on CUDA only;
            # on CPU each rank normalises its own shard, so results match a single process within tolerance)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        forward: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(forward, device_ids=ids)
        if train.compile:  # over DDP, not under it: DDP's optimizer then splits the graph at its buckets
            mode = "default" if train.compile is True else train.compile
            forward = torch.compile(forward, mode=mode)  # type: ignore[assignment]
        self.forward = forward
        self.objective = Objective(cfg.loss, catalog).to(self.device)
        batch_size = train.batch_size if isinstance(train.batch_size, int) else self._auto_batch()
        if batch_size % self.dist.world_size:
            raise TrainingError(f"train.batch_size {batch_size} is the global batch and must be divisible by "
                                f"the {self.dist.world_size} processes; choose a multiple of {self.dist.world_size}")
        self.batch_size = batch_size
        common = dict(image_size=data.image_size, max_depth=data.max_depth, device=self.device,
                      rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_loader = BatchLoader(self.samples, self.train_idx, batch_size=batch_size, shuffle=True,
                                        seed=seed, limit=data.train_limit, drop_last=True, **common)
        self.val_loader = BatchLoader(self.samples, self.val_idx, batch_size=batch_size, shuffle=False, **common)
        self.train_batches, self.val_batches = self._device_loaders(data.device_compose)
        aug_seed = seed + 100_003 * self.dist.rank  # each rank draws its own augmentations
        self.augment = [catalog.create("augmentation", a.name, seed=aug_seed, **a.params) for a in cfg.augment]
        self.metrics = {
            f"{task}_{name}": catalog.create("metric", name).to(self.device)
            for task in ("mask", "depth") for name in getattr(cfg.metrics, task)
        }
        self.optimizer = self._build_optimizer()
        steps = max(1, len(self.train_loader)) * train.epochs
        self.scheduler = self._build_scheduler(steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.scaler else None
        self.epoch = 0
        self.step = 0
        self._outputs_checked = False
        self.best_value: float | None = None
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []
        self.best_metrics: dict[str, float] = {}

    # -- building ------------------------------------------------------------------------------------

    def _build_model(self) -> nn.Module:
        spec = self.cfg.model
        component = self.catalog.get("architecture", spec.name)
        try:
            model = component.create(**spec.params)
        except Exception as exc:
            raise TrainingError(f"model: could not build architecture {spec.name!r} with params {spec.params} "
                                f"(plugin {component.plugin!r}, {component.distribution}): {exc}") from exc
        if not isinstance(model, nn.Module):
            raise TrainingError(f"architecture {spec.name!r} (plugin {component.plugin!r}) built a "
                                f"{type(model).__name__}, not a torch.nn.Module")
        return model

    def _device_loaders(self, mode: bool | str) -> tuple[Any, Any]:
        """Compose batches on the device (CUDA by default) when every ground truth has a device plan."""
        from losslab.core.data.device_data import DeviceBatchLoader, DeviceSamples, supports_device

        wanted = self.device.type == "cuda" if mode == "auto" else bool(mode)
        if not wanted:
            return self.train_loader, self.val_loader
        if not supports_device(self.samples):
            if mode is True:
                raise TrainingError("data.device_compose is true, but this data is not a virtual dataset whose "
                                    "ground truths all have a device plan; set data.device_compose: auto")
            return self.train_loader, self.val_loader
        on_device = DeviceSamples(self.samples, self.device)  # type: ignore[arg-type]
        return DeviceBatchLoader(on_device, self.train_loader), DeviceBatchLoader(on_device, self.val_loader)

    def _auto_batch(self) -> int:
        from losslab.core.train.batch_size import find_batch_size

        return find_batch_size(self)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        return build_optimizer(t.optimizer, self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def _build_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        t = self.cfg.train
        if t.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_steps)
        if t.scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=t.lr, total_steps=total_steps,
                                                       pct_start=0.15)
        return None

    # -- checkpoints ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),  # the plain module: no DDP or compile prefixes
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "step": self.step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "seed": self.seed,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("config") != self.cfg.to_dict():
            raise TrainingError(f"{path}: checkpoint was written by a different config; "
                                "resume with the same experiment and --set values, or start a new run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.best_metrics, self.history = state["best_metrics"], state["history"]
        torch.set_rng_state(state["torch_rng"])

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    # -- the loop ------------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([batch["bg"], batch["fg_bg"]], dim=1)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run_model(self, x: torch.Tensor, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """``module`` (default: the training wrapper, DDP and compiled as configured) under the run's autocast."""
        module = self.forward if module is None else module
        dtype = self.precision.autocast_dtype
        if dtype is None:
            return module(x)
        with torch.autocast(self.device.type, dtype=dtype):
            return module(x)

    def _check_outputs(self, out: Any, x: torch.Tensor) -> None:
        spec = self.cfg.model
        component = self.catalog.get("architecture", spec.name)
        expected = (x.shape[0], 1, x.shape[2], x.shape[3])
        if not isinstance(out, dict) or "mask" not in out or "depth" not in out:
            raise TrainingError(f"architecture {spec.name!r} (plugin {component.plugin!r}, "
                                f"{component.distribution}) returned {type(out).__name__}; expected a dict with "
                                "'mask' and 'depth' tensors")
        for key in ("mask", "depth"):
            if tuple(out[key].shape) != expected:
                raise TrainingError(f"architecture {spec.name!r} (plugin {component.plugin!r}, "
                                    f"{component.distribution}) returned {key} of shape {tuple(out[key].shape)}; "
                                    f"expected {expected} for input {tuple(x.shape)}")

    def train_step(self, batch: dict[str, torch.Tensor], check: bool = True) -> tuple[int, dict[str, torch.Tensor]]:
        """One optimisation step on a loaded batch: augment, forward, every loss term, backward, step.

        Returns the batch size and the unweighted term values (detached, still on the device).
        ``check`` reads the values back to stop on NaN or inf (every step on CPU, at intervals on CUDA).
        """
        for aug in self.augment:
            batch = aug(batch)
        x = self._inputs(batch)
        out = self._run_model(x)
        if self.step == 0 or not self._outputs_checked:
            self._check_outputs(out, x)
            self._outputs_checked = True
        total, values = self.objective(out, batch, step=self.step)
        values = {"loss": total, **values}
        if check or self.step == 0:
            self.objective.assert_finite(values, step=self.step)
        clip = self.cfg.train.grad_clip
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(total).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            total.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        if self.scheduler:
            self.scheduler.step()
        self.step += 1
        return x.shape[0], {k: v.detach() for k, v in values.items()}

    def train_epoch(self, progress: Any) -> dict[str, float]:
        self.model.train()
        loader = self.train_batches
        loader.epoch = self.epoch
        sums: dict[str, torch.Tensor] = {}
        count = 0
        started = time.perf_counter()
        check_every = 1 if self.device.type == "cpu" else 25
        for i, batch in enumerate(loader):
            n, values = self.train_step(batch, check=i % check_every == 0)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value.float() * n
            count += n
            progress.update(1)
        self.objective.assert_finite({k: v for k, v in sums.items()}, step=self.step)
        totals = distributed.all_reduce_sum({**{k: float(v.item()) for k, v in sums.items()}, "#count": count},
                                            self.device)
        count = int(totals.pop("#count"))
        elapsed = time.perf_counter() - started
        result = {f"train/{k}": v / max(count, 1) for k, v in totals.items()}
        result["perf/samples_per_s"] = count / max(elapsed, 1e-9)
        result["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return result

    @torch.no_grad()
    def evaluate(self, keep: int = 0) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, np.ndarray]]:
        """Held-out losses and metrics (per image, then mean); the per-image rows; ``keep`` sample images.

        Everything stays on the device until the last batch has been queued and is then read back
        in one go, so the host never waits for the device in between (one synchronisation per evaluation).
        """
        self.model.eval()
        max_depth = self.cfg.data.max_depth
        sums: dict[str, torch.Tensor] = {}
        count = 0
        indices: list[torch.Tensor] = []
        per_image: dict[str, list[torch.Tensor]] = {name: [] for name in self.metrics}
        kept: dict[str, list[torch.Tensor]] = {}
        for batch in self.val_batches:
            x = self._inputs(batch)
            out = self._run_model(x)
            out = {k: v.float() for k, v in out.items()}
            total, values = self.objective(out, batch)
            n = x.shape[0]
            for key, value in {"loss": total, **values}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() * n  # float32: MPS has no float64
            count += n
            indices.append(batch["index"])
            prob = torch.sigmoid(out["mask"])
            pred_depth = out["depth"].clamp(0.0, 1.0) * max_depth
            true_depth = batch["depth"] * max_depth
            for name, metric in self.metrics.items():
                pair = (prob, batch["mask"]) if name.startswith("mask_") else (pred_depth, true_depth)
                per_image[name].append(metric(*pair).float())
            have = sum(len(i) for i in kept.get("index", []))
            if have < keep:
                take = slice(0, min(keep - have, n))
                parts = {
                    "index": batch["index"][take],
                    "bg": (batch["bg"][take].permute(0, 2, 3, 1) * 255).round().byte(),
                    "fg_bg": (batch["fg_bg"][take].permute(0, 2, 3, 1) * 255).round().byte(),
                    "mask": batch["mask"][take, 0].byte(),
                    "depth": true_depth[take, 0],
                    "pred_mask": prob[take, 0],
                    "pred_depth": pred_depth[take, 0],
                }
                for k, v in parts.items():
                    kept.setdefault(k, []).append(v)
        # the one read-back: loss sums, per-image metrics and kept images
        totals = dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True)) if sums else {}
        metric_values = {name: torch.cat(parts).cpu().numpy() for name, parts in per_image.items() if parts}
        samples_kept = {k: [np.concatenate([t.cpu().numpy() for t in v])] for k, v in kept.items()}
        rows = self._per_image_rows(torch.cat(indices).tolist() if indices else [], metric_values)
        totals = distributed.all_reduce_sum({**totals, "#count": count}, self.device)
        count = int(totals.pop("#count"))
        if self.dist.enabled:
            rows = sorted((r for part in distributed.gather_objects(rows) for r in part), key=lambda r: r["index"])
            samples_kept = _merge_kept(distributed.gather_objects(samples_kept), keep)
        result = {f"val/{k}": v / max(count, 1) for k, v in totals.items()}
        for name in self.metrics:
            values = np.array([r[name] for r in rows], dtype=np.float64)
            result[f"val/{name}"] = float(np.nanmean(values)) if len(values) else float("nan")
        samples = {k: np.concatenate(v) for k, v in samples_kept.items()}
        return result, rows, samples

    def _per_image_rows(self, indices: list[int], metric_values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """One row per validation image: its index, its recipe where the data has one, each metric."""
        recipe_of = getattr(self.samples, "recipe", None)  # optional: the recipe behind a sample index
        rows: list[dict[str, Any]] = []
        for j, index in enumerate(indices):
            row: dict[str, Any] = {"index": index}
            if recipe_of is not None:
                r = recipe_of(index)
                row.update(bg=r.bg, fg=r.fg, flip=int(r.flip), row=r.row, col=r.col)
            row.update({name: float(values[j]) for name, values in metric_values.items()})
            rows.append(row)
        return rows

    def fit(self, resume: bool = False, on_epoch: EpochCallback | None = None) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg.train
        if resume and self.last_path.exists():
            self.load_state(self.last_path)
        started = time.perf_counter()
        total_steps = len(self.train_loader) * cfg.epochs
        progress = tqdm(total=total_steps, initial=len(self.train_loader) * self.epoch, unit="step",
                        desc=f"{self.cfg.variant} seed {self.seed}", leave=False, dynamic_ncols=True,
                        disable=not cfg.progress or not self.dist.is_main)
        best_rows: list[dict[str, Any]] = []
        best_samples: dict[str, np.ndarray] = {}
        try:
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                try:
                    train_metrics = self.train_epoch(progress)
                except LossFault as exc:
                    raise TrainingError(str(exc)) from None
                val_metrics, rows, samples = self.evaluate(keep=cfg.val_samples)
                metrics = {**train_metrics, **val_metrics, "time/epoch_s": time.perf_counter() - t0}
                if cfg.monitor not in metrics:
                    known = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
                    raise TrainingError(f"train.monitor is {cfg.monitor!r}, which this run does not compute; "
                                        f"choose one of: {known}")
                self.history.append({"epoch": self.epoch, **metrics})
                if self.dist.is_main:
                    self.logger.metrics(metrics, step=self.epoch)
                progress.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in val_metrics.items()
                                      if k in (cfg.monitor, "val/loss")})
                value = metrics[cfg.monitor]
                improved = _is_better(value, self.best_value, cfg.monitor_mode)
                self.epoch += 1
                if improved:
                    self.best_value, self.best_epoch = value, self.epoch - 1
                    self.best_metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
                    best_rows, best_samples = rows, samples
                    if self.dist.is_main:
                        _atomic_save(self.state(), self.best_path)
                        self._write_eval_artifacts(best_rows, best_samples)
                if self.dist.is_main:
                    _atomic_save(self.state(), self.last_path)
                distributed.barrier()
                if on_epoch is not None:
                    on_epoch(self.epoch - 1, metrics)
        finally:
            progress.close()
        total_s = time.perf_counter() - started
        if self.dist.is_main and not self.best_path.exists():
            _atomic_save(self.state(), self.best_path)
        if not best_rows and (self.run_dir / "val_per_image.csv").exists():
            best_rows = list(csv.DictReader(io.StringIO((self.run_dir / "val_per_image.csv").read_text())))
        return TrainResult(best=dict(self.best_metrics), best_epoch=self.best_epoch, history=self.history,
                           total_s=total_s, run_dir=self.run_dir, best_checkpoint=self.best_path,
                           per_image=best_rows)

    def _write_eval_artifacts(self, rows: list[dict[str, Any]], samples: dict[str, np.ndarray]) -> None:
        if rows:
            tmp = self.run_dir / "val_per_image.csv.tmp"
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.run_dir / "val_per_image.csv")
        if samples:
            tmp = self.run_dir / "val_samples.tmp.npz"
            np.savez_compressed(tmp, **samples)
            os.replace(tmp, self.run_dir / "val_samples.npz")


def _merge_kept(parts: list[dict[str, list[np.ndarray]]], keep: int) -> dict[str, list[np.ndarray]]:
    """Every rank's kept images, in index order, the first ``keep`` of them."""
    merged = {k: np.concatenate([a for p in parts for a in p.get(k, [])]) for k in (parts[0] if parts else {})}
    if not merged:
        return {}
    order = np.argsort(merged["index"], kind="stable")[:keep]
    return {k: [v[order]] for k, v in merged.items()}
