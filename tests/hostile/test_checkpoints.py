"""Hostile checkpoints: a pickle payload never runs, broken or mismatched files get a message with the fix.

Each planted file carries a ``__reduce__`` payload that would create a marker file when unpickled. A
positive control shows the payload is live (a plain ``torch.load(weights_only=False)`` does create the
marker); the tests then check that ``lab predict --checkpoint``, ``lab predict --run`` and
``lab run --resume`` refuse it, create nothing, and say which file, why, and what to do.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from losslab.core.cli.main import app
from losslab.core.config import load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.trainer import CheckpointError, Trainer
from tests.conftest import write_experiment

runner = CliRunner()


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing is the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    """A file that looks like a losslab checkpoint from outside (model and config keys) with a payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 2, "model": Payload(marker), "config": {"name": "tiny"}}, path)
    return path


def _lab(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    img = np.full((40, 50, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    cv2.imwrite(str(tmp_path / "fg_bg.png"), img)
    return tmp_path / "bg.png", tmp_path / "fg_bg.png"


def _assert_refused(output: str, where: str) -> None:
    assert "refused to load" in output and "nothing in it was run" in output, output
    assert where in output, output
    assert "Traceback" not in output


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """Positive control: without weights_only the planted file does run code."""
    marker = tmp_path / "ran"
    evil = plant(tmp_path / "evil.pt", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_predict_checkpoint_refuses_a_payload(tmp_path):
    marker = tmp_path / "ran"
    evil = plant(tmp_path / "evil.pt", marker)
    bg, fg_bg = _pair(tmp_path)
    result = _lab("predict", "--checkpoint", str(evil), "--bg", str(bg), "--fg-bg", str(fg_bg),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code != 0
    assert not marker.exists()
    _assert_refused(result.output, str(evil))
    assert "builtins.open" in result.output or "io.open" in result.output  # names what it asked for


def test_predict_run_refuses_a_payload_from_the_tracking_store_and_cleans_up(tmp_path, monkeypatch):
    from losslab.core.experiment.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    run_id = tracker.start_run("shared", "evil-s0", {"losslab.role": "child"})
    marker = tmp_path / "ran"
    tracker.log_artifact(run_id, plant(tmp_path / "upload" / "best.pt", marker), "checkpoints")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the download goes
    bg, fg_bg = _pair(tmp_path)
    result = _lab("predict", "--run", run_id, "--tracking-uri", uri, "--bg", str(bg), "--fg-bg", str(fg_bg),
                  "--out", str(tmp_path / "out"))
    assert result.exit_code != 0
    assert not marker.exists()
    _assert_refused(result.output, f"checkpoints/best.pt of run {run_id}")
    assert list(scratch.iterdir()) == []  # the /tmp/lab-predict-* download is gone
    missing = _lab("predict", "--run", "0" * 32, "--tracking-uri", uri, "--bg", str(bg), "--fg-bg", str(fg_bg),
                   "--out", str(tmp_path / "out"))
    assert missing.exit_code != 0 and list(scratch.iterdir()) == []


def _stop_parent_and_child(uri: str) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([exp_id])
    parent = next(r for r in runs if r.data.tags["losslab.role"] == "parent").info.run_id
    child = next(r for r in runs if r.data.tags["losslab.role"] == "child").info.run_id
    client.update_run(parent, status="KILLED")  # as if `lab run` had been interrupted
    client.update_run(child, status="KILLED")
    return parent, child


def test_run_resume_refuses_a_planted_last_pt_and_keeps_the_study_resumable(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    exp = write_experiment(tmp_path / "r.yaml", train={"epochs": 1})
    runs = tmp_path / "runs"
    common = ["--tracking-uri", tracking_uri, "--runs-dir", str(runs), "--no-report"]
    assert _lab("run", str(exp), *common).exit_code == 0
    parent, child = _stop_parent_and_child(tracking_uri)
    marker = tmp_path / "ran"
    last = plant(runs / "tiny" / parent / "base-s0" / "last.pt", marker)

    refused = _lab("run", str(exp), *common, "--resume")
    assert refused.exit_code == 1
    assert not marker.exists()
    _assert_refused(refused.output, str(last))
    client = MlflowClient(tracking_uri=tracking_uri)
    assert client.get_run(parent).info.status == "FAILED"  # not FINISHED: the next --resume finds it again
    assert client.get_run(child).data.tags["losslab.status"] == "failed"

    last.unlink()  # the fix the message gives for a file one cannot trust
    again = _lab("run", str(exp), *common, "--resume")
    assert again.exit_code == 0, again.output
    assert f"resuming parent run {parent}" in again.output
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real one-epoch checkpoint of the tiny experiment, and its config."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = load_experiment(write_experiment(tmp / "e.yaml", train={"epochs": 1}))[0]
    Trainer(cfg, 0, load_catalog(), tmp / "run").fit()
    return cfg, tmp / "run" / "last.pt"


def test_a_corrupt_last_pt_on_resume_names_the_file_and_the_fix(trained, tmp_path):
    cfg, good = trained
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = good.read_bytes()
    (run_dir / "last.pt").write_bytes(data[: len(data) // 2])  # a copy cut short, as a full disk leaves it
    with pytest.raises(CheckpointError) as info:
        Trainer(cfg, 0, load_catalog(), run_dir).fit(resume=True)
    message = str(info.value)
    assert str(run_dir / "last.pt") in message and "truncated or corrupt" in message
    assert "delete it to train this run again from epoch 0" in message


def test_an_older_format_checkpoint_is_refused_for_resume_with_a_message(trained, tmp_path):
    cfg, good = trained
    state = torch.load(good, weights_only=True)
    del state["format"], state["rng"], state["augment"], state["loader"]  # what losslab wrote before
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(state, run_dir / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt is a losslab checkpoint of format 1, this losslab "
                                              r"resumes format 2 only"):
        Trainer(cfg, 0, load_catalog(), run_dir).fit(resume=True)


def test_the_checkpoint_holds_plain_types_only(trained):
    """Every leaf is a tensor, number, string, bool or None: what weights_only accepts without allow-lists."""
    _, good = trained
    state = torch.load(good, weights_only=True)

    def leaves(x):
        if isinstance(x, dict):
            assert all(isinstance(k, str | int) for k in x), list(x)
            for v in x.values():
                yield from leaves(v)
        elif isinstance(x, list | tuple):
            for v in x:
                yield from leaves(v)
        else:
            yield x

    kinds = {type(v) for v in leaves(state)}
    assert kinds <= {torch.Tensor, int, float, str, bool, type(None)}, kinds
    assert isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(state["rng"]["numpy"]["keys"],
                                                                        torch.Tensor)


def test_predict_with_a_config_that_does_not_match_the_weights_says_so(trained, tmp_path):
    _, good = trained
    state = torch.load(good, weights_only=True)
    state["config"]["model"]["params"]["base_channels"] = 8  # the weights are for 4
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    bg, fg_bg = _pair(tmp_path)
    result = _lab("predict", "--checkpoint", str(edited), "--bg", str(bg), "--fg-bg", str(fg_bg),
                  "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code != 0
    assert "its weights do not fit the model its config describes" in result.output, result.output
    assert str(edited) in result.output and "Traceback" not in result.output
