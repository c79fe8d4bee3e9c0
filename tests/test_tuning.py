"""``lab tune``: the search block, the shared budget, MLflow records, faults, and two workers on one study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import FixedTrial, TrialState, create_trial

from losslab.core.config import ConfigError, deep_merge, resolve_variants
from losslab.core.experiment.tuning import study as st
from losslab.core.experiment.tuning.options import TuneOptions
from losslab.core.experiment.tuning.results import pareto_front, rank
from losslab.core.experiment.tuning.space import base_dict, build_config, parse_search, sample
from losslab.core.experiment.tuning.worker import config_hash, run_tune, select_base
from losslab.core.names import SURPLUS_ATTR, WORKER_ATTR
from losslab.core.plugin.manager import load_catalog
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SEARCH = {
    "params": {"loss.mask.0.weight": {"low": 0.1, "high": 10.0, "log": True},
               "loss.depth.0.weight": {"low": 0.1, "high": 10.0, "log": True}},
    "sampler": {"n_startup_trials": 2},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _base(catalog, **overrides):
    raw = deep_merge(TINY, {"loss": {"mask": [{"name": "bce"}, {"name": "dice"}], "depth": [{"name": "l1"}]},
                            **overrides})
    return resolve_variants(raw, [], catalog)[0]


def _write(path: Path, search: dict, **overrides) -> Path:
    raw = deep_merge(TINY, overrides)
    raw["search"] = search
    path.write_text(yaml.safe_dump(raw))
    return path


def _search_error(search, catalog, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        parse_search(search, _base(catalog, **overrides), catalog)
    return str(info.value)


# -- the search block ----------------------------------------------------------------------------------


@pytest.mark.parametrize("search, expected", [
    ({"params": {"loss.mask.0.wieght": {"low": 0.1, "high": 1.0}}},
     "search.params[loss.mask.0.wieght]: the value 0.1 makes the config invalid: loss.mask.0.wieght: unknown key; "
     "did you mean 'weight'?"),
    ({"params": {"loss.mask.5.weight": {"low": 0.1, "high": 1.0}}},
     "search.params[loss.mask.5.weight]: 'loss.mask.5' indexes a list of 2 items"),
    ({"params": {"loss.mask.0.weight": {"low": -1.0, "high": 1.0}}},
     "loss.mask.0.weight: Input should be greater than or equal to 0; found -1.0"),
    ({"params": {"loss.mask.0.weight": {"low": 0.0, "high": 1.0, "log": True}}},
     "search.params[loss.mask.0.weight].low: a log-scale range must start above 0; found 0.0"),
    ({"params": {"loss.mask.0.weight": {"low": 2.0, "high": 1.0}}},
     "search.params[loss.mask.0.weight]: low must be below high; found low=2.0, high=1.0"),
    ({"params": {"loss.mask.0.weight": {"low": 0.1, "high": 1.0, "stepp": 0.1}}},
     "search.params[loss.mask.0.weight].stepp: unknown key; did you mean 'step'?"),
    ({"params": {"loss.mask": [[{"name": "bce"}], [{"name": "dise"}]]}},
     "search.params[loss.mask]: the value 'dise' makes the config invalid: loss.mask.0.name: unknown loss 'dise'; "
     "did you mean 'dice'"),
    ({"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}, "objective": "val/depth_rsme"},
     "search.objective: 'val/depth_rsme' is not computed by this experiment; did you mean 'val/depth_rmse'"),
    ({"params": {"seeds": [1, 2]}}, "search.params[seeds]: 'seeds' identifies the experiment"),
    ({"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}, "objectiv": "val/loss"},
     "search.objectiv: unknown key; did you mean 'objective' or 'objectives'?"),
    ({"params": {"loss.mask.1.weight": {"low": 0.1, "high": 1.0, "when": {"loss.mask": "bce"}}}},
     "search.params[loss.mask.1.weight].when.loss.mask: not a categorical parameter declared above this one"),
    ({"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}, "heartbeat": {"interval": 10, "grace": 5}},
     "search.heartbeat.grace: must exceed heartbeat.interval"),
    (None, "search: missing; `lab tune` needs a search: block"),
])
def test_search_errors_name_the_key_path(catalog, search, expected):
    assert expected in _search_error(search, catalog)


def test_several_objectives_rule_out_pruning_with_a_reason(catalog):
    message = _search_error({"params": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                             "objectives": [{"metric": "val/mask_iou"}, {"metric": "val/depth_rmse"}],
                             "pruner": {"name": "median"}}, catalog)
    assert "search.pruner.name: 'median' cannot be used with 2 objectives" in message
    assert "trial.report is single-objective" in message and "pruner.name: none" in message


def test_directions_come_from_the_metric_registry(catalog):
    space = parse_search({"params": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                          "objectives": [{"metric": "val/mask_iou"}, {"metric": "val/depth_rmse"},
                                         {"metric": "val/loss"}]}, _base(catalog), catalog)
    assert space.directions == ["maximize", "minimize", "minimize"]
    # the registry's own flags are the reference
    assert catalog.get("metric", "iou").meta["higher_is_better"] is True
    assert catalog.get("metric", "rmse").meta["higher_is_better"] is False
    assert (space.sampler_name, space.pruner_name) == ("nsga2", "none")
    single = parse_search({"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}}, _base(catalog), catalog)
    assert (single.metrics, single.directions) == (["val/mask_iou"], ["maximize"])  # train.monitor by default
    assert (single.sampler_name, single.pruner_name) == ("tpe", "median")


def test_types_are_inferred_from_bounds_and_the_config(catalog):
    space = parse_search({"params": {
        "train.epochs": {"low": 1, "high": 3},            # int in the config, whole bounds -> int
        "loss.mask.0.weight": {"low": 1, "high": 4},      # float in the config -> float despite whole bounds
        "train.optimizer": ["adam", "sgd"],               # a list -> categorical
    }}, _base(catalog), catalog)
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"train.epochs": "int", "loss.mask.0.weight": "float", "train.optimizer": "categorical"}


def test_categorical_lists_of_loss_terms_with_conditional_weights(catalog):
    base = _base(catalog)
    space = parse_search({"params": {
        "loss.mask": {"choices": [[{"name": "bce"}], [{"name": "bce"}, {"name": "dice"}]]},
        "loss.mask.1.weight": {"low": 0.5, "high": 4.0, "when": {"loss.mask": "bce+dice"}},
    }}, base, catalog)
    assert space.params[0].labels == ["bce", "bce+dice"]
    data = base_dict(base, space)

    overrides, shown = sample(FixedTrial({"loss.mask": "bce+dice", "loss.mask.1.weight": 2.5}), space)
    assert shown == {"loss.mask": "bce+dice", "loss.mask.1.weight": 2.5}
    cfg = build_config(data, overrides, catalog, "t")
    assert [(t.name, t.weight) for t in cfg.loss.mask] == [("bce", 1.0), ("dice", 2.5)]

    overrides, shown = sample(FixedTrial({"loss.mask": "bce"}), space)  # the weight's condition is false
    assert shown == {"loss.mask": "bce"} and "loss.mask.1.weight" not in overrides
    assert [t.name for t in build_config(data, overrides, catalog, "t").loss.mask] == ["bce"]


def test_one_objective_becomes_the_trials_monitor(catalog):
    base = _base(catalog)
    space = parse_search({"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}, "objective": "val/depth_rmse"},
                         base, catalog)
    data = base_dict(base, space)
    assert (data["train"]["monitor"], data["train"]["monitor_mode"]) == ("val/depth_rmse", "min")
    assert data["search"] is None


def test_a_variant_is_chosen_by_search_variant(tmp_path, catalog):
    path = _write(tmp_path / "v.yaml", {"params": {"train.lr": {"low": 1e-4, "high": 1e-2}}},
                  variants={"a": {}, "b": {"train.lr": 0.02}})
    with pytest.raises(ConfigError, match=r"2 variants \(a, b\).*set search.variant"):
        select_base(path, [], catalog)
    cfg, _ = select_base(path, ["search.variant=b"], catalog)
    assert cfg.variant == "b" and cfg.train.lr == 0.02


def test_the_shipped_experiment_is_valid(catalog):
    cfg, raw = select_base(REPO / "experiments" / "tune_loss_weights.yaml", [], catalog)
    space = parse_search(raw, cfg, catalog)
    assert len(cfg.seeds) == 1 and space.pruner_name in ("median", "hyperband")
    weights = {p.key for p in space.params if p.key.endswith(".weight")}
    names = {t.name for t in cfg.loss.mask + cfg.loss.depth}
    assert {"bce", "dice", "l1", "ssim", "gradient"} <= names and len(weights) >= 5
    assert all(p.log for p in space.params if p.key in weights)


# -- the budget and the Pareto front -------------------------------------------------------------------


def _study(directions=("maximize",)):
    return optuna.create_study(directions=list(directions))


def test_budget_skips_replaced_and_surplus_trials():
    study = _study()
    dist = {"x": FloatDistribution(0, 1)}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, params={"x": 0.1}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.2}, distributions=dist))  # dead worker
    study.add_trial(create_trial(state=TrialState.WAITING, params={"x": 0.2}, distributions=dist,
                                 system_attrs={"failed_trial": 1, "retry_history": [1]}))      # its retry
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.5, params={"x": 0.3}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={SURPLUS_ATTR: True}))  # never ran
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.4}, distributions=dist))  # NaN: counts
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in st.holds_place(trials)] == [0, 2, 3, 5]
    assert st.places_taken(trials) == 3                       # the waiting retry is taken when it starts
    assert [t.number for t in st.waiting(trials)] == [2]
    assert st.places_before(trials, 3) == 2 and st.places_before(trials, 6) == 4
    assert [t.number for t in st.finished(trials)] == [0, 3, 5]


def test_two_workers_asking_at_once_get_exactly_the_budget(tmp_path):
    """Both see 2 of 3 places taken and create a trial; the lower number runs, the other is surplus."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    for value in (1.0, 2.0):
        trial = study.ask()
        study.tell(trial, value)
    assert st.places_taken(study.get_trials()) == 2
    first, second = study.ask(), study.ask()
    trials = study.get_trials()
    assert st.places_before(trials, first.number) == 2      # < 3: runs
    assert st.places_before(trials, second.number) == 3     # = 3: surplus
    second.set_user_attr(SURPLUS_ATTR, True)
    study.tell(second, state=TrialState.FAIL)
    study.tell(first, 3.0)
    assert len(st.finished(study.get_trials())) == 3


def test_pareto_front_matches_optunas_own(tmp_path):
    import random

    rng = random.Random(7)
    directions = ["maximize", "minimize"]
    study = _study(directions)
    for _ in range(40):
        study.add_trial(create_trial(values=[round(rng.random(), 2), round(rng.random(), 2)]))
    study.add_trial(create_trial(state=TrialState.PRUNED, values=None))
    mine = pareto_front(study.get_trials(), directions)
    assert sorted(t.number for t in mine) == sorted(t.number for t in study.best_trials)
    assert [t.values[0] for t in mine] == sorted((t.values[0] for t in mine), reverse=True)
    # hand-worked: (0.9, 0.5) and (0.5, 0.1) are both on the front; (0.4, 0.6) is dominated by both
    small = _study(directions)
    for values in ([0.9, 0.5], [0.5, 0.1], [0.4, 0.6]):
        small.add_trial(create_trial(values=values))
    assert [t.number for t in pareto_front(small.get_trials(), directions)] == [0, 1]
    assert [t.number for t in rank(small.get_trials(), ["minimize", "minimize"])] == [2, 1, 0]


def test_each_trial_is_seeded_from_the_sampler_seed_and_its_number(catalog):
    """Seed + trial number: the same study is drawn again, another seed draws another one."""
    space = parse_search({"params": {"loss.mask.0.weight": {"low": 0.1, "high": 10.0, "log": True},
                                     "train.optimizer": ["adam", "adamw", "sgd"]}}, _base(catalog), catalog)

    def draws(seed: int) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=st.trial_seeded_sampler(space, seed))
        out = []
        for _ in range(4):
            trial = study.ask()
            _, shown = sample(trial, space)
            study.tell(trial, shown["loss.mask.0.weight"])
            out.append(shown)
        return out

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    # trial 0 draws what a plain sampler seeded with the seed draws first (a single worker's study is the one
    # it always was); trial 1, with seed + 1
    first, second = draws(5)[:2]
    assert first == sample(optuna.create_study(sampler=st.make_sampler(space, 5)).ask(), space)[1]
    plain = optuna.create_study(direction="maximize", sampler=st.make_sampler(space, 6))
    plain.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.0))  # one trial before it
    assert second == sample(plain.ask(), space)[1]
    assert all(0.1 <= d["loss.mask.0.weight"] <= 10.0 and d["train.optimizer"] in ("adam", "adamw", "sgd")
               for d in draws(3))


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_two_workers_asking_at_once_on_one_storage_draw_different_params(tmp_path, catalog, sampler):
    """The race: two workers see the same history, both ask before either tells. Each trial's own number
    seeds its draw, so they differ (a seed from the count of trials seen gave both the same parameters)."""
    search = {"params": {"loss.mask.0.weight": {"low": 0.1, "high": 10.0, "log": True},
                         "loss.depth.0.weight": {"low": 0.1, "high": 10.0, "log": True}},
              "sampler": {"name": sampler, "seed": 0}}
    cfg = _base(catalog)
    space = parse_search(search, cfg, catalog)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    handler = st.StaleTrialHandler(space.heartbeat.max_retry)
    storage = st.open_storage(url, space.heartbeat, handler)
    a, b = (st.open_study(st.open_storage(url, space.heartbeat, handler) if i else storage, "race", space,
                          cfg.train.epochs, 0, "hash") for i in range(2))
    drawn = []
    for _ in range(3):  # each round: both ask at once, then both tell
        with st.quiet_optuna():
            ta, tb = a.ask(), b.ask()
        pa, pb = sample(ta, space)[1], sample(tb, space)[1]
        assert ta.number != tb.number and pa != pb
        drawn += [pa, pb]
        a.tell(ta, 1.0)
        b.tell(tb, 2.0)
    assert len({tuple(sorted(d.items())) for d in drawn}) == len(drawn)
    # what the old seeding did: two samplers with one seed, asked on the same history, draw the same
    same = [sample(optuna.create_study(sampler=st.make_sampler(space, 7)).ask(), space)[1] for _ in range(2)]
    assert same[0] == same[1]


# -- end to end ----------------------------------------------------------------------------------------


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("losslab.role") == "parent"
               and r.data.tags.get("losslab.kind") == "tune"]
    trials = sorted((r for r in runs if "losslab.trial" in r.data.tags),
                    key=lambda r: int(r.data.tags["losslab.trial"]))
    return client, parents, trials


def test_tune_records_trials_writes_the_best_config_and_resumes(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "tiny.yaml", SEARCH)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tune(path, TuneOptions(trials=3, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    assert (tmp_path / "optuna.db").exists() and result.storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny", storage=result.storage)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert result.complete + result.pruned + result.failed == 3 and result.complete >= 1

    client, parents, trial_runs = _runs(uri, "tiny")
    (parent,) = parents
    tags = parent.data.tags
    assert (tags["losslab.kind"], tags["losslab.study"], json.loads(tags["losslab.directions"])) == \
        ("tune", "tiny", ["maximize"])
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert "optuna/optimization_history.png" in artifacts
    assert [int(r.data.tags["losslab.trial"]) for r in trial_runs] == [0, 1, 2]
    for run, trial in zip(trial_runs, study.trials, strict=True):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["losslab.trial_state"] == trial.state.name.lower()
        assert {k: float(v) for k, v in run.data.params.items()} == pytest.approx(trial.params, rel=1e-5)
        history = client.get_metric_history(run.info.run_id, "val/mask_iou")
        assert [m.step for m in history] == list(range(len(history))) and history
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        if trial.state == TrialState.COMPLETE:  # the objective is the best epoch's value, as MLflow holds it
            assert trial.value == pytest.approx(max(m.value for m in history))
            assert trial.value == pytest.approx(run.data.metrics["best/val/mask_iou"])

    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    text = result.best_path.read_text()
    assert result.best_path == tmp_path / "tiny_best.yaml" and f"Best trial {best.number}" in text
    (cfg,) = resolve_variants(yaml.safe_load(text), [], catalog)  # what `lab run` does first
    assert cfg.loss.mask[0].weight == pytest.approx(best.params["loss.mask.0.weight"])
    assert cfg.loss.depth[0].weight == pytest.approx(best.params["loss.depth.0.weight"])
    assert cfg.search is None and cfg.train.monitor == "val/mask_iou"
    from losslab.core.experiment.runner import run_experiment

    rerun = run_experiment(result.best_path, tracking_uri=uri, runs_dir=tmp_path / "runs",
                           catalog=catalog, echo=lambda m: None)
    assert rerun.children[0].metrics["val/mask_iou"] == pytest.approx(best.value, rel=1e-5)  # same seed, same run

    again = run_tune(path, TuneOptions(trials=4, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    assert again.parent_run_id == result.parent_run_id
    _, parents, trial_runs = _runs(uri, "tiny")
    assert len(parents) == 1 and [int(r.data.tags["losslab.trial"]) for r in trial_runs] == [0, 1, 2, 3]
    assert len(optuna.load_study(study_name="tiny", storage=result.storage).trials) == 4


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    search = {"params": {"train.lr": [1.0e12, 0.01]}, "pruner": {"name": "none"}}
    path = _write(tmp_path / "f.yaml", search, train={"scheduler": "none", "optimizer": "sgd"})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    queued = optuna.create_study(storage=storage, study_name="tiny", direction="maximize")
    queued.enqueue_trial({"train.lr": 1.0e12})   # the first trial diverges to NaN
    queued.enqueue_trial({"train.lr": 0.01})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tune(path, TuneOptions(trials=2, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    study = optuna.load_study(study_name="tiny", storage=storage)
    first, second = study.trials
    assert first.state == TrialState.FAIL and "nan" in first.user_attrs["fail_reason"].lower()
    assert "Lower train.lr" in first.user_attrs["fail_reason"]
    assert second.state == TrialState.COMPLETE and (result.failed, result.complete) == (1, 1)
    _, _, runs = _runs(uri, "tiny")
    assert runs[0].data.tags["losslab.trial_state"] == "failed" and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["losslab.error"] == first.user_attrs["fail_reason"]
    assert "objective" not in runs[0].data.metrics and "objective" in runs[1].data.metrics
    assert "failed: trial 0: " in result.table


def test_a_dead_workers_trial_is_retried_with_its_parameters(tmp_path, monkeypatch, catalog):
    monkeypatch.chdir(tmp_path)
    search = {**SEARCH, "heartbeat": {"interval": 1, "grace": 2}}
    path = _write(tmp_path / "d.yaml", search)
    cfg, raw = select_base(path, [], catalog)
    space = parse_search(raw, cfg, catalog)
    storage_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    handler = st.StaleTrialHandler(space.heartbeat.max_retry)
    storage = st.open_storage(storage_url, space.heartbeat, handler)
    base = base_dict(cfg, space)
    ghost = st.open_study(storage, "tiny", space, cfg.train.epochs, 0, config_hash(base, 0))
    with st.quiet_optuna():
        trial = ghost.ask()                                # a worker that claimed a trial, then died
    trial.suggest_float("loss.mask.0.weight", 0.1, 10.0, log=True)
    trial.suggest_float("loss.depth.0.weight", 0.1, 10.0, log=True)
    trial.set_user_attr(WORKER_ATTR, "ghost:1")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    messages: list[str] = []
    result = run_tune(path, TuneOptions(trials=1, tracking_uri=uri), catalog=catalog, echo=messages.append)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL and retry.state.is_finished() and retry.state != TrialState.FAIL
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == 0
    assert result.finished == 1  # the retry takes the dead trial's place: the budget is still exact
    assert any("sent no heartbeat for more than 2 s" in m for m in messages)
    _, _, runs = _runs(uri, "tiny")
    assert [(r.data.tags["losslab.trial"], r.data.tags.get("losslab.retry_of")) for r in runs] == [("1", "0")]


def test_two_processes_share_one_study_and_complete_exactly_n(tmp_path):
    from losslab.core.experiment.tracking import Tracker

    trials = 6
    _write(tmp_path / "tiny.yaml", {**SEARCH, "pruner": {"name": "none"}}, train={"epochs": 4})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri).experiment_id("tiny")  # create the MLflow schema once, as a first `lab run` would
    # each worker imports everything, says READY, and starts when the test says go: both really overlap
    code = ("import sys, time; from pathlib import Path; from losslab.core.experiment.tuning.worker import run_tune; "
            "from losslab.core.experiment.tuning.options import TuneOptions; "
            "print('READY', flush=True); go = Path('go')\n"
            "while not go.exists(): time.sleep(0.05)\n"
            f"r = run_tune(Path('tiny.yaml'), TuneOptions(trials={trials}, tracking_uri={uri!r}))\n"
            "print('RAN', [o.number for o in r.outcomes])")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's path
    env = {**os.environ, "PYTHONPATH": path, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    workers = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().startswith("READY")
    (tmp_path / "go").touch()
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    ran = [json.loads(line.split("RAN ", 1)[1]) for out in outputs for line in out.splitlines()
           if line.startswith("RAN ")]
    numbers = [n for worker in ran for n in worker]
    assert len(numbers) == len(set(numbers)) == trials  # none run twice, none lost
    assert len(ran) == 2 and all(ran), ran              # both workers took part

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    counted = st.finished(study.trials)
    assert len(counted) == trials and sorted(t.number for t in counted) == sorted(numbers)
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _, parents, runs = _runs(uri, "tiny")
    assert len(parents) == 1
    assert sorted(int(r.data.tags["losslab.trial"]) for r in runs) == sorted(numbers)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def test_cli_reports_errors_without_a_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from losslab.core.cli.main import app

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path / "bad.yaml", {"params": {"loss.mask.0.weight": {"low": 0.0, "high": 1.0, "log": True}}})
    result = CliRunner().invoke(app, ["tune", str(path), "--trials", "2"])
    assert result.exit_code == 2
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "search.params[loss.mask.0.weight].low: a log-scale range must start above 0" in output
    assert "Traceback" not in output and not (tmp_path / "optuna.db").exists()


def test_tuning_modules_import_neither_optuna_nor_mlflow():
    code = ("import sys, losslab.core.cli.main, losslab.core.cli.tune_commands, losslab.core.experiment.tuning.worker; "
            "print(sorted(m for m in ('optuna', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_storage_urls_are_normalized_and_hide_passwords(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.normalize_storage("sqlite:///optuna.db") == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert st.default_storage(f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}") == \
        f"sqlite:///{tmp_path / 'sub' / 'optuna.db'}"
    shown = st.public_storage("postgresql://lab:secret@db.example:5432/optuna")
    assert "secret" not in shown and shown.startswith("postgresql://lab:")


def test_never_pruned_at_its_last_epoch_and_a_pruned_trial_keeps_its_checkpoint(tmp_path, monkeypatch, catalog):
    """A pruner that always says "prune": trials of 2 epochs stop after epoch 1 of 2 with their checkpoint
    logged; trials of 1 epoch ran all their epochs, so they are complete and the best config says how many
    seeds it holds."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    said: list[str] = []
    two = _write(tmp_path / "two.yaml", SEARCH, name="two", train={"epochs": 2})
    result = run_tune(two, TuneOptions(trials=2, tracking_uri=uri), catalog=catalog, echo=said.append)
    assert (result.pruned, result.complete) == (2, 0)
    assert sum("pruned after epoch 1 of 2 (val/mask_iou = " in m for m in said) == 2
    client, _, trial_runs = _runs(uri, "two")
    for run in trial_runs:
        assert run.data.tags["losslab.trial_state"] == "pruned"
        assert "checkpoints/best.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}

    one = _write(tmp_path / "one.yaml", SEARCH, name="one", train={"epochs": 1})
    result = run_tune(one, TuneOptions(trials=2, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    assert (result.pruned, result.complete) == (0, 2)
    head = result.best_path.read_text().split("\nname:")[0]
    assert "Each trial trained one seed (0)" in head and "seeds [0], fewer than 3" in head
    assert "--set 'seeds=[0, 1, 2]'" in head


def test_a_tune_study_measures_its_floors_once_logs_them_and_flags_trials_below_them(tmp_path, monkeypatch, catalog):
    """Floors on the parent as `lab run` logs them; each trial judged on its own values; the best one flagged."""
    from losslab.core.experiment.floors import measure_floors
    from losslab.core.experiment.tuning import trial_floors as tune_floors
    from losslab.reports.build import build_report

    monkeypatch.chdir(tmp_path)
    search = {"params": {"loss.mask.0.weight": {"low": 0.1, "high": 10.0, "log": True}}, "pruner": {"name": "none"},
              "sampler": {"name": "random"}}
    path = _write(tmp_path / "f.yaml", search, train={"epochs": 1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tune(path, TuneOptions(trials=2, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    cfg, _ = select_base(path, [], catalog)
    expected = measure_floors(cfg, catalog)  # an independent measurement of the same config's floors
    client, (parent,), runs = _runs(uri, "tiny")
    assert json.loads(parent.data.tags["losslab.val_bgs"]) == expected.val_bgs
    floor_metrics = {k: v for k, v in parent.data.metrics.items() if k.startswith("floor/")}
    assert floor_metrics == pytest.approx(expected.metrics()) and "floor/image-difference/val/mask_iou" in floor_metrics

    def by_hand(metrics: dict[str, float], task: str) -> bool:  # below unless it beats every best floor
        keys = {"mask": ["val/mask_iou"], "depth": ["val/depth_delta1", "val/depth_absrel"]}[task]
        for key in keys:
            higher = expected.higher_is_better[key]
            floor = (max if higher else min)(f.scores[key] for f in expected.floors if key in f.scores)
            value = metrics.get(f"best/{key}", float("nan"))
            if not (value > floor if higher else value < floor):
                return True
        return False

    study = optuna.load_study(study_name="tiny", storage=result.storage)
    for run, trial in zip(runs, study.trials, strict=True):
        hand = [t for t in ("mask", "depth") if by_hand(run.data.metrics, t)]
        assert run.data.tags["losslab.below_floor"] == ",".join(hand)
        assert trial.user_attrs["losslab.floor_verdict"]["below"] == hand
    best = max(study.trials, key=lambda t: t.value)
    best_below = best.user_attrs["losslab.floor_verdict"]["below"]
    assert parent.data.tags["losslab.below_floor"] == ",".join(best_below)
    mark = f"BELOW FLOOR on {', '.join(best_below)}" if best_below else "above every floor"
    assert f"floors: best trial {best.number} {mark}" in result.table
    assert "floors" in result.table.splitlines()[1]  # a column of the trials table
    summary = json.loads((Path(client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path)))
                          ).read_text())
    assert summary["floors"]["val_bgs"] == expected.val_bgs
    assert summary["claims"]["below_floor"] == {f"trial-{t.number}": t.user_attrs["losslab.floor_verdict"]["below"]
                                                for t in study.trials}
    assert summary["claims"]["tasks"]["mask"]["winner"] == ("none" if "mask" in best_below else f"trial-{best.number}")

    # a second worker (here: the study resumed) reads the stored floors; it never fits them again
    def refuse(*args, **kwargs):
        raise AssertionError("the floors were measured a second time")

    monkeypatch.setattr(tune_floors, "measure_floors", refuse)
    again = run_tune(path, TuneOptions(trials=3, tracking_uri=uri), catalog=catalog, echo=lambda m: None)
    assert again.complete == 3
    _, (parent,), runs = _runs(uri, "tiny")
    assert len(runs) == 3 and all("losslab.below_floor" in r.data.tags for r in runs)
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("floor/")} == pytest.approx(expected.metrics())

    html = build_report(parent.info.run_id, tmp_path / "report", ["md"], tracking_uri=uri)["md"].read_text()
    assert "| floors |" in html or "floors |" in html  # the report's trials table has the floors column
    assert "one seed: exploratory" in html and "[floor] image-difference" in html
