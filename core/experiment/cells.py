"""A study's cells (variant x seed) as a work queue in a shared store: ``lab run --jobs N`` and ``--storage URL``.

The store is Optuna's RDB storage, the engine ``lab tune`` already stands on. Why it, and not a queue of our own:

- it speaks every SQLAlchemy database: SQLite for the processes of one machine, PostgreSQL or MySQL for many;
- claiming a waiting trial is one row update under ``SELECT ... FOR UPDATE`` that succeeds for one worker only,
  so no two workers ever train the same cell;
- it has heartbeats: a worker that dies stops beating, ``fail_stale_trials`` fails its trial once the grace period
  has passed, and Optuna's ``RetryFailedTrialCallback`` queues a copy with the same parameters, which the next
  worker that looks claims.

What the store holds, one Optuna study per run of an experiment (named from the experiment and its config hash,
so every worker started on the same file and ``--set`` values joins the same one):

- one trial per cell, queued by whoever created the study, with the fixed parameter ``cell`` (the cell's index in
  variant-major order) and the variant and seed as user attributes;
- one ``report`` trial (cell -1), claimable only once every cell is finished, so exactly one worker, the last to
  finish, builds the summary and the report;
- the MLflow parent run's id, as a study user attribute written by the study's creator.

A cell whose training fails (a bad config, a NaN) is told FAIL with the result attached: that is final, since the
same cell would fail the same way again. Only a dead worker's cell is retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from losslab.core import names
from losslab.core.experiment.tuning.space import HeartbeatSpec
from losslab.core.experiment.tuning.study import Heartbeat, StaleTrialHandler, open_storage, quiet_optuna

CELL_PARAM = "cell"
REPORT_CELL = -1
PARENT_ATTR = names.CELL_PARENT_ATTR
RESULT_ATTR = names.CELL_RESULT_ATTR
VARIANT_ATTR = names.VARIANT_TAG
SEED_ATTR = names.SEED_TAG
WORKER_ATTR = names.WORKER_ATTR


class CellStoreError(Exception):
    """The shared store cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Cell:
    """One (variant, seed) of a study; ``index`` is its place in variant-major order."""

    index: int
    variant: str
    seed: int


@dataclass(frozen=True)
class Claim:
    """A cell this worker holds: the trial behind it, and the trial it retries (a dead worker's), if any."""

    cell: Cell
    trial_id: int
    number: int
    retry_of: int | None


def label(cell: Cell) -> str:
    """How a cell is named to people and in MLflow: ``<variant>-s<seed>``."""
    return f"{cell.variant}-s{cell.seed}"


def study_name(experiment: str, config_hash: str) -> str:
    return f"run:{experiment}:{config_hash}"


class CellStore:
    """The cells of one run of an experiment in an Optuna RDB storage; see the module docstring."""

    def __init__(self, url: str, experiment: str, config_hash: str, cells: Sequence[Cell], *,
                 heartbeat: HeartbeatSpec | None = None, on_stale: Callable[[int, Cell], None] | None = None,
                 ) -> None:
        import optuna

        self.cells = list(cells)
        self.heartbeat = heartbeat or HeartbeatSpec()
        handler = StaleTrialHandler(self.heartbeat.max_retry)
        if on_stale is not None:
            handler.on_stale = lambda _study, trial: on_stale(trial.number, self._cell_of(trial))
        self.storage = open_storage(url, self.heartbeat, handler)
        if url.startswith("sqlite"):
            _serialize_sqlite(self.storage)
        self.name = study_name(experiment, config_hash)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            self.study = optuna.create_study(storage=self.storage, study_name=self.name, direction="maximize")
            self.created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(storage=self.storage, study_name=self.name)
            self.created = False
        if self.created:
            with quiet_optuna():
                for cell in self.cells:
                    self.study.enqueue_trial({CELL_PARAM: cell.index},
                                             user_attrs={VARIANT_ATTR: cell.variant, SEED_ATTR: cell.seed})
                self.study.enqueue_trial({CELL_PARAM: REPORT_CELL}, user_attrs={VARIANT_ATTR: "", SEED_ATTR: -1})
        self._check_cells()

    # -- reading -------------------------------------------------------------------------------------

    def _trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    @staticmethod
    def _index(trial: Any) -> int:
        fixed = trial.system_attrs.get("fixed_params", {})
        return int(fixed.get(CELL_PARAM, trial.params.get(CELL_PARAM, -2)))

    def _cell_of(self, trial: Any) -> Cell:
        index = self._index(trial)
        return self.cells[index] if 0 <= index < len(self.cells) else Cell(index, "", -1)

    def _check_cells(self) -> None:
        """Every worker must agree on the cells: the same experiment and ``--set`` values give the same list."""
        queued = {}
        for trial in self._trials():
            index = self._index(trial)
            if index >= 0:
                queued[index] = (trial.user_attrs.get(VARIANT_ATTR), trial.user_attrs.get(SEED_ATTR))
        mine = {c.index: (c.variant, c.seed) for c in self.cells}
        if queued and queued != mine:
            raise CellStoreError(f"study {self.name!r} in this storage holds other cells than this experiment's "
                                 f"({sorted(queued.values())} against {sorted(mine.values())}); start every worker "
                                 "with the same experiment file and --set values")

    def _live(self) -> list[Any]:
        """The trial that currently stands for each cell: the last one made for it (a retry replaces a dead one)."""
        last: dict[int, Any] = {}
        for trial in self._trials():
            last[self._index(trial)] = trial
        return [last[i] for i in sorted(last)]

    def unfinished(self) -> list[Cell]:
        return [self._cell_of(t) for t in self._live() if self._index(t) >= 0 and not t.state.is_finished()]

    def results(self) -> dict[int, dict[str, Any]]:
        """Each finished cell's recorded result (what ``finish`` stored), by cell index."""
        out: dict[int, dict[str, Any]] = {}
        for trial in self._live():
            index = self._index(trial)
            if index >= 0 and RESULT_ATTR in trial.user_attrs:
                out[index] = json.loads(trial.user_attrs[RESULT_ATTR])
        return out

    def report_done(self) -> bool:
        """Whether some worker already built this study's report (the study is complete)."""
        return any(self._index(t) == REPORT_CELL and t.state.name == "COMPLETE" for t in self._live())

    # -- the parent run ------------------------------------------------------------------------------

    def set_parent(self, run_id: str) -> None:
        self.study.set_user_attr(PARENT_ATTR, run_id)

    def wait_for_parent(self, timeout: float = 120.0) -> str:
        """The MLflow parent run id, which the study's creator writes right after creating the study."""
        deadline = time.monotonic() + timeout
        while True:
            import optuna

            found = optuna.load_study(storage=self.storage, study_name=self.name).user_attrs.get(PARENT_ATTR)
            if found:
                return str(found)
            if time.monotonic() > deadline:
                raise CellStoreError(f"study {self.name!r}: the worker that created it wrote no MLflow parent run "
                                     f"within {timeout:.0f} s (it may have died while starting); delete the study "
                                     "or start again with a new --storage")
            time.sleep(0.5)

    # -- claiming ------------------------------------------------------------------------------------

    def fail_stale(self) -> None:
        """Fail the trials of workers whose heartbeats stopped; the retry callback queues each again."""
        import optuna

        with quiet_optuna():
            optuna.storages.fail_stale_trials(self.study)

    def _claim(self, want_report: bool, index: int | None = None) -> Claim | None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for trial in self.storage.get_all_trials(self.study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if (self._index(trial) == REPORT_CELL) != want_report or index not in (None, self._index(trial)):
                continue
            try:
                if not self.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    continue  # another worker was quicker
            except UpdateFinishedTrialError:
                continue
            retry = trial.system_attrs.get("failed_trial")
            return Claim(self._cell_of(trial), trial._trial_id, trial.number, None if retry is None else int(retry))
        return None

    def claim(self, worker: str) -> Claim | None:
        """A waiting cell for ``worker``, or None when none waits (they may still be running elsewhere)."""
        claim = self._claim(want_report=False)
        if claim is not None:
            self.storage.set_trial_user_attr(claim.trial_id, WORKER_ATTR, worker)
        return claim

    def claim_cell(self, index: int, worker: str) -> Claim | None:
        """Cell ``index`` if it still waits (e.g. to record a resumed run's finished child without training it)."""
        claim = self._claim(want_report=False, index=index)
        if claim is not None:
            self.storage.set_trial_user_attr(claim.trial_id, WORKER_ATTR, worker)
        return claim

    def claim_report(self, worker: str) -> Claim | None:
        """The report, for the one worker that asks once every cell is finished; None for everyone else."""
        if self.unfinished():
            return None
        claim = self._claim(want_report=True)
        if claim is not None:
            self.storage.set_trial_user_attr(claim.trial_id, WORKER_ATTR, worker)
        return claim

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        """Heartbeats for ``claim`` while the body runs, so the others see this worker is alive."""
        with Heartbeat(self.storage, claim.trial_id, self.heartbeat.interval):
            yield

    def finish(self, claim: Claim, result: dict[str, Any], ok: bool) -> None:
        """Record the cell's result (plain JSON) and close its trial: COMPLETE when it trained, FAIL when not."""
        from optuna.trial import TrialState

        self.storage.set_trial_user_attr(claim.trial_id, RESULT_ATTR, json.dumps(result, default=str))
        if ok:
            self.storage.set_trial_state_values(claim.trial_id, state=TrialState.COMPLETE, values=[0.0])
        else:
            self.storage.set_trial_state_values(claim.trial_id, state=TrialState.FAIL)

    def release(self, claim: Claim) -> None:
        """Give a claimed cell back unrun (this worker was interrupted): fail it and queue it again at once."""
        from optuna.trial import TrialState

        frozen = self.storage.get_trial(claim.trial_id)
        self.storage.set_trial_state_values(claim.trial_id, state=TrialState.FAIL)
        with quiet_optuna():
            self.study.enqueue_trial({CELL_PARAM: claim.cell.index}, user_attrs={
                VARIANT_ATTR: frozen.user_attrs.get(VARIANT_ATTR), SEED_ATTR: frozen.user_attrs.get(SEED_ATTR)})


def _serialize_sqlite(storage: Any) -> None:
    """Make each SQLite transaction take the write lock when it begins (``BEGIN IMMEDIATE``).

    Claiming a cell reads its state and then updates it. On PostgreSQL and MySQL the read is ``SELECT ... FOR
    UPDATE`` and locks the row; SQLite ignores ``FOR UPDATE``, and Python's sqlite3 driver starts the transaction
    only at the update, so two processes can both read WAITING and both claim the cell. With the driver's own
    transaction handling off and ``BEGIN IMMEDIATE`` at every begin (SQLAlchemy's documented recipe for pysqlite),
    the read and the update happen under one lock and the claim is atomic.
    """
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections were opened before the listeners


def work(store: CellStore, worker: str, run_cell: Callable[[Claim], tuple[dict[str, Any], bool]],
         on_wait: Callable[[list[Cell]], None] | None = None, poll: float | None = None) -> list[Claim]:
    """Claim and run cells until none is left unfinished anywhere; returns the claims this worker ran.

    While cells run on other workers it waits (checking for dead workers, whose cells it then takes), so a
    study finishes as long as one worker lives.
    """
    poll = min(2.0, float(store.heartbeat.interval)) if poll is None else poll
    ran: list[Claim] = []
    announced = False
    while True:
        store.fail_stale()
        claim = store.claim(worker)
        if claim is not None:
            announced = False
            try:
                with store.holding(claim):
                    result, ok = run_cell(claim)
            except BaseException:
                store.release(claim)
                raise
            store.finish(claim, result, ok)
            ran.append(claim)
            continue
        left = store.unfinished()
        if not left:
            return ran
        if on_wait is not None and not announced:
            on_wait(left)
            announced = True
        time.sleep(poll)


def cells_of(variants: Sequence[tuple[str, Sequence[int]]]) -> list[Cell]:
    """Every (variant, seed) in variant-major order, the order a sequential ``lab run`` trains them."""
    pairs = [(variant, seed) for variant, seeds in variants for seed in seeds]
    return [Cell(i, variant, seed) for i, (variant, seed) in enumerate(pairs)]


def as_json(cell: Cell) -> dict[str, Any]:
    return asdict(cell)
