"""Floors in a study: measured on the trainer's split, the below-floor rule, the verdicts, the config keys."""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from losslab.core.config import ConfigError, resolve_variants
from losslab.core.experiment.floors import (
    Floor,
    Floors,
    below_floor,
    chosen_baselines,
    interval,
    judge,
    measure_floors,
)
from losslab.core.plugin.manager import load_catalog
from tests.conftest import TINY


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def tiny(**overrides):
    from losslab.core.config import deep_merge

    return deep_merge(copy.deepcopy(TINY), overrides)


# -- the decision ------------------------------------------------------------------------------------


def test_interval_is_the_t_interval_of_the_mean_by_hand():
    # mean 0.92, sd 0.02, t(0.975, df=2) = 4.3027: half width 4.3027 * 0.02 / sqrt(3) = 0.04968
    low, high = interval([0.90, 0.92, 0.94])
    assert low == pytest.approx(0.92 - 0.049683, abs=1e-5) and high == pytest.approx(0.92 + 0.049683, abs=1e-5)
    assert interval([0.5]) is None


def test_below_floor_needs_the_mean_above_and_the_interval_clear_of_the_floor():
    seeds = [0.90, 0.92, 0.94]  # interval 0.8703 .. 0.9697
    assert not below_floor(seeds, 0.85, higher_is_better=True)
    assert below_floor(seeds, 0.88, higher_is_better=True)  # the mean beats it, the interval does not
    assert below_floor(seeds, 0.95, higher_is_better=True)
    absrel = [0.20, 0.22, 0.24]  # lower is better; interval 0.1703 .. 0.2697
    assert not below_floor(absrel, 0.30, higher_is_better=False)
    assert below_floor(absrel, 0.25, higher_is_better=False)
    assert below_floor([0.99], 0.10, higher_is_better=True)  # one seed: no interval, no claim
    assert below_floor([0.99, math.nan, 0.98], 0.10, higher_is_better=True)  # a failed seed
    assert below_floor([], 0.10, higher_is_better=True)


def floors_of(**scores: dict[str, float]) -> Floors:
    rows = [Floor(name, "mask" if any(k.startswith("val/mask") for k in s) else "depth", s)
            for name, s in scores.items()]
    higher = {"val/mask_iou": True, "val/depth_delta1": True, "val/depth_absrel": False}
    return Floors(rows, [1, 3], 10, 4, 0.0, higher)


FLOORS = floors_of(**{
    "image-difference": {"val/mask_iou": 0.908},
    "prior": {"val/mask_iou": 0.254},
    "median-map": {"val/depth_delta1": 0.724, "val/depth_absrel": 0.47},
    "global-median": {"val/depth_delta1": 0.07, "val/depth_absrel": 1.08},
})


def test_judge_crowns_only_variants_above_every_floor_and_says_none_in_plain_words():
    per_seed = {
        "bce": {"val/mask_iou": [0.95, 0.96, 0.97], "val/depth_delta1": [0.55, 0.56, 0.57],
                "val/depth_absrel": [0.5, 0.52, 0.51]},
        "dice": {"val/mask_iou": [0.98, 0.98, 0.99], "val/depth_delta1": [0.59, 0.58, 0.60],
                 "val/depth_absrel": [0.3, 0.31, 0.29]},
        "lucky": {"val/mask_iou": [0.99, 0.80, 0.99], "val/depth_delta1": [0.1, 0.1, 0.1],
                  "val/depth_absrel": [1.0, 1.0, 1.0]},
    }
    verdict = judge(per_seed, FLOORS)
    assert verdict.below == {"bce": ["depth"], "dice": ["depth"], "lucky": ["mask", "depth"]}
    mask = verdict.tasks["mask"]
    assert mask.winner == "dice" and mask.margin == pytest.approx(0.98333 - 0.908, abs=1e-4)
    assert mask.sentence == ("mask: dice ranks first above the floors, iou 0.983, 0.075 above the "
                             "image-difference floor (0.908)")
    assert "winner" not in mask.sentence  # whether dice is ahead of bce is the verdict's claim, not the floors'
    depth = verdict.tasks["depth"]
    assert depth.winner == "none"
    assert depth.sentence == "no variant learned the depth: best delta1 0.590 (dice), the median-map floor scores 0.724"


def test_judge_says_when_the_mean_beats_the_floor_but_the_seeds_do_not_exclude_it():
    per_seed = {"a": {"val/mask_iou": [0.99, 0.85, 0.95]}}
    verdict = judge(per_seed, FLOORS, trained=["mask"])
    assert verdict.tasks["mask"].winner == "none"
    assert "does not exclude the floor" in verdict.tasks["mask"].sentence
    assert "depth" not in verdict.tasks  # a task no variant trains is not judged


def test_judge_on_depth_needs_both_headlines():
    # delta1 clears the floor, AbsRel does not: below floor on depth
    per_seed = {"a": {"val/depth_delta1": [0.9, 0.91, 0.92], "val/depth_absrel": [0.6, 0.61, 0.62]}}
    assert judge(per_seed, FLOORS, trained=["depth"]).below == {"a": ["depth"]}
    missing = judge({"a": {"val/depth_delta1": [0.9, 0.91, 0.92]}}, FLOORS, trained=["depth"])
    assert missing.below == {"a": ["depth"]} and "absrel" in missing.tasks["depth"].sentence


# -- measuring -------------------------------------------------------------------------------------------


class Spy:
    """A depth baseline that records what it is shown."""

    task = "depth"
    seen: ClassVar[list[dict]] = []

    def __init__(self) -> None:
        self.fitted = 0

    def fit(self, batches) -> None:
        for batch in batches:
            self.fitted += len(batch["depth"])
            Spy.seen.append({"fit": sorted(batch)})

    def predict(self, batch):
        Spy.seen.append({"predict": sorted(batch), "fitted": self.fitted})
        return torch.full((batch["fg_bg"].shape[0], 1, *batch["fg_bg"].shape[2:]), 7.0)


def test_floors_fit_on_the_trainers_training_split_and_score_its_held_out_samples(tmp_path):
    from losslab.core.data.datasets import build_samples
    from losslab.core.train.trainer import Trainer

    catalog = load_catalog(fresh=True)  # its own: the spy stays out of the other tests' catalog
    catalog["baseline"].add("spy", Spy, task="depth")
    cfg = resolve_variants(tiny(baselines={"add": [{"name": "spy"}]}, metrics={"depth": ["rmse"]}), None,
                           catalog)[0]
    Spy.seen.clear()
    floors = measure_floors(cfg, catalog)
    trainer = Trainer(cfg, 0, catalog, tmp_path)
    samples = build_samples(cfg.data, catalog)
    held_out_bgs = sorted({int(b) for b in np.asarray(samples.bg_ids())[trainer.parts.val_idx]})
    assert floors.val_bgs == held_out_bgs and floors.n_val == len(trainer.parts.val_idx)
    assert floors.n_train == len(trainer.parts.train_idx)  # every training sample, not the per-epoch draw
    fits = [s for s in Spy.seen if "fit" in s]
    predicts = [s for s in Spy.seen if "predict" in s]
    assert predicts and all(p["predict"] == ["bg", "fg_bg"] for p in predicts)  # no held-out truth
    assert all(p["fitted"] == len(trainer.parts.train_idx) for p in predicts) and fits
    spy = next(f for f in floors.floors if f.name == "spy")
    # the depth metric of the trainer on a constant 7 m prediction: per image, then the mean
    trainer_rmse = []
    for batch in trainer.parts.val_loader:
        truth = batch["depth"] * cfg.data.max_depth
        trainer_rmse += catalog.create("metric", "rmse")(torch.full_like(truth, 7.0), truth).tolist()
    assert spy.scores["val/depth_rmse"] == pytest.approx(float(np.mean(trainer_rmse)), rel=1e-6)
    assert set(spy.scores) == {"val/depth_rmse", "val/depth_delta1", "val/depth_absrel"}  # headlines added
    assert {f.name for f in floors.floors} == {"image-difference", "prior", "median-map", "global-median", "spy"}


def test_fit_limit_fits_on_an_even_stride_of_the_training_split_only(catalog):
    from losslab.core.data.datasets import build_samples, held_out_split
    from losslab.core.experiment.floors import fit_sample

    catalog = load_catalog(fresh=True)
    catalog["baseline"].add("spy", Spy, task="depth")
    cfg = resolve_variants(tiny(baselines={"add": [{"name": "spy"}], "fit_limit": 40}, metrics={"depth": ["rmse"]}),
                           None, catalog)[0]
    samples = build_samples(cfg.data, catalog)
    train_idx, val_idx = held_out_split(samples, cfg.data)
    assert len(train_idx) > 40  # else the limit would not bite
    picked = fit_sample(train_idx, 40)
    assert len(picked) == 40 == len(set(picked.tolist()))
    assert set(picked.tolist()) <= set(train_idx.tolist()) and not set(picked.tolist()) & set(val_idx.tolist())
    bgs = np.asarray(samples.bg_ids())
    assert set(bgs[picked].tolist()) == set(bgs[train_idx].tolist())  # every training background stays in
    assert picked[0] == train_idx[0] and picked[-1] == train_idx[-1]
    assert fit_sample(train_idx, None).tolist() == train_idx.tolist()
    Spy.seen.clear()
    floors = measure_floors(cfg, catalog)
    assert floors.n_train == 40
    assert all(p["fitted"] == 40 for p in Spy.seen if "predict" in p)


def test_the_same_config_gives_the_same_floors(catalog):
    cfg = resolve_variants(tiny(), None, catalog)[0]
    a, b = measure_floors(cfg, catalog), measure_floors(cfg, catalog)
    assert [(f.name, f.scores) for f in a.floors] == [(f.name, f.scores) for f in b.floors]


def test_baselines_false_switches_the_floors_off_and_add_names_more(catalog):
    off = resolve_variants(tiny(baselines=False), None, catalog)[0]
    assert chosen_baselines(off, catalog) == []
    more = resolve_variants(tiny(baselines={"defaults": False, "add": [{"name": "image-difference",
                                                                          "params": {"threshold": 5}}]}),
                            None, catalog)[0]
    assert chosen_baselines(more, catalog) == [("image-difference", {"threshold": 5})]


def test_an_unknown_baseline_is_refused_with_the_nearest_names(catalog):
    with pytest.raises(ConfigError, match=r"baselines\.add\.0\.name: unknown baseline 'median-mapp'.*'median-map'"):
        resolve_variants(tiny(baselines={"add": [{"name": "median-mapp"}]}), None, catalog)


# -- loss pairings and variants equal to each other --------------------------------------------------------


def test_silog_gets_a_positive_depth_head_for_every_variant(catalog):
    raw = tiny(variants={"l1": {}, "silog": {"loss.depth": [{"name": "silog"}]}})
    cfgs = resolve_variants(raw, None, catalog)
    assert [c.model.params.get("depth_output") for c in cfgs] == ["log", "log"]  # one head for the whole study
    assert [c.model.params.get("depth_output") for c in resolve_variants(tiny(), None, catalog)] == [None]


def test_silog_on_a_linear_head_is_refused_with_the_reason(catalog):
    raw = tiny(loss={"depth": [{"name": "silog"}]}, model={"params": {"depth_output": "linear"}})
    with pytest.raises(ConfigError, match=r"loss\.depth\.0: 'silog' needs a depth that stays positive.*output: log"):
        resolve_variants(raw, None, catalog)


@pytest.mark.parametrize("name", ["gradient", "smoothness", "ssi", "ssi-gradient"])
def test_a_depth_loss_that_leaves_the_level_free_is_refused_alone_but_not_beside_l1(catalog, name):
    with pytest.raises(ConfigError, match=rf"loss\.depth: these terms cannot train the depth on their own.*{name}"):
        resolve_variants(tiny(loss={"depth": [{"name": name}]}), None, catalog)
    resolve_variants(tiny(loss={"depth": [{"name": name}, {"name": "l1"}]}), None, catalog)


def test_variants_made_equal_by_a_set_are_refused_naming_both_and_the_set(catalog):
    raw = tiny(variants={"l1": {}, "huber": {"loss.depth": [{"name": "huber"}]}})
    resolve_variants(raw, None, catalog)
    with pytest.raises(ConfigError) as info:
        resolve_variants(raw, ["loss.depth=[{name: l1, weight: 1.0}]"], catalog)
    message = str(info.value)
    assert "variants 'l1' and 'huber' resolve to the same training config" in message
    assert "--set loss.depth overrides what sets them apart (loss.depth)" in message


def test_variants_equal_by_themselves_are_refused(catalog):
    raw = tiny(variants={"a": {"train.lr": 0.01}, "b": {}})  # the base lr is 0.01 already
    with pytest.raises(ConfigError, match=r"variants 'a' and 'b' resolve to the same training config.*train\.lr"):
        resolve_variants(raw, None, catalog)


# -- the report -------------------------------------------------------------------------------------------


def test_the_report_shows_the_verdicts_and_the_floors_as_marked_rows_from_the_summary():
    from losslab.reports.collect import ChildRun, Study
    from losslab.reports.floors import floor_blocks
    from losslab.reports.render import Paragraph, Table

    def child(variant: str, seed: int, iou: float) -> ChildRun:
        return ChildRun(f"r{variant}{seed}", f"{variant}-s{seed}", variant, seed, "finished", "", {},
                        {"best/val/mask_iou": iou}, {})

    summary = {
        "floors": {"val_bgs": [1], "n_train": 10, "n_val": 4, "higher_is_better": {"val/mask_iou": True},
                   "rows": [{"name": "image-difference", "task": "mask", "scores": {"val/mask_iou": 0.9}}]},
        "claims": {"below_floor": {"a": [], "b": ["mask"]},
                   "tasks": {"mask": {"winner": "a", "sentence": "mask: a ranks first above the floors, iou 0.950",
                                      "margin": 0.05}}},
    }
    study = Study("uri", "e", "0", "p", "p", "run", {}, {}, ["a", "b"], [0, 1],
                  children=[child("a", 0, 0.94), child("a", 1, 0.96), child("b", 0, 0.5), child("b", 1, 0.6)],
                  summary=summary)
    blocks = floor_blocks(study)
    assert any(isinstance(b, Paragraph) and b.text == "mask: a ranks first above the floors, iou 0.950" for b in blocks)
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert [list(r) for r in table.rows] == [["a", "0.950", "above every floor"], ["b", "0.550", "below floor: mask"],
                                             ["[floor] image-difference", "0.900", "mask floor"]]
    study.summary = {"rows": []}  # a run without floors: no section
    assert floor_blocks(study) == []


def test_the_score_plot_draws_each_floor_as_a_labelled_line_from_the_numbers_the_tables_use():
    from losslab.reports.analysis import analyze
    from losslab.reports.collect import ChildRun, Study
    from losslab.reports.plots import FLOOR_LABEL, score_figure, score_plot

    def child(variant: str, seed: int, iou: float, delta1: float) -> ChildRun:
        return ChildRun(f"r{variant}{seed}", f"{variant}-s{seed}", variant, seed, "finished", "", {},
                        {"best/val/mask_iou": iou, "best/val/depth_delta1": delta1}, {})

    rows = [{"name": "image-difference", "task": "mask", "scores": {"val/mask_iou": 0.9}},
            {"name": "prior", "task": "mask", "scores": {"val/mask_iou": 0.25}},
            {"name": "median-map", "task": "depth", "scores": {"val/depth_delta1": 0.72}}]
    summary = {"floors": {"val_bgs": [1], "n_train": 10, "n_val": 4, "rows": rows},
               "claims": {"below_floor": {"a": ["depth"], "b": ["mask", "depth"]}}}
    study = Study("uri", "e", "0", "p", "p", "run", {}, {}, ["a", "b"], [0, 1, 2],
                  children=[child(v, s, iou + 0.01 * s, 0.5 + 0.01 * s)
                            for v, iou in (("a", 0.94), ("b", 0.5)) for s in range(3)],
                  summary=summary)
    analysis = analyze(study, n_boot=50)
    heads = [analysis.headline[t] for t in ("mask", "depth")]
    fig, _, floors = score_figure(heads, study.variants)
    (mask_ax, depth_ax) = [ax for ax in fig.axes if ax.get_visible()]

    def floor_lines(ax) -> dict[str, float]:
        return {line.get_label(): float(line.get_ydata()[0]) for line in ax.get_lines()
                if str(line.get_label()).startswith("floor: ")}

    # the same numbers as summary.json's floor rows (what the floor table shows), one line each, per task
    assert floor_lines(mask_ax) == {FLOOR_LABEL.format("image-difference"): 0.9, FLOOR_LABEL.format("prior"): 0.25}
    assert floor_lines(depth_ax) == {FLOOR_LABEL.format("median-map"): 0.72}
    assert {t.get_text() for t in depth_ax.texts} == {"median-map"}  # the line is named on the plot itself
    lo, hi = depth_ax.get_ylim()
    assert lo <= 0.72 <= hi  # a floor above every variant is still in view
    assert [t.get_text() for t in mask_ax.get_xticklabels()] == ["a", "b (below floor)"]
    assert [t.get_text() for t in depth_ax.get_xticklabels()] == ["a (below floor)", "b (below floor)"]
    assert floors == ["prior", "image-difference", "median-map"]
    assert "Dotted lines are the task's floors (prior, image-difference, median-map)" in score_plot(
        heads, study.variants).caption
    study.summary = {}  # a run without floors: no lines, no floor sentence
    plain = analyze(study, n_boot=50)
    fig, _, floors = score_figure([plain.headline["mask"]], study.variants)
    assert floors == [] and not floor_lines(fig.axes[0])
