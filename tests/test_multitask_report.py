"""The report's multi-task section: Δm as LibMTL defines it, the Pareto front, ranks on both tasks."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from losslab.reports import multitask
from losslab.reports.collect import ChildRun, Study
from losslab.reports.render import Heading, Image, Table

MASK_DEPTH = {"val/mask_iou": True, "val/mask_dice": True, "val/depth_delta1": True, "val/depth_rmse": False}


def child(variant: str, seed: int, weighting: str, **metrics: float) -> ChildRun:
    final = {f"best/val/{k}": v for k, v in metrics.items()}
    return ChildRun(run_id=f"{variant}{seed}", name=f"{variant}-s{seed}", variant=variant, seed=seed,
                    status="finished", error="", params={"loss.weighting.name": weighting}, final=final,
                    histories={})


def study(children: list[ChildRun], variants: list[str]) -> Study:
    return Study(tracking_uri="sqlite://", experiment_name="w", experiment_id="1", parent_run_id="p",
                 parent_name="w", kind="run", tags={}, params={}, variants=variants,
                 seeds=sorted({c.seed for c in children}), children=children)


def test_delta_m_hand_worked():
    """Baseline IoU 0.8, Dice 0.9, delta1 0.5, RMSE 4; the variant: IoU 0.88 (+10%), Dice 0.9 (0),
    delta1 0.55 (+10%), RMSE 3 (25% lower, lower is better: +25%).
    Δm = 100 * ((0.10 + 0) / 2 + (0.10 + 0.25) / 2) / 2 = 11.25%."""
    base = {"val/mask_iou": 0.8, "val/mask_dice": 0.9, "val/depth_delta1": 0.5, "val/depth_rmse": 4.0}
    new = {"val/mask_iou": 0.88, "val/mask_dice": 0.9, "val/depth_delta1": 0.55, "val/depth_rmse": 3.0}
    metrics = {"mask": ["val/mask_iou", "val/mask_dice"], "depth": ["val/depth_delta1", "val/depth_rmse"]}
    assert multitask.delta_m(new, base, metrics, MASK_DEPTH) == pytest.approx(11.25)
    assert multitask.delta_m(base, base, metrics, MASK_DEPTH) == 0.0


def test_delta_m_matches_libmtls_count_improvement_on_random_results():
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LibMTL is not installed (pip install --no-deps LibMTL==1.1.5): it is the reference here")
    path = next(iter(spec.submodule_search_locations)) + "/utils.py"
    utils_spec = importlib.util.spec_from_file_location("libmtl_utils_reference", path)
    utils = importlib.util.module_from_spec(utils_spec)
    utils_spec.loader.exec_module(utils)
    rng = np.random.default_rng(0)
    metrics = {"mask": ["val/mask_iou", "val/mask_dice"], "depth": ["val/depth_delta1", "val/depth_rmse"]}
    for _ in range(5):
        base = {k: float(rng.uniform(0.2, 5)) for k in MASK_DEPTH}
        new = {k: float(rng.uniform(0.2, 5)) for k in MASK_DEPTH}
        ours = multitask.delta_m(new, base, metrics, MASK_DEPTH)
        theirs = utils.count_improvement({t: [base[k] for k in ks] for t, ks in metrics.items()},
                                         {t: [new[k] for k in ks] for t, ks in metrics.items()},
                                         {t: [int(MASK_DEPTH[k]) for k in ks] for t, ks in metrics.items()})
        assert ours == pytest.approx(100 * theirs)


def test_pareto_front_keeps_the_undominated_and_ties():
    points = {"a": (0.9, 0.5), "b": (0.8, 0.6), "c": (0.7, 0.4), "d": (0.9, 0.5)}
    assert multitask.pareto_front(points) == ["a", "d", "b"]
    assert multitask.pareto_front({"a": (0.9, 0.5), "c": (0.7, 0.4)}) == ["a"]


def test_section_ranks_both_tasks_and_takes_the_first_static_variant_as_baseline():
    runs = []
    for seed in range(3):
        runs += [child("original", seed, "static", mask_iou=0.80, mask_dice=0.90, depth_delta1=0.50,
                       depth_rmse=4.0),
                 child("pcgrad", seed, "pcgrad", mask_iou=0.88, mask_dice=0.90, depth_delta1=0.55,
                       depth_rmse=3.0),
                 child("dwa", seed, "dwa", mask_iou=0.85 + 0.01 * seed, mask_dice=0.9, depth_delta1=0.40,
                       depth_rmse=5.0)]
    s = study(runs, ["original", "pcgrad", "dwa"])
    m = multitask.analyze(s)
    assert m.baseline == "original" and not m.exploratory
    assert m.delta_m["pcgrad"] == pytest.approx(11.25)
    assert m.delta_m["original"] == 0.0
    assert m.front == ["pcgrad"]  # beats both others on both headline metrics
    assert m.rank["pcgrad"] == {"mask": 1, "depth": 1} and m.rank["dwa"] == {"mask": 2, "depth": 3}
    assert m.means["dwa"]["val/mask_iou"] == pytest.approx(0.86)
    blocks = multitask.section(s)
    assert isinstance(blocks[0], Heading) and isinstance(blocks[1], Table)
    assert any(isinstance(b, Image) for b in blocks)
    text = " ".join(b.text for b in blocks if hasattr(b, "text") and not isinstance(b, Heading))
    assert "pcgrad +11.25%" in text and "Exploratory" not in text
    # ordered by the sum of ranks: pcgrad 1 + 1; dwa 2 + 3 and original 3 + 2 tie, the better mask rank first
    assert [row[0] for row in blocks[1].rows] == ["pcgrad", "dwa", "original"]


def test_no_section_without_a_learned_weighting_and_exploratory_below_three_seeds():
    plain = [child("a", 0, "static", mask_iou=0.8, depth_delta1=0.5), child("b", 0, "static", mask_iou=0.7,
                                                                            depth_delta1=0.6)]
    assert multitask.section(study(plain, ["a", "b"])) == []
    few = [child("a", 0, "static", mask_iou=0.8, depth_delta1=0.5), child("b", 0, "gradnorm", mask_iou=0.7,
                                                                          depth_delta1=0.6)]
    m = multitask.analyze(study(few, ["a", "b"]))
    assert m.exploratory and multitask.words(m)[0].startswith("Exploratory")
    assert math.isclose(m.delta_m["b"], 100 * ((0.7 - 0.8) / 0.8 + (0.6 - 0.5) / 0.5) / 2)
