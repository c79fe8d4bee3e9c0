"""The cell queue behind ``lab run --jobs`` and ``--storage``: each cell runs once, a dead worker's cell is retried,
a failed cell is final, the report is claimed by exactly one worker once every cell is done."""

from __future__ import annotations

import threading
import time

import pytest
from optuna.trial import TrialState

from losslab.core.experiment.cells import (
    Cell,
    CellStore,
    CellStoreError,
    Claim,
    cells_of,
    work,
)
from losslab.core.experiment.tuning.space import HeartbeatSpec

CELLS = cells_of([("bce", [0, 1]), ("dice", [0, 1, 2])])


def _store(tmp_path, cells=CELLS, **kwargs) -> CellStore:
    return CellStore(f"sqlite:///{tmp_path / 'cells.db'}", "exp", "abc123", cells, **kwargs)


def test_cells_are_variant_major_with_running_indices():
    assert [Cell(0, "bce", 0), Cell(1, "bce", 1), Cell(2, "dice", 0), Cell(3, "dice", 1),
                     Cell(4, "dice", 2)] == CELLS


def test_one_worker_runs_every_cell_once_in_order_then_claims_the_report_once(tmp_path):
    store = _store(tmp_path)
    assert store.created
    seen: list[Cell] = []

    def run(claim: Claim):
        seen.append(claim.cell)
        return {"variant": claim.cell.variant, "seed": claim.cell.seed, "iou": claim.cell.index / 10}, True

    work(store, "w1", run)
    assert seen == CELLS
    assert store.unfinished() == []
    assert {i: r["iou"] for i, r in store.results().items()} == {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    report = store.claim_report("w1")
    assert report is not None and report.cell.index == -1
    assert store.claim_report("w1") is None and _store(tmp_path).claim_report("w2") is None


def test_workers_share_the_cells_and_none_runs_twice(tmp_path):
    """Four workers race for 20 short cells on one SQLite file (without BEGIN IMMEDIATE, several ran twice)."""
    cells = cells_of([("a", list(range(10))), ("b", list(range(10)))])
    _store(tmp_path, cells)  # the creator queues the cells
    ran: dict[str, list[int]] = {str(n): [] for n in range(4)}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            store = _store(tmp_path, cells)
            assert not store.created

            def run(claim: Claim):
                ran[name].append(claim.cell.index)
                time.sleep(0.01)
                return {}, True

            work(store, name, run, poll=0.01)
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ran]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    everything = sorted(i for indices in ran.values() for i in indices)
    assert everything == list(range(20)), ran            # each exactly once
    assert sum(bool(v) for v in ran.values()) >= 2, ran  # shared, not one worker alone
    winners = [_store(tmp_path, cells).claim_report(n) for n in ran]
    assert sum(w is not None for w in winners) == 1


def test_the_report_waits_until_every_cell_is_finished(tmp_path):
    store = _store(tmp_path)
    claim = store.claim("w")
    assert claim is not None and store.claim_report("w") is None
    store.finish(claim, {}, ok=True)
    work(store, "w", lambda c: ({}, True))
    assert store.claim_report("w") is not None


def test_a_dead_workers_cell_is_retried_by_a_live_one_and_a_failed_cell_is_final(tmp_path):
    hb = HeartbeatSpec(interval=1, grace=2, max_retry=2)
    stale: list[tuple[int, Cell]] = []
    ghost = _store(tmp_path, heartbeat=hb)
    dead = ghost.claim("ghost")                     # claimed, one beat, then the worker died
    assert dead is not None and dead.cell == CELLS[0]
    ghost.storage.record_heartbeat(dead.trial_id)
    time.sleep(2.5)

    live = _store(tmp_path, heartbeat=hb, on_stale=lambda number, cell: stale.append((number, cell)))
    runs: list[Claim] = []

    def run(claim: Claim):
        runs.append(claim)
        return {"index": claim.cell.index}, claim.cell.index != 3   # cell 3 fails for good

    work(live, "live", run, poll=0.05)
    assert stale == [(dead.number, CELLS[0])]
    retried = [c for c in runs if c.cell == CELLS[0]]
    assert len(retried) == 1 and retried[0].retry_of == dead.number
    assert sorted(c.cell.index for c in runs) == [0, 1, 2, 3, 4]     # cell 3 ran once: failures are not retried
    trials = live.study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL
    assert [t.state for t in live._live() if live._index(t) == 3] == [TrialState.FAIL]
    assert set(live.results()) == {0, 1, 2, 3, 4}


def test_an_interrupted_worker_gives_its_cell_back(tmp_path):
    store = _store(tmp_path)

    def run(claim: Claim):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work(store, "w", run)
    assert sorted(store.unfinished(), key=lambda c: c.index) == CELLS   # cell 0 is queued again, unrun
    again = work(store, "w2", lambda claim: ({}, True))
    assert sorted(c.cell.index for c in again) == [0, 1, 2, 3, 4]


def test_workers_with_other_cells_are_refused(tmp_path):
    _store(tmp_path)
    with pytest.raises(CellStoreError, match="holds other cells"):
        _store(tmp_path, cells=cells_of([("bce", [0, 1, 2])]))


def test_the_parent_run_id_is_shared_through_the_store(tmp_path):
    creator = _store(tmp_path)
    joiner = _store(tmp_path)
    threading.Timer(0.3, lambda: creator.set_parent("run123")).start()
    assert joiner.wait_for_parent(timeout=10) == "run123"
