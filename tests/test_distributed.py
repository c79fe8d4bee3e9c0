"""DDP through torchrun on CPU (gloo): two processes train like one, and MLflow holds one run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import write_experiment

SCRIPT = textwrap.dedent('''
    """Runs the tiny experiment with a norm-free network (BatchNorm statistics are per rank on CPU)."""
    import sys, types
    from pathlib import Path
    import torch
    from torch import nn
    from losslab.core import hookimpl
    from losslab.core.config import load_experiment
    from losslab.core.plugin.manager import load_catalog
    from losslab.core.experiment.runner import run_experiment

    class PlainNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.mask, self.depth = nn.Conv2d(8, 1, 1), nn.Conv2d(8, 1, 1)

        def forward(self, x):
            h = self.body(x)
            return {"mask": self.mask(h), "depth": self.depth(h)}

    @hookimpl
    def lab_register_architectures(registry):
        registry.add("plain-net", PlainNet, summary="norm-free test network")

    class EP:
        name = "plain"
        dist = types.SimpleNamespace(name="test", version="0")
        def load(self):
            return types.SimpleNamespace(lab_register_architectures=lab_register_architectures)

    exp, uri, runs = sys.argv[1:4]
    catalog = load_catalog(entry_points=[EP()])
    configs = load_experiment(Path(exp), ["model.name=plain-net", "model.params={}"], catalog)
    run_experiment(configs=configs, tracking_uri=uri, runs_dir=Path(runs), catalog=catalog)
''')


def _best(uri: str) -> tuple[int, int, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if r.data.tags["losslab.role"] == "parent"]
    children = [r for r in runs if r.data.tags["losslab.role"] == "child"]
    return len(parents), len(children), children[0].data.metrics


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_log_one_run(tmp_path: Path):
    exp = write_experiment(tmp_path / "tiny.yaml", train={"batch_size": 16, "epochs": 2, "lr": 0.01})
    script = tmp_path / "run_tiny.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    single_uri, ddp_uri = f"sqlite:///{tmp_path}/single.db", f"sqlite:///{tmp_path}/ddp.db"
    one = subprocess.run([sys.executable, str(script), str(exp), single_uri, str(tmp_path / "r1")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(exp), ddp_uri, str(tmp_path / "r2")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stderr
    n_parents, n_children, ddp = _best(ddp_uri)
    assert (n_parents, n_children) == (1, 1)  # only rank 0 talks to MLflow
    _, _, single = _best(single_uri)
    for key in ("best/val/loss", "best/val/depth_rmse", "best/val/mask/bce", "best/val/depth/l1"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-3), key
    assert ddp["perf/samples_per_s"] > 0
