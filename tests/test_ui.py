"""`lab ui` serves the store and opens the experiment's runs table, checked in a headless browser.

The store is made with the Tracker directly (no training): a parent run and
three children with the metrics a real run logs. The test starts ``lab ui``
on a free 127.0.0.1 port, loads the printed URL in headless chromium and
checks the DOM of the rendered runs table: the child runs are rows (not
hidden behind a collapsed parent) and the headline metrics are columns.
Skipped, with the reason, when chromium is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from losslab.core.experiment.tracking import Tracker
from losslab.core.experiment.ui_view import EXPERIMENT_KIND_TAG, SHARED_VIEW_PREFIX, VIEW_KEY, prepare_view

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
METRICS = {"best/val/mask_iou": (0.61, 0.72, 0.55), "best/val/depth_rmse": (1.9, 1.7, 2.2), "best/val/loss": (0.3,) * 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store(tmp_path: Path) -> tuple[str, str, list[str]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    parent = tracker.start_run("uistudy", "uistudy", {"losslab.role": "parent", "losslab.kind": "run"})
    children = []
    for i, (variant, seed) in enumerate((("bce", 0), ("dice", 0), ("bce", 1))):
        run_id = tracker.start_run("uistudy", f"{variant}-s{seed}", {
            "losslab.role": "child", "losslab.variant": variant, "losslab.seed": str(seed)}, parent_id=parent)
        tracker.log_params(run_id, {"train.monitor": "val/mask_iou", "train.monitor_mode": "max", "seed": seed})
        tracker.log_metrics(run_id, {k: v[i] for k, v in METRICS.items()}, step=2)
        tracker.end_run(run_id)
        children.append(run_id)
    tracker.end_run(parent)
    return uri, parent, children


def test_view_tags_the_experiment_and_lists_children_by_the_monitor(tmp_path: Path) -> None:
    uri, parent, _ = _store(tmp_path)
    client = Tracker(uri).client
    view = prepare_view(client)
    assert view is not None and view.experiment == "uistudy" and view.parent_id == parent
    exp = client.get_experiment(view.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    shared = json.loads(exp.tags[SHARED_VIEW_PREFIX + VIEW_KEY])
    assert shared["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert shared["orderByKey"] == "metrics.`best/val/mask_iou`" and shared["orderByAsc"] is False
    # the comparable metrics, the monitored one first; the loss is not comparable across variants
    assert shared["selectedColumns"] == ["tags.`losslab.variant`", "tags.`losslab.seed`",
                                         "metrics.`best/val/mask_iou`", "metrics.`best/val/depth_rmse`"]
    assert view.path == (f"/#/experiments/{view.experiment_id}/runs?workflowType=machine_learning"
                         f"&viewStateShareKey={VIEW_KEY}")
    # the filter the view stores selects exactly the children
    assert len(client.search_runs([view.experiment_id], shared["searchFilter"])) == 3


def test_an_unknown_experiment_lists_the_known_ones(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from losslab.core.cli.main import app

    uri, _, _ = _store(tmp_path)
    result = CliRunner().invoke(app, ["ui", "--tracking-uri", uri, "--experiment", "nope", "--no-browser",
                                      "--port", str(_free_port())])
    assert result.exit_code == 2 and "'nope': no such experiment" in result.output and "uistudy" in result.output


def test_lab_ui_exits_non_zero_when_the_port_is_busy(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "losslab.core.cli.main", "ui", "--no-browser", "--port",
                              str(port), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"cannot serve the MLflow UI on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_opened_page_is_the_runs_table_with_children_and_metric_columns(tmp_path: Path) -> None:
    uri, _parent, _children = _store(tmp_path)
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "losslab.core.cli.main", "ui", "--no-browser", "--port",
                               str(port), "--tracking-uri", uri], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 150
        while url is None and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
            if line.startswith("http://127.0.0.1"):
                url = line.strip()
        assert url, "lab ui printed no URL"
        assert "/runs?" in url and "viewStateShareKey=" in url
        shot = Path(os.environ.get("LAB_UI_SHOT_DIR", tmp_path)) / "runs.png"
        chrome = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1600,900",
                  "--virtual-time-budget=15000"]
        dom = subprocess.run([*chrome, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        subprocess.run([*chrome, f"--screenshot={shot}", url], capture_output=True, timeout=180)
        for name in ("bce-s0", "dice-s0", "bce-s1"):  # every child is a row of the table
            assert name in dom, f"child run {name} is not shown"
        assert "best/val/mask_iou" in dom and "best/val/depth_rmse" in dom  # headline metrics are columns
        assert "0.72" in dom and "1.7" in dom  # with their values
        assert "Detect Issues" not in dom  # not the GenAI overview
        assert shot.is_file() and shot.stat().st_size > 10_000
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
