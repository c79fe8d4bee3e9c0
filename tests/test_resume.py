"""Kill and resume: on CPU a resumed run equals an uninterrupted one bit for bit, MLflow history included.

Kills are simulated deterministically: a callback raises ``KeyboardInterrupt`` at a chosen step, or at a
chosen point among the epoch-end callbacks (before ``last.pt``; between ``last.pt`` and the metric log).
Augmentation is on (both built-ins, noise included), so the augmentations' random streams must come back
from the checkpoint; a negative control that forgets them shows the comparison would catch it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losslab.core.config import resolve_variants
from losslab.core.experiment.runner import MlflowRunLogger
from losslab.core.experiment.tracking import Tracker
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.builder import build
from losslab.core.train.callbacks import Callback, Checkpointer, MetricLogger, default_callbacks
from losslab.core.train.loop import TrainLoop
from tests.conftest import TINY

EPOCHS = 3
RAW = {**TINY,
       "data": {**TINY["data"], "train_limit": 48, "val_limit": 8},  # 3 steps of 16 per epoch
       "augment": [{"name": "geometric"}, {"name": "photometric", "params": {"noise_std": 0.05, "noise_p": 0.5}}],
       "train": {**TINY["train"], "epochs": EPOCHS, "val_samples": 0}}
TIMING = ("time/", "perf/")


class Kill(Callback):
    """Raise KeyboardInterrupt after global step ``step``, or at epoch end ``epoch`` where it sits in the list."""

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch = step, epoch

    def after_step(self, loop: TrainLoop) -> None:
        if self.step is not None and loop.state.step == self.step:
            raise KeyboardInterrupt

    def after_epoch(self, loop: TrainLoop, end) -> None:
        if self.epoch is not None and end.epoch == self.epoch:
            raise KeyboardInterrupt


class Forget(Callback):
    """Negative control: after the restore, put the augmentations' streams back to their start."""

    def __init__(self, states: list) -> None:
        self.states = states

    def before_fit(self, loop: TrainLoop) -> None:
        for aug, state in zip(loop.parts.augment, self.states, strict=True):
            aug.load_state(state)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    catalog = load_catalog()
    (cfg,) = resolve_variants(RAW, None, catalog)
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}")
    return tmp, catalog, cfg, tracker


def _run(setup, name: str, kills: list[tuple[int, Callback]], forget: bool = False):
    """Train ``name`` (killed at each of ``kills`` in turn, then resumed each time) to the end."""
    tmp, catalog, cfg, tracker = setup
    run_id = tracker.start_run("resume", name, {})
    run_dir = tmp / name
    for attempt, (where, kill) in enumerate([*kills, (None, None)]):
        parts = build(cfg, 0, catalog)
        callbacks = default_callbacks(run_dir, MlflowRunLogger(tracker, run_id), resume=attempt > 0)
        if forget and attempt > 0:
            callbacks.insert(2, Forget([a.state() for a in parts.augment]))  # right after the Checkpointer
        if kill is not None:
            callbacks.insert(where, kill)
        loop = TrainLoop(parts, run_dir, callbacks)
        if kill is None:
            result = loop.fit()
        else:
            with pytest.raises(KeyboardInterrupt):
                loop.fit()
    weights = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    return result, _mlflow_history(tracker, run_id), weights


def _mlflow_history(tracker: Tracker, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = tracker.client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, k))
            for k in keys if not k.startswith(TIMING)}


def _strip(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if not k.startswith(TIMING)} for h in history]


@pytest.fixture(scope="module")
def straight(setup):
    return _run(setup, "straight", [])


# where a Kill sits in default_callbacks: 0 EvalArtifacts, 1 Checkpointer, 2 MetricLogger, 3 Progress
SCENARIOS = {
    "mid-epoch": [(0, Kill(step=4))],                                  # second step of epoch 1
    "before-last-pt": [(1, Kill(epoch=1))],                            # epoch 1 evaluated, not checkpointed
    "between-last-pt-and-log": [(2, Kill(epoch=0))],                   # checkpointed, not logged
    "twice": [(2, Kill(epoch=1)), (0, Kill(step=8))],                  # two kills, two resumes
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(setup, straight, scenario):
    result, mlflow, weights = _run(setup, scenario, SCENARIOS[scenario])
    ref_result, ref_mlflow, ref_weights = straight
    assert [h["epoch"] for h in result.history] == list(range(EPOCHS))
    assert _strip(result.history) == _strip(ref_result.history)  # exact, not approx
    assert result.best == ref_result.best and result.best_epoch == ref_result.best_epoch
    assert mlflow == ref_mlflow
    assert all([s for s, _ in points] == list(range(EPOCHS)) for points in mlflow.values()), mlflow  # once each
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_forgetting_the_augmentation_streams_would_be_caught(setup, straight):
    result, _, _ = _run(setup, "forget", SCENARIOS["mid-epoch"], forget=True)
    assert _strip(result.history)[0] == _strip(straight[0].history)[0]  # epoch 0 ran before the kill
    assert _strip(result.history)[1:] != _strip(straight[0].history)[1:]


def test_the_callback_order_is_the_documented_one(tmp_path):
    callbacks = default_callbacks(Path(tmp_path))
    assert [type(c).__name__ for c in callbacks] == ["EvalArtifacts", "Checkpointer", "MetricLogger", "Progress"]
    assert isinstance(callbacks[1], Checkpointer) and isinstance(callbacks[2], MetricLogger)
