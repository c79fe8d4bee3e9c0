"""The example third-party plugin, installed as a user would: listed by `lab plugins`, usable by name.

CI installs it before the suite (``pip install --no-deps --no-build-isolation
./examples/losslab-example-plugin``); nothing is installed here. Without it,
these tests are skipped with the command that installs it.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losslab.core import load_catalog
from tests.conftest import write_experiment

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "losslab-example-plugin"
DIST = "losslab-example-plugin"

pytest.importorskip(
    "losslab_example_plugin",
    reason=f"the example plugin is not installed; run `pip install --no-deps -e {EXAMPLE}`",
)

VERSION = metadata.version(DIST)
runner = CliRunner()


def test_catalog_has_its_loss_and_metric_with_distribution_and_version() -> None:
    catalog = load_catalog(fresh=True)
    for kind, name, task in (("loss", "log-cosh", "depth"), ("metric", "f2-score", "mask")):
        component = catalog.get(kind, name)
        assert (component.plugin, component.distribution, component.version) == ("example", DIST, VERSION)
        assert component.create().task == task
    assert not [f for f in catalog.failures if f.plugin == "example"]


def test_lab_plugins_lists_it_and_blocking_removes_it() -> None:
    from losslab.core.cli.main import app

    row = re.compile(rf"^loss\s+log-cosh\s+example\s+{DIST} {re.escape(VERSION)}\s+log-cosh depth loss", re.M)
    listed = runner.invoke(app, ["plugins", "--kind", "loss"])
    assert listed.exit_code == 0, listed.output
    assert row.search(listed.output), listed.output
    metrics = runner.invoke(app, ["plugins", "--kind", "metric"])
    assert re.search(rf"^metric\s+f2-score\s+example\s+{DIST} ", metrics.output, re.M), metrics.output
    blocked = runner.invoke(app, ["plugins", "--kind", "loss"], env={"LAB_DISABLE_PLUGINS": "example"})
    assert blocked.exit_code == 0 and "log-cosh" not in blocked.output and "bce" in blocked.output


def test_tiny_experiment_trains_with_its_loss_and_logs_its_metric(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from losslab.core.cli.main import app

    exp = write_experiment(
        tmp_path / "example.yaml",
        name="example-plugin",
        loss={"mask": [{"name": "bce"}],
              "depth": [{"name": "log-cosh", "weight": 2.0, "params": {"scale": 0.05}}]},
        metrics={"mask": ["iou", "f2-score"], "depth": ["rmse"]},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = runner.invoke(app, ["run", str(exp), "--set", "train.epochs=1", "--tracking-uri", uri,
                                 "--runs-dir", str(tmp_path / "runs"), "--no-report"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("example-plugin")
    (child,) = [r for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("losslab.role") == "child"]
    assert child.info.status == "FINISHED"
    params = child.data.params
    assert params["loss.depth.0.name"] == "log-cosh" and float(params["loss.depth.0.params.scale"]) == 0.05
    metrics = child.data.metrics
    term, total, bce = metrics["train/depth/log-cosh"], metrics["train/loss"], metrics["train/mask/bce"]
    assert math.isfinite(term) and term > 0
    assert total == pytest.approx(bce + 2.0 * term, rel=1e-4)  # weighted in the total, logged unweighted
    assert 0.0 <= metrics["val/mask_f2-score"] <= 1.0


def test_its_own_tests_pass() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
                            capture_output=True, text=True, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
