"""Two workers that start together race on MLflow rows; the tracker must come out with one experiment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from losslab.core.experiment.tracking import Tracker


class _RacingClient:
    """A store where another worker creates the experiment between our lookup and our create."""

    def __init__(self, other_created: bool) -> None:
        self.other_created = other_created
        self.lookups = 0

    def get_experiment_by_name(self, name: str):
        self.lookups += 1
        if self.lookups == 1 or not self.other_created:
            return None
        return SimpleNamespace(experiment_id="7", lifecycle_stage="active")

    def create_experiment(self, name, artifact_location=None, tags=None):
        raise RuntimeError("RESOURCE_ALREADY_EXISTS: Experiment(name=svc) already exists")


def _tracker(client: _RacingClient) -> Tracker:
    tracker = Tracker.__new__(Tracker)  # no store opened: only the client's answers matter here
    tracker.uri = "http://127.0.0.1:5000"
    tracker.client = client
    return tracker


def test_an_experiment_created_by_another_worker_meanwhile_is_used():
    client = _RacingClient(other_created=True)
    assert _tracker(client).experiment_id("svc") == "7"
    assert client.lookups == 2


def test_a_create_that_fails_for_another_reason_is_raised():
    with pytest.raises(RuntimeError, match="RESOURCE_ALREADY_EXISTS"):
        _tracker(_RacingClient(other_created=False)).experiment_id("svc")


class _RacingTracker:
    """The parent gains the tag (another worker's) between our check and our insert, which then fails."""

    def __init__(self, their_bgs: str) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.their_bgs = their_bgs
        self.logged: list[dict[str, float]] = []
        self.client = SimpleNamespace(get_run=lambda run_id: SimpleNamespace(
            data=SimpleNamespace(tags=dict(self.tags), metrics=dict(self.metrics))))

    def set_tags(self, run_id, tags):
        from losslab.core.experiment.floors import VAL_BGS_TAG

        self.tags[VAL_BGS_TAG] = self.their_bgs
        self.metrics["floor/prior/val/mask_iou"] = 0.25  # the other worker got one metric in before us
        raise RuntimeError("duplicate key value violates unique constraint tag_pk")

    def log_metrics(self, run_id, metrics, step):
        self.logged.append(dict(metrics))


def _floors():
    from losslab.core.experiment.floors import Floor, Floors

    floors = [Floor("prior", "mask", {"val/mask_iou": 0.25}), Floor("median-map", "depth", {"val/depth_delta1": 0.66})]
    return Floors(floors, [2, 5], 10, 4, 0.1, {"val/mask_iou": True, "val/depth_delta1": True})


def test_floors_logged_by_another_worker_at_the_same_moment_are_completed_not_raised():
    from losslab.core.experiment.tuning.trial_floors import _log_on_parent

    tracker = _RacingTracker(their_bgs="[2, 5]")
    floors = _floors()
    _log_on_parent(tracker, "parent", floors)
    missing = {k: v for k, v in floors.metrics().items() if k != "floor/prior/val/mask_iou"}
    assert tracker.logged == [missing]  # only what the other worker had not logged yet


def test_a_parent_holding_other_held_out_backgrounds_is_an_error():
    from losslab.core.experiment.tuning.trial_floors import _log_on_parent

    with pytest.raises(RuntimeError, match="tag_pk"):
        _log_on_parent(_RacingTracker(their_bgs="[3]"), "parent", _floors())


class _TagRaceClient:
    """Our insert of a new tag loses to another worker's insert of the same key."""

    def __init__(self, other_wrote: bool) -> None:
        self.tags: dict[str, str] = {}
        self.other_wrote = other_wrote
        self.calls = 0

    def set_tag(self, run_id, key, value):
        self.calls += 1
        if self.calls == 1:
            if self.other_wrote:
                self.tags[key] = "theirs"
            raise RuntimeError("duplicate key value violates unique constraint tag_pk")
        self.tags[key] = value

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(tags=dict(self.tags)))


def test_a_tag_inserted_by_another_worker_meanwhile_is_updated_as_a_later_set_would_be():
    client = _TagRaceClient(other_wrote=True)
    tracker = Tracker.__new__(Tracker)
    tracker.client = client
    tracker.set_tags("parent", {"losslab.below_floor": "mask"})
    assert client.tags == {"losslab.below_floor": "mask"} and client.calls == 2


def test_a_tag_that_fails_for_another_reason_is_raised():
    tracker = Tracker.__new__(Tracker)
    tracker.client = _TagRaceClient(other_wrote=False)
    with pytest.raises(RuntimeError, match="tag_pk"):
        tracker.set_tags("parent", {"losslab.below_floor": "mask"})
