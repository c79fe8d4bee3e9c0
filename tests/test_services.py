"""One tune study on several workers, on real services: PostgreSQL holds Optuna's storage and the MLflow server's
runs, an ``mlflow server`` process on 127.0.0.1 is the tracking URI, and each worker is a real ``lab tune`` process.

Skipped, with the reason, only where PostgreSQL cannot be installed or started (see ``tests/servers.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from losslab.core.config import deep_merge
from losslab.core.experiment.tuning.study import WORKER_ATTR
from tests.conftest import TINY
from tests.servers import Postgres, postgres, start_mlflow_server, stop  # noqa: F401  (postgres: a fixture)

pytestmark = pytest.mark.slow

SEARCH = {
    "params": {"loss.mask.0.weight": {"low": 0.1, "high": 10.0, "log": True},
               "loss.depth.0.weight": {"low": 0.1, "high": 10.0, "log": True}},
    "sampler": {"n_startup_trials": 2},
    "pruner": {"name": "none"},
    "heartbeat": {"interval": 1, "grace": 4, "max_retry": 2},
}


def _experiment(path: Path, epochs: int) -> Path:
    raw = deep_merge(TINY, {"name": "svc", "train": {"epochs": epochs}})
    raw["search"] = SEARCH
    path.write_text(yaml.safe_dump(raw))
    return path


def _worker(exp: Path, trials: int, storage: str, uri: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "losslab.core.cli.main", "tune", str(exp), "--trials", str(trials),
                             "--storage", storage, "--tracking-uri", uri, "--no-report"],
                            cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("svc")
    assert exp is not None, "the workers created no MLflow experiment on the server"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("losslab.role") == "parent"]
    children = [r for r in runs if "losslab.trial" in r.data.tags]
    return parents, children


@pytest.fixture
def services(postgres: Postgres, tmp_path: Path):  # noqa: F811  (the imported fixture)
    """A fresh database for Optuna and one for an ``mlflow server`` whose artifacts live in ``tmp_path``."""
    name = f"t{os.getpid()}_{int(time.time() * 1000) % 10**9}"
    storage = postgres.create_database(f"{name}_optuna")
    backend = postgres.create_database(f"{name}_mlflow")
    server = start_mlflow_server(backend, tmp_path / "artifacts", tmp_path / "mlflow-server.log")
    try:
        yield storage, server.uri
    finally:
        stop(server.process)  # type: ignore[arg-type]


def test_two_lab_tune_workers_on_postgres_and_an_mlflow_server_complete_exactly_n(services, tmp_path):
    storage, uri = services
    trials = 6
    exp = _experiment(tmp_path / "svc.yaml", epochs=4)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [_worker(exp, trials, storage, uri, tmp_path, log) for log in logs]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    study = optuna.load_study(study_name="svc", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == trials, [(t.number, t.state) for t in study.trials]
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    workers_seen = {t.user_attrs.get(WORKER_ATTR) for t in complete}
    parents, children = _runs(uri)
    assert len(parents) == 1, [p.data.tags for p in parents]
    counted = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(int(c.data.tags["losslab.trial"]) for c in counted) == sorted(t.number for t in complete)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len(workers_seen) == 2, f"both workers took part: {workers_seen}"


def test_a_killed_workers_trial_is_retried_by_another_worker(services, tmp_path):
    storage, uri = services
    exp = _experiment(tmp_path / "svc.yaml", epochs=20)  # long enough to be killed in the middle
    first = _worker(exp, 1, storage, uri, tmp_path, tmp_path / "first.log")
    deadline = time.monotonic() + 180
    running = None
    while time.monotonic() < deadline and running is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="svc", storage=storage)
        except KeyError:  # the first worker has not created the study yet
            continue
        running = next((t for t in study.trials if t.state == TrialState.RUNNING and t.params), None)
    assert running is not None, (tmp_path / "first.log").read_text()[-3000:]
    time.sleep(2)  # a few heartbeats and steps into the trial
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    second = _worker(exp, 1, storage, uri, tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]

    study = optuna.load_study(study_name="svc", storage=storage)
    dead = study.trials[running.number]
    assert dead.state == TrialState.FAIL, dead.state
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == running.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 1  # the budget stays exact
    assert "sent no heartbeat" in (tmp_path / "second.log").read_text()
    parents, children = _runs(uri)
    assert len(parents) == 1
    retried = [c for c in children if c.data.tags.get("losslab.retry_of") == str(running.number)]
    assert len(retried) == 1 and retried[0].info.status == "FINISHED"


# -- lab run --storage: a study's (variant, seed) cells on several workers ----------------------------------


def _run_experiment(path: Path) -> Path:
    raw = deep_merge(TINY, {"name": "cells", "seeds": [0, 1], "train": {"epochs": 8},
                            "variants": {"bce": {}, "dice": {"loss.mask": [{"name": "dice"}]}}})
    raw["search"] = {"heartbeat": {"interval": 1, "grace": 3, "max_retry": 2}}  # the cells' heartbeats
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_worker(exp: Path, storage: str, uri: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "losslab.core.cli.main", "run", str(exp), "--storage", storage,
                             "--tracking-uri", uri, "--runs-dir", str(cwd / "runs")],
                            cwd=cwd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _cell_study(storage: str) -> optuna.Study | None:
    found = [n for n in optuna.get_all_study_names(storage) if n.startswith("run:cells:")]
    return optuna.load_study(study_name=found[0], storage=storage) if found else None


def test_lab_run_workers_on_postgres_train_each_cell_once_retry_a_killed_ones_and_report_once(services, tmp_path):
    """One worker starts the study and is killed inside its first cell; two more join with the same command.
    Every cell is trained to the end exactly once (the killed one continued from its checkpoint by another
    worker), the MLflow server holds one parent and one child per cell, and one worker builds the report."""
    from losslab.core.experiment.cells import REPORT_CELL, CellStore

    storage, uri = services
    exp = _run_experiment(tmp_path / "cells.yaml")
    first = _run_worker(exp, storage, uri, tmp_path, tmp_path / "first.log")
    deadline, killed = time.monotonic() + 240, None
    while time.monotonic() < deadline and killed is None:
        time.sleep(0.2)
        study = _cell_study(storage)
        running = [t for t in study.trials if t.state == TrialState.RUNNING] if study else []
        if running and list((tmp_path / "runs").glob("cells/*/*/last.pt")):  # one epoch in, seven to go
            os.kill(first.pid, signal.SIGKILL)
            killed = running[0]
    assert killed is not None, (tmp_path / "first.log").read_text()[-3000:]
    first.wait(timeout=30)

    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [_run_worker(exp, storage, uri, tmp_path, log) for log in logs]
    codes = [w.wait(timeout=600) for w in workers]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(t[-3000:] for t in texts)

    study = _cell_study(storage)
    assert study is not None
    by_cell: dict[int, list] = {}
    for trial in study.trials:
        by_cell.setdefault(CellStore._index(trial), []).append(trial)  # the cell each trial stands for
    assert sorted(by_cell) == [REPORT_CELL, 0, 1, 2, 3]
    for index, trials in by_cell.items():  # each cell, and the report, completed exactly once
        assert [t.state for t in trials].count(TrialState.COMPLETE) == 1, (index, [t.state for t in trials])
    assert study.trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and CellStore._index(retry) == CellStore._index(killed)
    assert "sent no heartbeat" in "".join(texts) and "retried (trial" in "".join(texts)
    trained_by = {t.user_attrs[WORKER_ATTR] for i, ts in by_cell.items() if i >= 0 for t in ts
                  if t.state == TrialState.COMPLETE}
    # the first worker may have finished a cell before the kill on a loaded machine; both joiners trained
    joiners = {w for w in trained_by if not w.endswith(f":{first.pid}")}
    assert len(joiners) == 2, f"both joining workers trained cells: {trained_by} (first worker pid {first.pid})"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cells").experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("losslab.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("losslab.role") == "child"]
    assert parent.info.status == "FINISHED"
    assert sorted((c.data.tags["losslab.variant"], c.data.tags["losslab.seed"]) for c in children) == [
        ("bce", "0"), ("bce", "1"), ("dice", "0"), ("dice", "1")]  # the retry reused the killed worker's run
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:  # every epoch of every cell logged, the killed one's included
        epochs = {m.step for m in client.get_metric_history(child.info.run_id, "val/mask_iou")}
        assert epochs == set(range(8)), (child.data.tags["losslab.variant"], epochs)
    reporters = [t for t in texts if "verdict: " in t]
    assert len(reporters) == 1, "one worker built the report"
    assert sum("the report is built by the worker that finished last" in t for t in texts) == 1
    assert "summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert list((tmp_path / "runs" / "cells" / parent.info.run_id / "report").iterdir())
