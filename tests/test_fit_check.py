"""Fit or generalization: the best weights scored on training samples, and the report's section on it.

References: the strided indices worked by hand; the training rows against a second, independent scoring
of the same images (the best checkpoint loaded into a fresh model, IoU and RMSE in numpy); the same bits
with and without the check; per-seed means, gaps and t-intervals worked by hand with scipy.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from scipy import stats as sstats

from losslab.core import names
from losslab.core.config import load_yaml, resolve_variants
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.fit_check import fit_indices
from losslab.core.train.trainer import Trainer
from losslab.reports.breakdown import ALL
from losslab.reports.collect import ChildRun, PerImage, Study
from losslab.reports.generalization import fit_tables, sentence, table_rows
from tests.conftest import write_experiment


def test_fit_indices_are_evenly_strided_in_index_order():
    idx = np.array([9, 3, 7, 1, 5, 11, 13, 15])
    assert fit_indices(idx, 4).tolist() == [1, 5, 9, 13]  # sorted 1..15 odd, every second
    assert fit_indices(idx, 100).tolist() == sorted(idx.tolist())
    assert fit_indices(idx, 0).tolist() == []
    picked = fit_indices(np.arange(1000), 7)
    assert picked.tolist() == [0, 142, 285, 428, 571, 714, 857]  # floor(k * 1000 / 7): one every 142.86


def _trainer(tmp_path, fit_check: int) -> Trainer:
    path = write_experiment(tmp_path / f"fit{fit_check}.yaml", train={"fit_check": fit_check})
    catalog = load_catalog()
    cfg = resolve_variants(load_yaml(path), None, catalog)[0]
    return Trainer(cfg, 0, catalog, tmp_path / f"run{fit_check}")


def _independent_scores(trainer: Trainer, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """IoU and RMSE of the best checkpoint on these training samples, in numpy, from a freshly built model."""
    state = torch.load(trainer.run_dir / names.BEST_CHECKPOINT, weights_only=True)
    from losslab.plugins.architectures.unet import UNet

    model = UNet(**trainer.parts.cfg.model.params)
    model.load_state_dict(state["model"])
    model.eval()
    batch = trainer.parts.train_loader.load(indices) if hasattr(trainer.parts.train_loader, "load") else None
    assert batch is not None
    with torch.no_grad():
        out = model(torch.cat([batch["bg"], batch["fg_bg"]], dim=1))
    pred = torch.sigmoid(out["mask"]).numpy()[:, 0] > 0.5
    true = batch["mask"].numpy()[:, 0] > 0.5
    inter, union = (pred & true).sum(axis=(1, 2)), (pred | true).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    md = trainer.parts.cfg.data.max_depth
    dp = np.maximum(np.clip(out["depth"].numpy()[:, 0], 0, 1) * md, 1e-3)  # the depth metrics' 1 mm floor
    dt = np.maximum(batch["depth"].numpy()[:, 0] * md, 1e-3)
    rmse = np.sqrt(((dp - dt) ** 2).mean(axis=(1, 2)))
    return iou, rmse


def test_the_training_rows_are_the_best_weights_scored_on_strided_training_samples(tmp_path):
    trainer = _trainer(tmp_path, fit_check=10)
    result = trainer.fit()
    path = trainer.run_dir / names.TRAIN_PER_IMAGE_FILE
    rows = list(csv.DictReader(path.open()))
    expected = fit_indices(trainer.parts.train_idx, 10).tolist()
    assert [int(r["index"]) for r in rows] == expected
    assert not set(expected) & set(trainer.parts.val_idx.tolist())  # training backgrounds only
    held = list(csv.DictReader((trainer.run_dir / names.PER_IMAGE_FILE).open()))
    assert list(rows[0]) == list(held[0])  # the same columns as the held-out table, region scores included
    iou, rmse = _independent_scores(trainer, expected)
    np.testing.assert_allclose([float(r["mask_iou"]) for r in rows], iou, atol=1e-5)
    np.testing.assert_allclose([float(r["depth_rmse"]) for r in rows], rmse, rtol=1e-4, atol=1e-4)
    assert result.fit["fit/mask_iou"] == pytest.approx(float(np.mean(iou)), abs=1e-5)
    assert result.fit["fit/depth_rmse"] == pytest.approx(float(np.mean(rmse)), rel=1e-4)


def test_the_check_changes_no_bit_of_training(tmp_path):
    with_check, without = _trainer(tmp_path, fit_check=8), _trainer(tmp_path, fit_check=0)
    a, b = with_check.fit(), without.fit()
    def untimed(history):
        return [{k: v for k, v in e.items() if not k.startswith(("perf/", "time/"))} for e in history]

    assert a.best == b.best and untimed(a.history) == untimed(b.history)
    for (ka, va), (kb, vb) in zip(with_check.parts.model.state_dict().items(),
                                  without.parts.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)  # the last weights are back in place after the check
    assert a.fit and not b.fit and not (without.run_dir / names.TRAIN_PER_IMAGE_FILE).exists()


def test_a_negative_fit_check_is_refused_with_the_key_named(tmp_path):
    from losslab.core.config import ConfigError

    path = write_experiment(tmp_path / "bad.yaml", train={"fit_check": -1})
    with pytest.raises(ConfigError, match="fit_check"):
        resolve_variants(load_yaml(path), None, load_catalog())


# -- the report's section ---------------------------------------------------------------------------------


def _table(values: dict[str, list[float]]) -> PerImage:
    n = len(next(iter(values.values())))
    return PerImage(np.arange(n), {k: np.asarray(v, dtype=np.float64) for k, v in values.items()})


def _child(variant: str, seed: int, train: dict[str, list[float]], held: dict[str, list[float]]) -> ChildRun:
    return ChildRun(f"{variant}{seed}", f"{variant}-s{seed}", variant, seed, "finished", "", {}, {}, {},
                    per_image=_table(held), train_per_image=_table(train))


def _study(children: list[ChildRun], variants: list[str]) -> Study:
    return Study("uri", "e", "1", "p", "p", "run", {}, {}, variants, sorted({c.seed for c in children}),
                 children=children)


def _depth(wall_train: float, wall_held: float, fg_train: float, fg_held: float) -> tuple[dict, dict]:
    """Two images each: wall-or-sky and fg-interior delta1; NaN where an image has no such pixels."""
    train = {"depth_delta1": [0.9, 0.9], "depth_delta1@wall-sky": [wall_train, math.nan],
             "depth_delta1@fg": [fg_train, fg_train], "depth_delta1@ground": [0.95, 0.95],
             "depth_delta1@boundary": [0.8, 0.8]}
    held = {"depth_delta1": [0.8, 0.8], "depth_delta1@wall-sky": [wall_held, math.nan],
            "depth_delta1@fg": [fg_held, fg_held], "depth_delta1@ground": [0.95, 0.94],
            "depth_delta1@boundary": [0.8, 0.8]}
    return train, held


def test_gaps_are_per_seed_means_then_a_t_interval_over_seeds():
    walls = [(0.99, 0.60), (0.97, 0.66), (0.98, 0.57)]
    children = [_child("silog", s, *_depth(t, h, 0.7, 0.69)) for s, (t, h) in enumerate(walls)]
    tables = {t.metric: t for t in fit_tables(_study(children, ["silog"]))}
    t = tables["depth_delta1"]
    assert set(tables) == {"depth_delta1"}  # mask and AbsRel were not recorded: no table for them
    cell = t.cells["silog"]["wall or sky"]
    gaps = np.array([a - b for a, b in walls])  # the NaN image is skipped, so each seed's mean is its one image
    half = sstats.t.ppf(0.975, 2) * gaps.std(ddof=1) / math.sqrt(3)
    assert cell.gap.mean == pytest.approx(gaps.mean())
    assert (cell.gap.low, cell.gap.high) == pytest.approx((gaps.mean() - half, gaps.mean() + half))
    assert cell.train.mean == pytest.approx(np.mean([a for a, _ in walls]))
    assert t.cells["silog"][ALL].gap.mean == pytest.approx(0.1)
    headers, rows = table_rows(t)
    assert headers[:2] == ["level", "variant"] and rows[0][:2] == [ALL, "silog"]
    text = sentence(t)
    assert "widest on wall or sky" in text and "a fit that does not carry over" in text
    # the fg interior is the region the training backgrounds themselves score lowest on
    assert "lowest on fg interior" in text and "0.700 on training" in text


def test_no_claim_below_three_seeds_or_when_the_interval_spans_zero():
    few = [_child("l1", s, *_depth(0.99, 0.6, 0.9, 0.9)) for s in range(2)]
    t = fit_tables(_study(few, ["l1"]))[0]
    assert "exploratory: fewer than 3 seeds, no claim" in sentence(t)
    spread = [_child("l1", s, *_depth(w, 0.8, 0.9, 0.9)) for s, w in enumerate([0.6, 1.0, 0.85])]
    t = fit_tables(_study(spread, ["l1"]))[0]
    assert "includes no gap" in sentence(t) and "a fit that does not carry over" not in sentence(t)
    small = [_child("l1", s, *_depth(0.81 + 0.001 * s, 0.8, 0.9, 0.9)) for s in range(3)]
    assert "under 0.02" in sentence(fit_tables(_study(small, ["l1"]))[0])


def test_runs_without_training_rows_give_no_section():
    child = _child("bce", 0, {"mask_iou": [0.9]}, {"mask_iou": [0.8]})
    child.train_per_image = None
    assert fit_tables(_study([child], ["bce"])) == []


def test_lab_run_logs_the_fit_and_the_report_shows_it(tmp_path, tracking_uri, monkeypatch):
    from typer.testing import CliRunner

    from losslab.core.cli.main import app

    monkeypatch.chdir(tmp_path)
    exp = write_experiment(tmp_path / "e.yaml", seeds=[0, 1, 2], train={"epochs": 1, "fit_check": 8})
    raw = yaml.safe_load(exp.read_text())
    raw["data"]["val_limit"] = 8
    exp.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(exp), "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                              "tags.`losslab.role` = 'child'")
    assert len(runs) == 3
    for run in runs:
        assert 0.0 <= run.data.metrics["fit/mask_iou"] <= 1.0
        assert names.TRAIN_PER_IMAGE_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}
    report = next(tmp_path.glob("lab-runs/tiny/*/report/report.md")).read_text()
    assert "## Why: fit or generalization" in report and "training against held-out backgrounds" in report


def test_device_composed_data_gives_the_same_training_rows(tmp_path):
    """On CPU the device-composed path (the CUDA fast path's code) scores the same images to the same bits."""
    rows = {}
    for mode in (False, True):
        path = write_experiment(tmp_path / f"d{mode}.yaml", train={"fit_check": 6, "epochs": 1},
                                data={"device_compose": mode})
        catalog = load_catalog()
        cfg = resolve_variants(load_yaml(path), None, catalog)[0]
        trainer = Trainer(cfg, 0, catalog, tmp_path / f"dev{mode}")
        trainer.fit()
        rows[mode] = (trainer.run_dir / names.TRAIN_PER_IMAGE_FILE).read_text()
    assert rows[True] == rows[False] and rows[True].count("\n") == 7  # header and 6 images
