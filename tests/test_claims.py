"""Claims a reviewer can trust: the statistics against scipy and hand-worked values, and no sentence
of a report contradicting its tables over many random synthetic studies.

The studies are built in memory as :class:`~losslab.reports.collect.Study` objects (per-seed,
per-image metric tables drawn with numpy), so hundreds of them are analysed in seconds; what is
checked is the text the report prints against the cells of the tables it prints beside it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from losslab.core.experiment.sequential import SEQUENTIAL_TAG, make_plan, obrien_fleming_spent
from losslab.reports import stats
from losslab.reports.analysis import (
    EXPLORATORY,
    NOT_SIGNIFICANT,
    NOT_TESTED,
    SIGNIFICANT,
    analyze,
)
from losslab.reports.collect import ChildRun, PerImage, Study
from losslab.reports.sections import MARK_BEHIND, MARK_BEST, MARK_NO_CLAIM, MARK_TIED, pairwise_table, summary_table
from losslab.reports.words import metric_paragraph, verdict_sentences, winner_tag

# -- statistics against scipy and hand-worked values ----------------------------------------------------


def test_paired_seed_test_is_scipys_ttest_rel() -> None:
    from scipy import stats as sst

    a = {0: 0.71, 1: 0.69, 2: 0.74, 3: 0.70}
    b = {0: 0.66, 1: 0.68, 2: 0.69, 3: 0.64, 7: 0.99}  # seed 7 has no partner and is left out
    t = stats.paired_seed_test(a, b)
    ref = sst.ttest_rel([0.71, 0.69, 0.74, 0.70], [0.66, 0.68, 0.69, 0.64])
    assert t.n == 4 and t.p == pytest.approx(ref.pvalue) and t.diff == pytest.approx(0.0425)


def test_wilcoxon_over_images_is_scipys() -> None:
    from scipy import stats as sst

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=30), rng.uniform(size=30)
    assert stats.paired_image_test(a, b).p == pytest.approx(sst.wilcoxon(a - b).pvalue)


def test_probability_of_improvement_is_mann_whitney_u_over_n_m() -> None:
    from scipy import stats as sst

    a, b = [0.7, 0.72, 0.7, 0.75], [0.69, 0.7, 0.71]
    u = sst.mannwhitneyu(a, b).statistic  # counts a > b, ties as a half
    assert stats.probability_of_improvement(a, b) == pytest.approx(u / 12)
    # by hand: 0.7 beats 0.69 and ties 0.7 (1.5, twice), 0.72 beats all (3), 0.75 beats all (3)
    assert stats.probability_of_improvement(a, b) == pytest.approx((1.5 + 3 + 1.5 + 3) / 12)
    assert stats.probability_of_improvement([1, 2], [1, 2]) == 0.5


def test_interquartile_mean_by_hand_and_only_from_five_seeds() -> None:
    # 8 values sorted -50, 1, 2, 3, 4, 5, 6, 100; 25% = 2 trimmed from each end: mean of 2, 3, 4, 5
    assert stats.interquartile_mean([100, 1, 6, 2, 5, 3, 4, -50]) == pytest.approx(3.5)
    assert math.isnan(stats.interquartile_mean([1, 2, 3, 4]))


def test_one_level_bootstrap_matches_scipys_percentile_bootstrap() -> None:
    from scipy import stats as sst

    x = np.array([0.61, 0.64, 0.58, 0.66, 0.63, 0.60, 0.65, 0.62, 0.59, 0.67])
    low, high = stats.hierarchical_bootstrap(x.reshape(-1, 1), n_boot=20000)
    ref = sst.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.002) and high == pytest.approx(ref.high, abs=0.002)


def test_two_level_bootstrap_sees_both_sources_of_noise() -> None:
    rng = np.random.default_rng(3)
    seed_effects = rng.normal(0, 0.02, (5, 1))
    flat = np.repeat(seed_effects, 40, axis=1) + 0.6  # images identical: only the seeds vary
    low1, high1 = stats.hierarchical_bootstrap(seed_effects + 0.6, n_boot=4000)
    low2, high2 = stats.hierarchical_bootstrap(flat, n_boot=4000)
    assert (low2, high2) == pytest.approx((low1, high1), abs=0.002)
    noisy = flat + rng.normal(0, 0.2, flat.shape)  # image noise widens the interval
    low3, high3 = stats.hierarchical_bootstrap(noisy, n_boot=4000)
    assert high3 - low3 > 1.3 * (high2 - low2)
    # NaN cells are left out, not propagated
    noisy[0, 0] = np.nan
    assert all(math.isfinite(v) for v in stats.hierarchical_bootstrap(noisy, n_boot=500))


def test_detectable_gap_has_the_stated_power_by_simulation() -> None:
    from scipy import stats as sst

    sd, n, alpha = 0.01, 5, 0.05
    gap = stats.detectable_gap(sd, n, alpha)
    rng = np.random.default_rng(7)
    d = rng.normal(gap, sd, (40000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = float(np.mean(np.abs(t) > sst.t.ppf(1 - alpha / 2, n - 1)))
    assert power == pytest.approx(0.8, abs=0.01)
    # large n: the normal approximation (z_{0.975} + z_{0.8}) * sd / sqrt(n)
    assert stats.detectable_gap(sd, 400, alpha) == pytest.approx((1.959964 + 0.841621) * sd / 20, rel=0.01)


def test_obrien_fleming_spending_by_hand_and_summing_to_alpha() -> None:
    assert obrien_fleming_spent(1.0, 0.05) == pytest.approx(0.05)
    assert obrien_fleming_spent(0.5, 0.05) == pytest.approx(0.00557, abs=2e-5)  # Lan-DeMets table value
    plan = make_plan([0, 1, 2], 10)
    assert plan.looks[0] == 3 and plan.looks[-1] == 10 and len(plan.looks) <= 4
    assert sum(plan.alphas) == pytest.approx(0.05) and all(a > 0 for a in plan.alphas)
    assert plan.seeds == tuple(range(10)) and plan.seeds_at(0) == (0, 1, 2)


def test_the_sequential_plan_keeps_false_claims_under_five_percent() -> None:
    """Null studies (no true gap) tested at every look of the plan: at most 5% ever claim a difference."""
    from scipy import stats as sst

    plan = make_plan([0, 1, 2], 9)
    rng = np.random.default_rng(11)
    d = rng.normal(0.0, 1.0, (20000, plan.looks[-1]))
    ever = np.zeros(len(d), dtype=bool)
    naive = np.zeros(len(d), dtype=bool)
    for n, level in zip(plan.looks, plan.alphas, strict=True):
        p = sst.ttest_1samp(d[:, :n], 0.0, axis=1).pvalue
        ever |= p < level
        naive |= p < 0.05
    assert ever.mean() < 0.05 + 0.005
    assert naive.mean() > 0.08  # testing each look at 5% would not be valid: that is why alpha is spent


# -- random synthetic studies: words never contradict tables ---------------------------------------------

NAMES = ["bce", "dice", "bce+dice", "focal-edge", "l1.5", "v_6"]


def _study(rng: np.random.Generator, n_var: int, n_seeds: int, plan: bool = False) -> Study:
    variants = list(rng.choice(NAMES, n_var, replace=False))
    seeds = list(range(n_seeds))
    n_img = int(rng.integers(4, 25))
    base = rng.uniform(0.3, 0.8, n_img)
    shape = rng.choice(["tie", "gap", "mixed", "one-sided"])
    effects = {}
    for i, v in enumerate(variants):
        if shape == "tie":
            effects[v] = 0.0
        elif shape == "gap":
            effects[v] = 0.05 * i
        elif shape == "one-sided":
            effects[v] = 0.2 if i == 0 else 0.0
        else:
            effects[v] = float(rng.choice([0.0, 0.0, 0.01, 0.1]))
    seed_sd = float(rng.choice([0.0, 0.002, 0.02]))
    children = []
    for v in variants:
        for s in seeds:
            if rng.uniform() < 0.08:
                children.append(ChildRun(f"{v}{s}", f"{v}-s{s}", v, s, "failed", "NaN loss", {}, {}, {}))
                continue
            iou = base + effects[v] + rng.normal(0, seed_sd) + rng.normal(0, 0.01, n_img)
            rmse = 0.5 - base / 2 + rng.normal(0, seed_sd, n_img)
            if shape == "tie" and seed_sd == 0.0:
                iou, rmse = base.copy(), 0.5 - base / 2  # exact ties
            if rng.uniform() < 0.05:
                iou[int(rng.integers(n_img))] = np.nan
            final = {"best/val/mask_iou": float(np.nanmean(iou)), "best/val/depth_rmse": float(np.mean(rmse))}
            if rng.uniform() < 0.05:
                final["best/val/depth_rmse"] = float("nan")
            per_image = PerImage(np.arange(n_img) + 100, {"mask_iou": iou, "depth_rmse": rmse},
                                 {"bg": np.arange(n_img) % 3 * 1.0})
            children.append(ChildRun(f"{v}{s}", f"{v}-s{s}", v, s, "finished", "", {}, final, {}, per_image))
    tags = {}
    if plan and n_seeds >= 5:
        p = make_plan(seeds[:3], n_seeds)
        tags[SEQUENTIAL_TAG] = p.to_json()
    return Study("memory", "e", "0", "p", "p", "run", tags, {}, variants, seeds, children,
                 config_text="name: e\ntrain:\n  monitor: val/mask_iou\n")


def _alt(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def _section(text: str, start: str, ends: list[str]) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    j = min([k for k in (text.find(e, i + len(start)) for e in ends) if k >= 0] or [len(text)])
    return text[i + len(start): j]


def _claims(paragraph: str, label: str, names: list[str]) -> dict[tuple[str, str], str]:
    """The status each pair is given in a metric's paragraph, parsed from the words."""
    alt = _alt(names)
    heads = {SIGNIFICANT: f"Significant on {label}: ", NOT_SIGNIFICANT: f"Not distinguishable on {label}: ",
             EXPLORATORY: f"Exploratory: no claim on {label} (fewer than", NOT_TESTED: f"Not compared on {label}: "}
    ends = [*heads.values(), f"Power on {label}: "]
    found: dict[tuple[str, str], str] = {}
    patterns = {SIGNIFICANT: rf"(?:^|; )({alt}) beat ({alt}) by ", NOT_SIGNIFICANT: rf"(?:^|; )({alt}) and ({alt}) \(",
                EXPLORATORY: rf"(?:: |; )({alt}) and ({alt}) \(", NOT_TESTED: rf"(?:^|; )({alt}) and ({alt}) \("}
    for status, head in heads.items():
        body = _section(paragraph, head, [e for e in ends if e != head])
        for m in re.finditer(patterns[status], body):
            pair = (m.group(1), m.group(2))
            assert pair not in found, f"{pair} named twice: {paragraph}"
            found[pair] = status
    return found


def _check_standing(words: str, verdict: str, r, cells: dict, names: list[str]) -> None:
    """'X ranked first on M ... but is significantly ahead of A, cannot be told apart from B and has no
    claim against C': each name list agrees with the table, in the paragraph and in the verdict."""
    alt = _alt(names)
    label = re.escape(r.label)
    for text, pattern in ((words, rf"({alt}) ranked first on {label} \([^)]*\) but (.*?)\.(?: |$)"),
                          (verdict, rf"[Oo]n {label}:? ({alt}) ranked first but (.*?)\.(?: |$|;)")):
        m = re.search(pattern, text)
        if not m or m.group(1) != r.best:
            continue
        standing = m.group(2)
        for phrase, status in (("is significantly ahead of ", (SIGNIFICANT,)),
                               ("cannot be told apart from ", (NOT_SIGNIFICANT,)),
                               ("has no claim against ", (EXPLORATORY, NOT_TESTED))):
            stop = r"(?:,? and cannot|, cannot|,? and has no claim| \(fewer|$)"
            part = re.search(rf"{re.escape(phrase)}(.*?){stop}", standing)
            if part:
                for v in re.findall(alt, part.group(1)):
                    assert cells[(r.best, v)] in status, (text, cells)


@pytest.mark.parametrize("chunk", range(3))
def test_no_sentence_contradicts_a_table_cell(chunk: int) -> None:
    rng = np.random.default_rng(1000 + chunk)
    for _ in range(30):
        study = _study(rng, int(rng.integers(2, 7)), int(rng.integers(1, 11)), plan=bool(rng.uniform() < 0.3))
        analysis = analyze(study, n_boot=60)
        verdict = " ".join(verdict_sentences(analysis))
        summary = summary_table(analysis, study.variants)
        for r in analysis.metrics:
            table = pairwise_table([r])
            cells = {(row[1], row[2]): row[-1] for row in table.rows} if table else {}
            words = metric_paragraph(r)
            claims = _claims(words, r.label, study.variants)
            assert claims == cells, f"{words}\n{cells}"  # every pair, once, with the table's status
            best = r.best
            if f"{best} is significantly ahead of every other variant on {r.label}" in words:
                assert all(cells[(best, v)] == SIGNIFICANT for v in r.ranking[1:])
            if f"No difference between variants is significant on {r.label}" in words:
                assert SIGNIFICANT not in cells.values()
            _check_standing(words, verdict, r, cells, study.variants)
            if r.n_seeds < 3 and len(r.ranking) > 1:
                assert "Exploratory: no claim" in words
                assert SIGNIFICANT not in cells.values()
            if r is analysis.verdict_metric and summary is not None:
                col = 2 + list(analysis.headline.values()).index(r)
                for row in summary.rows:
                    v = row[0]
                    if v not in r.summaries:
                        continue
                    expected = {SIGNIFICANT: MARK_BEHIND, NOT_SIGNIFICANT: MARK_TIED}.get(
                        cells.get((best, v), ""), MARK_NO_CLAIM)
                    wanted = MARK_BEST if v == best else expected
                    assert row[col].endswith(f"({wanted})"), (row, cells)
        r = analysis.verdict_metric
        if r is None or len(r.ranking) < 2:
            continue
        cells = {(row[1], row[2]): row[-1] for row in pairwise_table([r]).rows}
        ahead_of_all = all(cells[(r.best, v)] == SIGNIFICANT for v in r.ranking[1:])
        assert verdict.startswith(f"Winner: {r.best},") == (ahead_of_all and not r.exploratory), (verdict, cells)
        assert (winner_tag(analysis) == r.best) == verdict.startswith("Winner:")
        if r.exploratory:
            assert all(status in (EXPLORATORY, NOT_TESTED) for status in cells.values()) or r.n_seeds < 3
            assert verdict.startswith("Exploratory: no claim") and winner_tag(analysis) == "exploratory"
        elif not ahead_of_all:
            assert winner_tag(analysis) == "tied" and verdict.startswith("No single winner")


def test_a_gap_between_two_trailing_variants_is_said_although_the_best_ties_both() -> None:
    """The bug of issue 15: a significant pair the verdict's sentence forgot because it skips the best."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.4, 0.7, 20)
    children = []
    for s in range(5):
        wobble = rng.normal(0, 0.03)  # the top variant is noisy, the other two move together
        for v, iou in (("top", base + 0.06 + wobble), ("mid", base + 0.05 + 0.001 * s), ("low", base + 0.001 * s)):
            final = {"best/val/mask_iou": float(np.mean(iou))}
            children.append(ChildRun(f"{v}{s}", f"{v}-s{s}", v, s, "finished", "", {}, final, {},
                                     PerImage(np.arange(20), {"mask_iou": iou})))
    study = Study("memory", "e", "0", "p", "p", "run", {}, {}, ["top", "mid", "low"], list(range(5)), children)
    r = analyze(study, n_boot=200).metrics[0]
    assert r.vs("mid", "low").significant
    words = metric_paragraph(r)
    assert "mid beat low" in words and "No difference" not in words


def test_variant_names_become_valid_mlflow_metric_keys_and_the_winner_line_names_only_a_winner() -> None:
    from mlflow.utils.validation import _validate_metric_name

    from losslab.reports.build import Conclusion, metric_name_for_mlflow

    key = metric_name_for_mlflow("mean/bce+dice/val/mask_iou")
    assert key == "mean/bce_dice/val/mask_iou"
    _validate_metric_name(key)  # raises on a key MLflow refuses
    assert Conclusion(["..."], "dice", "val/mask_iou").winner_line == "winner: dice (by val/mask_iou)"
    for tag in ("tied", "exploratory", "none"):
        assert not Conclusion(["..."], tag, "val/mask_iou").winner_line.startswith("winner:")


def _floored_study(floor: float) -> Study:
    """'top' is significantly ahead of 'low' on every seed; the image-difference floor scores ``floor``."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 0.8, 12)
    children = []
    for s in range(4):
        for v, gain in (("top", 0.10), ("low", 0.0)):
            iou = base + gain + rng.normal(0, 0.002, 12)
            final = {"best/val/mask_iou": float(np.mean(iou))}
            children.append(ChildRun(f"{v}{s}", f"{v}-s{s}", v, s, "finished", "", {}, final, {},
                                     PerImage(np.arange(12), {"mask_iou": iou})))
    top_mean = float(np.mean([c.final["best/val/mask_iou"] for c in children if c.variant == "top"]))
    below = {"top": ["mask"] if floor >= top_mean else [], "low": ["mask"]}
    summary = {"floors": {"rows": [{"name": "image-difference", "task": "mask",
                                    "scores": {"val/mask_iou": floor}}]},
               "claims": {"below_floor": below}}
    return Study("memory", "e", "0", "p", "p", "run", {}, {}, ["top", "low"], list(range(4)), children,
                 config_text="name: e\ntrain:\n  monitor: val/mask_iou\n", summary=summary)


def test_a_variant_below_its_floor_never_wins_and_every_output_says_so() -> None:
    """Issue 22: significance over the other variants is not enough; the best must also beat the floor."""
    above = analyze(_floored_study(0.2), n_boot=200)
    assert above.winner == "top" and winner_tag(above) == "top"
    assert above.verdict_metric is not None and above.verdict_metric.below_floor == ["low"]

    study = _floored_study(0.99)
    analysis = analyze(study, n_boot=200)
    r = analysis.verdict_metric
    assert r is not None and r.vs("top", "low").significant      # ahead of the other variant ...
    assert r.best_below_floor and analysis.winner is None       # ... but not of the floor: no winner
    assert winner_tag(analysis) == "none"
    verdict = " ".join(verdict_sentences(analysis))
    assert "No winner on mask IoU: top ranked first but did not beat" in verdict
    assert "image-difference floor's 0.99" in verdict and "Winner:" not in verdict
    table = summary_table(analysis, study.variants)
    assert table is not None
    cells = {row[0]: row for row in table.rows}
    assert "below floor" in cells["top"][2] and "below floor" in cells["low"][2]
    assert cells["image-difference (reference)"][2] == "0.990"   # the floor's own row, never ranked
