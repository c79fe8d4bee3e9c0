"""Floors: what each task's baselines score, and the rule that a variant must beat them to claim anything.

A study's numbers mean something only beside what a predictor that learns
nothing scores. :func:`measure_floors` fits every chosen baseline plugin on the
*training split only* (the split the trainer builds, all of it, unaugmented, labelled
by the truth the variants are scored against: ``data.ground_truth.val_mask`` when set)
and scores it on the *same held-out samples* with the *same metric
components* as the variants, per image and then the mean. Baselines are
deterministic, so a floor is one number, not an interval.

:func:`below_floor` is the decision, a pure function of a variant's per-seed
values: a variant is below a floor unless its mean over seeds beats the
floor *and* the 95% t-interval of that mean excludes it. :func:`judge` applies
it to every variant on each task's headline metrics (mask IoU; depth delta1
and AbsRel) against the best floor of each, and names each task's winner
among the variants that are above every floor, or ``none`` with a sentence
that says why.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from losslab.core import names
from losslab.core.config import ExperimentConfig
from losslab.core.plugin.registry import Catalog

#: MLflow names (core/names.py).
FLOOR_METRIC_PREFIX = "floor"
VAL_BGS_TAG = names.VAL_BGS_TAG
BELOW_FLOOR_TAG = names.BELOW_FLOOR_TAG
FIRST_ABOVE_FLOOR_TAG_PREFIX = names.FIRST_ABOVE_FLOOR_TAG_PREFIX
FLOORS_FILE = "floors.json"  # not logged yet

#: Each task's headline metrics, the first of which ranks the task's variants.
HEADLINES: dict[str, tuple[str, ...]] = {"mask": ("iou",), "depth": ("delta1", "absrel")}
CONFIDENCE = 0.95
FIT_BATCH = 64

Echo = Callable[[str], None]


class FloorError(ValueError):
    """A floor could not be fitted or scored; the message names the baseline and what to do."""


@dataclass
class Floor:
    """One baseline's scores on the held-out samples: ``{"val/mask_iou": 0.91, ...}``."""

    name: str
    task: str
    scores: dict[str, float]
    fitted: dict[str, float] = field(default_factory=dict)


@dataclass
class Floors:
    """Every floor of a study, with what is needed to recompute them."""

    floors: list[Floor]
    val_bgs: list[int]
    n_train: int
    n_val: int
    seconds: float
    higher_is_better: dict[str, bool]

    def best(self, key: str) -> Floor | None:
        """The floor that scores best on metric ``key`` (the one a variant must beat)."""
        scored = [f for f in self.floors if key in f.scores and not math.isnan(f.scores[key])]
        if not scored:
            return None
        sign = 1.0 if self.higher_is_better.get(key, True) else -1.0
        return max(scored, key=lambda f: sign * f.scores[key])

    def metrics(self) -> dict[str, float]:
        """``floor/<baseline>/<metric key>``: the parent run's metrics."""
        return {f"{FLOOR_METRIC_PREFIX}/{f.name}/{k}": v for f in self.floors for k, v in f.scores.items()
                if not math.isnan(v)}


def chosen_baselines(cfg: ExperimentConfig, catalog: Catalog) -> list[tuple[str, dict[str, Any]]]:
    """The baselines a config scores: every ``default=True`` one (unless switched off), then ``baselines.add``."""
    chosen: list[tuple[str, dict[str, Any]]] = []
    if cfg.baselines.defaults:
        chosen += [(c.name, {}) for c in catalog["baseline"] if c.meta.get("default")]
    for spec in cfg.baselines.add:
        if (spec.name, spec.params) not in chosen:
            chosen.append((spec.name, dict(spec.params)))
    return chosen


def _metric_names(cfg: ExperimentConfig, catalog: Catalog, task: str) -> list[str]:
    """The config's metrics of ``task``, plus its headline metrics where registered (the claims need them)."""
    names = list(getattr(cfg.metrics, task))
    names += [n for n in HEADLINES[task] if n not in names and n in catalog["metric"]]
    return names


class _Replay:
    """The training batches composed once and kept compactly (8-bit images, metres as float32).

    Each baseline iterates them in turn; the images come back as the very floats the loader made
    (``uint8 / 255``), so every baseline sees what one pass of the loader would give it.
    """

    def __init__(self, loader: Any, max_depth: float) -> None:
        import torch

        self.parts: list[dict[str, Any]] = []
        for batch in loader:
            self.parts.append({
                "bg": (batch["bg"] * 255).round().to(torch.uint8),
                "fg_bg": (batch["fg_bg"] * 255).round().to(torch.uint8),
                "mask": batch["mask"] > 0.5,
                "depth": batch["depth"] * max_depth,
            })

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for part in self.parts:
            yield {"bg": part["bg"].float().div_(255.0), "fg_bg": part["fg_bg"].float().div_(255.0),
                   "mask": part["mask"].float(), "depth": part["depth"]}

    def __len__(self) -> int:
        return sum(len(p["mask"]) for p in self.parts)


def fit_sample(train_idx: Any, limit: int | None) -> Any:
    """At most ``limit`` of the training indices, evenly strided (``baselines.fit_limit``).

    Why: the per-pixel medians hold every fitted sample, so 51,200 composed samples cost minutes and
    gigabytes. An even stride over the split (in sample order, background-major) keeps every training
    background in, and is the same for every worker, so a floor stays reproducible from the parent's
    tags. Training data only.
    """
    import numpy as np

    idx = np.asarray(train_idx)
    if limit is None or len(idx) <= limit:
        return idx
    return idx[np.linspace(0, len(idx) - 1, limit).round().astype(np.int64)]


def measure_floors(cfg: ExperimentConfig, catalog: Catalog, echo: Echo | None = None) -> Floors:
    """Fit the config's baselines on its training split and score them on its held-out samples."""
    import numpy as np
    import torch

    from losslab.core.data.datasets import BatchLoader, build_samples, held_out_split, validation_samples

    started = time.perf_counter()
    data = cfg.data
    # both sides labelled by the truth every variant is scored against (data.ground_truth.val_mask when set):
    # a floor is the best a no-skill predictor does on that truth, whatever labels the variants train on
    samples = build_samples(data, catalog)
    train_idx, val_idx = held_out_split(samples, data)
    samples = validation_samples(samples, data, catalog)
    fit_idx = fit_sample(train_idx, cfg.baselines.fit_limit)
    common: dict[str, Any] = dict(batch_size=FIT_BATCH, image_size=data.image_size, max_depth=data.max_depth,
                                  device=torch.device("cpu"), shuffle=False)
    metrics = {task: {n: catalog.create("metric", n) for n in _metric_names(cfg, catalog, task)}
               for task in ("mask", "depth")}
    higher = {f"{names.VAL_PREFIX}{task}_{n}": bool(getattr(m, "higher_is_better", True))
              for task, ms in metrics.items() for n, m in ms.items()}
    built = []
    for name, params in chosen_baselines(cfg, catalog):
        component = catalog.get("baseline", name)
        try:
            baseline = component.create(**params)
        except Exception as exc:
            raise FloorError(f"baseline {name!r} (plugin {component.plugin!r}, {component.distribution}) could not "
                             f"be built with params {params}: {exc}") from exc
        task = getattr(baseline, "task", component.meta.get("task"))
        if task not in ("mask", "depth"):
            raise FloorError(f"baseline {name!r} (plugin {component.plugin!r}) declares task {task!r}; "
                             "expected 'mask' or 'depth'")
        built.append((name, task, baseline, component))
    floors: list[Floor] = []
    threads = torch.get_num_threads()
    # one thread: each op here is small (one batch of 64 px maps), where a second thread's hand-off
    # costs more than it saves, ten times more on a busy CPU; the bits are the same either way
    torch.set_num_threads(1)
    try:
        if built:
            train = _Replay(BatchLoader(samples, fit_idx, **common), data.max_depth)
            val = _Replay(BatchLoader(samples, val_idx, **common), data.max_depth)
            with torch.no_grad():
                for name, task, baseline, component in built:
                    floors.append(_fit_and_score(name, task, baseline, component, train, val, metrics[task]))
    finally:
        torch.set_num_threads(threads)
    val_bgs = sorted({int(b) for b in np.asarray(samples.bg_ids())[val_idx]})
    result = Floors(floors, val_bgs, len(fit_idx), len(val_idx), time.perf_counter() - started, higher)
    if echo is not None and floors:
        shown = "; ".join(f"{f.name} " + ", ".join(f"{k.removeprefix(names.VAL_PREFIX)}={v:.4f}"
                                                   for k, v in f.scores.items())
                          for f in floors)
        echo(f"losslab: floors (fitted on {len(fit_idx)} of {len(train_idx)} training samples, scored on "
             f"{len(val_idx)} held-out "
             f"samples of bgs {val_bgs}, {result.seconds:.1f}s): {shown}")
    return result


def _fit_and_score(name: str, task: str, baseline: Any, component: Any, train: _Replay, val: _Replay,
                   metrics: dict[str, Any]) -> Floor:
    import numpy as np

    origin = f"baseline {name!r} (plugin {component.plugin!r}, {component.distribution})"
    try:
        baseline.fit(train)
    except Exception as exc:
        raise FloorError(f"{origin}: fit failed on the training split: {type(exc).__name__}: {exc}") from exc
    per_image: dict[str, list[Any]] = {n: [] for n in metrics}
    for batch in val:
        truth = batch[task]
        inputs = {k: v for k, v in batch.items() if k in ("bg", "fg_bg")}  # a floor never sees held-out truth
        try:
            pred = baseline.predict(inputs)
        except Exception as exc:
            raise FloorError(f"{origin}: predict failed: {type(exc).__name__}: {exc}") from exc
        if tuple(getattr(pred, "shape", ())) != tuple(truth.shape):
            raise FloorError(f"{origin}: predict returned shape {tuple(getattr(pred, 'shape', ()))}; expected "
                             f"{tuple(truth.shape)}, one (B, 1, H, W) map per held-out image")
        for n, metric in metrics.items():
            per_image[n].append(metric(pred.float(), truth).double().numpy())
    scores = {f"{names.VAL_PREFIX}{task}_{n}": float(np.nanmean(np.concatenate(v))) for n, v in per_image.items() if v}
    fitted = {k: float(v) for k in ("threshold", "level", "value") if isinstance(v := getattr(baseline, k, None),
                                                                                 int | float)}
    return Floor(name, task, scores, fitted)


# -- the decision ----------------------------------------------------------------------------------------


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The t-interval of the mean over seeds (as the report's intervals); None with fewer than 2 seeds."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean - half, mean + half


def below_floor(per_seed_values: Sequence[float], floor_value: float, higher_is_better: bool) -> bool:
    """True unless the mean over seeds beats the floor *and* its 95% interval over seeds excludes it.

    One seed has no interval, so it is never shown above a floor; a NaN seed (a failed run) likewise.
    """
    values = [float(v) for v in per_seed_values]
    if not values or any(math.isnan(v) for v in values) or math.isnan(floor_value):
        return True
    bounds = interval(values)
    if bounds is None:
        return True
    mean, (low, high) = statistics.fmean(values), bounds
    if higher_is_better:
        return not (mean > floor_value and low > floor_value)
    return not (mean < floor_value and high < floor_value)


def single_model_verdicts(best: dict[str, float], floors: Floors, tasks: Sequence[str], who: str,
                          ) -> dict[str, tuple[bool, str, float | None]]:
    """Judge one trained model (a tune trial: one seed) against each task's best floors.

    One seed has no interval over seeds, so by :func:`below_floor` every trial would be below. A trial
    is judged on its values alone instead: below unless it beats the best floor on every headline
    metric of the task (a missing or NaN headline is below). What it shows is exploratory, as one seed
    always is; ``lab run`` on the best config over 3 seeds makes the claim. Returns, per judged task,
    (below, a sentence naming ``who``, the margin on the ranking metric).
    """
    out: dict[str, tuple[bool, str, float | None]] = {}
    for task in tasks:
        keys = [f"{names.VAL_PREFIX}{task}_{n}" for n in HEADLINES[task]]
        bests = {k: f for k in keys if (f := floors.best(k)) is not None}
        if not bests:
            continue
        rank_key = next(k for k in keys if k in bests)
        failing = None
        for key, floor in bests.items():
            value = best.get(key)
            higher = floors.higher_is_better.get(key, True)
            if value is None or math.isnan(value) or not (value > floor.scores[key] if higher
                                                           else value < floor.scores[key]):
                failing = (key, floor, value)
                break
        value = best.get(rank_key)
        margin = None if value is None or math.isnan(value) else value - bests[rank_key].scores[rank_key]
        if failing is None:
            floor = bests[rank_key]
            metric = rank_key.removeprefix(f"{names.VAL_PREFIX}{task}_")
            out[task] = (False, f"{task}: {who} {metric} {_fmt(best[rank_key])} is {_fmt(abs(margin or 0.0))} "
                                f"beyond the {floor.name} floor ({_fmt(floor.scores[rank_key])})", margin)
            continue
        key, floor, shown = failing
        metric = key.removeprefix(f"{names.VAL_PREFIX}{task}_")
        if shown is None or math.isnan(shown):
            out[task] = (True, f"{task}: {who} is below floor: it was not scored on {metric} (add it to "
                               f"metrics.{task}); the {floor.name} floor scores {_fmt(floor.scores[key])}", margin)
            continue
        out[task] = (True, f"{task}: {who} is below floor: {metric} {_fmt(shown)}, the {floor.name} floor scores "
                           f"{_fmt(floor.scores[key])}", margin)
    return out


def floors_to_dict(floors: Floors) -> dict[str, Any]:
    """The floors as plain data (``summary.json``'s ``floors``; a tune study's storage attribute)."""
    return {"val_bgs": floors.val_bgs, "n_train": floors.n_train, "n_val": floors.n_val,
            "higher_is_better": floors.higher_is_better, "seconds": floors.seconds,
            "rows": [asdict(f) for f in floors.floors]}


def floors_from_dict(data: dict[str, Any]) -> Floors:
    """:func:`floors_to_dict` read back."""
    rows = [Floor(str(r["name"]), str(r["task"]), {str(k): float(v) for k, v in r["scores"].items()},
                  {str(k): float(v) for k, v in (r.get("fitted") or {}).items()}) for r in data["rows"]]
    return Floors(rows, [int(b) for b in data["val_bgs"]], int(data["n_train"]), int(data["n_val"]),
                  float(data.get("seconds", 0.0)), {str(k): bool(v) for k, v in data["higher_is_better"].items()})


@dataclass
class TaskVerdict:
    task: str
    winner: str  # a variant, or "none"
    sentence: str
    margin: float | None = None  # the winner's mean minus the best floor, on the ranking metric


@dataclass
class Judgement:
    """Below-floor tasks per variant, and each judged task's verdict."""

    below: dict[str, list[str]]
    tasks: dict[str, TaskVerdict]

    def to_dict(self) -> dict[str, Any]:
        return {"below_floor": self.below, "tasks": {t: asdict(v) for t, v in self.tasks.items()}}


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def judge(per_seed: dict[str, dict[str, list[float]]], floors: Floors, trained: Sequence[str] = ("mask", "depth"),
          ) -> Judgement:
    """Apply :func:`below_floor` to each variant on each trained task's headline metrics.

    ``per_seed`` maps variant -> metric key -> one value per finished seed. A variant is below a
    task's floor if it is below the best floor on any headline metric of the task, or if it lacks
    one; each task's winner is the best (by the first headline) of the variants above its floors.
    """
    below: dict[str, list[str]] = {v: [] for v in per_seed}
    verdicts: dict[str, TaskVerdict] = {}
    for task in trained:
        keys = [f"{names.VAL_PREFIX}{task}_{n}" for n in HEADLINES[task]]
        bests = {k: floors.best(k) for k in keys}
        if not any(bests.values()):
            continue  # no floor of this task was scored: nothing to judge against
        rank_key = keys[0]
        higher = floors.higher_is_better.get(rank_key, True)
        for variant, values in per_seed.items():
            for key in keys:
                best = bests[key]
                if best is None:
                    continue
                if below_floor(values.get(key, []), best.scores[key], floors.higher_is_better.get(key, True)):
                    below[variant].append(task)
                    break
        means = {v: statistics.fmean(vals[rank_key]) for v, vals in per_seed.items() if vals.get(rank_key)}
        metric = HEADLINES[task][0]
        best_floor = bests[rank_key]
        above = [v for v in means if task not in below[v]]
        sign = 1.0 if higher else -1.0
        if above and best_floor is not None:
            winner = max(above, key=lambda v: sign * means[v])
            margin = means[winner] - best_floor.scores[rank_key]
            verdicts[task] = TaskVerdict(task, winner, (
                f"{task}: {winner} ranks first above the floors, {metric} {_fmt(means[winner])}, {_fmt(abs(margin))} "
                f"{'above' if margin * sign > 0 else 'below'} the {best_floor.name} floor "
                f"({_fmt(best_floor.scores[rank_key])})"), margin)
            continue
        verdicts[task] = TaskVerdict(task, "none", _none_sentence(task, per_seed, means, bests, floors, sign))
    return Judgement(below, verdicts)


def _none_sentence(task: str, per_seed: dict[str, dict[str, list[float]]], means: dict[str, float],
                   bests: dict[str, Floor | None], floors: Floors, sign: float) -> str:
    """Why no variant wins ``task``, in plain words, naming the floor that stopped the best one."""
    noun = "the mask" if task == "mask" else "the depth"
    if not means:
        return f"no variant was scored on {noun}'s headline metrics ({', '.join(HEADLINES[task])}): no claim"
    best = max(means, key=lambda v: sign * means[v])
    for key in bests:
        floor = bests[key]
        values = per_seed[best].get(key, [])
        if floor is None:
            continue
        metric = key.removeprefix(f"{names.VAL_PREFIX}{task}_")
        if not values:
            return f"no claim on {noun}: {best} was not scored on {metric}; add it to metrics.{task}"
        higher = floors.higher_is_better.get(key, True)
        if not below_floor(values, floor.scores[key], higher):
            continue
        mean = statistics.fmean(values)
        floor_value = floor.scores[key]
        beats = mean > floor_value if higher else mean < floor_value
        if not beats:
            return (f"no variant learned {noun}: best {metric} {_fmt(mean)} ({best}), the {floor.name} floor "
                    f"scores {_fmt(floor_value)}")
        bounds = interval(values)
        spread = (f"its 95% interval over {len(values)} seeds, {_fmt(bounds[0])} to {_fmt(bounds[1])}, "
                  "does not exclude the floor") if bounds else "one seed gives no interval"
        return (f"no variant is shown above the {task} floors: best {metric} {_fmt(mean)} ({best}) against the "
                f"{floor.name} floor's {_fmt(floor_value)}, but {spread}")
    return f"no variant is shown above the {task} floors"


def per_seed_values(children: Sequence[Any]) -> dict[str, dict[str, list[float]]]:
    """variant -> metric key -> values of its finished seeds, from the runner's child results."""
    out: dict[str, dict[str, list[float]]] = {}
    for child in children:
        values = out.setdefault(child.variant, {})
        if child.status != "finished":
            continue
        for key, value in child.metrics.items():
            values.setdefault(key.removeprefix(names.BEST_PREFIX), []).append(float(value))
    return out


def trained_tasks(configs: Sequence[ExperimentConfig]) -> list[str]:
    """The tasks some variant trains (a weighted loss term): only those are judged against floors."""
    return [t for t in ("mask", "depth") if any(any(x.weight > 0 for x in getattr(c.loss, t)) for c in configs)]


# -- the runner's hooks ------------------------------------------------------------------------------------


def floor_data(cfg: ExperimentConfig) -> Any:
    """What of a config's data its floors depend on: all of it, with the training mask truth replaced by the
    validation one (variants that differ only in ``data.ground_truth.mask`` under one ``val_mask`` share floors)."""
    truth = cfg.data.ground_truth
    scored = truth.model_copy(update={"mask": truth.validation_mask(), "val_mask": None})
    return cfg.data.model_copy(update={"ground_truth": scored})


def study_floors(configs: Sequence[ExperimentConfig], catalog: Catalog, tracker: Any, parent_id: str,
                 echo: Echo) -> Floors | None:
    """Measure the floors of a study and log them on the parent run (metrics ``floor/...``, tag ``val_bgs``).

    Floors need one held-out set: when variants differ in data, metrics or baselines, no one floor
    fits them all, and none is measured (said on the terminal). Variants that differ only in the training
    mask truth (``data.ground_truth.mask`` under one ``val_mask``) share floors, fitted on the training split
    labelled by the validation truth (:func:`measure_floors`).
    """
    first = configs[0]
    if any((floor_data(c), c.metrics, c.baselines) != (floor_data(first), first.metrics, first.baselines)
           for c in configs[1:]):
        echo("losslab: floors not measured: the variants differ in data, metrics or baselines, so no one "
             "held-out set and metric list fits them all")
        return None
    if not chosen_baselines(first, catalog):
        echo("losslab: floors switched off (baselines: false); no variant is judged against a floor")
        return None
    floors = measure_floors(first, catalog, echo)
    tracker.set_tags(parent_id, {VAL_BGS_TAG: json.dumps(floors.val_bgs)})
    tracker.log_metrics(parent_id, floors.metrics(), 0)
    return floors


def apply_floors(result: Any, floors: Floors | None, configs: Sequence[ExperimentConfig], tracker: Any,
                 ) -> dict[str, Any]:
    """Judge the finished children against the floors: child and parent tags, and what summary.json keeps.

    Returns ``{"floors": ..., "claims": ...}`` for the parent's summary (empty without floors) and
    sets ``result.below_floor`` (variant -> tasks) for the terminal table.
    """
    if floors is None:
        result.below_floor = {}
        return {}
    judgement = judge(per_seed_values(result.children), floors, trained_tasks(configs))
    result.below_floor = {v: t for v, t in judgement.below.items() if t}
    result.verdicts = {t: v.sentence for t, v in judgement.tasks.items()}
    for child in result.children:
        if child.status == "finished" and child.run_id:
            tracker.set_tags(child.run_id, {BELOW_FLOOR_TAG: ",".join(judgement.below.get(child.variant, []))})
    tracker.set_tags(result.parent_run_id,
                     {f"{FIRST_ABOVE_FLOOR_TAG_PREFIX}{t}": v.winner for t, v in judgement.tasks.items()})
    return {"floors": floors_to_dict(floors), "claims": judgement.to_dict()}
