"""What a study leaves behind: the table of best trials, the best config as an experiment, plots, report.

The best parameters are written back as an experiment file that ``lab run``
accepts as it is: with one objective, the best trial's fully resolved config
(variant ``tuned``); with several, the base config plus one variant per trial
on the Pareto front, so ``lab run`` compares them over the experiment's seeds.
Optuna's plots go to the parent run under ``optuna/`` as PNGs (matplotlib
backend: plotly is not a dependency).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from losslab.core import names
from losslab.core.experiment.table import render_table
from losslab.core.experiment.tuning.space import SearchSpace, build_config
from losslab.core.experiment.tuning.study import (
    FAIL_REASON_ATTR,
    RUN_ATTR,
    finished,
    quiet_optuna,
    running_elsewhere,
    safe_name,
    superseded,
)
from losslab.core.experiment.tuning.trial_floors import best_below, summary_part, verdict_lines, verdict_of

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from losslab.core.experiment.floors import Floors
    from losslab.core.experiment.tuning.trial import TrialOutcome, TuneContext

#: What the CLI hands the worker to run once the study is complete: (parent run id, output folder, tracking URI)
#: -> the files written by format. The CLI passes the report builder; the engine never imports ``losslab.reports``.
ReportHook = Callable[[str, Path, str], dict[str, Path]]
TABLE_ROWS = 10
PARETO_VARIANTS = 6


@dataclass
class TuneResult:
    """What one worker's ``run_tune`` returns: the study's counts and table, the best config, plots, report."""

    study: str
    storage: str
    parent_run_id: str
    tracking_uri: str
    trials_target: int
    finished: int
    complete: int
    pruned: int
    failed: int
    outcomes: list[TrialOutcome] = field(default_factory=list)
    table: str = ""
    best_path: Path | None = None
    plots: list[Path] = field(default_factory=list)
    report: dict[str, Path] = field(default_factory=dict)
    stopped: str = ""
    gave_up: bool = False


# -- ranking -------------------------------------------------------------------------------------------


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    pairs = list(zip(a, b, directions, strict=True))
    at_least = all((x >= y) if d == "maximize" else (x <= y) for x, y, d in pairs)
    better = any((x > y) if d == "maximize" else (x < y) for x, y, d in pairs)
    return at_least and better


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """Complete trials that no other complete trial dominates, best first by the first objective."""
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    front = [t for t in done if not any(dominates(o.values, t.values, directions) for o in done if o is not t)]
    return rank(front, directions)


def rank(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """Trials with values, best first by the first objective (ties: lower trial number first)."""
    sign = -1.0 if directions[0] == "maximize" else 1.0
    scored = [t for t in trials if t.values and math.isfinite(t.values[0])]
    return sorted(scored, key=lambda t: (sign * t.values[0], t.number))


def _state(t: FrozenTrial) -> str:
    """complete | pruned | failed: the words of the MLflow tag ``losslab.trial_state``."""
    name = t.state.name.lower()
    return "failed" if name == "fail" else name


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _seconds(t: FrozenTrial) -> str:
    if t.datetime_start and t.datetime_complete:
        return f"{(t.datetime_complete - t.datetime_start).total_seconds():.0f}s"
    return ""


def trials_table(trials: Sequence[FrozenTrial], space: SearchSpace, target: int, limit: int = TABLE_ROWS) -> str:
    """Best trials first (the Pareto front first with several objectives); failed trials listed below."""
    from optuna.trial import TrialState

    counted = finished(trials)
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    pruned = [t for t in counted if t.state == TrialState.PRUNED]
    failed = [t for t in counted if t.state == TrialState.FAIL]
    directions = space.directions
    front = {t.number for t in pareto_front(complete, directions)} if space.multi else set()
    ordered = ([t for t in rank(complete, directions) if t.number in front]
               + [t for t in rank(complete, directions) if t.number not in front]
               + rank(pruned, directions) + [t for t in pruned if not t.values])
    arrows = {"maximize": "↑", "minimize": "↓"}
    headers = ["rank", "trial", "state", *(f"{m} {arrows[d]}" for m, d in zip(space.metrics, directions,
                                                                               strict=True))]
    if space.multi:
        headers.append("pareto")
    judged = any(verdict_of(t) is not None for t in ordered)
    if judged:
        headers.append("floors")
    headers += ["time", *(p.key for p in space.params)]
    rows = []
    for i, t in enumerate(ordered[:limit], start=1):
        state = _state(t)
        values = [_fmt(v) for v in (t.values or [])] + [""] * (len(directions) - len(t.values or []))
        row = [str(i), str(t.number), state, *values]
        if space.multi:
            row.append("*" if t.number in front else "")
        if judged:
            verdict = verdict_of(t)
            row.append("" if verdict is None else
                       f"below: {','.join(verdict['below'])}" if verdict["below"] else "above")
        row += [_seconds(t), *(_fmt(t.params.get(p.key)) for p in space.params)]
        rows.append(row)
    replaced = len(superseded(trials))
    lines = [f"study: {len(counted)} of {target} trial(s) finished: {len(complete)} complete, {len(pruned)} "
             f"pruned, {len(failed)} failed" + (f" ({replaced} interrupted or lost trial(s) were run again)"
                                                 if replaced else "")]
    if rows:
        lines += render_table(headers, rows)
        if len(ordered) > limit:
            lines.append(f"... {len(ordered) - limit} more")
    for t in failed:
        reason = str(t.user_attrs.get(FAIL_REASON_ATTR) or "worker lost (no heartbeat)")
        lines.append(f"failed: trial {t.number}: {reason[:200]}")
    lines += verdict_lines(best_trials(trials, space))
    return "\n".join(lines)


def best_trials(trials: Sequence[FrozenTrial], space: SearchSpace) -> list[FrozenTrial]:
    """The best complete trial, or the Pareto front with several objectives (``summary.json``'s ``best``)."""
    from optuna.trial import TrialState

    complete = [t for t in finished(trials) if t.state == TrialState.COMPLETE]
    return pareto_front(complete, space.directions) if space.multi else rank(complete, space.directions)[:1]


# -- the best config -----------------------------------------------------------------------------------


def _overrides(t: FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    """The trial's config overrides: recorded at the trial's start, else rebuilt from its labels."""
    recorded = t.user_attrs.get(names.OVERRIDES_ATTR)
    if isinstance(recorded, dict):
        return recorded
    out: dict[str, Any] = {}
    for p in space.params:
        if p.key in t.params:
            out[p.key] = p.values[t.params[p.key]] if p.kind == "categorical" else t.params[p.key]
    return out


def _seeds_line(ctx: TuneContext, seeds: list[int], filename: str, verb: str) -> str:
    """How to re-run the tuned config, saying plainly that each trial trained one seed."""
    tuned = f"Each trial trained one seed ({ctx.seed}). "
    if len(seeds) >= 3:
        return tuned + f"{verb} over the experiment's seeds {list(seeds)}: lab run {filename}"
    return (tuned + f"This file keeps the experiment's seeds {list(seeds)}, fewer than 3, so a run of it is "
            f"exploratory; for a claim, {verb.lower()} over 3 or more: lab run {filename} --set 'seeds=[0, 1, 2]'")


def best_experiment(ctx: TuneContext, trials: Sequence[FrozenTrial], study: str,
                    filename: str) -> tuple[str, list[int]] | None:
    """YAML text of the ready-to-run best experiment, and the trial numbers it holds (None: none complete)."""
    from optuna.trial import TrialState

    space = ctx.space
    complete = [t for t in finished(trials) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    chosen = pareto_front(complete, space.directions)[:PARETO_VARIANTS] if space.multi else \
        rank(complete, space.directions)[:1]
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    values = lambda t: ", ".join(f"{m} = {v:.4f}" for m, v in zip(space.metrics, t.values, strict=True))  # noqa: E731
    if not space.multi:
        best = chosen[0]
        cfg = build_config(ctx.base, _overrides(best, space), ctx.catalog, "tuned").to_dict()
        cfg.pop("search", None)
        head = [f"Best trial {best.number} of study {study!r} ({values(best)}; {space.directions[0]}), {when}.",
                "Tuned values: " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()) + ".",
                _seeds_line(ctx, cfg.get("seeds") or [], filename, "Run it")]
    else:
        base = copy.deepcopy(ctx.base)
        base.pop("search", None)
        base.pop("variant", None)
        variants: dict[str, Any] = {}
        for t in chosen:
            trial_cfg = build_config(ctx.base, _overrides(t, space), ctx.catalog, f"trial-{t.number}").to_dict()
            changed = {k: v for k, v in trial_cfg.items()
                       if k in ("data", "model", "augment", "train", "loss", "metrics") and v != base.get(k)}
            if changed not in variants.values():  # trials that sampled the same config are one variant
                variants[f"trial-{t.number}"] = changed
        cfg = {**base, "variants": variants}
        head = [f"The Pareto front of study {study!r} ({', '.join(f'{d} {m}' for m, d in zip(space.metrics, space.directions, strict=True))}), {when}:"]  # noqa: E501
        head += [f"  trial-{t.number}: {values(t)}" for t in chosen]
        head += [_seeds_line(ctx, base.get("seeds") or [0], filename, "Compare them")]
    text = "".join(f"# {line}\n" for line in head) + yaml.safe_dump(cfg, sort_keys=False)
    return text, [t.number for t in chosen]


# -- plots ---------------------------------------------------------------------------------------------


def _objective_value(trial: FrozenTrial, index: int, sign: float) -> float:
    return sign * trial.values[index]


def save_plots(study: Any, space: SearchSpace, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's plots as PNGs: history, importances, parallel coordinates, intermediate values, Pareto front."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    jobs: list[tuple[str, Callable[[], Any]]] = []
    if not space.multi:
        name = space.metrics[0]
        jobs += [("optimization_history", partial(vis.plot_optimization_history, study, target_name=name)),
                 ("parallel_coordinate", partial(vis.plot_parallel_coordinate, study, target_name=name)),
                 ("param_importances", partial(vis.plot_param_importances, study, target_name=name))]
        if space.pruner_name != "none":
            jobs.append(("intermediate_values", partial(vis.plot_intermediate_values, study)))
    else:
        for i, (name, direction) in enumerate(zip(space.metrics, space.directions, strict=True)):
            slug = name.replace("/", "_")
            value = partial(_objective_value, index=i, sign=1.0)
            # importance evaluators explain what makes a target *low*: flip the sign of a maximized one
            low_is_good = partial(_objective_value, index=i, sign=-1.0 if direction == "maximize" else 1.0)
            shown = name if direction == "minimize" else f"-{name}"
            jobs += [(f"optimization_history_{slug}",
                      partial(vis.plot_optimization_history, study, target=value, target_name=name)),
                     (f"param_importances_{slug}",
                      partial(vis.plot_param_importances, study, target=low_is_good, target_name=shown)),
                     (f"parallel_coordinate_{slug}",
                      partial(vis.plot_parallel_coordinate, study, target=value, target_name=name))]
        if len(space.metrics) in (2, 3):
            jobs.append(("pareto_front", partial(vis.plot_pareto_front, study, target_names=space.metrics)))
    written: list[Path] = []
    notes: list[str] = []
    for name, draw in jobs:
        if "importances" in name and len(complete) < 2:
            notes.append(f"{name}: needs at least 2 complete trials (has {len(complete)})")
            continue
        if not complete and name != "intermediate_values":
            notes.append(f"{name}: no complete trial yet")
            continue
        try:
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # degenerate axes of tiny studies; the plot still draws
                axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(max(figure.get_size_inches()[0], 9), max(figure.get_size_inches()[1], 5))
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            written.append(path)
        except Exception as exc:
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            plt.close("all")
    return written, notes


# -- the end of a worker -------------------------------------------------------------------------------


def summary(study: Any, space: SearchSpace, trials: Sequence[FrozenTrial], target: int, storage: str,
            floors: Floors | None = None) -> dict:
    counted = finished(trials)
    best = best_trials(trials, space)
    row = lambda t: {  # noqa: E731
        "trial": t.number, "run_id": t.user_attrs.get(RUN_ATTR), "state": _state(t),
        "values": t.values, "params": t.params, "error": t.user_attrs.get(FAIL_REASON_ATTR),
        "below_floor": (verdict_of(t) or {}).get("below"),
    }
    return {
        "kind": "tune", "study": study.study_name, "storage": storage, "trials_target": target,
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in space.objectives],
        "monitor": space.metrics[0], "mode": "max" if space.directions[0] == "maximize" else "min",
        "best": [row(t) for t in best], "trials": [row(t) for t in sorted(counted, key=lambda t: t.number)],
        **summary_part(floors, counted, best),
    }


def finish_study(ctx: TuneContext, target: int, storage: str, uri: str, stopped: str, gave_up: bool,
                 on_finished: ReportHook | None, best_dir: Path | None) -> TuneResult:
    """Table, best experiment file, plots, summary and report; close the parent run if no one else is busy."""
    from optuna.trial import TrialState


    study, space, records, echo = ctx.study, ctx.space, ctx.records, ctx.echo
    trials = study.get_trials(deepcopy=False)
    counted = finished(trials)
    result = TuneResult(
        study=study.study_name, storage=storage, parent_run_id=records.parent_id, tracking_uri=uri,
        trials_target=target, finished=len(counted),
        complete=sum(t.state == TrialState.COMPLETE for t in counted),
        pruned=sum(t.state == TrialState.PRUNED for t in counted),
        failed=sum(t.state == TrialState.FAIL for t in counted),
        outcomes=list(ctx.outcomes), stopped=stopped, gave_up=gave_up,
    )
    result.table = trials_table(trials, space, target)
    parent = records.parent_id
    filename = f"{safe_name(study.study_name)}_best.yaml"
    best = best_experiment(ctx, trials, study.study_name, filename)
    if best is not None:
        text, _numbers = best
        folder = Path(best_dir) if best_dir is not None else Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        # one temporary file per process: workers finishing together each write the same best config,
        # and a shared temporary name let one worker's rename take the other's file away
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        result.best_path = path
        records.log_artifact(parent, path, None)
    with tempfile.TemporaryDirectory(prefix="losslab-tune-") as tmp_dir:
        plots, notes = save_plots(study, space, Path(tmp_dir) / names.OPTUNA_DIR)
        for plot in plots:
            records.log_artifact(parent, plot, names.OPTUNA_DIR)
        result.plots = [Path(names.OPTUNA_DIR) / p.name for p in plots]
        for note in notes:
            echo(f"losslab: plot skipped: {note}")
        records.tracker.log_json(parent, summary(study, space, trials, target, storage, ctx.floors),
                                 names.SUMMARY_FILE)
    if ctx.floors is not None:  # the tasks on which the best trial (every trial of the Pareto front) is below
        records.tracker.set_tags(parent, {names.BELOW_FLOOR_TAG: ",".join(best_below(best_trials(trials, space)))})
    busy = running_elsewhere(study.get_trials(deepcopy=False), ctx.worker)
    if on_finished is not None and not busy:
        result.report = on_finished(parent, ctx.runs_root / names.REPORT_DIR, uri)
    if not busy:
        records.close_parent("FAILED" if gave_up else "FINISHED")
    return result

