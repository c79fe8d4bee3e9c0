"""Floors in a tune study: measured once per study, logged on its parent, and every trial judged against them.

A tune study is a study: its numbers mean something only beside what a predictor that learns nothing
scores. The first worker measures the floors (:func:`losslab.core.experiment.floors.measure_floors`, on
the base config's training split and held-out samples) and stores them in the Optuna study, so every
later worker, and a resumed study, reads the same numbers instead of fitting them again. They are logged
on the parent as ``lab run`` logs them (metrics ``floor/<baseline>/<metric key>``, tag ``losslab.val_bgs``).

Each trial trains one seed, so it is judged on its own values
(:func:`~losslab.core.experiment.floors.single_model_verdicts`): its run gets ``losslab.below_floor``, and
the best trial's verdict is printed under the table, written to ``summary.json`` and tagged on the parent
(``losslab.below_floor``: the tasks on which the best trial, or every trial of the Pareto front, is below).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from losslab.core import names
from losslab.core.config import ExperimentConfig
from losslab.core.experiment.floors import (
    VAL_BGS_TAG,
    Floors,
    chosen_baselines,
    floors_from_dict,
    floors_to_dict,
    measure_floors,
    single_model_verdicts,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from losslab.core.experiment.tuning.trial import TuneContext

#: Searched keys under these change the held-out set or its metrics: no one floor fits every trial.
_SPLIT_KEYS = ("data", "metrics", "baselines")


def study_floors(ctx: TuneContext) -> Floors | None:
    """The study's floors: read from the Optuna study, else measured now, stored there and logged on the parent."""
    space, cfg, echo = ctx.space, ctx.base_cfg, ctx.echo
    moved = [p.key for p in space.params if p.key.split(".")[0] in _SPLIT_KEYS]
    if moved:
        echo(f"losslab: floors not measured: the search changes {', '.join(moved)}, so no one held-out set "
             "and metric list fits every trial")
        return None
    if not chosen_baselines(cfg, ctx.catalog):
        echo("losslab: floors switched off (baselines: false); no trial is judged against a floor")
        return None
    stored = ctx.study.user_attrs.get(names.FLOORS_ATTR)
    if isinstance(stored, dict):
        floors = floors_from_dict(stored)
        echo(f"losslab: floors of the study (measured by its first worker): {_shown(floors)}")
    else:
        # two workers starting together may both measure: the floors are deterministic, so both store
        # and log the same numbers
        floors = measure_floors(cfg, ctx.catalog, echo)
        ctx.study.set_user_attr(names.FLOORS_ATTR, floors_to_dict(floors))
    _log_on_parent(ctx.records.tracker, ctx.records.parent_id, floors)
    return floors


def _log_on_parent(tracker: Any, parent: str, floors: Floors) -> None:
    """Log the floors on the parent once, even when two workers try at the same moment.

    Two workers that both measured race on the tag's row: on a SQL tracking store one of the two inserts
    fails on the row's key. The floors are deterministic, so if the parent then holds the very same
    held-out backgrounds, the other worker logged the same numbers, and only what is still missing is
    logged; anything else is a real error and is raised.
    """
    bgs = json.dumps(floors.val_bgs)
    try:
        if VAL_BGS_TAG not in tracker.client.get_run(parent).data.tags:
            tracker.set_tags(parent, {VAL_BGS_TAG: bgs})
            tracker.log_metrics(parent, floors.metrics(), 0)
    except Exception:
        data = tracker.client.get_run(parent).data
        if data.tags.get(VAL_BGS_TAG) != bgs:
            raise
        missing = {k: v for k, v in floors.metrics().items() if k not in data.metrics}
        if missing:
            tracker.log_metrics(parent, missing, 0)


def _shown(floors: Floors) -> str:
    return "; ".join(f"{f.name} " + ", ".join(f"{k.removeprefix(names.VAL_PREFIX)}={v:.4f}"
                                              for k, v in f.scores.items()) for f in floors.floors)


def trial_verdict(floors: Floors, cfg: ExperimentConfig | None, best: dict[str, float], number: int
                  ) -> dict[str, Any]:
    """One trial's verdict (the ``losslab.floor_verdict`` attribute): tasks below, a sentence and margin per task."""
    from losslab.core.experiment.floors import trained_tasks

    tasks = trained_tasks([cfg]) if cfg is not None else ["mask", "depth"]
    verdicts = single_model_verdicts(best, floors, tasks, f"trial {number}")
    return {"below": [t for t, (below, _, _) in verdicts.items() if below],
            "sentences": {t: sentence for t, (_, sentence, _) in verdicts.items()},
            "margins": {t: margin for t, (_, _, margin) in verdicts.items()}}


def verdict_of(trial: FrozenTrial) -> dict[str, Any] | None:
    found = trial.user_attrs.get(names.FLOOR_VERDICT_ATTR)
    return found if isinstance(found, dict) else None


def best_below(best: Sequence[FrozenTrial]) -> list[str]:
    """Tasks on which every best trial (the one best, or the whole Pareto front) is below its floors."""
    judged = [v for t in best if (v := verdict_of(t)) is not None]
    if not judged:
        return []
    return [task for task in ("mask", "depth") if all(task in v["below"] for v in judged)]


def verdict_lines(best: Sequence[FrozenTrial]) -> list[str]:
    """What the terminal prints under the table about the best trial(s) and the floors."""
    lines = []
    for t in best:
        verdict = verdict_of(t)
        if verdict is None:
            continue
        mark = f"BELOW FLOOR on {', '.join(verdict['below'])}" if verdict["below"] else "above every floor"
        lines.append(f"floors: best trial {t.number} {mark}: " + "; ".join(verdict["sentences"].values()))
    if lines:
        lines.append("floors: each trial trains one seed, so this is exploratory; `lab run` the best config over "
                     "3 seeds to test it against the floors")
    return lines


def summary_part(floors: Floors | None, trials: Sequence[FrozenTrial], best: Sequence[FrozenTrial]) -> dict[str, Any]:
    """``summary.json``'s ``floors`` and ``claims`` in ``lab run``'s shape, so the report reads both alike.

    ``claims.below_floor`` maps each judged trial (``trial-<n>``) to its tasks below; ``claims.tasks`` holds
    the best trial's verdict per task (``winner``: ``trial-<n>``, or ``none`` when it is below).
    """
    if floors is None:
        return {}
    below = {f"trial-{t.number}": v["below"] for t in trials if (v := verdict_of(t)) is not None}
    tasks: dict[str, dict[str, Any]] = {}
    top = next((t for t in best if verdict_of(t) is not None), None)
    if top is not None:
        verdict = verdict_of(top) or {}
        for task, sentence in verdict["sentences"].items():
            tasks[task] = {"winner": "none" if task in verdict["below"] else f"trial-{top.number}",
                           "sentence": f"{sentence} (one seed: exploratory)",
                           "margin": verdict["margins"].get(task)}
    return {"floors": floors_to_dict(floors), "claims": {"below_floor": below, "tasks": tasks}}
