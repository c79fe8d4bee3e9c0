"""The MLflow side of a study: one parent run per study, one nested run per trial.

The parent is found again by its tags (``losslab.study`` and
``losslab.storage``), so a resumed study, or a second worker of the same
study, logs under the same parent. Workers that start together may each
create one; every worker then keeps the oldest (by start time, then run id)
and a worker whose own parent lost deletes it, so one parent remains.
The layout is the contract in ``docs/tracking.md`` ("Tune studies").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from losslab.core import names
from losslab.core.config import ExperimentConfig, dump_yaml
from losslab.core.experiment.tuning.space import SearchSpace
from losslab.core.experiment.tuning.study import RUN_ATTR

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from losslab.core.experiment.tracking import Tracker


class StudyRecords:
    """Parent and trial runs of one study in one MLflow store."""

    def __init__(self, tracker: Tracker, experiment: str, study: str, storage: str, space: SearchSpace,
                 base: ExperimentConfig, seed: int) -> None:
        self.tracker, self.experiment, self.study, self.storage = tracker, experiment, study, storage
        self.space, self.base, self.seed = space, base, seed
        self.parent_id = ""

    # -- the parent ----------------------------------------------------------------------------------

    def _parents(self) -> list[Any]:
        runs = self.tracker.find_runs(self.experiment, f"tags.`{names.ROLE_TAG}` = '{names.ROLE_PARENT}' and "
                                                       f"tags.`{names.KIND_TAG}` = '{names.KIND_TUNE}'")
        mine = [r for r in runs if r.data.tags.get(names.STUDY_TAG) == self.study
                and r.data.tags.get(names.STORAGE_TAG) == self.storage]
        return sorted(mine, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def open_parent(self, trials: int) -> tuple[str, bool]:
        """The study's parent run id (created or re-used) and whether it existed before."""
        from losslab.core.experiment.tracking import version_tags

        found = self._parents()
        existed = bool(found)
        if not found:
            tags = {
                names.ROLE_TAG: names.ROLE_PARENT, names.KIND_TAG: names.KIND_TUNE, names.STUDY_TAG: self.study,
                names.STORAGE_TAG: self.storage, names.DIRECTIONS_TAG: json.dumps(self.space.directions),
                names.OBJECTIVES_TAG: json.dumps(self.space.metrics), names.SEEDS_TAG: json.dumps([self.seed]),
                names.VARIANTS_TAG: json.dumps([]), **version_tags(),
            }
            created = self.tracker.start_run(self.experiment, f"tune-{self.study}", tags)
            found = self._parents()
            winner = found[0].info.run_id if found else created
            if winner != created:
                self.tracker.client.delete_run(created)
            else:
                self._describe(created)
        else:
            winner = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.tracker.reopen(winner)
        self.parent_id = winner
        self.tracker.set_tags(winner, {names.TRIALS_TARGET_TAG: trials})
        return winner, existed

    def _describe(self, run_id: str) -> None:
        s = self.space
        params: dict[str, Any] = {f"search.{p.key}": p.describe()[:500] for p in s.params}
        params.update({"search.sampler": s.sampler_name, "search.pruner": s.pruner_name,
                       "search.objectives": json.dumps(s.metrics), "search.directions": json.dumps(s.directions)})
        self.tracker.log_params(run_id, params)
        self.tracker.log_text(run_id, dump_yaml(self.base), names.CONFIG_FILE)

    def close_parent(self, status: str) -> None:
        if self.parent_id:
            self.tracker.end_run(self.parent_id, status)

    # -- trials --------------------------------------------------------------------------------------

    def start_trial(self, number: int, shown: dict[str, Any], retry_of: int | None) -> str:
        tags = {names.ROLE_TAG: names.ROLE_TRIAL, names.KIND_TAG: names.KIND_TUNE, names.STUDY_TAG: self.study,
                names.TRIAL_TAG: str(number), names.TRIAL_STATE_TAG: "running", names.SEED_TAG: str(self.seed)}
        if retry_of is not None:
            tags[names.RETRY_OF_TAG] = str(retry_of)
        run_id = self.tracker.start_run(self.experiment, f"trial-{number}", tags, parent_id=self.parent_id)
        self.tracker.log_params(run_id, {k: _param_value(v) for k, v in shown.items()})
        return run_id

    def log_config(self, run_id: str, cfg: ExperimentConfig) -> None:
        self.tracker.log_text(run_id, dump_yaml(cfg), names.CONFIG_FILE)

    def finish_trial(self, run_id: str, state: str, values: list[float] | None, best: dict[str, float],
                     total_s: float, error: str = "", below_floor: list[str] | None = None) -> None:
        metrics: dict[str, float] = {f"{names.BEST_PREFIX}{k}": v for k, v in best.items() if _finite(v)}
        if values is not None:
            if len(values) == 1:
                metrics[names.OBJECTIVE_METRIC] = values[0]
            else:
                metrics.update({f"{names.OBJECTIVE_METRIC}/{i}": v for i, v in enumerate(values)})
        metrics = {k: v for k, v in metrics.items() if _finite(v)}
        metrics[names.TOTAL_TIME] = total_s
        self.tracker.log_metrics(run_id, metrics, step=0)
        tags = {names.TRIAL_STATE_TAG: state, names.STATUS_TAG: "finished" if state != "failed" else "failed"}
        if error:
            tags[names.ERROR_TAG if state == "failed" else names.NOTE_TAG] = error[:5000]
        if below_floor is not None:  # judged against the study's floors: the tasks below, comma-separated
            tags[names.BELOW_FLOOR_TAG] = ",".join(below_floor)
        self.tracker.set_tags(run_id, tags)
        self.tracker.end_run(run_id, "FAILED" if state == "failed" else "FINISHED")

    def kill_trial(self, run_id: str, reason: str) -> None:
        self.tracker.set_tags(run_id, {names.TRIAL_STATE_TAG: "failed", names.STATUS_TAG: "failed",
                                       names.ERROR_TAG: reason})
        self.tracker.end_run(run_id, "KILLED")

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(run_id, path, artifact_path)

    def on_stale(self, study: Any, trial: FrozenTrial, grace: int) -> str:
        """Close the MLflow run of a trial whose worker died; return the message it records."""
        worker = trial.user_attrs.get(names.WORKER_ATTR, "unknown")
        reason = (f"worker {worker} sent no heartbeat for more than {grace} s (killed or lost); the trial "
                  "is queued again with the same parameters")
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            self.tracker.set_tags(run_id, {names.TRIAL_STATE_TAG: "failed", names.STATUS_TAG: "failed",
                                           names.ERROR_TAG: reason})
            self.tracker.end_run(run_id, "FAILED")
        return reason


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(float(value))


def _param_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

