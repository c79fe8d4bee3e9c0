"""The report's "Training label noise" section (reports/label_noise.py), from the runner's records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from losslab.core.experiment.label_noise import ALL, LabelNoise
from losslab.reports import label_noise, sections
from losslab.reports.analysis import analyze
from losslab.reports.collect import ChildRun, Study
from losslab.reports.render import Heading, Table, render_markdown

#: held-out IoU per seed: alpha ahead of diff by 0.02, 0.03, 0.025 (paired differences; mean 0.025)
IOU = {"alpha": {0: 0.90, 1: 0.92, 2: 0.91}, "diff": {0: 0.88, 1: 0.89, 2: 0.885}}
NOISE = LabelNoise("diff", "diff", "alpha", 256, 10240, 32,
                   wrong={ALL: 6699, "fg": 0, "boundary": 6677, "ground": 20, "wall-sky": 2},
                   pixels={ALL: 262144, "fg": 10107, "boundary": 29222, "ground": 120257, "wall-sky": 102558})


def make_study(records: list | None) -> Study:
    children = [ChildRun(run_id=f"{v}{s}", name=f"{v}-s{s}", variant=v, seed=s, status="finished", error="",
                         params={}, final={"best/val/mask_iou": iou}, histories={})
                for v, seeds in IOU.items() for s, iou in seeds.items()]
    summary = {"monitor": "val/mask_iou", "mode": "max", "rows": []}
    if records is not None:
        summary["label_noise"] = records
    return Study(tracking_uri="sqlite://", experiment_name="mask_gt_noise", experiment_id="1", parent_run_id="p",
                 parent_name="mask_gt_noise", kind="run", tags={}, params={}, variants=list(IOU), seeds=[0, 1, 2],
                 children=children, summary=summary)


def test_section_states_the_rates_by_region_and_the_effect_with_its_interval():
    study = make_study([NOISE.to_dict()])
    analysis = analyze(study, n_boot=200)
    blocks = label_noise.blocks(study, analysis)
    assert isinstance(blocks[0], Heading) and blocks[0].text == "Training label noise"
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.rows == [["diff", "diff", "alpha", "2.6%", "0%", "23%", "0.017%", "0.002%", "256 of 10240"]]
    text = " ".join(getattr(b, "text", "") for b in blocks)
    assert ("diff labels 2.6% of training pixels wrongly against alpha: 0% of the fg interior, 23% of the boundary "
            "band, 0.017% of the ground, 0.002% of the wall or sky (256 of 10240 training images at 32 px).") in text
    # alpha minus diff: the mean of the paired differences, positive (alpha is better), over 3 seeds
    effect = re.search(r"Effect on held-out mask IoU \(scored on alpha\), alpha minus diff: ([+-][0-9.]+)", text)
    assert effect and float(effect.group(1)) == pytest.approx(0.025, abs=1e-4)
    assert "95% interval" in text and "over 3 seeds, paired" in text
    assert "below the task's no-skill floor" not in text  # no floor recorded in this study


def test_effect_on_variants_below_a_floor_says_so():
    study = make_study([NOISE.to_dict()])
    analysis = analyze(study, n_boot=200)
    analysis.headline["mask"].below_floor = ["alpha", "diff"]
    text = " ".join(getattr(b, "text", "") for b in label_noise.blocks(study, analysis))
    assert "alpha and diff are below the task's no-skill floor, so this is the cost on a mask not yet learned" in text


def test_effect_when_only_the_noisy_variant_is_below_the_floor_says_the_labels_cost_the_skill():
    study = make_study([NOISE.to_dict()])
    analysis = analyze(study, n_boot=200)
    analysis.headline["mask"].below_floor = ["diff"]
    text = " ".join(getattr(b, "text", "") for b in label_noise.blocks(study, analysis))
    assert "diff is below the task's no-skill floor while alpha is above it" in text
    assert "not yet learned" not in text


def test_whole_report_includes_the_section_only_when_labels_differ(tmp_path: Path):
    noisy = make_study([NOISE.to_dict()])
    md = render_markdown(sections.build_document(noisy, analyze(noisy, n_boot=200)), tmp_path)
    assert "## Training label noise" in md and "23%" in md
    clean = make_study(None)
    md = render_markdown(sections.build_document(clean, analyze(clean, n_boot=200)), tmp_path)
    assert "Training label noise" not in md


def test_a_record_of_another_shape_is_left_out():
    assert label_noise.records(make_study([{"variant": "diff", "rates": 0.1}])) == []
