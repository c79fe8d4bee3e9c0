"""``lab run --jobs N`` and ``lab run --storage URL``: a study's (variant, seed) cells trained by workers that
claim them from one queue (:mod:`losslab.core.experiment.cells`, Optuna's RDB storage with heartbeats).

Two shapes, one code path:

- ``--jobs N`` on one machine: this process (the host) opens the MLflow parent run and a fresh SQLite queue in
  the run's folder, spawns N worker processes (:mod:`losslab.core.experiment.worker_pool`: each with
  ``cores // N`` torch threads and, on CUDA, its own GPU), measures the floors while they train, shows one
  progress display fed by the workers through a pipe, and builds the table, the verdict and the report once.
  ``--resume`` works as without ``--jobs``: the host finds the unfinished parent, and the workers skip its
  finished children and continue the others from their checkpoints.
- ``--storage URL`` on several machines: every process started with the same experiment, ``--set`` values and
  URL joins the same study (named from the experiment and its config hash). The first one creates the MLflow
  parent; each claims unclaimed cells; a dead worker's cell is retried, from its checkpoint where the run folder
  is shared, once its heartbeats stop; the last one to finish builds the report. With ``--jobs N`` as well, this
  machine's N workers join that shared study.

A cell whose training raises is recorded as failed (its run FAILED, the error kept) and the others go on, so a
worker's error never hangs the host; a worker process that dies leaves its cell to the heartbeats, and once no
worker is left the host ends the study with the untrained cells named.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from losslab.core import names
from losslab.core.config import ConfigError, ExperimentConfig
from losslab.core.experiment.cells import Cell, CellStore, CellStoreError, Claim, cells_of, label, work
from losslab.core.experiment.floors import study_floors
from losslab.core.experiment.runner import (
    ChildResult,
    ExperimentResult,
    Previous,
    _end_parent,
    _fail_run,
    _log_summary,
    _open_parent,
    _previous_children,
    _run_child,
    check_data,
    config_hash,
)
from losslab.core.experiment.tuning.space import HeartbeatSpec
from losslab.core.experiment.worker_pool import MSG_DONE, MSG_ECHO, MSG_EPOCH, MSG_START, host_workers
from losslab.core.paths import safe_join
from losslab.core.plugin.registry import Catalog

Echo = Callable[[str], None]
Finish = Callable[[ExperimentResult, Path, str], None]

CELLS_FILE = "cells.db"  # the queue of ``--jobs N`` without ``--storage``, in the parent run's folder


@dataclass(frozen=True)
class CellJob:
    """What every worker of one study needs, in one picklable value (workers are spawned processes)."""

    configs: list[ExperimentConfig]
    digest: str
    store_url: str
    heartbeat: HeartbeatSpec
    tracking_uri: str
    parent_id: str
    root: Path
    resume: bool
    existing: dict[tuple[str, int], Previous]

    @property
    def name(self) -> str:
        return self.configs[0].name

    def cells(self) -> list[Cell]:
        return cells_of([(c.variant, c.seeds) for c in self.configs])

    def config(self, variant: str) -> ExperimentConfig:
        return next(c for c in self.configs if c.variant == variant)

    def epochs(self, cell: Cell) -> int:
        return self.config(cell.variant).train.epochs

    def open_store(self, on_stale: Callable[[int, Cell], None] | None = None) -> CellStore:
        return CellStore(self.store_url, self.name, self.digest, self.cells(), heartbeat=self.heartbeat,
                         on_stale=on_stale)


def heartbeat_of(configs: list[ExperimentConfig]) -> HeartbeatSpec:
    """The cells' heartbeats: the experiment's ``search.heartbeat`` (the block ``lab tune`` reads), else defaults."""
    from pydantic import ValidationError

    raw = (configs[0].search or {}).get("heartbeat")
    if raw is None:
        return HeartbeatSpec()
    try:
        return HeartbeatSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"search.heartbeat: {problems} (expected interval, grace and max_retry in seconds "
                          "and times, e.g. {interval: 10, grace: 60, max_retry: 2})") from None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_study(path: Path, sets: list[str], *, tracking_uri: str | None = None, resume: bool = False,
              runs_dir: Path = Path("lab-runs"), catalog: Catalog | None = None, echo: Echo = _stderr,
              finish: Finish | None = None, jobs: int = 1, storage: str | None = None) -> ExperimentResult:
    """``lab run --jobs N`` / ``--storage URL``: the experiment validated as ``run_experiment`` does, its cells
    trained by workers (:func:`run_cells`)."""
    from losslab.core.config import load_experiment
    from losslab.core.paths import check_out_dir
    from losslab.core.plugin.manager import load_catalog

    catalog = catalog or load_catalog()
    configs = load_experiment(Path(path), sets, catalog)
    check_data(configs)
    check_out_dir(runs_dir, "--runs-dir")
    return run_cells(configs, config_hash(configs), tracking_uri=tracking_uri, resume=resume, runs_dir=runs_dir,
                     catalog=catalog, echo=echo, finish=finish, jobs=jobs, storage=storage)


def run_cells(configs: list[ExperimentConfig], digest: str, *, tracking_uri: str | None, resume: bool,
              runs_dir: Path, catalog: Catalog, echo: Echo, finish: Finish | None, jobs: int,
              storage: str | None) -> ExperimentResult:
    """Train the study's cells on ``jobs`` workers from the queue at ``storage`` (a fresh local one if None)."""
    from losslab.core.experiment.tracking import Tracker
    from losslab.core.experiment.tuning.study import normalize_storage, public_storage

    tracker = Tracker(tracking_uri)
    heartbeat = heartbeat_of(configs)
    name = configs[0].name
    cells = cells_of([(c.variant, c.seeds) for c in configs])
    local = storage is None
    if storage is None:
        parent_id, existing = _open_parent(tracker, configs, digest, resume, True, None, echo)
        url = f"sqlite:///{_fresh_queue(safe_join(runs_dir, name, parent_id)).resolve()}"
        store = _open(url, name, digest, cells, heartbeat)
    else:
        url = normalize_storage(storage)
        store = _open(url, name, digest, cells, heartbeat)
        if store.created:
            parent_id, existing = _open_parent(tracker, configs, digest, resume, True, None, echo)
            tracker.set_tags(parent_id, {names.STORAGE_TAG: public_storage(url), names.STUDY_TAG: store.name})
            store.set_parent(parent_id)
        else:
            parent_id, existing = _wait_for_parent(store), {}
        left = len(store.unfinished())
        echo(f"losslab: study {store.name!r} in {public_storage(url)} ({'created' if store.created else 'joined'}, "
             f"{left} of {len(cells)} cell(s) left); MLflow parent run {parent_id} in {tracker.uri}")
        if store.report_done():
            echo("losslab: this study is already complete (every cell trained, its report built); to train the "
                 "experiment again, give another --storage database or change the config")
            return ExperimentResult(name, parent_id, configs[0].train.monitor, configs[0].train.monitor_mode,
                                    is_main=False)
    job = CellJob(configs, digest, url, heartbeat, tracker.uri, parent_id, safe_join(runs_dir, name, parent_id),
                  resume, existing)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    _record_finished(job, store, worker, echo)
    workers = min(jobs, len(store.unfinished())) if jobs > 1 else jobs  # no more processes than cells to train
    floors: list[Any] = []
    try:
        if workers == 0:
            pass  # every cell had finished before (--resume): nothing to train, the report is built below
        elif workers == 1:
            store = job.open_store(stale_echo(job, echo))
            work(store, worker, lambda claim: run_cell(job, claim, tracker, catalog, echo),
                 on_wait=lambda left: echo(f"losslab: waiting for {len(left)} cell(s) running on other workers: "
                                           + ", ".join(label(c) for c in left)))
        else:
            def measure() -> None:  # the host's own work while the workers train: the floors, once
                floors.append(study_floors(configs, catalog, tracker, parent_id, echo))

            host_workers(job, workers, echo, worker_main, measure if local else None)
    except KeyboardInterrupt:
        if local:
            tracker.end_run(parent_id, "KILLED")
            echo(f"losslab: interrupted; continue with `lab run ... --jobs {jobs} --resume` (parent run {parent_id})")
        else:
            echo("losslab: interrupted; this worker's cell is queued again for the other workers")
        raise
    except Exception as exc:
        if local:
            _fail_run(tracker, parent_id, exc)
        raise
    return conclude(job, job.open_store(), tracker, catalog, echo, finish, worker, floors, local)


def _record_finished(job: CellJob, store: CellStore, worker: str, echo: Echo) -> None:
    """Mark the cells a resumed parent already finished as done in the queue, so no worker is started for them."""
    for cell in job.cells():
        previous = job.existing.get((cell.variant, cell.seed))
        if previous is None or previous.status != "FINISHED":
            continue
        claim = store.claim_cell(cell.index, worker)
        if claim is not None:
            echo(f"losslab: {label(cell)}: already finished in run {previous.run_id}; skipped")
            store.finish(claim, asdict(ChildResult(cell.variant, cell.seed, previous.run_id,
                                                   dict(previous.metrics))), True)


def _open(url: str, name: str, digest: str, cells: list[Cell], heartbeat: HeartbeatSpec) -> CellStore:
    from losslab.core.experiment.tuning.study import StudyError

    try:
        return CellStore(url, name, digest, cells, heartbeat=heartbeat)
    except StudyError as exc:
        raise ConfigError(str(exc)) from None
    except CellStoreError as exc:
        raise ConfigError(f"--storage: {exc}") from None


def _wait_for_parent(store: CellStore) -> str:
    try:
        return store.wait_for_parent()
    except CellStoreError as exc:
        raise ConfigError(f"--storage: {exc}") from None


def _fresh_queue(root: Path) -> Path:
    """The local queue's file, emptied: each ``lab run --jobs`` queues every cell anew (a resumed run's finished
    children are skipped by the workers, from MLflow), so a queue left by a killed run never holds it back."""
    root.mkdir(parents=True, exist_ok=True)
    db = root / CELLS_FILE
    for leftover in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    return db


def stale_echo(job: CellJob, echo: Echo) -> Callable[[int, Cell], None]:
    grace = job.heartbeat.grace

    def on_stale(number: int, cell: Cell) -> None:
        echo(f"losslab: cell {label(cell)} (trial {number}): its worker sent no heartbeat for {grace} s; "
             "queued again for the next free worker")

    return on_stale


def run_cell(job: CellJob, claim: Claim, tracker: Any, catalog: Catalog, echo: Echo, *, quiet: bool = False,
             watch: Callable[[int], None] | None = None) -> tuple[dict[str, Any], bool]:
    """Train one claimed cell as the parent's child run; returns its result (plain JSON) and whether it trained.

    A retried cell (its first worker died) reuses that worker's child run and continues from its checkpoint
    where the run folder holds one. Any error becomes a failed result, so the worker goes on to the next cell.
    """
    cell = claim.cell
    cfg = job.config(cell.variant)
    key = (cell.variant, cell.seed)
    existing, resume = job.existing.get(key), job.resume
    if claim.retry_of is not None:
        existing = _previous_children(tracker, job.name, job.parent_id).get(key, existing)
        resume = True
        echo(f"losslab: {label(cell)}: retried (trial {claim.retry_of}'s worker died); continuing its run "
             "from its last checkpoint where there is one")
    try:
        child = _run_child(cfg, cell.seed, tracker, job.parent_id, existing, job.root, catalog, resume, echo,
                           quiet=quiet, watch=watch)
    except Exception as exc:  # already ended FAILED in MLflow by _run_child; the study goes on
        child = ChildResult(cell.variant, cell.seed, "", {}, status="failed", error=f"{type(exc).__name__}: {exc}")
        echo(f"losslab: {label(cell)} failed: {child.error}")
    return asdict(child), child.status == "finished"


def conclude(job: CellJob, store: CellStore, tracker: Any, catalog: Catalog, echo: Echo, finish: Finish | None,
             worker: str, floors: list[Any], local: bool) -> ExperimentResult:
    """The table, the verdict and the report, built once: by the host of a local run, else by the one worker
    that claims the report (the last to finish). Everyone else gets a result with ``is_main`` False."""
    first = job.configs[0]
    claim = None if local else store.claim_report(worker)
    if not local and claim is None:
        left = store.unfinished()
        if left:
            echo(f"losslab: this machine's workers stopped with {len(left)} cell(s) unfinished "
                 f"({', '.join(label(c) for c in left)}); start a worker with the same command to train them")
        else:
            echo(f"losslab: every cell is done; the report is built by the worker that finished last "
                 f"(MLflow parent run {job.parent_id})")
        return ExperimentResult(job.name, job.parent_id, first.train.monitor, first.train.monitor_mode, is_main=False)
    result = ExperimentResult(job.name, job.parent_id, first.train.monitor, first.train.monitor_mode)
    done = store.results()
    for cell in job.cells():
        if cell.index in done:
            result.children.append(ChildResult(**done[cell.index]))
        else:
            result.children.append(ChildResult(
                cell.variant, cell.seed, "", {}, status="failed", resumable=True,
                error="not trained: every worker stopped before it (see above); rerun with --resume to train it"))
    try:
        with store.holding(claim) if claim is not None else nullcontext():
            measured = floors[0] if floors else study_floors(job.configs, catalog, tracker, job.parent_id, echo)
            _log_summary(result, measured, job.configs, tracker)
            if finish is not None:
                finish(result, job.root, tracker.uri)
            _end_parent(result, tracker)
    except BaseException as exc:
        if claim is not None:
            store.release(claim)  # another worker may build it
        elif isinstance(exc, Exception):
            _fail_run(tracker, job.parent_id, exc)
        raise
    if claim is not None:
        store.finish(claim, {"parent_run_id": job.parent_id, "worker": worker}, True)
    return result


# -- the host and its worker processes -----------------------------------------------------------------


def worker_main(job: CellJob, rank: int, env: dict[str, str], threads: int, messages: Any) -> None:
    """A spawned worker: claim and train cells until none is left, telling the host through ``messages``."""
    os.environ.update(env)  # before torch starts its thread pools or sees the GPUs
    import torch

    from losslab.core.experiment.tracking import Tracker
    from losslab.core.plugin.manager import load_catalog

    torch.set_num_threads(threads)

    def echo(text: str) -> None:
        messages.put((MSG_ECHO, rank, text))

    try:
        store = job.open_store(stale_echo(job, echo))
        tracker = Tracker(job.tracking_uri)
        catalog = load_catalog()

        def run(claim: Claim) -> tuple[dict[str, Any], bool]:
            run_label = label(claim.cell)
            messages.put((MSG_START, rank, run_label))
            out = run_cell(job, claim, tracker, catalog, echo, quiet=True,
                           watch=lambda step: messages.put((MSG_EPOCH, rank, run_label, step)))
            messages.put((MSG_DONE, rank, run_label))
            return out

        work(store, f"{socket.gethostname()}:{os.getpid()}:{rank}", run)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:  # the host names the worker; the message says what stopped it
        echo(f"losslab: worker {rank} stopped: {type(exc).__name__}: {exc}")
        sys.exit(1)
