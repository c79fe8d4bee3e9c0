"""Comparison reports, built from a fake MLflow store written exactly as docs/tracking.md says.

The store holds studies with known answers: one variant clearly better on masks while depth is
a dead heat by construction (symmetric per-image perturbations, so every paired test gives
p = 1), a study where nothing differs, one seed, one variant, and a tune study. Statistics are
checked against hand-worked numbers, and the HTML is rendered in headless Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from losslab.reports import stats

N_IMAGES = 40
EPOCHS = 4
_rng = np.random.default_rng(1234)
BASE_IOU = _rng.uniform(0.5, 0.8, N_IMAGES)
BASE_RMSE = _rng.uniform(0.2, 0.6, N_IMAGES)
_half = _rng.normal(0.0, 0.01, N_IMAGES // 2)
SYM = np.concatenate([_half, -_half])  # mean exactly 0 and symmetric: a Wilcoxon p of 1
SEED_OFFSET = {0: 0.0, 1: 0.01, 2: -0.005}
NOISE = {(v, s): _rng.normal(0.0, 0.004, N_IMAGES) for v in ("bce+dice",) for s in (0, 1, 2)}


# -- writing a study the way `lab run` does (docs/tracking.md) ---------------------------------------


def _per_image_csv(scores: dict[str, np.ndarray]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    names = list(scores)
    writer.writerow(["index", "bg", "fg", "flip", "row", "col", *names])
    for i in range(N_IMAGES):
        writer.writerow([100 + i, i % 7, i % 5, i % 2, 3, 4, *(repr(float(scores[n][i])) for n in names)])
    return out.getvalue()


def _samples(seed: int, quality: float) -> dict[str, np.ndarray]:
    k, h, w = 2, 12, 16
    rng = np.random.default_rng(seed)
    mask = np.zeros((k, h, w), np.uint8)
    mask[:, 3:9, 4:12] = 1
    depth = np.linspace(1.0, 5.0, h * w, dtype=np.float32).reshape(1, h, w).repeat(k, 0)
    noise = rng.normal(0, 1 - quality, (k, h, w)).astype(np.float32)
    return {
        "fg_bg": rng.integers(0, 255, (k, h, w, 3), dtype=np.uint8),
        "bg": rng.integers(0, 255, (k, h, w, 3), dtype=np.uint8),
        "mask": mask,
        "depth": depth,
        "pred_mask": np.clip(mask * quality + np.abs(noise) * 0.3, 0, 1).astype(np.float32),
        "pred_depth": (depth + noise).astype(np.float32),
        "index": np.array([100, 101]),
    }


def write_study(client, tmp: Path, experiment: str, variants: dict[str, dict], *, seeds: list[int],
                failed: tuple[str, int] | None = None, start_time: int = 1_000_000) -> str:
    """A parent run and its (variant, seed) children; ``variants[v](seed)`` gives per-image scores."""
    from mlflow.entities import Metric, Param

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=(tmp / "mlruns" / experiment).as_uri()
    )
    tags = {
        "losslab.role": "parent", "losslab.kind": "run",
        "losslab.variants": json.dumps(list(variants)), "losslab.seeds": json.dumps(seeds),
        "losslab.version": "0.1.0", "losslab.torch": "2.13.0", "losslab.cuda": "none",
        "losslab.git_commit": "abc1234",
    }
    parent = client.create_run(exp_id, start_time=start_time, tags=tags, run_name="study").info.run_id
    work = tmp / "work" / parent
    work.mkdir(parents=True)
    config = f"name: {experiment}\ntrain:\n  epochs: {EPOCHS}\n  monitor: val/mask_iou\n"
    (work / "config.yaml").write_text(config)
    client.log_artifact(parent, str(work / "config.yaml"))
    rows = []
    for v, scores_of in variants.items():
        for s in seeds:
            child_tags = {"losslab.role": "child", "losslab.variant": v, "losslab.seed": str(s),
                          "mlflow.parentRunId": parent}
            child = client.create_run(exp_id, tags=child_tags, run_name=f"{v}-s{s}").info.run_id
            if failed == (v, s):
                client.set_tag(child, "losslab.status", "failed")
                client.set_tag(child, "losslab.error", "loss became NaN at epoch 1")
                client.set_terminated(child, "FAILED")
                continue
            client.set_tag(child, "losslab.status", "finished")
            scores = scores_of(s)
            best = {f"val/{k}": float(np.mean(x)) for k, x in scores.items()}
            metrics = []
            for e in range(EPOCHS):
                frac = (e + 1) / EPOCHS
                hist = {
                    "train/loss": 1.0 / (e + 1) + 0.01 * s, "val/loss": 1.1 / (e + 1),
                    "train/mask/bce": 0.7 / (e + 1), "val/mask/bce": 0.8 / (e + 1),
                    "train/depth/l1": 0.3 / (e + 1), "val/depth/l1": 0.35 / (e + 1),
                    "val/mask_iou": best["val/mask_iou"] * frac,
                    "val/depth_rmse": best["val/depth_rmse"] / frac,
                    "time/epoch_s": 2.0, "perf/samples_per_s": 100.0 + 10 * s + e, "lr": 1e-3,
                }
                metrics += [Metric(k, val, 1000 + e, e) for k, val in hist.items()]
            metrics += [Metric(f"best/{k}", val, 2000, EPOCHS - 1) for k, val in best.items()]
            metrics.append(Metric("time/total_s", 8.0 + s, 2000, 0))
            params = [Param("train.epochs", str(EPOCHS)), Param("loss.mask.0.name", v)]
            client.log_batch(child, metrics=metrics, params=params)
            cdir = work / child
            cdir.mkdir()
            (cdir / "val_per_image.csv").write_text(_per_image_csv(scores))
            quality = 0.9 if v == "bce+dice" else 0.6
            np.savez(cdir / "val_samples.npz", **_samples(s, quality))
            client.log_artifacts(child, str(cdir))
            client.set_terminated(child, "FINISHED")
            rows.append({"variant": v, "seed": s, "run_id": child,
                         "metrics": {k: val for k, val in best.items()}})
    (work / "summary.json").write_text(json.dumps({"monitor": "val/mask_iou", "mode": "max", "rows": rows}))
    client.log_artifact(parent, str(work / "summary.json"))
    client.set_terminated(parent, "FINISHED")
    return parent


def write_tune(client, tmp: Path) -> str:
    from matplotlib.figure import Figure
    from mlflow.entities import Metric, Param

    exp_id = client.create_experiment("tune-study", artifact_location=(tmp / "mlruns" / "tune").as_uri())
    tags = {"losslab.role": "parent", "losslab.kind": "tune", "losslab.variants": "[]",
            "losslab.seeds": "[0]", "losslab.version": "0.1.0", "losslab.torch": "2.13.0",
            "losslab.cuda": "none", "losslab.git_commit": "abc1234"}
    parent = client.create_run(exp_id, tags=tags, run_name="tune").info.run_id
    work = tmp / "work" / parent
    (work / "optuna").mkdir(parents=True)
    (work / "config.yaml").write_text("name: tune-study\nsearch:\n  direction: minimize\n")
    client.log_artifact(parent, str(work / "config.yaml"))
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 1, 2], [3, 1, 2])
    fig.savefig(work / "optuna" / "optimization_history.png")
    (work / "optuna" / "param_importances.html").write_text(
        "<html><body><p id='imp'>parameter importances</p></body></html>")
    client.log_artifacts(parent, str(work / "optuna"), "optuna")
    objectives = {0: 0.30, 1: 0.25, 2: 0.40, 3: None, 4: 0.21}
    for number, objective in objectives.items():
        run = client.create_run(exp_id, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": parent, "losslab.trial": str(number),
            "losslab.trial_state": "complete" if objective is not None else "pruned"}).info.run_id
        metrics = [Metric("objective", objective, 0, 0)] if objective is not None else []
        client.log_batch(run, metrics=metrics, params=[
            Param("loss.mask.0.weight", str(round(0.1 * (number + 1), 3))), Param("train.epochs", "3")])
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)

    def clear(v: str):
        def scores(s: int) -> dict[str, np.ndarray]:
            iou = BASE_IOU + SEED_OFFSET[s]
            if v == "bce+dice":
                iou = iou + 0.05 + NOISE[(v, s)]
            elif v == "focal":
                iou = iou + SYM
            rmse = BASE_RMSE + SEED_OFFSET[s] + {"bce": 0 * SYM, "bce+dice": SYM, "focal": -SYM}[v]
            return {"mask_iou": iou, "depth_rmse": rmse}
        return scores

    def tie(v: str):
        jitter = {0: 0.004, 1: -0.004, 2: 0.0}

        def scores(s: int) -> dict[str, np.ndarray]:
            extra = (SYM + jitter[s]) if v == "b" else 0.0
            return {"mask_iou": BASE_IOU + SEED_OFFSET[s] + extra, "depth_rmse": BASE_RMSE - extra}
        return scores

    def one_seed(v: str):
        def scores(s: int) -> dict[str, np.ndarray]:
            gain = 0.03 + NOISE[("bce+dice", 0)] if v == "y" else 0.0
            return {"mask_iou": BASE_IOU + gain, "depth_rmse": BASE_RMSE}
        return scores

    ids = {
        "clear": write_study(client, tmp, "clear-win", {v: clear(v) for v in ("bce", "bce+dice", "focal")},
                             seeds=[0, 1, 2], failed=("focal", 2)),
        "tie_old": write_study(client, tmp, "tie", {"old": tie("a")}, seeds=[0], start_time=1_000),
        "tie": write_study(client, tmp, "tie", {v: tie(v) for v in ("a", "b")}, seeds=[0, 1, 2],
                           start_time=5_000_000),
        "one_seed": write_study(client, tmp, "one-seed", {v: one_seed(v) for v in ("x", "y")}, seeds=[0]),
        "solo": write_study(client, tmp, "solo", {"solo": one_seed("x")}, seeds=[0, 1]),
        "tune": write_tune(client, tmp),
    }
    return {"uri": uri, "tmp": tmp, "ids": ids}


@pytest.fixture(scope="module")
def clear_report(store: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from losslab.reports.build import build_report

    out = tmp_path_factory.mktemp("clear-report")
    paths = build_report("clear-win", out, tracking_uri=store["uri"])
    return {"paths": paths, "html": paths["html"].read_text(), "md": paths["md"].read_text(), "out": out}


def _analysis(store: dict, ref: str, tmp: Path):
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import collect

    study = collect(ref, tmp, tracking_uri=store["uri"])
    return study, analyze(study)


def _text(html: str) -> str:
    """Visible text of the HTML, whitespace-collapsed, entities of quotes undone."""
    text = re.sub(r"<[^>]+>", " ", html).replace("&#x27;", "'").replace("&quot;", '"').replace("&amp;", "&")
    return re.sub(r"\s+", " ", text)


# -- statistics against hand-worked numbers ----------------------------------------------------------


def test_summary_of_three_values_matches_hand_worked_t_interval() -> None:
    s = stats.summarize([0.80, 0.83, 0.86])
    # mean 0.83, sd 0.03; t(0.975, df=2) = 4.302653 -> half-width 4.302653 * 0.03 / sqrt(3) = 0.0745241
    assert s.n == 3
    assert s.mean == pytest.approx(0.83)
    assert s.std == pytest.approx(0.03)
    assert s.half_width == pytest.approx(0.0745241, abs=1e-6)
    assert (s.low, s.high) == pytest.approx((0.83 - 0.0745241, 0.83 + 0.0745241), abs=1e-6)


def test_summary_of_one_value_has_no_spread() -> None:
    s = stats.summarize([0.5])
    assert s.n == 1 and s.mean == 0.5
    assert math.isnan(s.std) and math.isnan(s.low)


def test_paired_seed_test_matches_closed_form_for_two_degrees_of_freedom() -> None:
    a = {0: 0.85, 1: 0.86, 2: 0.84}
    b = {0: 0.80, 1: 0.80, 2: 0.80}
    t = stats.paired_seed_test(a, b)
    # diffs 0.05, 0.06, 0.04: mean 0.05, sd 0.01, t = 0.05 / (0.01 / sqrt 3) = sqrt(75);
    # for df = 2 the two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(75/77).
    assert t.n == 3
    assert t.diff == pytest.approx(0.05)
    assert t.p == pytest.approx(1 - math.sqrt(75 / 77), rel=1e-6)


def test_paired_seed_test_pairs_by_seed_and_says_when_one_seed() -> None:
    t = stats.paired_seed_test({0: 1.0, 1: 2.0, 7: 9.0}, {1: 1.5, 0: 0.5})
    assert t.n == 2 and t.diff == pytest.approx(0.5)  # seed 7 has no partner
    one = stats.paired_seed_test({0: 1.0}, {0: 0.0})
    assert not one.possible and "one seed" in one.note


def test_wilcoxon_over_images_exact_small_case() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    t = stats.paired_image_test(a + np.array([1, 2, 3, 4, 5]), a)
    # all 5 differences positive: exact two-sided p = 2 / 2^5
    assert t.p == pytest.approx(2 / 32)
    assert stats.paired_image_test(a, a).p == 1.0


def test_holm_matches_hand_worked_adjustment() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([float("nan"), 0.02, 0.04])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.04])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_direction_of_metrics() -> None:
    from losslab.reports.analysis import higher_is_better

    assert higher_is_better("val/mask_iou")
    assert not higher_is_better("val/depth_rmse")
    assert not higher_is_better("val/depth_absrel")
    order = stats.rank_order({"a": 0.2, "b": 0.1, "c": float("nan")}, higher_is_better=False)
    assert order == ["b", "a", "c"]


# -- the clear win -----------------------------------------------------------------------------------


def test_clear_winner_is_named_with_small_p(store: dict, tmp_path: Path) -> None:
    study, analysis = _analysis(store, "clear-win", tmp_path)
    iou = next(r for r in analysis.metrics if r.key == "val/mask_iou")
    assert iou.ranking[0] == "bce+dice"
    win = iou.vs("bce+dice", "bce")
    assert win.better == "bce+dice" and win.significant
    assert win.seed_p_adj < 0.01 and win.image_p_adj < 1e-6
    # the gain is what the data were built with: 0.05 plus the seed-mean of the added noise
    expected = np.mean([0.05 + NOISE[("bce+dice", s)].mean() for s in (0, 1, 2)])
    assert win.gain == pytest.approx(expected, abs=1e-9)
    # focal = bce + a symmetric per-image perturbation: indistinguishable by construction
    tie = iou.vs("bce", "focal")
    # (equal up to rounding on every seed; per image only float rounding breaks the exact symmetry)
    assert not tie.significant and tie.seed.p == 1.0 and tie.image.p > 0.9
    # the failed seed is out of every statistic
    assert sorted(iou.per_seed["focal"]) == [0, 1]
    assert [c.name for c in study.failed_children] == ["focal-s2"]


def test_summary_numbers_match_the_stored_values(store: dict, tmp_path: Path) -> None:
    _, analysis = _analysis(store, "clear-win", tmp_path)
    iou = next(r for r in analysis.metrics if r.key == "val/mask_iou")
    rows = np.array([BASE_IOU + SEED_OFFSET[s] + 0.05 + NOISE[("bce+dice", s)] for s in (0, 1, 2)])
    values = rows.mean(axis=1)
    s = iou.summaries["bce+dice"]
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    # the interval is the two-level bootstrap of the seeds x images table the children logged
    assert (s.low, s.high) == pytest.approx(stats.hierarchical_bootstrap(rows))
    assert s.low < s.mean < s.high
    perf = {p.variant: p for p in analysis.perf}
    assert perf["bce"].total_s.mean == pytest.approx(9.0)  # 8 + seed over seeds 0, 1, 2
    assert perf["bce"].samples_per_s.mean == pytest.approx(100 + 10 + 1.5)  # epochs average 101.5 + 10 s
    assert (min(perf["bce"].total_values), max(perf["bce"].total_values)) == (8.0, 10.0)


def test_report_words_say_who_won_and_that_depth_is_a_tie(clear_report: dict) -> None:
    text = _text(clear_report["html"])
    # focal lost a seed: 2 in common with the others, so no claim against it, and no single winner
    assert ("No single winner on mask IoU: bce+dice ranked first but is significantly ahead of bce and has no "
            "claim against focal (fewer than 3 seeds in common).") in text
    m = re.search(r"bce\+dice beat bce by (0\.\d+) \[(0\.\d+), (0\.\d+)\] \(p = ([0-9.e-]+), 3 seeds, "
                  r"P\(improvement\) = 1\.00\)", text)
    assert m, text[:3000]
    assert float(m.group(1)) == pytest.approx(0.05, abs=0.005)
    assert float(m.group(2)) < float(m.group(1)) < float(m.group(3))
    assert float(m.group(4)) < 0.01
    assert "No difference between variants is significant on depth RMSE" in text
    assert "0.409 (range 0.0" not in text  # wall time as mean and range:
    assert "9.00 (range 8.00 to 10.0)" in text


def test_report_holds_tables_curves_grid_versions_and_config(clear_report: dict) -> None:
    html = clear_report["html"]
    for heading in ("How the claims are made", "Per metric", "Learning curves", "Wall time and throughput",
                    "Validation images across variants", "Failed runs", "Runs", "Provenance"):
        assert f">{heading}</h2>" in html
    assert "<summary>Every pair of variants, every metric</summary>" in html
    assert "<summary>Resolved configuration" in html
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # headline scores (the only two metrics, so no second score figure), two curve figures, two images
    assert len(imgs) == 5
    for data in imgs:
        import base64

        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss became NaN at epoch 1" in html and "abc1234" in html and "monitor: val/mask_iou" in html
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r'(?:src|href)="(?!data:|#)', html)


def test_markdown_links_pngs_beside_it(clear_report: dict) -> None:
    md = clear_report["md"]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        path = clear_report["out"] / link
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert "| 1 | bce+dice |" in md
    assert "bce+dice beat bce by" in md


# -- other shapes of study ---------------------------------------------------------------------------


def test_indistinguishable_variants_are_called_so(store: dict, tmp_path: Path) -> None:
    from losslab.reports.build import build_report

    paths = build_report("tie", tmp_path, formats=("md",), tracking_uri=store["uri"])
    assert set(paths) == {"md"}
    md = paths["md"].read_text()
    assert "No difference between variants is significant on mask IoU" in md
    assert "No single winner on mask IoU: a ranked first but cannot be told apart from b" in md
    assert "not significant" in md
    assert "Winner" not in md and " beat " not in md
    # by experiment name, the latest parent run is used (not the older one with variant 'old')
    assert store["ids"]["tie"] in md and "| old |" not in md


def test_one_seed_is_exploratory_however_small_the_per_image_p(store: dict, tmp_path: Path) -> None:
    """Issue 15: one model per variant on the same images gave "p = 8.8e-15"; the images are not replicates."""
    _, analysis = _analysis(store, store["ids"]["one_seed"], tmp_path)
    iou = next(r for r in analysis.metrics if r.key == "val/mask_iou")
    c = iou.vs("y", "x")
    assert not c.seed.possible and "one seed" in c.seed.note
    assert c.image.possible and c.image_p_adj < 1e-6  # shown, as description
    assert c.status == "exploratory" and not c.significant and iou.winner is None
    from losslab.reports.words import comparison_sentence, verdict_sentences, winner_tag

    assert comparison_sentence(c, iou).startswith("Exploratory: no claim on y against x (mask IoU)")
    assert verdict_sentences(analysis)[0].startswith("Exploratory: no claim: 1 seed for y")
    assert winner_tag(analysis) == "exploratory"


def test_one_variant_has_nothing_to_compare(store: dict, tmp_path: Path) -> None:
    from losslab.reports.words import task_paragraphs

    _, analysis = _analysis(store, "solo", tmp_path)
    words = " ".join(task_paragraphs(analysis))
    assert "Only one variant (solo)" in words and "nothing to compare" in words
    assert all(not r.comparisons for r in analysis.metrics)


def test_tune_study_lists_best_trials_and_optuna_plots(store: dict, tmp_path: Path) -> None:
    from losslab.reports.build import build_report

    paths = build_report(store["ids"]["tune"], tmp_path, tracking_uri=store["uri"])
    html = paths["html"].read_text()
    text = _text(html)
    # direction 'minimize' from the config: trial 4 (0.21) first, then 1, 0, 2; the pruned trial last
    order = [int(n) for n in re.findall(r"<tr><td>\d+</td><td>(\d)</td><td>(?:complete|pruned)", html)]
    assert order == [4, 1, 0, 2, 3]
    assert "the best of 5 trial(s) is trial 4 with objective = 0.210 (loss.mask.0.weight = 0.5)" in text
    assert "train.epochs" not in html.split("Best trials")[1].split("</thead>")[0]  # constant param hidden
    assert "Optuna: optimization history" in text
    assert "<iframe" in html and "parameter importances" in html
    md_dir = paths["md"].parent / "report_files"
    assert (md_dir / "optuna_param_importances.html").is_file()


def test_no_test_possible_is_said_plainly() -> None:
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import ChildRun, Study
    from losslab.reports.words import task_paragraphs

    def child(variant: str, iou: float) -> ChildRun:
        return ChildRun(run_id=variant, name=f"{variant}-s0", variant=variant, seed=0, status="finished",
                        error="", params={}, final={"best/val/mask_iou": iou}, histories={})

    study = Study(tracking_uri="memory", experiment_name="e", experiment_id="0", parent_run_id="p",
                  parent_name="p", kind="run", tags={}, params={}, variants=["a", "b"], seeds=[0],
                  children=[child("a", 0.7), child("b", 0.9)])
    analysis = analyze(study)
    (iou,) = analysis.metrics
    assert iou.ranking == ["b", "a"] and not iou.comparisons[0].tested
    words = " ".join(task_paragraphs(analysis))
    assert "Exploratory: no claim on mask IoU" in words and "not evidence" in words
    assert " won " not in words and " beat " not in words


def test_a_child_run_id_is_refused_with_the_parent_to_use(store: dict) -> None:
    from mlflow.tracking import MlflowClient

    from losslab.reports.collect import ReportError, make_client, resolve_parent

    parent = store["ids"]["solo"]
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("solo").experiment_id
    child = client.search_runs([exp], filter_string="tags.`losslab.role` = 'child'")[0].info.run_id
    with pytest.raises(ReportError, match=f"is a child run.*lab report {parent}"):
        resolve_parent(make_client(store["uri"]), child)


# -- entry points ------------------------------------------------------------------------------------


def test_log_report_puts_files_under_report_of_the_parent(store: dict, clear_report: dict) -> None:
    from mlflow.tracking import MlflowClient

    from losslab.reports.build import log_report

    parent = store["ids"]["clear"]
    log_report(parent, clear_report["paths"], tracking_uri=store["uri"])
    client = MlflowClient(tracking_uri=store["uri"])
    names = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/report_files"} <= names
    pngs = [f.path for f in client.list_artifacts(parent, "report/report_files")]
    assert len(pngs) == 5


def test_report_log_tags_the_parent_with_the_verdict_it_prints(store: dict, tmp_path: Path) -> None:
    import typer
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from losslab.core.cli.report_commands import report

    app = typer.Typer()
    app.command()(report)
    ok = CliRunner().invoke(app, ["tie", "--out", str(tmp_path), "--format", "html", "--log",
                                  "--tracking-uri", store["uri"]])
    assert ok.exit_code == 0, ok.output
    parent = MlflowClient(tracking_uri=store["uri"]).get_run(store["ids"]["tie"])
    verdict = parent.data.tags["losslab.verdict"]
    assert verdict.startswith("No single winner on mask IoU: a ranked first but cannot be told apart from b.")
    assert verdict in _text((tmp_path / "report.html").read_text())
    assert parent.data.tags["losslab.winner"] == "tied"
    iou_a = np.mean([np.mean(BASE_IOU + SEED_OFFSET[s]) for s in (0, 1, 2)])
    assert parent.data.metrics["mean/a/val/mask_iou"] == pytest.approx(iou_a)
    assert {"mean/b/val/mask_iou", "mean/a/val/depth_rmse", "mean/b/val/depth_rmse"} <= set(parent.data.metrics)


def test_cli_builds_and_explains_errors(store: dict, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from losslab.core.cli.report_commands import report

    app = typer.Typer()
    app.command()(report)
    runner = CliRunner()
    ok = runner.invoke(app, ["solo", "--out", str(tmp_path), "--format", "html",
                             "--tracking-uri", store["uri"]])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "report.html").is_file() and not (tmp_path / "report.md").exists()
    missing = runner.invoke(app, ["clear-wim", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    assert missing.exit_code == 1
    assert "neither an experiment name nor a run id" in missing.output and "'clear-win'" in missing.output
    bad = runner.invoke(app, ["solo", "--format", "pdf", "--tracking-uri", store["uri"]])
    assert bad.exit_code == 1 and "choose from html, md" in bad.output
    nowhere = tmp_path / "elsewhere" / "mlflow.db"
    absent = runner.invoke(app, ["solo", "--tracking-uri", f"sqlite:///{nowhere}", "--out", str(tmp_path)])
    assert absent.exit_code == 1 and "no MLflow store at" in absent.output
    assert not nowhere.parent.exists()  # nothing created on the way


# -- the HTML in a real browser ----------------------------------------------------------------------

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.setAttribute("data-img-widths", imgs.map(function (i) { return i.naturalWidth; }).join(","));
  document.body.setAttribute("data-rows", String(document.querySelectorAll("tbody tr").length));
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_args(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]


_FIRST_SCREEN = """<script>
window.addEventListener("load", function () {
  function bottom(el) { return el ? Math.round(el.getBoundingClientRect().bottom) : -1; }
  var b = document.body;
  b.setAttribute("data-verdict", bottom(document.querySelector("p.verdict")));
  b.setAttribute("data-summary", bottom(document.querySelector("table.summary")));
  b.setAttribute("data-plot", bottom(document.querySelector("figure img")));
  b.setAttribute("data-plot-name", document.querySelector("figure img").getAttribute("data-name"));
  b.setAttribute("data-height", String(window.innerHeight));
});
</script>"""


def test_first_screen_shows_verdict_summary_table_and_score_plot(clear_report: dict, tmp_path: Path) -> None:
    """At 1400 x 900 the verdict, the summary table and the score plot lie above the fold."""
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    html = clear_report["html"]
    probed = tmp_path / "probe.html"
    probed.write_text(html.replace("</body>", _FIRST_SCREEN + "</body>"))
    dom = subprocess.run([*_chromium_args(exe, tmp_path / "profile"), "--window-size=1400,900", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=60).stdout
    found = {k: re.search(rf'data-{k}="([^"]*)"', dom) for k in ("verdict", "summary", "plot", "plot-name")}
    assert all(found.values()), dom[:500]
    assert found["plot-name"].group(1) == "scores_headline"
    for key in ("verdict", "summary", "plot"):
        assert 0 < int(found[key].group(1)) <= 900, (key, found[key].group(1))
    # what the verdict says in plain words is what a reader sees first
    first_p = re.search(r'<p class="verdict">(.*?)</p>', dom, re.S).group(1)
    assert first_p.startswith("No single winner on mask IoU")
    shot = tmp_path / "first.png"
    subprocess.run([*_chromium_args(exe, tmp_path / "profile2"), "--window-size=1400,900",
                    f"--screenshot={shot}", clear_report["paths"]["html"].as_uri()], capture_output=True, timeout=60)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (900, 1400)
    assert float(pixels[..., :3].std()) > 0.05  # text, a table and a plot, not a blank page


def test_every_sentence_appears_once(clear_report: dict) -> None:
    text = _text(re.sub(r"<(pre|table)>.*?</\1>", " ", clear_report["html"], flags=re.S))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if len(s.strip()) > 40]
    repeated = {s for s in sentences if sentences.count(s) > 1}
    assert not repeated
    assert clear_report["html"].count("monitor: val/mask_iou") == 1  # the YAML once


def test_html_renders_in_headless_chromium(clear_report: dict, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    html = clear_report["html"]
    probed = tmp_path / "probe.html"  # a copy with a probe script; the report itself has no script
    probed.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run([*_chromium_args(exe, tmp_path / "profile"), "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    widths = re.search(r'data-img-widths="([0-9,]*)"', dom)
    assert widths, dom[:500]
    assert [int(w) > 0 for w in widths.group(1).split(",")] == [True] * 5
    rows = int(re.search(r'data-rows="(\d+)"', dom).group(1))
    assert rows == html.count("<tr><td>")
    assert "bce+dice beat bce by" in dom


def test_each_variant_lists_only_its_departures_from_the_shared_base() -> None:
    import yaml

    from losslab.reports.analysis import variant_differences

    docs = [
        {"variant": "l1", "loss": {"depth": [{"name": "l1", "weight": 1.0, "params": {}}]}},
        {"variant": "silog", "loss": {"depth": [{"name": "silog", "weight": 1.0, "params": {"variance_focus": 0.0}}]}},
        {"variant": "l1+ssim", "loss": {"depth": [{"name": "l1", "weight": 1.0, "params": {}},
                                                  {"name": "ssim", "weight": 1.0, "params": {}}]}},
    ]
    text = yaml.safe_dump_all(docs)
    diffs = variant_differences(text, ["l1", "silog", "l1+ssim"])
    # by hand: two of three share loss.depth.0.name=l1 (the base); only l1+ssim has a second term; empty
    # params are no params, and the weight, the same everywhere, is nobody's difference
    assert diffs == {"l1": {},
                     "silog": {"loss.depth.0.name": "silog", "loss.depth.0.params.variance_focus": "0.0"},
                     "l1+ssim": {"loss.depth.1.name": "ssim", "loss.depth.1.weight": "1.0"}}
    # no strictly most common value: every variant lists its own
    two = yaml.safe_dump_all(docs[:2])
    assert variant_differences(two, [])["l1"] == {"loss.depth.0.name": "l1"}
