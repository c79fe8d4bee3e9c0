"""From a collected :class:`~losslab.reports.collect.Study` to the numbers a report states.

Per metric: each variant's summary over seeds, the ranking, and every pair of variants compared
by the paired tests of :mod:`losslab.reports.stats`, Holm-corrected per metric and test. Kept
apart from rendering so the numbers can be tested without drawing or writing anything.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from losslab.reports.collect import ChildRun, Study, Trial
from losslab.reports.stats import (
    ALPHA,
    PairedTest,
    Summary,
    holm,
    paired_image_test,
    paired_seed_test,
    rank_order,
    summarize,
)

TASKS = ("mask", "depth")
#: Substrings that mark a metric where lower is better, when the metric registry does not say.
LOWER_IS_BETTER_HINTS = ("loss", "rmse", "mae", "absrel", "sqrel", "log10", "rmse_log", "rmse-log", "error")
#: Preferred headline metric of each task, when the monitored metric belongs to another task.
PREFERRED = {"mask": ("iou", "dice", "f1"), "depth": ("rmse", "absrel", "mae")}
_ACRONYMS = {
    "iou": "IoU", "rmse": "RMSE", "mae": "MAE", "absrel": "AbsRel", "sqrel": "SqRel", "f1": "F1",
    "ssim": "SSIM", "bce": "BCE", "mse": "MSE", "log10": "log10", "rmse_log": "RMSE(log)",
    "delta1": "delta<1.25", "delta2": "delta<1.25^2", "delta3": "delta<1.25^3", "mape": "MAPE",
    "rmse-log": "RMSE(log)", "boundary-f": "boundary F",
}


# -- metric names ------------------------------------------------------------------------------------


def metric_task(key: str) -> str | None:
    """``mask`` for ``val/mask_iou``, ``depth`` for ``val/depth_rmse``, else None."""
    for task in TASKS:
        if key.startswith(f"val/{task}_"):
            return task
    return None


def metric_name(key: str) -> str:
    """The registry name of a metric key: ``val/mask_iou`` -> ``iou``."""
    task = metric_task(key)
    return key[len(f"val/{task}_"):] if task else key.rsplit("/", 1)[-1]


def metric_label(key: str) -> str:
    """A human label: ``val/mask_iou`` -> ``mask IoU``."""
    task = metric_task(key)
    name = metric_name(key)
    pretty = _ACRONYMS.get(name.lower(), name.replace("_", " "))
    return f"{task} {pretty}" if task else pretty


@functools.lru_cache(maxsize=1)
def _metric_registry() -> Any:
    try:
        from losslab.core.plugin.manager import load_catalog

        return load_catalog()["metric"]
    except Exception:
        return None


def higher_is_better(key: str) -> bool:
    """Whether a larger value of metric ``key`` is better: the registry says, else the name does."""
    registry = _metric_registry()
    name = metric_name(key)
    task = metric_task(key)
    if registry is not None:
        for candidate in (name, f"{task}_{name}" if task else name):
            if candidate in registry:
                factory = registry.get(candidate).factory
                flag = getattr(factory, "higher_is_better", None)
                if isinstance(flag, bool):
                    return flag
    lowered = key.lower()
    if lowered.startswith("time/"):
        return False
    return not any(hint in lowered for hint in LOWER_IS_BETTER_HINTS)


# -- comparisons -------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """``better`` (ranked higher) against ``worse`` on one metric.

    ``seed`` and ``image`` hold the raw tests (diff = better - worse); ``*_p_adj`` are Holm-adjusted.
    ``gain`` is how much ``better`` is ahead in the metric's good direction.
    """

    better: str
    worse: str
    seed: PairedTest
    image: PairedTest
    seed_p_adj: float
    image_p_adj: float
    higher_is_better: bool

    def _gain(self, test: PairedTest) -> float:
        return test.diff if self.higher_is_better else -test.diff

    @property
    def gain(self) -> float:
        """Over seeds when they can be tested, else over images (matching :attr:`gain_half_width`)."""
        if self.seed.possible or (not self.image.possible and math.isfinite(self.seed.diff)):
            return self._gain(self.seed)
        return self._gain(self.image)

    @property
    def gain_half_width(self) -> float:
        """95% interval half-width of the gain: over seeds when there are two or more, else images."""
        if self.seed.possible:
            return self.seed.half_width
        return self.image.half_width

    @property
    def tested(self) -> bool:
        return self.seed.possible or self.image.possible

    @property
    def significant(self) -> bool:
        """Every test that could run rejects (Holm-adjusted p < 0.05) in the same direction."""
        verdicts = []
        for test, p_adj in ((self.seed, self.seed_p_adj), (self.image, self.image_p_adj)):
            if test.possible:
                verdicts.append(p_adj < ALPHA and self._gain(test) > 0)
        return bool(verdicts) and all(verdicts)

    @property
    def verdict(self) -> str:
        if not self.tested:
            return "not tested"
        return "significant" if self.significant else "not significant"


@dataclass
class MetricResult:
    """One metric across variants: summaries over seeds, ranking and pairwise tests."""

    key: str
    label: str
    task: str | None
    higher_is_better: bool
    per_seed: dict[str, dict[int, float]]
    summaries: dict[str, Summary]
    ranking: list[str]
    comparisons: list[Comparison]
    n_images: int
    image_means: dict[str, float] = field(default_factory=dict)

    def vs(self, a: str, b: str) -> Comparison | None:
        for c in self.comparisons:
            if {c.better, c.worse} == {a, b}:
                return c
        return None

    @property
    def best(self) -> str | None:
        return self.ranking[0] if self.ranking else None


def _per_image(children: list[ChildRun], column: str, seeds: set[int] | None = None) -> dict[int, float]:
    """Each image's score for one variant, averaged over its seeds (or ``seeds``) that scored every image."""
    tables = [
        c.per_image
        for c in children
        if c.per_image is not None and column in c.per_image.columns and (seeds is None or c.seed in seeds)
    ]
    if not tables:
        return {}
    common = set(tables[0].index.tolist())
    for t in tables[1:]:
        common &= set(t.index.tolist())
    sums: dict[int, float] = dict.fromkeys(common, 0.0)
    for t in tables:
        for i, v in zip(t.index.tolist(), t.columns[column].tolist(), strict=True):
            if i in sums:
                sums[i] += v
    return {i: s / len(tables) for i, s in sums.items()}


def analyze_metric(study: Study, key: str) -> MetricResult:
    """Summaries, ranking and Holm-corrected pairwise tests for metric ``key`` (e.g. ``val/mask_iou``)."""
    hib = higher_is_better(key)
    by_variant: dict[str, list[ChildRun]] = {v: [] for v in study.variants}
    for child in study.ok_children:
        by_variant.setdefault(child.variant, []).append(child)
    per_seed: dict[str, dict[int, float]] = {}
    for variant, children in by_variant.items():
        values = {c.seed: c.value(key) for c in children}
        per_seed[variant] = {s: v for s, v in values.items() if v is not None}
    variants = [v for v in by_variant if per_seed.get(v)]
    summaries = {v: summarize(list(per_seed[v].values())) for v in variants}
    ranking = rank_order({v: summaries[v].mean for v in variants}, hib)

    column = key[len("val/"):] if key.startswith("val/") else key
    images = {v: _per_image(by_variant[v], column) for v in variants}
    pairs = list(combinations(ranking, 2))  # (better, worse) by mean
    seed_tests = [paired_seed_test(per_seed[a], per_seed[b]) for a, b in pairs]
    image_tests = []
    n_images = 0
    for a, b in pairs:
        # Average each image over the seeds both variants ran, so a missing (failed) seed of one
        # variant cannot pass for a difference between the variants.
        seeds = {c.seed for c in by_variant[a]} & {c.seed for c in by_variant[b]}
        img_a = _per_image(by_variant[a], column, seeds or None)
        img_b = _per_image(by_variant[b], column, seeds or None)
        common = sorted(set(img_a) & set(img_b))
        n_images = max(n_images, len(common))
        a_scores = np.array([img_a[i] for i in common])
        b_scores = np.array([img_b[i] for i in common])
        image_tests.append(paired_image_test(a_scores, b_scores))
    seed_adj = holm([t.p for t in seed_tests])
    image_adj = holm([t.p for t in image_tests])
    comparisons = [
        Comparison(a, b, st, it, sp, ip, hib)
        for (a, b), st, it, sp, ip in zip(pairs, seed_tests, image_tests, seed_adj, image_adj, strict=True)
    ]
    if len(variants) == 1:
        n_images = len(images[variants[0]])
    image_means = {v: float(np.mean(list(images[v].values()))) for v in variants if images[v]}
    return MetricResult(key, metric_label(key), metric_task(key), hib, per_seed, summaries, ranking,
                        comparisons, n_images, image_means)


# -- the whole study ---------------------------------------------------------------------------------


@dataclass
class PerfRow:
    """Cost of one variant over its seeds: total wall time and training throughput."""

    variant: str
    total_s: Summary
    samples_per_s: Summary


@dataclass
class TuneResult:
    """The trials of a tune study, best first, with the directions used to sort them."""

    objective_keys: list[str]
    directions: list[str]
    direction_note: str
    trials: list[Trial]
    pareto: set[str]
    varying_params: list[str]


@dataclass
class Analysis:
    metrics: list[MetricResult]
    headline: dict[str, MetricResult]
    perf: list[PerfRow]
    monitor: str | None
    tune: TuneResult | None


def metric_keys(study: Study) -> list[str]:
    """Every held-out task metric any finished child logged (``val/mask_*``, ``val/depth_*``), sorted."""
    keys: set[str] = set()
    for child in study.ok_children:
        for k in child.final:
            base = k[len("best/"):] if k.startswith("best/") else k
            if metric_task(base):
                keys.add(base)
    return sorted(keys, key=lambda k: (TASKS.index(metric_task(k) or "mask"), k))


def monitor_key(study: Study) -> str | None:
    """The metric the run selected its best epoch by (summary.json, else the config)."""
    if study.summary and isinstance(study.summary.get("monitor"), str):
        return study.summary["monitor"]
    train = study.config.get("train")
    if isinstance(train, dict) and isinstance(train.get("monitor"), str):
        return train["monitor"]
    return None


def headline_metrics(results: list[MetricResult], monitor: str | None) -> dict[str, MetricResult]:
    """The one metric per task the words lead with: the monitored one, else a conventional one."""
    out: dict[str, MetricResult] = {}
    for task in TASKS:
        candidates = [r for r in results if r.task == task and r.summaries]
        if not candidates:
            continue
        chosen = next((r for r in candidates if r.key == monitor), None)
        if chosen is None:
            for name in PREFERRED[task]:
                chosen = next((r for r in candidates if metric_name(r.key) == name), None)
                if chosen:
                    break
        out[task] = chosen or candidates[0]
    return out


def perf_rows(study: Study) -> list[PerfRow]:
    rows = []
    for variant in study.variants:
        children = [c for c in study.ok_children if c.variant == variant]
        if not children:
            continue
        total = [c.final["time/total_s"] for c in children if "time/total_s" in c.final]
        speed = []
        for c in children:
            history = c.histories.get("perf/samples_per_s")
            if history:
                speed.append(float(np.mean([v for _, v in history])))
            elif "perf/samples_per_s" in c.final:
                speed.append(c.final["perf/samples_per_s"])
        rows.append(PerfRow(variant, summarize(total), summarize(speed)))
    return rows


def _directions(study: Study, n: int) -> tuple[list[str], str]:
    raw = study.tags.get("losslab.directions") or study.tags.get("losslab.direction")
    found: list[str] = []
    if raw:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        found = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if not found:
        search = study.config.get("search")
        if isinstance(search, dict):
            if isinstance(search.get("directions"), list):
                found = [str(v) for v in search["directions"]]
            elif isinstance(search.get("direction"), str):
                found = [search["direction"]]
            elif isinstance(search.get("objectives"), list):
                found = [str(o.get("direction", "")) for o in search["objectives"] if isinstance(o, dict)]
    found = [d.lower() for d in found if d.lower() in ("maximize", "minimize")]
    if len(found) >= n and n > 0:
        return found[:n], ""
    return ["maximize"] * n, (
        "The study's direction is recorded neither in the parent's tags (losslab.direction) nor in its "
        "config (search.direction); trials are sorted as if the objective is maximized."
    )


def _dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    better_or_equal = all((x >= y) if d == "maximize" else (x <= y) for x, y, d in zip(a, b, directions,
                                                                                          strict=True))
    strictly = any((x > y) if d == "maximize" else (x < y) for x, y, d in zip(a, b, directions, strict=True))
    return better_or_equal and strictly


def tune_result(study: Study) -> TuneResult | None:
    """Trials sorted best first (by the first objective), the Pareto front for several objectives."""
    if study.kind != "tune" and not study.trials:
        return None
    keys = sorted({k for t in study.trials for k in t.objectives}, key=lambda k: (k != "objective", k))
    directions, note = _directions(study, len(keys))
    scored = [t for t in study.trials if keys and all(k in t.objectives for k in keys)]
    unscored = [t for t in study.trials if t not in scored]
    if keys:
        sign = 1.0 if directions[0] == "maximize" else -1.0
        scored.sort(key=lambda t: -sign * t.objectives[keys[0]])
    pareto: set[str] = set()
    if len(keys) > 1:
        complete = [t for t in scored if t.state.lower() in ("complete", "finished")] or scored
        for t in complete:
            point = [t.objectives[k] for k in keys]
            if not any(_dominates([o.objectives[k] for k in keys], point, directions) for o in complete):
                pareto.add(t.run_id)
    values: dict[str, set[str]] = {}
    for t in study.trials:
        for k, v in t.params.items():
            values.setdefault(k, set()).add(v)
    varying = sorted(k for k, vs in values.items() if len(vs) > 1)
    if not varying and len(study.trials) == 1:
        varying = sorted(values)[:12]
    return TuneResult(keys, directions, note, scored + unscored, pareto, varying)


def analyze(study: Study) -> Analysis:
    results = [analyze_metric(study, key) for key in metric_keys(study)]
    monitor = monitor_key(study)
    return Analysis(
        metrics=results,
        headline=headline_metrics(results, monitor),
        perf=perf_rows(study),
        monitor=monitor,
        tune=tune_result(study),
    )
