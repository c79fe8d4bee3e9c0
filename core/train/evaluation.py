"""Evaluation: held-out losses and metrics per image, then averaged; and the check that they are finite.

The loop calls :func:`evaluate` once per epoch. Everything stays on the device
until the last batch has been queued and is then read back in one go, so the
host never waits for the device in between (one synchronisation per
evaluation). :func:`check_finite` then ends the run when a validation loss term
or metric is NaN or infinite: such a run has failed and must never rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from losslab.core import names
from losslab.core.train import distributed
from losslab.core.train.builder import Parts
from losslab.core.train.calibration import CalibrationCounts
from losslab.core.train.calibration import summarize as summarize_calibration
from losslab.core.train.errors import TrainingError
from losslab.core.train.regions import region_scores
from losslab.core.train.step import model_inputs, run_model


@torch.no_grad()
def evaluate(parts: Parts, keep: int = 0, extras: dict[str, Any] | None = None, *, batches: Any = None,
             samples: Any = None) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Held-out losses and metrics (per image, then mean); the per-image rows; ``keep`` sample images.

    The rows also carry the region-restricted scores (``core/train/regions.py``); the mask's
    calibration bins (``core/train/calibration.py``) go into ``extras["calibration"]`` when given.
    ``batches`` and ``samples`` (default: the held-out split's) score another set of samples with the
    same code, e.g. training ones (``fit_check.py``); the keys keep the ``val/`` prefix.
    """
    batches = parts.val_batches if batches is None else batches
    samples = parts.val_samples if samples is None else samples
    parts.model.eval()
    max_depth = parts.cfg.data.max_depth
    sums: dict[str, torch.Tensor] = {}
    count = 0
    indices: list[torch.Tensor] = []
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in parts.metrics}
    calibration = CalibrationCounts(parts.device)
    for batch in batches:
        x = model_inputs(batch, parts.precision)
        out = {k: v.float() for k, v in run_model(parts.forward, x, parts.precision, parts.device).items()}
        total, values = parts.objective(out, batch)
        n = x.shape[0]
        for key, value in {"loss": total, **values}.items():
            sums[key] = sums.get(key, 0.0) + value.detach().float() * n  # float32: MPS has no float64
        count += n
        indices.append(batch["index"])
        prob = torch.sigmoid(out["mask"])
        pred_depth = out["depth"].clamp(0.0, 1.0) * max_depth
        true_depth = batch["depth"] * max_depth
        for name, metric in parts.metrics.items():
            pair = (prob, batch["mask"]) if name.startswith("mask_") else (pred_depth, true_depth)
            per_image[name].append(metric(*pair).float())
        for name, value in region_scores(prob, batch["mask"], pred_depth, true_depth, max_depth).items():
            per_image.setdefault(name, []).append(value)  # extra columns: where a score comes from
        calibration.update(prob, batch["mask"])
    # the one read-back: loss sums and per-image metrics
    totals = dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True)) if sums else {}
    metric_values = {name: torch.cat(p).cpu().numpy() for name, p in per_image.items() if p}
    bins = _all_reduce_rows(calibration.sums.tolist(), parts.device)
    rows = per_image_rows(samples, torch.cat(indices).tolist() if indices else [], metric_values)
    totals = distributed.all_reduce_sum({**totals, "#count": count}, parts.device)
    count = int(totals.pop("#count"))
    if parts.dist.enabled:
        rows = sorted((r for part in distributed.gather_objects(rows) for r in part), key=lambda r: r["index"])
    result = {f"{names.VAL_PREFIX}{k}": v / max(count, 1) for k, v in totals.items()}
    for name in parts.metrics:
        column = np.array([r[name] for r in rows], dtype=np.float64)
        result[f"{names.VAL_PREFIX}{name}"] = float(np.nanmean(column)) if (~np.isnan(column)).any() else float("nan")
    record = summarize_calibration(bins)
    result[names.CALIBRATION_ECE] = float(record["ece"])
    if extras is not None:
        extras["calibration"] = record
    return result, rows, kept_images(parts, rows, keep)


def _all_reduce_rows(rows: list[list[float]], device: torch.device) -> list[list[float]]:
    """Per-bin sums added over ranks (unchanged on one process)."""
    flat = {f"{i}/{j}": v for i, row in enumerate(rows) for j, v in enumerate(row)}
    summed = distributed.all_reduce_sum(flat, device)
    return [[summed[f"{i}/{j}"] for j in range(len(row))] for i, row in enumerate(rows)]


def choose_kept(rows: list[dict[str, Any]], keep: int, monitor: str, mode: str,
                higher_is_better: dict[str, bool] | None = None) -> tuple[list[int], list[str]]:
    """Which held-out images to keep for the prediction grids, and why each: ``worst``, ``best`` or ``spread``.

    The worst and the best image by the monitored metric (or the first mask metric when the monitor is not
    a per-image metric) come first: where a model fails and where it succeeds. The rest are picked greedily
    so that each adds the most backgrounds, foregrounds and grid rows not yet shown, scanning the images in
    a stride order so that ties spread over the whole validation set instead of its first batch.
    ``higher_is_better`` gives that fallback metric's direction (default: higher is better).
    """
    if keep <= 0 or not rows:
        return [], []
    key = monitor.removeprefix(names.VAL_PREFIX)
    higher = mode == "max"
    if key not in rows[0]:  # e.g. val/loss: rank by the first mask metric, in that metric's own direction
        key = next((k for k in rows[0] if k.startswith("mask_")), "")
        higher = (higher_is_better or {}).get(key, True)
    chosen: list[int] = []
    roles: list[str] = []
    scored = [(float(r[key]), j) for j, r in enumerate(rows) if key and np.isfinite(float(r[key]))]
    if scored:
        low, high = min(scored)[1], max(scored)[1]
        worst, best = (low, high) if higher else (high, low)
        for j, role in ((worst, "worst"), (best, "best")):
            if j not in chosen and len(chosen) < keep:
                chosen.append(j)
                roles.append(role)
    stride = max(1, len(rows) // max(1, keep))
    order = sorted(range(len(rows)), key=lambda j: (j % stride, j))
    seen: dict[str, set[Any]] = {k: {rows[j].get(k) for j in chosen} for k in ("bg", "fg", "row")}
    while len(chosen) < min(keep, len(rows)):
        def novelty(j: int) -> int:
            return sum(rows[j].get(k) not in seen[k] for k in seen if k in rows[j])

        j = max((j for j in order if j not in chosen), key=novelty)  # max keeps the first of equals
        chosen.append(j)
        roles.append("spread")
        for k in seen:
            seen[k].add(rows[j].get(k))
    return [int(rows[j]["index"]) for j in chosen], roles


@torch.no_grad()
def kept_images(parts: Parts, rows: list[dict[str, Any]], keep: int) -> dict[str, np.ndarray]:
    """The chosen held-out images with the model's predictions, as uint8/float arrays for the grids.

    They are composed again from their sample indices and run through the plain model (no DDP: no
    collective, so every rank may do it alike), one small extra batch per evaluation.
    """
    higher = {name: bool(getattr(metric, "higher_is_better", True)) for name, metric in parts.metrics.items()}
    indices, roles = choose_kept(rows, keep, parts.cfg.train.monitor, parts.cfg.train.monitor_mode, higher)
    if not indices:
        return {}
    batch = parts.val_batches.load(indices)
    out = run_model(parts.model, model_inputs(batch, parts.precision), parts.precision, parts.device)
    max_depth = parts.cfg.data.max_depth
    images = {
        "bg": (batch["bg"].permute(0, 2, 3, 1) * 255).round().byte(),
        "fg_bg": (batch["fg_bg"].permute(0, 2, 3, 1) * 255).round().byte(),
        "mask": batch["mask"][:, 0].byte(),
        "depth": batch["depth"][:, 0] * max_depth,
        "pred_mask": torch.sigmoid(out["mask"].float())[:, 0],
        "pred_depth": out["depth"].float().clamp(0.0, 1.0)[:, 0] * max_depth,
    }
    kept = {k: v.cpu().numpy() for k, v in images.items()}
    kept["index"] = np.asarray(indices, dtype=np.int64)
    kept["role"] = np.asarray(roles)
    return kept


def per_image_rows(samples: Any, indices: list[int], metric_values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per validation image: its index, its recipe where the data has one, each metric."""
    recipe_of = getattr(samples, "recipe", None)  # optional: the recipe behind a sample index
    rows: list[dict[str, Any]] = []
    for j, index in enumerate(indices):
        row: dict[str, Any] = {"index": index}
        if recipe_of is not None:
            r = recipe_of(index)
            row.update(bg=r.bg, fg=r.fg, flip=int(r.flip), row=r.row, col=r.col)
        row.update({name: float(values[j]) for name, values in metric_values.items()})
        rows.append(row)
    return rows


def check_finite(parts: Parts, result: dict[str, float], rows: list[dict[str, Any]], epoch: int) -> None:
    """Stop, naming the term or metric and its plugin, when validation gave NaN or inf anywhere.

    A metric is checked per image as well as on average (the mean skips NaN
    images, which would hide a metric that breaks on some of them).
    """
    where = f"at epoch {epoch + 1} on the {len(rows)} validation images"  # 1-based for people
    for term in parts.objective.terms:
        key = f"{names.VAL_PREFIX}{term.task}/{term.key}"
        if key in result and not math.isfinite(result[key]):
            raise TrainingError(f"validation loss term {term.task}/{term.key} from {term.origin} is "
                                f"{result[key]} {where}; the run has failed and is not ranked. Check the loss "
                                "for log(0) or division by zero on held-out data")
    for name, component in parts.metric_components.items():
        bad = [r["index"] for r in rows if not math.isfinite(r[name])]
        if bad or not math.isfinite(result.get(f"{names.VAL_PREFIX}{name}", 0.0)):
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            raise TrainingError(f"validation metric {name} ({component.kind} {component.name!r} from "
                                f"{component.origin}) is not finite {where} (images {shown or 'all'}); the run "
                                "has failed and is not ranked. Check the metric for division by zero")
    if names.VAL_LOSS in result and not math.isfinite(result[names.VAL_LOSS]):
        raise TrainingError(f"validation loss is {result[names.VAL_LOSS]} {where} although every term is finite; a "
                            "weight times a large term overflows. Lower the weights or check the terms' scale")
