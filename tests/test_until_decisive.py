"""`lab run --until-decisive --max-seeds N`: seeds are added only where the comparison with the best
is undecided, at the looks the plan fixed in advance, and the report states the procedure.

Training is replaced by a fake child runner that logs known scores to a real MLflow store, so the
decisions are made by the real analysis reading the tracker, in seconds.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from losslab.core.cli.main import app
from losslab.core.experiment import runner as runner_module
from losslab.core.experiment.runner import ChildResult
from losslab.core.experiment.sequential import SEQUENTIAL_TAG, PlanError, SequentialPlan, make_plan
from tests.conftest import write_experiment

#: good is far ahead of far-behind (decided at the first look) and level with close (never decided).
#: The studies switch floors off (``baselines: false``): the fake scores are not from the tiny data, and a
#: floor would (rightly) crown no winner; tests/test_claims.py covers floors against the verdict.
MEANS = {"good": 0.70, "close": 0.699, "far-behind": 0.40}


def _score(variant: str, seed: int) -> float:
    rng = np.random.default_rng([seed, len(variant)])
    return MEANS[variant] + float(rng.normal(0, 0.01)) + 0.02 * (seed % 2)  # shared seed effect + noise


@pytest.fixture
def fake_children(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    trained: list[tuple[str, int]] = []

    def fake(cfg, seed, tracker, parent_id, existing, root, catalog, resume, echo):
        trained.append((cfg.variant, seed))
        run_id = tracker.start_run(cfg.name, f"{cfg.variant}-s{seed}", {
            "losslab.role": "child", "losslab.variant": cfg.variant, "losslab.seed": str(seed)}, parent_id=parent_id)
        value = _score(cfg.variant, seed)
        tracker.log_metrics(run_id, {"best/val/mask_iou": value, "best/val/depth_rmse": 1.0 + value}, step=0)
        tracker.set_tags(run_id, {"losslab.status": "finished"})
        tracker.end_run(run_id, "FINISHED")
        return ChildResult(cfg.variant, seed, run_id, {"val/mask_iou": value})

    monkeypatch.setattr(runner_module, "_run_child", fake)
    return trained


def test_seeds_go_only_to_undecided_variants_until_the_budget(tmp_path, fake_children) -> None:
    exp = write_experiment(tmp_path / "seq.yaml", seeds=[0, 1, 2], baselines=False, variants={
        "good": {}, "close": {"train.lr": 0.02}, "far-behind": {"train.lr": 0.03}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["run", str(exp), "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs"),
                                      "--until-decisive", "--max-seeds", "7"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = make_plan([0, 1, 2], 7)
    assert plan.looks == (3, 4, 6, 7)
    per_variant = {v: sorted(s for w, s in fake_children if w == v) for v in MEANS}
    assert per_variant["far-behind"] == [0, 1, 2]  # decided at the first look: no more seeds
    assert per_variant["good"] == per_variant["close"] == list(range(7))  # undecided: the whole budget
    assert len(fake_children) == len(set(fake_children))  # no (variant, seed) twice

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    (parent,) = client.search_runs([exp_id], filter_string="tags.`losslab.role` = 'parent'")
    assert SequentialPlan.from_json(parent.data.tags[SEQUENTIAL_TAG]) == plan
    assert parent.data.tags["losslab.winner"] == "tied"
    out = result.stdout
    assert "no winner (by val/mask_iou)" in out
    m = re.search(r"verdict: No single winner on mask IoU: (good|close) ranked first but is significantly ahead of "
                  r"far-behind and cannot be told apart from (good|close)\.", out)
    assert m and m.group(1) != m.group(2), out
    html = next((tmp_path / "runs").rglob("report.html")).read_text()
    assert "O&#x27;Brien-Fleming-type alpha spending" in html and "Stopping rule" in html
    assert "decided at the 3-seed look" in html and "undecided at every look" in html


def test_a_decided_study_stops_at_the_first_look(tmp_path, fake_children) -> None:
    exp = write_experiment(tmp_path / "seq.yaml", seeds=[0, 1, 2], baselines=False,
                           variants={"good": {}, "far-behind": {"train.lr": 0.03}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["run", str(exp), "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs"),
                                      "--no-report", "--until-decisive", "--max-seeds", "9"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(fake_children) == 6
    assert "winner: good (by val/mask_iou)" in result.stdout
    assert "every comparison with the best is decided after 3 seeds" in result.output


def test_plans_that_cannot_be_run_are_refused_with_what_to_pass(tmp_path) -> None:
    with pytest.raises(PlanError, match="at least 3 configured seeds"):
        make_plan([0, 1], 8)
    with pytest.raises(PlanError, match="must be larger than the 3 configured seeds"):
        make_plan([0, 1, 2], 3)
    exp = write_experiment(tmp_path / "seq.yaml", seeds=[0, 1])
    result = CliRunner().invoke(app, ["run", str(exp), "--until-decisive", "--max-seeds", "5"])
    assert result.exit_code == 2 and "at least 3 configured seeds" in result.output
    result = CliRunner().invoke(app, ["run", str(exp), "--until-decisive"])
    assert result.exit_code == 2 and "--max-seeds" in result.output
