"""Training diagnostics (gradient norms, task cosine, loss shares) and the mask's calibration.

References: the same gradients computed the ordinary way (``backward`` into ``.grad`` on a
copy of the model), numpy's ECE on the same probabilities, and the property that a run with
diagnostics trains bit for bit as one without.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from losslab.core.config import resolve_variants
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.calibration import CalibrationCounts, expected_calibration_error, summarize
from losslab.core.train.trainer import Trainer

CFG = {
    "name": "diag",
    "data": {"source": {"kind": "synthetic", "n_bg": 6, "n_fg": 4, "size": 64}, "image_size": 32,
             "train_limit": 32, "val_limit": 16},
    "model": {"name": "unet", "params": {"base_channels": 4, "depth": 2}},
    "train": {"epochs": 2, "batch_size": 8, "progress": False, "num_threads": 1,
              "diagnostics": {"every": 1, "batches": 2}},
    "loss": {"mask": [{"name": "bce", "weight": 2.0}, {"name": "dice"}], "depth": [{"name": "l1"}]},
    "metrics": {"mask": ["iou"], "depth": ["rmse"]},
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _trainer(catalog, tmp_path, overrides=None) -> Trainer:
    (cfg,) = resolve_variants(CFG, overrides, catalog)
    return Trainer(cfg, 0, catalog, tmp_path)


def test_diagnostics_measure_on_the_builders_shared_parameters(catalog, tmp_path):
    """The same list gradient-based weightings use: the UNet declares its encoder."""
    trainer = _trainer(catalog, tmp_path)
    params = trainer.loop.diagnostics.params
    assert [id(p) for p in params] == [id(p) for p in trainer.parts.shared]
    assert {id(p) for p in params} == {id(p) for p in trainer.parts.model.encoder.parameters()}


def test_gradient_norms_cosine_and_shares_match_ordinary_backward(catalog, tmp_path):
    trainer = _trainer(catalog, tmp_path, ["train.diagnostics.batches=1"])
    diag = trainer.loop.diagnostics
    before = {k: v.clone() for k, v in trainer.parts.model.state_dict().items()}
    measured = diag.measure()
    # the model (weights and normalisation statistics) and .grad are untouched
    assert all(torch.equal(before[k], v) for k, v in trainer.parts.model.state_dict().items())
    assert all(p.grad is None for p in trainer.parts.model.parameters())

    batch = diag.batches[0]
    model = copy.deepcopy(trainer.parts.model).train()
    x = torch.cat([batch["bg"], batch["fg_bg"]], dim=1)
    grads, values = {}, {}
    for term in trainer.parts.objective.terms:
        model.zero_grad(set_to_none=True)
        _, terms = trainer.parts.objective(model(x), batch)
        name = f"{term.task}/{term.key}"
        (term.weight * terms[name]).backward()
        grads[name] = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()])
        values[name] = term.weight * float(terms[name].detach())
    for name, g in grads.items():
        assert measured[f"diag/grad_norm/{name}"] == pytest.approx(float(g.norm()), rel=1e-4)
        assert measured[f"diag/loss_share/{name}"] == pytest.approx(values[name] / sum(values.values()), rel=1e-5)
    g_mask = grads["mask/bce"] + grads["mask/dice"]
    g_depth = grads["depth/l1"]
    cosine = float(g_mask @ g_depth / (g_mask.norm() * g_depth.norm()))
    assert measured["diag/task_cosine"] == pytest.approx(cosine, abs=1e-4)
    assert measured["diag/grad_norm/mask"] == pytest.approx(float(g_mask.norm()), rel=1e-4)
    assert sum(v for k, v in measured.items() if k.startswith("diag/loss_share/")) == pytest.approx(1.0)


def test_training_with_diagnostics_is_bit_identical_to_training_without(catalog, tmp_path):
    runs = {}
    for label, override in (("on", []), ("off", ["train.diagnostics=false"])):
        trainer = _trainer(catalog, tmp_path / label, override)
        result = trainer.fit()
        runs[label] = (trainer.parts.model.state_dict(), trainer.parts.optimizer.state_dict(), result.history)
    (w_on, opt_on, hist_on), (w_off, opt_off, hist_off) = runs["on"], runs["off"]
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    state_on, state_off = opt_on["state"], opt_off["state"]
    assert all(torch.equal(state_on[i]["exp_avg"], state_off[i]["exp_avg"]) for i in state_on)
    assert any(k.startswith("diag/") for k in hist_on[0]) and not any(k.startswith("diag/") for k in hist_off[0])
    for a, b in zip(hist_on, hist_off, strict=True):
        assert a["val/mask_iou"] == b["val/mask_iou"] and a["train/loss"] == b["train/loss"]


def test_every_second_epoch_and_the_names_logged(catalog, tmp_path):
    trainer = _trainer(catalog, tmp_path, ["train.epochs=3", "train.diagnostics.every=2",
                                           "train.diagnostics.batches=1"])
    result = trainer.fit()
    history = result.history
    measured = [any(k.startswith("diag/") for k in h) for h in history]
    assert measured == [True, False, True]
    keys = {k for k in history[0] if k.startswith("diag/")}
    assert keys == {"diag/grad_norm/mask/bce", "diag/grad_norm/mask/dice", "diag/grad_norm/depth/l1",
                    "diag/grad_norm/mask", "diag/grad_norm/depth", "diag/task_cosine",
                    "diag/loss_share/mask/bce", "diag/loss_share/mask/dice", "diag/loss_share/depth/l1"}
    assert all(math.isfinite(history[0][k]) for k in keys) and -1 <= history[0]["diag/task_cosine"] <= 1
    record = json.loads((tmp_path / "val_calibration.json").read_text())
    assert len(record["count"]) == 15 and sum(record["count"]) == 16 * 32 * 32
    # the file is the best epoch's, and its ECE is the one logged for that epoch
    assert history[result.best_epoch]["calib/mask_ece"] == pytest.approx(expected_calibration_error(record))


def test_diagnostics_config_is_checked(catalog):
    from losslab.core.config import ConfigError

    for bad in ("train.diagnostics.every=0", "train.diagnostics.batches=0", "train.diagnostics.often=1"):
        with pytest.raises(ConfigError, match="diagnostics"):
            resolve_variants(CFG, [bad], catalog)
    (cfg,) = resolve_variants(CFG, ["train.diagnostics=off"], catalog)
    assert cfg.train.diagnostics is False


def _numpy_ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for k in range(bins):
        inside = (p >= edges[k]) & ((p < edges[k + 1]) if k < bins - 1 else (p <= 1.0))
        if inside.any():
            ece += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return float(ece)


def test_ece_matches_numpy_and_a_calibrated_predictor_scores_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random((4, 1, 20, 20)).astype(np.float32)
    p[0, 0, 0, :3] = [0.0, 1.0, 14 / 15]  # the edges: 0 in bin 0, 1 in the last bin, 14/15 in the last
    y_random = (rng.random(p.shape) > 0.5).astype(np.float32)
    y_calibrated = (rng.random(p.shape) < p).astype(np.float32)
    for y in (y_random, y_calibrated):
        counts = CalibrationCounts(torch.device("cpu"))
        counts.update(torch.from_numpy(p[:2]), torch.from_numpy(y[:2]))  # in two batches
        counts.update(torch.from_numpy(p[2:]), torch.from_numpy(y[2:]))
        record = summarize(counts.sums.tolist())
        assert record["ece"] == pytest.approx(_numpy_ece(p.ravel().astype(np.float64), y.ravel()), abs=1e-6)
        assert sum(record["count"]) == p.size
    assert summarize(counts.sums.tolist())["ece"] < 0.05  # the calibrated labels, last
    assert _numpy_ece(p.ravel(), y_random.ravel()) > 0.2


def test_report_pools_reliability_and_summarises_ece_over_seeds():
    from losslab.reports.collect import ChildRun, Study
    from losslab.reports.why import calibrations

    def child(seed: int, count, conf, pos) -> ChildRun:
        c = ChildRun(f"r{seed}", f"a-s{seed}", "a", seed, "finished", "", {}, {}, {})
        c.calibration = {"count": count, "confidence_sum": conf, "positive_sum": pos}
        return c

    # two bins; seed 0: ECE = 0.5*|0.2-0.0| + 0.5*|0.8-1.0| = 0.2; seed 1: perfect, 0
    kids = [child(0, [2, 2], [0.4, 1.6], [0, 2]), child(1, [1, 3], [0.0, 3.0], [0, 3])]
    study = Study("uri", "e", "1", "p", "p", "run", {}, {}, ["a"], [0, 1], children=kids)
    (cal,) = calibrations(study)
    assert cal.per_seed == {0: pytest.approx(0.2), 1: pytest.approx(0.0)}
    assert cal.ece.mean == pytest.approx(0.1) and cal.ece.n == 2
    np.testing.assert_allclose(cal.count, [3, 5])
    np.testing.assert_allclose(cal.confidence, [0.4 / 3, 4.6 / 5])
    np.testing.assert_allclose(cal.accuracy, [0.0, 1.0])


def test_a_broken_calibration_file_is_ignored_not_fatal(tmp_path):
    from losslab.reports.collect import CALIBRATION_MAX_BYTES, read_calibration

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"count": [1, 2], "confidence_sum": [0.1, 1.5], "positive_sum": [0, 2], "ece": 0.1}))
    assert read_calibration(good) == {"count": [1.0, 2.0], "confidence_sum": [0.1, 1.5], "positive_sum": [0.0, 2.0]}
    cases = {
        "not json": "{", "a list": "[1, 2]", "unequal bins": json.dumps({"count": [1], "confidence_sum": [1, 2],
                                                                         "positive_sum": [1]}),
        "text values": json.dumps({"count": ["a"], "confidence_sum": [1], "positive_sum": [1]}),
        "oversized": " " * (CALIBRATION_MAX_BYTES + 1),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        assert read_calibration(path) is None, name
    assert read_calibration(tmp_path) is None  # a folder, not a file
