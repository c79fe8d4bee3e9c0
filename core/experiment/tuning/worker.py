"""The loop one ``lab tune`` process runs: claim a trial, run it, until the study has its trials.

Any number of workers may run it against one storage. Each loop step first
fails trials whose workers died (their heartbeats stopped) and queues them
again, then claims a place in the budget (see ``study``), then runs the
trial. When the budget is spent, a worker waits for trials still running
elsewhere, so a trial whose worker dies at the very end is still retried by a
live one, and every worker ends with the same, complete table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from losslab.core.config import ConfigError, ExperimentConfig, load_yaml, resolve_variants
from losslab.core.experiment.tuning.options import TuneOptions
from losslab.core.experiment.tuning.records import StudyRecords
from losslab.core.experiment.tuning.results import ReportHook, TuneResult, finish_study
from losslab.core.experiment.tuning.space import SearchSpace, base_dict, parse_search
from losslab.core.experiment.tuning.study import (
    StaleTrialHandler,
    StudyError,
    default_storage,
    finished,
    normalize_storage,
    open_storage,
    open_study,
    places_before,
    places_taken,
    public_storage,
    quiet_optuna,
    running_elsewhere,
    safe_name,
    waiting,
)
from losslab.core.experiment.tuning.trial import TuneContext, run_trial
from losslab.core.experiment.tuning.trial_floors import study_floors
from losslab.core.names import SURPLUS_ATTR, WORKER_ATTR
from losslab.core.paths import safe_join
from losslab.core.plugin.registry import Catalog

Echo = Callable[[str], None]
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\- ]{0,119}$")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select_base(path: Path, sets: list[str], catalog: Catalog) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The experiment's config to tune (its only variant, or ``search.variant``) and its raw search block."""
    raw = load_yaml(path)
    try:
        configs = resolve_variants(raw, sets, catalog)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if len(configs) == 1:
        return configs[0], configs[0].search or {}
    names = [c.variant for c in configs]
    wanted = (configs[0].search or {}).get("variant") if isinstance(configs[0].search, dict) else None
    if wanted is None:
        raise ConfigError(f"{path}: the experiment has {len(configs)} variants ({', '.join(names)}) and "
                          "`lab tune` tunes one config: set search.variant to one of them (or --set "
                          f"search.variant={names[0]}), or remove variants")
    chosen = next((c for c in configs if c.variant == str(wanted)), None)
    if chosen is None:
        raise ConfigError(f"{path}: search.variant: no variant {wanted!r}; variants are {', '.join(names)}")
    return chosen, chosen.search or {}


def config_hash(base: dict[str, Any], seed: int) -> str:
    blob = json.dumps({"config": base, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_tune(
    path: Path,
    options: TuneOptions = TuneOptions(),
    *,
    on_finished: ReportHook | None = None,
    catalog: Catalog | None = None,
    echo: Echo = _stderr,
    best_dir: Path | None = None,
) -> TuneResult:
    """Join (or start) the study and run trials until it has ``options.trials`` in total; then summarize it.

    ``on_finished`` (the report, when the CLI asks for one) runs once no other worker is busy with the study.
    """
    from losslab.core.experiment.tracking import Tracker, check_tracking_uri, default_tracking_uri
    from losslab.core.plugin.manager import load_catalog

    trials = options.trials
    _check_budget(trials, options.timeout)
    catalog = catalog or load_catalog()
    cfg, space = _load_space(Path(path), options, catalog)
    base = base_dict(cfg, space)
    seed = cfg.seeds[0]
    sampler_seed = space.sampler.seed if space.sampler.seed is not None else seed
    name = _study_name(options.study, cfg)
    uri = default_tracking_uri(options.tracking_uri)
    check_tracking_uri(uri)  # before the Optuna study exists: a bad URI leaves nothing behind
    url = normalize_storage(options.storage or default_storage(uri))
    shown_url = public_storage(url)
    handler = StaleTrialHandler(space.heartbeat.max_retry)
    rdb = open_storage(url, space.heartbeat, handler)
    study = open_study(rdb, name, space, cfg.train.epochs, sampler_seed, config_hash(base, seed))
    tracker = Tracker(uri)
    records = StudyRecords(tracker, cfg.name, name, shown_url, space, cfg, seed)
    parent_id, existed = records.open_parent(trials)
    handler.on_stale = lambda s, t: echo(f"losslab: trial {t.number}: "
                                         f"{records.on_stale(s, t, space.heartbeat.grace)}")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    ctx = TuneContext(space, base, cfg, catalog, records, study, rdb, handler, worker, seed,
                      safe_join(options.runs_dir, cfg.name, f"tune-{safe_name(name)}"), echo)
    ctx.floors = study_floors(ctx)
    done = len(finished(study.get_trials(deepcopy=False)))
    echo(f"losslab: study {name!r} ({'resumed' if done or existed else 'new'}, {done} of {trials} trial(s) done) "
         f"in {shown_url}; MLflow parent run {parent_id} in {tracker.uri}")
    _announce_plan(ctx, trials)
    stopped, gave_up = _loop_or_close(ctx, trials, options.timeout)
    return finish_study(ctx, trials, shown_url, uri, stopped, gave_up, on_finished, best_dir)


def _check_budget(trials: int, timeout: float | None) -> None:
    """Refuse a trial count or timeout that could not run a study, before anything is opened."""
    if trials < 1:
        raise StudyError(f"--trials must be at least 1; found {trials}")
    if timeout is not None and timeout <= 0:
        raise StudyError(f"--timeout must be a positive number of seconds; found {timeout}")


def _load_space(path: Path, options: TuneOptions, catalog: Catalog) -> tuple[ExperimentConfig, SearchSpace]:
    """The base config and its ``search:`` space; a bad space's message names the file it came from."""
    cfg, raw_search = select_base(path, list(options.sets), catalog)
    try:
        space = parse_search(raw_search if raw_search else None, cfg, catalog)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg, space


def _study_name(study_name: str | None, cfg: ExperimentConfig) -> str:
    """``--study`` or the experiment's name, checked: it becomes a folder name and a storage key."""
    name = study_name or cfg.name
    if not STUDY_NAME.match(name):
        raise StudyError(f"study name {name!r}: use letters, digits, space and _ . + - (at most 120 characters); "
                         "pass --study NAME")
    return name


def _announce_plan(ctx: TuneContext, trials: int) -> None:
    """Say what is optimized, how, and on which seed, and warn when TPE would sample every trial at random."""
    space, cfg, seed, echo = ctx.space, ctx.base_cfg, ctx.seed, ctx.echo
    echo(f"losslab: {', '.join(f'{o.direction} {o.metric}' for o in space.objectives)}; sampler "
         f"{space.sampler_name}, pruner {space.pruner_name}; each trial trains seed {seed}"
         + (f" (the experiment lists seeds {cfg.seeds}; `lab run` on the best config repeats them)"
            if len(cfg.seeds) > 1 else ""))
    if space.sampler_name == "tpe" and (space.sampler.n_startup_trials or 10) >= trials:
        echo(f"losslab: note: TPE samples its first {space.sampler.n_startup_trials or 10} trials at random; "
             f"with --trials {trials} set search.sampler.n_startup_trials lower to let it model")


def _loop_or_close(ctx: TuneContext, trials: int, timeout: float | None) -> tuple[str, bool]:
    """:func:`_loop`, closing the MLflow parent as KILLED on Ctrl-C unless another worker still runs trials."""
    try:
        return _loop(ctx, trials, timeout)
    except KeyboardInterrupt:
        others = running_elsewhere(ctx.study.get_trials(deepcopy=False), ctx.worker)
        if not others:
            ctx.records.close_parent("KILLED")
        raise


def _loop(ctx: TuneContext, trials: int, timeout: float | None) -> tuple[str, bool]:
    """Run trials until the budget is spent (then wait for other workers) or a stop condition.

    Returns why it stopped early ("" when the study has its trials) and whether that is giving up.
    """
    import optuna
    from optuna.trial import TrialState

    study, space = ctx.study, ctx.space
    started = time.monotonic()
    failures_in_a_row = 0
    announced_wait = False
    while True:
        if timeout is not None and time.monotonic() - started >= timeout:
            return f"--timeout {timeout:g} s reached", False
        with quiet_optuna():
            optuna.storages.fail_stale_trials(study)
        all_trials = study.get_trials(deepcopy=False)
        if places_taken(all_trials) >= trials and not waiting(all_trials):
            others = running_elsewhere(all_trials, ctx.worker)
            if not others:
                return "", False
            if not announced_wait:
                ctx.echo(f"losslab: all {trials} trial(s) are claimed; waiting for trial(s) "
                         f"{', '.join(str(t.number) for t in others)} running in other workers "
                         "(a dead worker's trial is retried here)")
                announced_wait = True
            time.sleep(min(2.0, space.heartbeat.interval))
            continue
        announced_wait = False
        with quiet_optuna():
            trial = study.ask()
        ctx.storage.record_heartbeat(trial._trial_id)
        all_trials = study.get_trials(deepcopy=False)
        if places_before(all_trials, trial.number) >= trials:
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.set_user_attr("fail_reason", f"not run: the study's {trials} trial(s) were all claimed by other "
                                               "workers while this one was being created")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr(WORKER_ATTR, ctx.worker)
        frozen = next((t for t in all_trials if t.number == trial.number), None)
        retry_of = frozen.system_attrs.get("failed_trial") if frozen is not None else None
        outcome = run_trial(ctx, trial, retry_of)
        ctx.outcomes.append(outcome)
        failures_in_a_row = failures_in_a_row + 1 if outcome.state == "failed" else 0
        if failures_in_a_row >= space.max_failures_in_a_row:
            return (f"{failures_in_a_row} trials in a row failed in this worker (search.max_failures_in_a_row); "
                    f"the last: {outcome.error}"), True
