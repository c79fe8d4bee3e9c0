"""The multi-task section: both tasks at once, for studies that compare loss weightings.

A study whose variants differ in ``loss.weighting`` asks a two-task question,
which one metric per table cannot answer. This module computes, in one place,
what the section's table, figure and words say:

- each variant's mean (over seeds) of every held-out mask and depth metric,
  and its rank on the mask and on the depth headline metric;
- the Pareto front of mask IoU against depth delta1 (the variants no other
  variant beats on both);
- the multi-task improvement over the static baseline as LibMTL defines it
  (Lin and Zhang, LibMTL, JMLR 2023): ``Δm = 100% / T * sum_t 1/M_t * sum_m
  (-1)^{l_m} (M_m - B_m) / B_m``, over the T = 2 tasks and each task's M_t
  metrics, with ``l_m = 1`` where lower is better, so a positive Δm is an
  improvement. The baseline is the first variant (in the study's order) that
  uses the ``static`` weighting.

With fewer than three seeds per variant the section says it is exploratory.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

from losslab.core.names import BEST_PREFIX, VAL_PREFIX
from losslab.reports.collect import ChildRun, Study
from losslab.reports.render import Block, Heading, Image, Paragraph, Table

MASK_KEY = "val/mask_iou"
DEPTH_KEY = "val/depth_delta1"
WEIGHTING_PARAM = "loss.weighting.name"
MIN_SEEDS = 3


@dataclass
class MultiTask:
    """Everything the section shows, computed once."""

    baseline: str
    variants: list[str]
    weighting: dict[str, str]
    metrics: dict[str, list[str]]  # task -> metric keys used in Δm, e.g. {"mask": ["val/mask_iou", ...]}
    higher_is_better: dict[str, bool]
    means: dict[str, dict[str, float]]  # variant -> metric key -> mean over seeds
    seeds: dict[str, int]
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # per seed (mask, depth)
    front: list[str] = field(default_factory=list)
    delta_m: dict[str, float] = field(default_factory=dict)
    rank: dict[str, dict[str, int]] = field(default_factory=dict)  # variant -> task -> rank (1 = best)

    @property
    def exploratory(self) -> bool:
        return min(self.seeds.values(), default=0) < MIN_SEEDS


def _metric_direction(key: str) -> bool:
    """Whether a larger ``val/<task>_<name>`` is better, from the metric registry (the metric's own flag)."""
    from losslab.core.plugin.manager import load_catalog

    name = key.split("/", 1)[-1].split("_", 1)[-1]
    registry = load_catalog()["metric"]
    if name in registry:
        flag = registry.get(name).meta.get("higher_is_better")
        if flag is None:
            flag = getattr(registry.get(name).factory, "higher_is_better", True)
        return bool(flag)
    return not any(hint in name for hint in ("rmse", "mae", "rel", "log10", "error", "loss"))


def delta_m(means: dict[str, float], base: dict[str, float], metrics: dict[str, list[str]],
            higher_is_better: dict[str, bool]) -> float:
    """LibMTL's Δm in percent: the mean over tasks of the mean signed relative change of each metric."""
    per_task = []
    for keys in metrics.values():
        changes = [(means[k] - base[k]) / base[k] * (1.0 if higher_is_better[k] else -1.0) for k in keys]
        per_task.append(sum(changes) / len(changes))
    return 100.0 * sum(per_task) / len(per_task)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Variants that no other variant matches or beats on both (higher is better on both), best mask first."""
    front = []
    for v, (x, y) in points.items():
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for o, (ox, oy) in points.items() if o != v)
        if not dominated:
            front.append(v)
    return sorted(front, key=lambda v: -points[v][0])


def _ranks(values: dict[str, float], higher: bool) -> dict[str, int]:
    order = sorted(values, key=lambda v: -values[v] if higher else values[v])
    return {v: i + 1 for i, v in enumerate(order)}


def analyze(study: Study) -> MultiTask | None:
    """The section's numbers, or ``None`` when the study does not compare weightings (or lacks the metrics)."""
    children = [c for c in study.ok_children if c.variant in study.variants]
    weighting = {c.variant: c.params.get(WEIGHTING_PARAM, "static") for c in children}
    if not any(w != "static" for w in weighting.values()):
        return None
    variants = [v for v in study.variants if v in weighting]
    baseline = next((v for v in variants if weighting[v] == "static"), None)
    if baseline is None:
        return None

    def common(task: str) -> list[str]:
        keys = None
        for c in children:
            have = {k.removeprefix(BEST_PREFIX) for k in c.final}
            mine = {k for k in have if k.startswith(f"{VAL_PREFIX}{task}_") and c.value(k) is not None}
            keys = mine if keys is None else keys & mine
        return sorted(keys or [])

    metrics = {task: common(task) for task in ("mask", "depth")}
    if MASK_KEY not in metrics["mask"] or DEPTH_KEY not in metrics["depth"]:
        return None
    by_variant: dict[str, list[ChildRun]] = {}
    for c in children:
        by_variant.setdefault(c.variant, []).append(c)
    keys = [k for task in metrics.values() for k in task]
    means = {v: {k: _mean([c.value(k) for c in by_variant[v]]) for k in keys} for v in variants}
    direction = {k: _metric_direction(k) for k in keys}
    result = MultiTask(baseline=baseline, variants=variants, weighting=weighting, metrics=metrics,
                       higher_is_better=direction, means=means, seeds={v: len(by_variant[v]) for v in variants})
    result.points = {v: [(c.value(MASK_KEY) or math.nan, c.value(DEPTH_KEY) or math.nan)
                         for c in sorted(by_variant[v], key=lambda c: c.seed)] for v in variants}
    result.front = pareto_front({v: (means[v][MASK_KEY], means[v][DEPTH_KEY]) for v in variants})
    base = means[baseline]
    usable = all(base[k] != 0 and math.isfinite(base[k]) for k in keys)
    result.delta_m = {v: delta_m(means[v], base, metrics, direction) for v in variants} if usable else {}
    mask_rank = _ranks({v: means[v][MASK_KEY] for v in variants}, direction[MASK_KEY])
    depth_rank = _ranks({v: means[v][DEPTH_KEY] for v in variants}, direction[DEPTH_KEY])
    result.rank = {v: {"mask": mask_rank[v], "depth": depth_rank[v]} for v in variants}
    return result


def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def words(m: MultiTask) -> list[str]:
    """The section's sentences, from the same numbers as its table."""
    lead = "Exploratory (fewer than 3 seeds per variant): no claim. " if m.exploratory else ""
    front = ", ".join(f"{v} (IoU {m.means[v][MASK_KEY]:.3f}, delta1 {m.means[v][DEPTH_KEY]:.3f})" for v in m.front)
    out = [f"{lead}Pareto front of mask IoU against depth delta1 (no other variant is at least as good on both "
           f"and better on one): {front}."]
    if m.delta_m:
        others = {v: d for v, d in m.delta_m.items() if v != m.baseline}
        if others:
            best = max(others, key=lambda v: others[v])
            out.append(f"Δm over the static baseline {m.baseline!r}, LibMTL's multi-task improvement over "
                       f"{sum(len(k) for k in m.metrics.values())} metrics of both tasks: best {best} "
                       f"{others[best]:+.2f}%; "
                       + ", ".join(f"{v} {d:+.2f}%" for v, d in sorted(others.items(), key=lambda kv: -kv[1]))
                       + ". Δm is a difference of means over seeds, descriptive only; the per-metric tables "
                       "above carry the tests.")
    else:
        out.append(f"Δm is not defined: the baseline {m.baseline!r} has a metric of 0 or not finite.")
    return out


def table(m: MultiTask) -> Table:
    headers = ["variant", "weighting", "seeds", "mask IoU", "rank (mask)", "depth delta1", "rank (depth)",
               "Δm vs " + m.baseline, "on the front"]
    rows = []
    for v in sorted(m.variants, key=lambda v: (m.rank[v]["mask"] + m.rank[v]["depth"], m.rank[v]["mask"])):
        d = m.delta_m.get(v)
        rows.append([v, m.weighting[v], str(m.seeds[v]), f"{m.means[v][MASK_KEY]:.4f}", str(m.rank[v]["mask"]),
                     f"{m.means[v][DEPTH_KEY]:.4f}", str(m.rank[v]["depth"]),
                     "(baseline)" if v == m.baseline else (f"{d:+.2f}%" if d is not None else "n/a"),
                     "yes" if v in m.front else ""])
    metric_list = "; ".join(f"{task}: {', '.join(k.split('/', 1)[1] for k in keys)}"
                            for task, keys in m.metrics.items())
    return Table(headers, rows, caption=f"Both tasks, means over seeds, ordered by the sum of the two ranks. "
                                         f"Δm uses {metric_list}.")


def pareto_plot(m: MultiTask) -> Image | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = plt.get_cmap("tab10")
    for i, v in enumerate(m.variants):
        xs, ys = zip(*m.points[v], strict=True) if m.points[v] else ((), ())
        ax.scatter(xs, ys, s=14, alpha=0.35, color=colors(i % 10))
        ax.scatter([m.means[v][MASK_KEY]], [m.means[v][DEPTH_KEY]], s=60, color=colors(i % 10), label=v,
                   edgecolors="black" if v in m.front else "none")
    front = sorted(m.front, key=lambda v: m.means[v][MASK_KEY])
    ax.plot([m.means[v][MASK_KEY] for v in front], [m.means[v][DEPTH_KEY] for v in front], "k--", lw=1,
            label="Pareto front")
    ax.set_xlabel("mask IoU (held-out, higher is better)")
    ax.set_ylabel("depth delta1 (held-out, higher is better)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Image("pareto_mask_depth", buffer.getvalue(),
                 "Mask IoU against depth delta1: large dots are means over seeds (outlined: on the Pareto front), "
                 "small dots single seeds.")


def section(study: Study) -> list[Block | None]:
    """The section's blocks, or none when the study does not compare weightings."""
    m = analyze(study)
    if m is None:
        return []
    return [Heading("Both tasks: loss weightings"), table(m), pareto_plot(m), *[Paragraph(t) for t in words(m)]]
