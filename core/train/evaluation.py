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

from losslab.core.train import distributed
from losslab.core.train.builder import Parts
from losslab.core.train.errors import TrainingError
from losslab.core.train.step import model_inputs, run_model

Kept = dict[str, list[torch.Tensor]]


@torch.no_grad()
def evaluate(parts: Parts, keep: int = 0) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Held-out losses and metrics (per image, then mean); the per-image rows; ``keep`` sample images."""
    parts.model.eval()
    max_depth = parts.cfg.data.max_depth
    sums: dict[str, torch.Tensor] = {}
    count = 0
    indices: list[torch.Tensor] = []
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in parts.metrics}
    kept: Kept = {}
    for batch in parts.val_batches:
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
        _keep(kept, keep, batch, prob, pred_depth, true_depth)
    # the one read-back: loss sums, per-image metrics and kept images
    totals = dict(zip(sums, torch.stack(list(sums.values())).tolist(), strict=True)) if sums else {}
    metric_values = {name: torch.cat(p).cpu().numpy() for name, p in per_image.items() if p}
    samples_kept = {k: [np.concatenate([t.cpu().numpy() for t in v])] for k, v in kept.items()}
    rows = per_image_rows(parts.samples, torch.cat(indices).tolist() if indices else [], metric_values)
    totals = distributed.all_reduce_sum({**totals, "#count": count}, parts.device)
    count = int(totals.pop("#count"))
    if parts.dist.enabled:
        rows = sorted((r for part in distributed.gather_objects(rows) for r in part), key=lambda r: r["index"])
        samples_kept = merge_kept(distributed.gather_objects(samples_kept), keep)
    result = {f"val/{k}": v / max(count, 1) for k, v in totals.items()}
    for name in parts.metrics:
        column = np.array([r[name] for r in rows], dtype=np.float64)
        result[f"val/{name}"] = float(np.nanmean(column)) if (~np.isnan(column)).any() else float("nan")
    samples = {k: np.concatenate(v) for k, v in samples_kept.items()}
    return result, rows, samples


def _keep(kept: Kept, keep: int, batch: dict[str, torch.Tensor], prob: torch.Tensor, pred_depth: torch.Tensor,
          true_depth: torch.Tensor) -> None:
    """Add this batch's first images to ``kept`` until ``keep`` images are held (still on the device)."""
    have = sum(len(i) for i in kept.get("index", []))
    if have >= keep:
        return
    take = slice(0, min(keep - have, batch["index"].shape[0]))
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


def merge_kept(parts: list[dict[str, list[np.ndarray]]], keep: int) -> dict[str, list[np.ndarray]]:
    """Every rank's kept images, in index order, the first ``keep`` of them."""
    merged = {k: np.concatenate([a for p in parts for a in p.get(k, [])]) for k in (parts[0] if parts else {})}
    if not merged:
        return {}
    order = np.argsort(merged["index"], kind="stable")[:keep]
    return {k: [v[order]] for k, v in merged.items()}


def check_finite(parts: Parts, result: dict[str, float], rows: list[dict[str, Any]], epoch: int) -> None:
    """Stop, naming the term or metric and its plugin, when validation gave NaN or inf anywhere.

    A metric is checked per image as well as on average (the mean skips NaN
    images, which would hide a metric that breaks on some of them).
    """
    where = f"at epoch {epoch + 1} on the {len(rows)} validation images"  # 1-based for people
    for term in parts.objective.terms:
        key = f"val/{term.task}/{term.key}"
        if key in result and not math.isfinite(result[key]):
            raise TrainingError(f"validation loss term {term.task}/{term.key} from {term.origin} is "
                                f"{result[key]} {where}; the run has failed and is not ranked. Check the loss "
                                "for log(0) or division by zero on held-out data")
    for name, component in parts.metric_components.items():
        bad = [r["index"] for r in rows if not math.isfinite(r[name])]
        if bad or not math.isfinite(result.get(f"val/{name}", 0.0)):
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            raise TrainingError(f"validation metric {name} ({component.kind} {component.name!r} from "
                                f"{component.origin}) is not finite {where} (images {shown or 'all'}); the run "
                                "has failed and is not ranked. Check the metric for division by zero")
    if "val/loss" in result and not math.isfinite(result["val/loss"]):
        raise TrainingError(f"validation loss is {result['val/loss']} {where} although every term is finite; a "
                            "weight times a large term overflows. Lower the weights or check the terms' scale")
