"""``lab run --jobs N`` around the training: threads and GPUs per worker, a cell that raises, workers that die,
the flags it refuses. The end-to-end runs (--jobs 2 equal to a sequential run bit for bit, --resume) are in
tests/test_run_e2e.py; several machines on PostgreSQL in tests/test_services.py."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losslab.core.cli.main import app
from losslab.core.config import ConfigError, load_experiment
from losslab.core.experiment import jobs as jobs_module
from losslab.core.experiment.cells import CellStore
from losslab.core.experiment.jobs import CellJob, conclude, heartbeat_of, run_cell, worker_main
from losslab.core.experiment.runner import _start_parent, config_hash
from losslab.core.experiment.tuning.space import HeartbeatSpec
from losslab.core.experiment.worker_pool import host_workers, worker_settings
from losslab.core.plugin.manager import load_catalog
from tests.conftest import write_experiment


def test_threads_are_split_between_the_workers_and_capped_by_omp(monkeypatch):
    monkeypatch.setattr(jobs_module.os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    envs, threads = worker_settings(3, "cpu", print)
    assert threads == 2 and [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2", "2"]
    assert not any("CUDA_VISIBLE_DEVICES" in e for e in envs)
    assert worker_settings(16, "cpu", print)[1] == 1  # never below one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_settings(2, "cpu", print)[1] == 1  # the user's cap per process holds


def test_on_cuda_each_worker_sees_one_gpu_round_robin(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    said: list[str] = []
    envs, _ = worker_settings(3, "cuda", said.append)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "5", "3"]
    assert said == ["losslab: 3 workers on 2 GPU(s): some GPUs train two cells at once"]


def test_a_bad_heartbeat_block_is_a_config_error_naming_the_key(tmp_path):
    good = load_experiment(write_experiment(tmp_path / "a.yaml", search={"heartbeat": {"interval": 2, "grace": 5}}))
    assert heartbeat_of(good) == HeartbeatSpec(interval=2, grace=5)
    assert heartbeat_of(load_experiment(write_experiment(tmp_path / "b.yaml"))) == HeartbeatSpec()
    bad = load_experiment(write_experiment(tmp_path / "c.yaml", search={"heartbeat": {"grace": 0}}))
    with pytest.raises(ConfigError, match=r"search.heartbeat: grace: .*greater than or equal to 2"):
        heartbeat_of(bad)


def _job(tmp_path: Path, store_url: str, uri: str) -> tuple[CellJob, object]:
    from losslab.core.experiment.tracking import Tracker

    configs = load_experiment(write_experiment(tmp_path / "tiny.yaml", seeds=[0, 1], baselines=False))
    tracker = Tracker(uri)
    digest = config_hash(configs)
    parent = _start_parent(tracker, configs, digest, None)
    return CellJob(configs, digest, store_url, HeartbeatSpec(), uri, parent, tmp_path / "runs", False, {}), tracker


def test_a_cell_that_raises_fails_alone_with_its_error(tmp_path, monkeypatch):
    job, tracker = _job(tmp_path, "", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def broken(*args, **kwargs):
        raise KeyError("a plugin's bug")

    monkeypatch.setattr(jobs_module, "_run_child", broken)
    said: list[str] = []
    result, ok = run_cell(job, jobs_module.Claim(job.cells()[1], 7, 1, None), tracker, load_catalog(), said.append)
    assert not ok
    assert result["status"] == "failed" and result["error"] == "KeyError: \"a plugin's bug\""
    assert (result["variant"], result["seed"]) == ("base", 1)
    assert said == ["losslab: base-s1 failed: KeyError: \"a plugin's bug\""]


def test_workers_that_die_do_not_hang_the_host_and_their_cells_are_reported_untrained(tmp_path):
    """Both workers die at start (their queue cannot be opened): the host returns, names them, and the study
    ends with every cell failed as untrained, the parent FAILED so that --resume finds it."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    job, tracker = _job(tmp_path, f"sqlite:///{blocker / 'cells.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}")
    said: list[str] = []
    started = time.monotonic()
    host_workers(job, 2, said.append, worker_main)
    assert time.monotonic() - started < 120
    text = "\n".join(said)
    for rank in (0, 1):
        assert re.search(rf"losslab: worker {rank} stopped: \w+Error: ", text), text  # what stopped it
        assert f"losslab: worker {rank} exited with code 1" in text
    store = CellStore(f"sqlite:///{tmp_path / 'cells.db'}", job.name, job.digest, job.cells())
    result = conclude(job, store, tracker, load_catalog(), said.append, None, "host", [], local=True)
    assert [(c.variant, c.seed, c.status) for c in result.failed] == [("base", 0, "failed"), ("base", 1, "failed")]
    assert all(c.error.startswith("not trained: every worker stopped") for c in result.failed)
    assert tracker.client.get_run(job.parent_id).info.status == "FAILED"


@pytest.mark.parametrize(("args", "message"), [
    (["--jobs", "0"], "--jobs must be 1 or more, got 0"),
    (["--jobs", "2", "--nproc", "2"], "--nproc trains one run across N processes"),
    (["--jobs", "2", "--until-decisive", "--max-seeds", "4"], "--until-decisive cannot be combined with --jobs"),
])
def test_flags_that_do_not_go_with_jobs_are_refused_before_any_work(tmp_path, args, message):
    exp = write_experiment(tmp_path / "tiny.yaml", seeds=[0, 1, 2])
    result = CliRunner().invoke(app, ["run", str(exp), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                                      "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "runs").exists()
