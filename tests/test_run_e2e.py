"""`lab run` end to end on the embedded synthetic data: MLflow records read back, determinism, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from losslab.core import hookimpl
from losslab.core.cli.main import app
from losslab.core.config import load_experiment
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.trainer import Trainer, TrainingError
from tests.conftest import write_experiment

runner = CliRunner()


def _lab(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Two variants x two seeds of the tiny experiment, run once for the module's checks."""
    tmp = tmp_path_factory.mktemp("e2e")
    exp = write_experiment(tmp / "tiny.yaml", seeds=[0, 1],
                           variants={"bce": {}, "dice": {"loss.mask": [{"name": "dice"}]}})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = _lab("run", str(exp), "--tracking-uri", uri, "--runs-dir", str(tmp / "runs"), "--no-report",
                  "--set", "train.epochs=2")
    return types.SimpleNamespace(tmp=tmp, exp=exp, uri=uri, result=result)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_run_prints_the_table_and_ends_with_the_verdict(finished_run):
    out = finished_run.result.output
    assert finished_run.result.exit_code == 0, out
    assert "variant" in out and "mask_iou" in out
    assert out.count("± ") >= 4  # mean ± std cells for both variants
    # two seeds per variant: exploratory, so no winner line, and the verdict says so last
    assert not any(line.startswith("winner:") for line in out.splitlines())
    assert "no winner: exploratory, no claim" in out
    last = finished_run.result.stdout.rstrip().splitlines()[-1]  # the progress lines go to stderr
    assert last.startswith("verdict: Exploratory: no claim: 2 seeds for ")


def test_parent_run_carries_the_verdict_and_mean_headline_metrics(finished_run):
    client = _client(finished_run.uri)
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`losslab.role` = 'parent'")
    verdict = finished_run.result.stdout.rstrip().splitlines()[-1].removeprefix("verdict: ")
    assert parent.data.tags["losslab.verdict"] == verdict
    assert parent.data.tags["losslab.winner"] == "exploratory"
    children = client.search_runs([exp.experiment_id], filter_string="tags.`losslab.role` = 'child'")
    for variant in ("bce", "dice"):
        values = [c.data.metrics["best/val/mask_iou"] for c in children if c.data.tags["losslab.variant"] == variant]
        assert parent.data.metrics[f"mean/{variant}/val/mask_iou"] == pytest.approx(np.mean(values))
        assert f"mean/{variant}/val/depth_rmse" in parent.data.metrics


def test_mlflow_holds_one_parent_and_a_child_per_variant_and_seed(finished_run):
    client = _client(finished_run.uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("losslab.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("losslab.role") == "child"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {(c.data.tags["losslab.variant"], c.data.tags["losslab.seed"]) for c in children} == {
        ("bce", "0"), ("bce", "1"), ("dice", "0"), ("dice", "1")}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert params["train.epochs"] == "2" and params["data.image_size"] == "32"
        expected_loss = "bce" if child.data.tags["losslab.variant"] == "bce" else "dice"
        assert params["loss.mask.0.name"] == expected_loss
        history = client.get_metric_history(child.info.run_id, "val/mask_iou")
        assert sorted(m.step for m in history) == [0, 1]
        assert all(0.0 <= m.value <= 1.0 for m in history)
        for key in ("train/loss", f"train/mask/{expected_loss}", "train/depth/l1", "val/depth_rmse",
                    "time/epoch_s", "perf/samples_per_s"):
            assert len(client.get_metric_history(child.info.run_id, key)) == 2, key
        assert "best/val/mask_iou" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "checkpoints", "predictions.png", "val_per_image.csv", "val_samples.npz"} <= artifacts
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert {"config.yaml", "summary.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_the_parent_holds_the_floors_the_split_and_each_tasks_winner(finished_run):
    client = _client(finished_run.uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("losslab.role") == "parent")
    children = [r for r in runs if r.data.tags.get("losslab.role") == "child"]
    val_bgs = json.loads(parent.data.tags["losslab.val_bgs"])
    rows = Path(client.download_artifacts(children[0].info.run_id, "val_per_image.csv", str(finished_run.tmp)))
    assert val_bgs == sorted({int(r["bg"]) for r in csv.DictReader(rows.open())})  # what the children scored
    floors = {k: v for k, v in parent.data.metrics.items() if k.startswith("floor/")}
    assert {"floor/image-difference/val/mask_iou", "floor/prior/val/mask_iou", "floor/median-map/val/depth_delta1",
            "floor/median-map/val/depth_absrel", "floor/global-median/val/depth_rmse"} <= set(floors)
    assert all(0.0 <= floors[k] <= 1.0 for k in floors if k.endswith(("mask_iou", "delta1")))
    variants = {c.data.tags["losslab.variant"] for c in children}
    for task in ("mask", "depth"):
        assert parent.data.tags[f"losslab.first_above_floor.{task}"] in variants | {"none"}
    for child in children:
        assert set(filter(None, child.data.tags["losslab.below_floor"].split(","))) <= {"mask", "depth"}
    out = finished_run.result.output
    assert "[floor] image-difference" in out and "[floor] median-map" in out
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json",
                                                        str(finished_run.tmp))).read_text())
    assert summary["floors"]["val_bgs"] == val_bgs
    for task, verdict in summary["claims"]["tasks"].items():
        assert verdict["winner"] == parent.data.tags[f"losslab.first_above_floor.{task}"]
        assert verdict["sentence"] in out  # the terminal says what the tags and summary say


@pytest.fixture(scope="module")
def jobs_run(finished_run):
    """``finished_run``'s experiment again, on two worker processes (``--jobs 2``), in its own MLflow store."""
    uri = f"sqlite:///{finished_run.tmp / 'jobs.db'}"
    args = ["--tracking-uri", uri, "--runs-dir", str(finished_run.tmp / "runs-jobs"), "--no-report",
            "--set", "train.epochs=2", "--jobs", "2"]
    result = _lab("run", str(finished_run.exp), *args)
    return types.SimpleNamespace(uri=uri, args=args, result=result, exp=finished_run.exp)


def _val_histories(uri: str) -> dict[tuple[str, str], dict[str, list[tuple[int, float]]]]:
    """Every child's every validation metric, epoch by epoch, keyed by (variant, seed)."""
    client = _client(uri)
    exp = client.get_experiment_by_name("tiny")
    out = {}
    for run in client.search_runs([exp.experiment_id], filter_string="tags.`losslab.role` = 'child'"):
        key = (run.data.tags["losslab.variant"], run.data.tags["losslab.seed"])
        assert key not in out, f"{key} trained twice"
        out[key] = {k: sorted({(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)})
                    for k in run.data.metrics if k.startswith(("val/", "best/val/"))}
    return out


def test_jobs_2_equals_a_sequential_run_bit_for_bit_with_one_parent_and_one_table(finished_run, jobs_run):
    out = jobs_run.result.output
    assert jobs_run.result.exit_code == 0, out
    assert "4 run(s) on 2 worker processes" in out
    jobs, sequential = _val_histories(jobs_run.uri), _val_histories(finished_run.uri)
    assert set(jobs) == {("bce", "0"), ("bce", "1"), ("dice", "0"), ("dice", "1")}
    assert all(len(h["val/mask_iou"]) == 2 and len(h) >= 4 for h in jobs.values())
    assert jobs == sequential  # every validation metric of every epoch, as floats: the same bits
    client = _client(jobs_run.uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("losslab.role") == "parent"]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r is not parent} == {parent.info.run_id}
    assert "summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # one display over the study's 8 epochs (not a bar per worker), one table, one verdict
    assert "tiny: 8/8 epoch (100%)" in out
    assert out.count("variant  seed  status") == 1
    assert jobs_run.result.stdout.count("verdict: ") == 1
    assert jobs_run.result.stdout.rstrip().splitlines()[-1] == finished_run.result.stdout.rstrip().splitlines()[-1]


def test_jobs_resume_skips_the_finished_cells_and_continues_the_other(jobs_run):
    client = _client(jobs_run.uri)
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    parent = next(r for r in client.search_runs([exp_id]) if r.data.tags["losslab.role"] == "parent")
    client.update_run(parent.info.run_id, status="KILLED")  # as if the host had been interrupted
    cut = next(r for r in client.search_runs([exp_id]) if r.data.tags.get("losslab.variant") == "dice"
               and r.data.tags.get("losslab.seed") == "1")
    client.update_run(cut.info.run_id, status="KILLED")
    before = _val_histories(jobs_run.uri)
    again = _lab("run", str(jobs_run.exp), *jobs_run.args, "--resume")
    assert again.exit_code == 0, again.output
    assert f"resuming parent run {parent.info.run_id}" in again.output
    assert sum(f"{k}: already finished" in again.output for k in ("bce-s0", "bce-s1", "dice-s0")) == 3
    assert "dice-s1: already finished" not in again.output
    runs = client.search_runs([exp_id])
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)  # no new parent, no new child
    assert _val_histories(jobs_run.uri) == before  # continued from its last checkpoint: nothing retrained


def test_logged_config_reruns_the_same_experiment(finished_run, tmp_path):
    import mlflow

    client = _client(finished_run.uri)
    exp = client.get_experiment_by_name("tiny")
    child = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("losslab.variant") == "dice")
    path = mlflow.artifacts.download_artifacts(run_id=child.info.run_id, artifact_path="config.yaml",
                                               dst_path=str(tmp_path), tracking_uri=finished_run.uri)
    (cfg,) = load_experiment(Path(path))
    (expected,) = [c for c in load_experiment(finished_run.exp, ["train.epochs=2"]) if c.variant == "dice"]
    assert cfg == expected


def test_prediction_grid_and_per_image_rows(finished_run):
    run_dirs = sorted((finished_run.tmp / "runs" / "tiny").glob("*/bce-s0"))
    grid = cv2.imread(str(run_dirs[0] / "predictions.png"))
    assert grid is not None and grid.shape[0] > 4 * 32 and grid.shape[1] >= 5 * 32
    rows = (run_dirs[0] / "val_per_image.csv").read_text().splitlines()
    assert rows[0].startswith("index,bg,fg,flip,row,col,mask_iou,depth_rmse")
    assert len(rows) == 1 + 24


def test_predict_writes_mask_and_depth_pngs(finished_run, tmp_path):
    ckpt = sorted((finished_run.tmp / "runs" / "tiny").glob("*/bce-s0/best.pt"))[0]
    from losslab.core.data.compositor import Compositor
    from losslab.core.data.sources import SyntheticSources
    from losslab.plugins.generators import GridGenerator

    sources = SyntheticSources(4, 2, seed=0, size=64)
    recipe = GridGenerator().recipes([0], [1], (64, 64))[3]
    bg, fg_bg, _ = Compositor(sources).compose(recipe)
    (tmp_path / "bg").mkdir()
    (tmp_path / "fgbg").mkdir()
    cv2.imwrite(str(tmp_path / "bg" / "bg0.png"), cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "fgbg" / f"{recipe.stem}.png"), cv2.cvtColor(fg_bg, cv2.COLOR_RGB2BGR))
    result = _lab("predict", "--checkpoint", str(ckpt), "--bg", str(tmp_path / "bg"), "--fg-bg",
                  str(tmp_path / "fgbg"), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(tmp_path / "out" / f"{recipe.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(tmp_path / "out" / f"{recipe.stem}_depth.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert depth.shape == (64, 64) and depth.dtype == np.uint16


def test_predict_from_run_id(finished_run, tmp_path):
    client = _client(finished_run.uri)
    exp = client.get_experiment_by_name("tiny")
    child = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("losslab.role") == "child")
    img = np.full((40, 50, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "bg.png"), img)
    cv2.imwrite(str(tmp_path / "fg_bg.png"), img)
    result = _lab("predict", "--run", child.info.run_id, "--tracking-uri", finished_run.uri, "--bg",
                  str(tmp_path / "bg.png"), "--fg-bg", str(tmp_path / "fg_bg.png"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "o" / "fg_bg_mask.png"), cv2.IMREAD_UNCHANGED).shape == (40, 50)


def _config(tmp_path: Path, **overrides):
    return load_experiment(write_experiment(tmp_path / "e.yaml", **overrides))[0]


def test_same_seed_same_metrics_on_cpu(tmp_path):
    cfg = _config(tmp_path)
    catalog = load_catalog()
    first = Trainer(cfg, 3, catalog, tmp_path / "a").fit().history
    second = Trainer(cfg, 3, catalog, tmp_path / "b").fit().history
    other = Trainer(cfg, 4, catalog, tmp_path / "c").fit().history
    strip = [{k: v for k, v in h.items() if not k.startswith(("time/", "perf/"))} for h in first]
    assert strip == [{k: v for k, v in h.items() if not k.startswith(("time/", "perf/"))} for h in second]
    assert first[-1]["train/loss"] != other[-1]["train/loss"]


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    cfg = _config(tmp_path, train={"epochs": 3})
    catalog = load_catalog()
    straight = Trainer(cfg, 0, catalog, tmp_path / "straight").fit().history

    def stop_after_first(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, 0, catalog, tmp_path / "cut").fit(on_epoch=stop_after_first)
    resumed = Trainer(cfg, 0, catalog, tmp_path / "cut").fit(resume=True).history
    assert [h["epoch"] for h in resumed] == [0, 1, 2]
    for a, b in zip(straight, resumed, strict=True):  # bit for bit: every random state is in last.pt
        assert {k: v for k, v in a.items() if not k.startswith(("time/", "perf/"))} == {
            k: v for k, v in b.items() if not k.startswith(("time/", "perf/"))}


def test_cli_resume_skips_finished_children(tmp_path, tracking_uri):
    exp = write_experiment(tmp_path / "r.yaml", variants={"a": {}, "b": {"train.lr": 0.02}}, train={"epochs": 1})
    common = ["--tracking-uri", tracking_uri, "--runs-dir", str(tmp_path / "runs"), "--no-report"]
    first = _lab("run", str(exp), *common)
    assert first.exit_code == 0, first.output
    client = _client(tracking_uri)
    exp_id = client.get_experiment_by_name("tiny").experiment_id
    parent = next(r for r in client.search_runs([exp_id]) if r.data.tags["losslab.role"] == "parent")
    client.update_run(parent.info.run_id, status="KILLED")  # as if it had been interrupted
    b_child = next(r for r in client.search_runs([exp_id]) if r.data.tags.get("losslab.variant") == "b")
    client.update_run(b_child.info.run_id, status="KILLED")
    again = _lab("run", str(exp), *common, "--resume")
    assert again.exit_code == 0, again.output
    assert "a-s0: already finished" in again.output
    runs = client.search_runs([exp_id])
    assert len(runs) == 3  # no new parent, no new child
    assert all(r.info.status == "FINISHED" for r in runs)


def test_nan_loss_stops_naming_the_term_and_step(tmp_path):
    import torch

    from losslab.core.plugin.contracts import Loss

    class Exploding(Loss):
        task = "depth"
        input_kind = "depth"
        calls = 0

        def forward(self, pred, target):
            Exploding.calls += 1
            value = (pred - target).abs().mean()
            return value * (float("nan") if Exploding.calls >= 3 else 1.0)

    @hookimpl
    def lab_register_losses(registry):
        registry.add("exploding", Exploding, task="depth")

    class EP:
        name = "nanplug"
        dist = types.SimpleNamespace(name="nan-dist", version="9")

        def load(self):
            return types.SimpleNamespace(lab_register_losses=lab_register_losses)

    catalog = load_catalog(entry_points=[EP()])
    cfg = _config(tmp_path, loss={"mask": [{"name": "bce"}], "depth": [{"name": "exploding"}]})
    with pytest.raises(TrainingError, match=r"depth/exploding from plugin 'nanplug' \(nan-dist 9\) is nan at step 2"):
        Trainer(cfg, 0, catalog, tmp_path / "nan").fit()
    assert torch.isfinite(torch.tensor(1.0))


def test_config_error_is_a_clear_message_not_a_traceback(tmp_path):
    exp = write_experiment(tmp_path / "bad.yaml", model={"name": "unnet"})
    result = runner.invoke(app, ["run", str(exp), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2
    assert "model.name: unknown architecture 'unnet'; did you mean 'unet'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--help"], ["plugins"]])
def test_help_and_plugins_do_not_import_mlflow_or_optuna(args):
    code = (
        "import sys; from typer.testing import CliRunner; from losslab.core.cli.main import app;"
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output;"
        "bad = [m for m in ('mlflow', 'optuna') if m in sys.modules]; assert not bad, bad; print(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if args == ["plugins"]:
        assert "loss" in out.stdout and "bce" in out.stdout and "losslab" in out.stdout


def test_plugins_kind_filter_lists_only_that_kind():
    result = _lab("plugins", "--kind", "loss")
    lines = [line for line in result.output.splitlines()[1:] if not line.startswith(("skipped", "losslab:"))]
    assert lines and all(line.startswith("loss ") for line in lines)
    assert yaml is not None


@pytest.mark.parametrize("layout", ["seed", "shards"])
def test_training_reads_a_materialized_dataset(tmp_path, tracking_uri, layout):
    data = tmp_path / "data"
    made = _lab("data", "generate", "--synthetic", "4", "2", "--out", str(data), "--layout", layout,
                "--workers", "1", "--image-size", "64")
    assert made.exit_code == 0, made.output
    exp = write_experiment(tmp_path / "m.yaml", train={"epochs": 1})
    raw = yaml.safe_load(exp.read_text())
    raw["data"]["source"] = {"kind": "dataset", "path": str(data)}  # the synthetic keys do not apply to it
    exp.write_text(yaml.safe_dump(raw))
    result = _lab("run", str(exp), "--tracking-uri", tracking_uri, "--runs-dir", str(tmp_path / "runs"),
                  "--no-report")
    assert result.exit_code == 0, result.output
    rows = next((tmp_path / "runs" / "tiny").glob("*/base-s0/val_per_image.csv")).read_text().splitlines()
    assert rows[0].startswith("index,bg,fg,flip,row,col,") and len(rows) > 1
    held_out = {int(line.split(",")[1]) for line in rows[1:]}
    assert len(held_out) == 1  # one of the 4 bgs, never seen in training


def _nan_catalog():
    """A plugin with a loss and a metric that are finite in training and NaN on the held-out images."""
    import torch

    from losslab.core.plugin.contracts import Loss

    class EvalNaNLoss(Loss):
        task = "depth"
        input_kind = "depth"

        def forward(self, pred, target):
            value = (pred - target).abs().mean()
            return value if torch.is_grad_enabled() else value * float("nan")  # evaluation runs under no_grad

    class NaNMetric(torch.nn.Module):
        def forward(self, pred, target):
            return torch.full((pred.shape[0],), float("nan"), device=pred.device)

    @hookimpl
    def lab_register_losses(registry):
        registry.add("evalnan", EvalNaNLoss, task="depth")

    @hookimpl
    def lab_register_metrics(registry):
        registry.add("nanmetric", NaNMetric, task="depth")

    class EP:
        name = "nanplug"
        dist = types.SimpleNamespace(name="nan-dist", version="9")

        def load(self):
            return types.SimpleNamespace(lab_register_losses=lab_register_losses,
                                         lab_register_metrics=lab_register_metrics)

    return load_catalog(entry_points=[EP()])


def test_a_loss_nan_only_in_validation_fails_the_run_naming_term_and_plugin(tmp_path, tracking_uri):
    from losslab.core.experiment.runner import run_experiment

    catalog = _nan_catalog()
    exp = write_experiment(tmp_path / "n.yaml", train={"epochs": 1},
                           loss={"mask": [{"name": "bce"}], "depth": [{"name": "evalnan"}]})
    configs = load_experiment(exp, None, catalog)
    result = run_experiment(configs=configs, tracking_uri=tracking_uri, runs_dir=tmp_path / "runs",
                            catalog=catalog, echo=lambda m: None)
    (child,) = result.children
    assert child.status == "failed" and result.winner is None and result.table.startswith("no run finished\n")
    assert f"base     0     failed  {child.run_id}" in result.table  # the failed run's id, to look it up
    assert "validation loss term depth/evalnan from plugin 'nanplug' (nan-dist 9) is nan at epoch 1" in child.error
    run = _client(tracking_uri).get_run(child.run_id)
    assert run.info.status == "FAILED" and run.data.tags["losslab.status"] == "failed"
    assert "best/val/loss" not in run.data.metrics


def test_a_metric_nan_in_validation_fails_the_run_naming_metric_and_plugin(tmp_path):
    catalog = _nan_catalog()
    cfg = load_experiment(write_experiment(tmp_path / "m.yaml", train={"epochs": 1},
                                           metrics={"mask": ["iou"], "depth": ["nanmetric"]}), None, catalog)[0]
    with pytest.raises(TrainingError, match=r"validation metric depth_nanmetric \(metric 'nanmetric' from plugin "
                                            r"'nanplug' \(nan-dist 9\)\) is not finite at epoch 1"):
        Trainer(cfg, 0, catalog, tmp_path / "run").fit()
    assert not (tmp_path / "run" / "best.pt").exists()  # nothing that could be mistaken for a result
