"""`lab predict --run PARENT` picks the child: the run's winner and its best seed, or --variant/--seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from losslab.core.experiment.predict import PredictError, choose_child
from losslab.core.experiment.tracking import Tracker

#: (variant, seed) -> best/val/mask_iou; dice has the best mean (0.70 vs 0.65), bce the best single seed
SCORES = {("bce", 0): 0.55, ("bce", 1): 0.75, ("dice", 0): 0.71, ("dice", 1): 0.69}


def _store(tmp_path: Path, winner: str | None = None) -> tuple[Tracker, str, dict[tuple[str, int], str]]:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracker.start_run("pick", "pick", {"losslab.role": "parent"})
    ids = {}
    for (variant, seed), iou in SCORES.items():
        run_id = tracker.start_run("pick", f"{variant}-s{seed}", {
            "losslab.role": "child", "losslab.variant": variant, "losslab.seed": str(seed)}, parent_id=parent)
        tracker.log_params(run_id, {"train.monitor": "val/mask_iou", "train.monitor_mode": "max"})
        tracker.log_metrics(run_id, {"best/val/mask_iou": iou}, step=0)
        tracker.end_run(run_id)
        ids[(variant, seed)] = run_id
    if winner is not None:
        tracker.log_json(parent, {"winner": winner, "monitor": "val/mask_iou"}, "summary.json")
    tracker.end_run(parent)
    return tracker, parent, ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("pick"))


def test_default_is_the_best_mean_variant_and_its_best_seed(store) -> None:
    tracker, parent, ids = store
    run_id, note = choose_child(tracker.client, parent)
    assert run_id == ids[("dice", 0)]  # not bce-s1, the best single run: the variant is chosen first
    assert "variant 'dice' (best mean val/mask_iou over seeds)" in note and "0.7100" in note


def test_the_runs_own_winner_is_preferred(tmp_path) -> None:
    tracker, parent, ids = _store(tmp_path, winner="bce")
    run_id, note = choose_child(tracker.client, parent)
    assert run_id == ids[("bce", 1)] and "the run's winner" in note


def test_variant_and_seed_pick_the_child(store) -> None:
    tracker, parent, ids = store
    assert choose_child(tracker.client, parent, variant="bce")[0] == ids[("bce", 1)]
    assert choose_child(tracker.client, parent, seed=1)[0] == ids[("dice", 1)]
    assert choose_child(tracker.client, parent, variant="bce", seed=0)[0] == ids[("bce", 0)]
    with pytest.raises(PredictError, match="no finished child of variant 'focal'; its variants: bce, dice"):
        choose_child(tracker.client, parent, variant="focal")
    with pytest.raises(PredictError, match="no finished child with seed 7 in variant 'bce'; seeds: 0, 1"):
        choose_child(tracker.client, parent, variant="bce", seed=7)


def test_a_child_id_is_used_as_it_is(store) -> None:
    tracker, _parent, ids = store
    child = ids[("bce", 0)]
    assert choose_child(tracker.client, child)[0] == child
    with pytest.raises(PredictError, match="child of variant 'bce', seed 0"):
        choose_child(tracker.client, child, variant="dice")


def test_an_unknown_run_says_what_to_pass(store) -> None:
    tracker, _parent, _ids = store
    with pytest.raises(PredictError, match="no run 'f00' in this store"):
        choose_child(tracker.client, "f00")
