"""From a collected :class:`~losslab.reports.collect.Study` to the numbers a report states.

Per metric: each variant's summary over seeds, the ranking, and every pair of variants compared
by the paired tests of :mod:`losslab.reports.stats`, Holm-corrected per metric and test. Kept
apart from rendering so the numbers can be tested without drawing or writing anything.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from losslab.core.experiment.sequential import SEQUENTIAL_TAG, SequentialPlan
from losslab.core.names import (
    BEST_PREFIX,
    DIRECTIONS_TAG,
    LEGACY_DIRECTION_TAG,
    SAMPLES_PER_S,
    TIME_PREFIX,
    TOTAL_TIME,
    VAL_PREFIX,
)
from losslab.reports.collect import ChildRun, Study, Trial
from losslab.reports.stats import (
    ALPHA,
    MIN_SEEDS_FOR_CLAIM,
    N_BOOT,
    PairedTest,
    Summary,
    detectable_gap,
    hierarchical_bootstrap,
    holm,
    interquartile_mean,
    paired_image_test,
    paired_seed_test,
    probability_of_improvement,
    rank_order,
    summarize,
)

TASKS = ("mask", "depth")
#: Substrings that mark a metric where lower is better, when the metric registry does not say.
LOWER_IS_BETTER_HINTS = ("loss", "rmse", "mae", "absrel", "sqrel", "log10", "rmse_log", "rmse-log", "error")
#: Preferred headline metric of each task, when the monitored metric belongs to another task: the floors'
#: headlines first (delta1, then AbsRel, for depth: core/experiment/floors.HEADLINES), so the words lead
#: with the metric the winner tags and the below-floor claims are judged on.
PREFERRED = {"mask": ("iou", "dice", "f1"), "depth": ("delta1", "absrel", "rmse", "mae")}
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
        if key.startswith(f"{VAL_PREFIX}{task}_"):
            return task
    return None


def metric_name(key: str) -> str:
    """The registry name of a metric key: ``val/mask_iou`` -> ``iou``."""
    task = metric_task(key)
    return key[len(f"{VAL_PREFIX}{task}_"):] if task else key.rsplit("/", 1)[-1]


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
    if lowered.startswith(TIME_PREFIX):
        return False
    return not any(hint in lowered for hint in LOWER_IS_BETTER_HINTS)


# -- comparisons -------------------------------------------------------------------------------------

#: The status of a comparison; the words, the tables, the terminal and the MLflow tags all read it.
SIGNIFICANT, NOT_SIGNIFICANT, EXPLORATORY, NOT_TESTED = "significant", "not significant", "exploratory", "not tested"


@dataclass
class Comparison:
    """``better`` (ranked higher by mean) against ``worse`` on one metric.

    The decision is the paired t-test over the seeds both ran (``seed``; diff = better - worse),
    Holm-adjusted over every pair of variants of the metric (``seed_p_adj``). ``image`` is the
    Wilcoxon test over validation images: descriptive only, since the images scored by one trained
    model are not independent replicates. ``gain`` is how far ``better`` is ahead in the metric's
    good direction, ``gain_low``/``gain_high`` its hierarchical-bootstrap 95% interval (seeds, then
    images), ``effect`` the probability of improvement (Vargha-Delaney A over seeds), ``detectable``
    the gap these seeds detect at 80% power with the observed spread of the paired differences.
    """

    better: str
    worse: str
    seed: PairedTest
    image: PairedTest
    seed_p_adj: float
    image_p_adj: float
    higher_is_better: bool
    gain: float = float("nan")
    gain_low: float = float("nan")
    gain_high: float = float("nan")
    effect: float = float("nan")
    detectable: float = float("nan")
    spread: float = float("nan")
    alpha: float = ALPHA
    decided_at: int | None = None
    status: str = NOT_TESTED

    @property
    def gain_half_width(self) -> float:
        """Half the width of the bootstrap interval of the gain (for ``x +/- h`` display)."""
        return (self.gain_high - self.gain_low) / 2.0

    @property
    def tested(self) -> bool:
        return self.status in (SIGNIFICANT, NOT_SIGNIFICANT)

    @property
    def significant(self) -> bool:
        return self.status == SIGNIFICANT

    @property
    def verdict(self) -> str:
        return self.status


@dataclass
class MetricResult:
    """One metric across variants: summaries over seeds, ranking and every pairwise comparison.

    ``summaries[v]`` holds the mean and standard deviation over seeds with the hierarchical
    bootstrap 95% interval as ``low``/``high``. ``references`` is for marked reference rows (a
    task's no-skill floors): shown beside the variants, never ranked, never a winner.
    """

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
    iqm: dict[str, float] = field(default_factory=dict)
    references: dict[str, Summary] = field(default_factory=dict)
    per_test_alpha: float = ALPHA
    below_floor: list[str] = field(default_factory=list)

    def vs(self, a: str | None, b: str | None) -> Comparison | None:
        for c in self.comparisons:
            if {c.better, c.worse} == {a, b}:
                return c
        return None

    @property
    def best(self) -> str | None:
        return self.ranking[0] if self.ranking else None

    @property
    def n_seeds(self) -> int:
        """The seeds of the best variant: the most any claim on this metric can stand on."""
        return self.summaries[self.best].n if self.best else 0

    @property
    def exploratory(self) -> bool:
        """No claim is possible: the best has fewer than 3 seeds, or no pair shares 3 seeds."""
        if self.n_seeds < MIN_SEEDS_FOR_CLAIM:
            return True
        return bool(self.comparisons) and all(c.status in (EXPLORATORY, NOT_TESTED) for c in self.comparisons)

    def against_best(self) -> list[Comparison]:
        best = self.best
        return [c for c in self.comparisons if best in (c.better, c.worse)]

    @property
    def best_below_floor(self) -> bool:
        """The best variant by mean did not beat this task's floors (``lab run``'s floor judgement)."""
        return self.best is not None and self.best in self.below_floor

    @property
    def winner(self) -> str | None:
        """The best variant when it is significantly ahead of every other and above its task's floors, else None."""
        against = self.against_best()
        if len(self.ranking) < 2 or not against or self.exploratory or self.best_below_floor:
            return None
        return self.best if all(c.significant and c.better == self.best for c in against) else None

    @property
    def tied_with_best(self) -> list[str]:
        """The best and the variants it was tested against and is not significantly ahead of."""
        best = self.best
        if best is None:
            return []
        return [best] + [v for v in self.ranking[1:] if (c := self.vs(best, v)) is not None
                         and c.status == NOT_SIGNIFICANT]

    @property
    def no_claim_against_best(self) -> list[str]:
        """Variants the best cannot be compared with (fewer than 3 seeds in common, or none)."""
        best = self.best
        return [v for v in self.ranking[1:] if (c := self.vs(best, v)) is None
                or c.status in (EXPLORATORY, NOT_TESTED)]


def _image_matrix(children: list[ChildRun], column: str, seeds: list[int]) -> tuple[np.ndarray, list[int]]:
    """Seeds x images of one variant (rows in ``seeds`` order), over the images every seed scored."""
    tables = {c.seed: c.per_image for c in children
              if c.seed in seeds and c.per_image is not None and column in c.per_image.columns}
    if len(tables) != len(seeds) or not seeds:
        return np.zeros((0, 0)), []
    common = set(tables[seeds[0]].index.tolist())
    for s in seeds[1:]:
        common &= set(tables[s].index.tolist())
    images = sorted(common)
    rows = []
    for s in seeds:
        t = tables[s]
        where = {int(i): k for k, i in enumerate(t.index.tolist())}
        rows.append(t.columns[column][[where[i] for i in images]])
    return np.asarray(rows, dtype=np.float64), images


def _centred_interval(point: float, matrix: np.ndarray, per_seed: np.ndarray, n_boot: int) -> tuple[float, float]:
    """Hierarchical bootstrap interval around ``point`` (the mean of the logged per-seed values).

    The per-image tables average to the logged values up to how a metric aggregates; the interval
    is taken from the per-image matrix and shifted by the difference of the two means, so it always
    surrounds the value the tables show. Without per-image scores, the bootstrap is over seeds alone.
    """
    if matrix.size and matrix.shape[0] == per_seed.size and np.isfinite(matrix).any():
        low, high = hierarchical_bootstrap(matrix, n_boot)
        shift = point - float(np.nanmean(matrix))
        return low + shift, high + shift
    return hierarchical_bootstrap(per_seed.reshape(-1, 1), n_boot)


def _looks(study: Study) -> list[tuple[list[int] | None, float]]:
    """Each look as (the seeds it sees, or None for all; its Holm level): one look at 5% unless sequential."""
    raw = study.tags.get(SEQUENTIAL_TAG)
    if raw:
        try:
            plan = SequentialPlan.from_json(raw)
        except (ValueError, KeyError, TypeError):
            plan = None
        if plan is not None:
            return [(list(plan.seeds_at(k)), a) for k, a in enumerate(plan.alphas)]
    return [(None, ALPHA)]


def sequential_plan(study: Study) -> SequentialPlan | None:
    raw = study.tags.get(SEQUENTIAL_TAG)
    if not raw:
        return None
    try:
        return SequentialPlan.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None


def _seed_family(pairs: list[tuple[str, str]], per_seed: dict[str, dict[int, float]], seeds: list[int] | None,
                 attempted: dict[str, set[int]] | None = None) -> tuple[list[PairedTest], list[float]]:
    """Paired t-tests of every pair on ``seeds`` (all when None), Holm-adjusted over the testable ones.

    At a look of a sequential plan a pair is tested only once both variants were trained on every
    seed of that look (``attempted`` holds the seeds each variant ran, failed ones included): a
    test on fewer seeds would be a test the plan did not budget for.
    """
    tests = []
    for a, b in pairs:
        if seeds is not None and attempted is not None and not set(seeds) <= (attempted[a] & attempted[b]):
            tests.append(paired_seed_test({}, {}))
            continue
        pa = {s: v for s, v in per_seed[a].items() if seeds is None or s in seeds}
        pb = {s: v for s, v in per_seed[b].items() if seeds is None or s in seeds}
        tests.append(paired_seed_test(pa, pb))
    claimable = [t.p if t.n >= MIN_SEEDS_FOR_CLAIM else float("nan") for t in tests]
    return tests, holm(claimable)


def analyze_metric(study: Study, key: str, n_boot: int = N_BOOT) -> MetricResult:
    """Summaries, ranking and Holm-corrected comparisons of every pair of variants for metric ``key``."""
    hib = higher_is_better(key)
    sign = 1.0 if hib else -1.0
    by_variant: dict[str, list[ChildRun]] = {v: [] for v in study.variants}
    for child in study.ok_children:
        by_variant.setdefault(child.variant, []).append(child)
    per_seed: dict[str, dict[int, float]] = {}
    for variant, children in by_variant.items():
        logged = {c.seed: c.value(key) for c in children}
        per_seed[variant] = {s: v for s, v in sorted(logged.items()) if v is not None}
    variants = [v for v in by_variant if per_seed.get(v)]
    column = key.removeprefix(VAL_PREFIX)

    summaries: dict[str, Summary] = {}
    iqm: dict[str, float] = {}
    image_means: dict[str, float] = {}
    n_images = 0
    for v in variants:
        seed_list = list(per_seed[v])
        seed_values = np.array([per_seed[v][s] for s in seed_list])
        over_seeds = summarize(seed_values.tolist())
        matrix, images = _image_matrix(by_variant[v], column, seed_list)
        # one seed: no seed-to-seed level to resample, and an images-only interval would pass for more
        low, high = (_centred_interval(over_seeds.mean, matrix, seed_values, n_boot) if over_seeds.n > 1
                     else (float("nan"), float("nan")))
        summaries[v] = Summary(over_seeds.n, over_seeds.mean, over_seeds.std, low, high)
        iqm[v] = interquartile_mean(seed_values.tolist())
        if matrix.size:
            image_means[v] = float(np.nanmean(matrix))
            n_images = max(n_images, len(images))
    ranking = rank_order({v: summaries[v].mean for v in variants}, hib)

    pairs = list(combinations(ranking, 2))  # (better, worse) by mean
    looks = _looks(study)
    attempted = {v: {c.seed for c in study.children if c.variant == v} for v in variants}
    final_tests, final_adj = _seed_family(pairs, per_seed, None)
    decided: dict[int, int] = {}  # pair index -> seeds at the look that decided it
    for look_seeds, level in looks:
        tests, adjusted = ((final_tests, final_adj) if look_seeds is None
                           else _seed_family(pairs, per_seed, look_seeds, attempted))
        for i, (test, p_adj) in enumerate(zip(tests, adjusted, strict=True)):
            if i not in decided and test.possible and p_adj < level and sign * test.diff > 0:
                decided[i] = test.n

    image_tests = []
    extras = []
    for a, b in pairs:
        # Images averaged over the seeds both variants ran, so a missing (failed) seed of one
        # variant cannot pass for a difference between the variants.
        common_seeds = sorted(set(per_seed[a]) & set(per_seed[b]))
        ma, ia = _image_matrix(by_variant[a], column, common_seeds)
        mb, ib = _image_matrix(by_variant[b], column, common_seeds)
        shared = sorted(set(ia) & set(ib))
        if shared:
            pa = {i: k for k, i in enumerate(ia)}
            pb = {i: k for k, i in enumerate(ib)}
            da = ma[:, [pa[i] for i in shared]]
            db = mb[:, [pb[i] for i in shared]]
            with warnings.catch_warnings():  # an image NaN on every seed stays NaN and is left out
                warnings.simplefilter("ignore", RuntimeWarning)
                image_tests.append(paired_image_test(np.nanmean(da, axis=0), np.nanmean(db, axis=0)))
            diff = sign * (da - db)
        else:
            image_tests.append(paired_image_test(np.zeros(0), np.zeros(0)))
            diff = np.zeros((0, 0))
        xa = np.array([per_seed[a][s] for s in common_seeds])
        xb = np.array([per_seed[b][s] for s in common_seeds])
        extras.append((common_seeds, xa, xb, diff))
    image_adj = holm([t.p for t in image_tests])
    n_claimable = sum(t.n >= MIN_SEEDS_FOR_CLAIM for t in final_tests)
    per_test_alpha = ALPHA / max(1, n_claimable)

    comparisons = []
    for i, ((a, b), st, it, sp, ip) in enumerate(zip(pairs, final_tests, image_tests, final_adj, image_adj,
                                                     strict=True)):
        common_seeds, xa, xb, diff = extras[i]
        if st.n:
            gain = sign * st.diff
            seed_diff = sign * (xa - xb)
            low, high = _centred_interval(gain, diff, seed_diff, n_boot) if st.n > 1 else (
                float("nan"), float("nan"))
        else:
            gain = sign * (summaries[a].mean - summaries[b].mean)
            low = high = float("nan")
        if not st.n or not math.isfinite(gain):
            status = NOT_TESTED
        elif st.n < MIN_SEEDS_FOR_CLAIM:
            status = EXPLORATORY
        elif i in decided:
            status = SIGNIFICANT
        else:
            status = NOT_SIGNIFICANT
        spread = float(np.std(xa - xb, ddof=1)) if st.n > 1 else float("nan")
        if math.isfinite(spread) and spread <= 1e-12 * max(1.0, float(np.max(np.abs(np.r_[xa, xb])))):
            spread = 0.0  # identical differences on every seed: rounding, not spread
        comparisons.append(Comparison(
            a, b, st, it, sp, ip, hib, gain=gain, gain_low=low, gain_high=high,
            effect=probability_of_improvement((sign * xa).tolist(), (sign * xb).tolist()),
            detectable=detectable_gap(spread, st.n, per_test_alpha) if st.n >= 2 else float("nan"),
            spread=spread, alpha=looks[-1][1] if len(looks) > 1 else ALPHA, decided_at=decided.get(i),
            status=status,
        ))
    return MetricResult(key, metric_label(key), metric_task(key), hib, per_seed, summaries, ranking,
                        comparisons, n_images, image_means, iqm, per_test_alpha=per_test_alpha)


# -- the whole study ---------------------------------------------------------------------------------


@dataclass
class PerfRow:
    """Cost of one variant over its seeds: total wall time and training throughput."""

    variant: str
    total_s: Summary
    samples_per_s: Summary
    total_values: list[float] = field(default_factory=list)
    speed_values: list[float] = field(default_factory=list)


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
class StudyAnalysis:
    """Every number a report, the terminal and the parent run's tags state, computed once.

    ``verdict_metric`` is the metric the verdict (and the winner) is decided on: the monitored
    metric when the study logged it, else the first headline metric.
    """

    metrics: list[MetricResult]
    headline: dict[str, MetricResult]
    perf: list[PerfRow]
    monitor: str | None
    tune: TuneResult | None
    sequential: SequentialPlan | None = None
    variant_diffs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def verdict_metric(self) -> MetricResult | None:
        for r in self.headline.values():
            if r.key == self.monitor:
                return r
        return next(iter(self.headline.values()), None)

    @property
    def winner(self) -> str | None:
        r = self.verdict_metric
        return r.winner if r else None

    def undecided(self) -> list[str]:
        """Variants that need more seeds: the best and those whose comparison with it is not significant."""
        r = self.verdict_metric
        if r is None or len(r.ranking) < 2:
            return []
        best = r.ranking[0]
        open_ = [v for v in r.ranking[1:] if (c := r.vs(best, v)) is not None and not c.significant]
        return [best, *open_] if open_ else []


Analysis = StudyAnalysis  # the earlier name


def metric_keys(study: Study) -> list[str]:
    """Every held-out task metric any finished child logged (``val/mask_*``, ``val/depth_*``), sorted."""
    keys: set[str] = set()
    for child in study.ok_children:
        for k in child.final:
            base = k.removeprefix(BEST_PREFIX)
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
        total = [c.final[TOTAL_TIME] for c in children if TOTAL_TIME in c.final]
        speed = []
        for c in children:
            history = c.histories.get(SAMPLES_PER_S)
            if history:
                speed.append(float(np.mean([v for _, v in history])))
            elif SAMPLES_PER_S in c.final:
                speed.append(c.final[SAMPLES_PER_S])
        rows.append(PerfRow(variant, summarize(total), summarize(speed), total, speed))
    return rows


def _directions(study: Study, n: int) -> tuple[list[str], str]:
    raw = study.tags.get(DIRECTIONS_TAG) or study.tags.get(LEGACY_DIRECTION_TAG)
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


def apply_floors(study: Study, results: list[MetricResult]) -> None:
    """Mark each metric's floors (reference rows) and the variants below its task's floors.

    Both come from ``summary.json``, which ``lab run`` wrote from the one floor judgement that also set
    the ``losslab.below_floor`` and ``losslab.first_above_floor.<task>`` tags: the analysis never judges floors itself.
    """
    summary = study.summary or {}
    below = (summary.get("claims") or {}).get("below_floor") or {}
    rows = (summary.get("floors") or {}).get("rows") or []
    for r in results:
        r.below_floor = [v for v, tasks in below.items() if r.task in (tasks or [])]
        for row in rows:
            score = (row.get("scores") or {}).get(r.key)
            if row.get("task") == r.task and isinstance(score, int | float) and math.isfinite(score):
                r.references[str(row.get("name"))] = Summary(0, float(score), float("nan"), float("nan"),
                                                                   float("nan"))


def analyze(study: Study, n_boot: int = N_BOOT) -> StudyAnalysis:
    results = [analyze_metric(study, key, n_boot) for key in metric_keys(study)]
    apply_floors(study, results)
    monitor = monitor_key(study)
    return StudyAnalysis(
        metrics=results,
        headline=headline_metrics(results, monitor),
        perf=perf_rows(study),
        monitor=monitor,
        tune=tune_result(study),
        sequential=sequential_plan(study),
        variant_diffs=variant_differences(study.config_text, study.variants),
    )


def variant_differences(config_text: str | None, variants: list[str]) -> dict[str, dict[str, str]]:
    """Each variant as the dotted keys where it departs from the others: ``{"dice": {"loss.mask.0.name": "dice"}}``.

    The parent's ``config.yaml`` holds one resolved document per variant. For each key where they differ,
    the value most variants share (when one is strictly the most common) is the base, shown once in the
    config section; a variant lists only its departures from it, so a row reads as what that variant
    changes. Where no value is the most common, every variant that sets the key lists it. An empty mapping counts as
    unset (``params: {}`` and no params are the same config), and a key a variant lacks, where the base has
    it, reads as ``(unset)``.
    """
    if not config_text:
        return {}
    from collections import Counter

    import yaml

    from losslab.core.config import flatten

    try:
        docs = [d for d in yaml.safe_load_all(config_text) if isinstance(d, dict)]
    except yaml.YAMLError:
        return {}
    flat = {str(d.get("variant", i)): {k: v for k, v in flatten(d).items() if k != "variant" and v not in ({}, "{}")}
            for i, d in enumerate(docs)}
    if len(flat) < 2:
        return {name: {} for name in flat}
    unset = "(unset)"
    keys = sorted({k for f in flat.values() for k in f})
    out: dict[str, dict[str, str]] = {name: {} for name in flat}
    for k in keys:
        values = {name: json.dumps(f.get(k, unset), default=str) for name, f in flat.items()}
        counts = Counter(values.values()).most_common()
        if len(counts) < 2:
            continue
        base = counts[0][0] if counts[0][1] > counts[1][1] else None
        for name, value in values.items():
            if value != base and (base is not None or k in flat[name]):
                out[name][k] = str(flat[name].get(k, unset))
    return out
