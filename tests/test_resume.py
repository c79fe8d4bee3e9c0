"""Kill and resume: on CPU a resumed run equals an uninterrupted one bit for bit, MLflow history included.

Kills are simulated deterministically: a callback raises ``KeyboardInterrupt`` at a chosen step, or at a
chosen point among the epoch-end callbacks (before ``last.pt``; between ``last.pt`` and the metric log).
Augmentation is on (both built-ins, noise included), so the augmentations' random streams must come back
from the checkpoint; a negative control that forgets them shows the comparison would catch it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _fit_or_die(loop: TrainLoop, killed: bool):
    """Fit to the end (its result), or until the planted kill stops it (None)."""
    if not killed:
        return loop.fit()
    with pytest.raises(KeyboardInterrupt):
        loop.fit()
    return None


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
        result = _fit_or_die(TrainLoop(parts, run_dir, callbacks), killed=kill is not None)
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


# -- a third-party augmentation without state()/load_state() -------------------------------------------


class OwnStreams:
    """A third party's augmentation: its own torch and NumPy generators, no state()/load_state()."""

    def __init__(self, seed: int, p: float = 0.5) -> None:
        self.p = p
        self.rng = torch.Generator().manual_seed(seed)
        self.noise = {"rng": np.random.default_rng(seed + 1)}  # one level down, and a NumPy one

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        flip = torch.rand(len(batch["bg"]), generator=self.rng) < self.p
        for key in ("bg", "fg_bg", "mask", "depth"):
            out[key] = torch.where(flip[:, None, None, None], batch[key].flip(-1), batch[key])
        shift = torch.from_numpy(self.noise["rng"].normal(0.0, 0.02, size=len(batch["bg"]))).float()
        for key in ("bg", "fg_bg"):
            out[key] = (out[key] + shift[:, None, None, None]).clamp(0, 1)
        return out


def own_streams_closure(seed: int) -> object:
    """The same kind of augmentation as a function: its generator lives in a closure cell."""
    rng = torch.Generator().manual_seed(seed)

    def augment(batch: dict) -> dict:
        scale = 0.9 + 0.2 * torch.rand(len(batch["bg"]), generator=rng)
        return {**batch, "fg_bg": (batch["fg_bg"] * scale[:, None, None, None]).clamp(0, 1)}

    return augment


class _EntryPoint:
    name = "own-streams"
    dist = type("Dist", (), {"name": "losslab-own-streams", "version": "0.1.0"})()

    def load(self):
        import types

        from losslab.core import hookimpl

        module = types.ModuleType("own_streams_plugin")

        @hookimpl
        def lab_register_augmentations(registry) -> None:
            registry.add("own-streams", OwnStreams, summary="flips and shifts from its own generators")
            registry.add("own-closure", own_streams_closure, summary="scales from a generator in a closure")

        module.lab_register_augmentations = lab_register_augmentations
        return module


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume-third-party")
    catalog = load_catalog(entry_points=[_EntryPoint()])
    raw = {**RAW, "augment": [{"name": "own-streams"}, {"name": "own-closure"}]}
    (cfg,) = resolve_variants(raw, None, catalog)
    return tmp, catalog, cfg, Tracker(f"sqlite:///{tmp / 'mlflow.db'}")


def test_a_third_party_augmentation_without_state_resumes_on_its_stream(third_party):
    """Its generators are found and checkpointed by losslab: the resumed run equals the uninterrupted one."""
    from losslab.core.train.checkpoint import find_generators

    ref, ref_mlflow, ref_weights = _run(third_party, "straight", [])
    parts = build(third_party[2], 0, third_party[1])
    assert [sorted(find_generators(a)) for a in parts.augment] == [[".noise['rng']", ".rng"], ["<closure rng>"]]
    for scenario in ("mid-epoch", "twice"):
        result, mlflow, weights = _run(third_party, scenario, SCENARIOS[scenario])
        assert _strip(result.history) == _strip(ref.history) and mlflow == ref_mlflow
        assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_restarting_a_third_party_stream_would_be_caught_and_a_changed_one_is_refused(third_party, tmp_path):
    """Negative control: with its streams put back to the start after the restore, the run drifts; and a
    checkpoint whose generators the augmentation no longer holds stops with its name and the fix."""
    from losslab.core.train.checkpoint import find_generators, generator_state, set_generator_state
    from losslab.core.train.errors import CheckpointError

    class Restart(Callback):
        def __init__(self, parts) -> None:
            self.start = [{k: generator_state(g) for k, g in find_generators(a).items()} for a in parts.augment]

        def before_fit(self, loop: TrainLoop) -> None:
            for aug, states in zip(loop.parts.augment, self.start, strict=True):
                for key, gen in find_generators(aug).items():
                    set_generator_state(gen, states[key])

    tmp, catalog, cfg, tracker = third_party
    ref, _, _ = _run(third_party, "straight-control", [])
    run_id = tracker.start_run("resume", "restart", {})
    run_dir = tmp / "restart"
    for attempt, kill in enumerate([Kill(step=4), None]):
        parts = build(cfg, 0, catalog)
        callbacks = default_callbacks(run_dir, MlflowRunLogger(tracker, run_id), resume=attempt > 0)
        if attempt:
            callbacks.insert(2, Restart(parts))
        else:
            callbacks.insert(0, kill)
        result = _fit_or_die(TrainLoop(parts, run_dir, callbacks), killed=kill is not None)
    assert _strip(result.history)[1:] != _strip(ref.history)[1:]

    parts = build(cfg, 0, catalog)
    parts.augment[0].rng = None  # the augmentation changed: its generator is gone
    state = torch.load(run_dir / "last.pt", weights_only=True)
    with pytest.raises(CheckpointError, match=r"augmentation 'own-streams' kept its random generators at.*state\(\)"):
        TrainLoop(parts, tmp_path, []).load_checkpoint_state(state, run_dir / "last.pt")
