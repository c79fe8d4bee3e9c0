"""The report's "Training label noise" section: how wrong the training masks were, and what it cost.

Shown whenever some variant trained on a mask truth other than the one every variant is scored
against (``data.ground_truth.mask`` against ``data.ground_truth.val_mask``). The rates are the
runner's own records (``label_noise`` in the parent's ``summary.json``, logged as
``labelnoise/<variant>/<region>``; :mod:`losslab.core.experiment.label_noise`), and their sentence is
that module's :func:`~losslab.core.experiment.label_noise.describe`, so the terminal and the report
say the same words. The cost is the held-out mask headline (IoU) of each variant that trained on the
validation truth minus that of each that did not, read off the analysis's paired comparison: the
difference of the means over seeds, its 95% interval (the report's hierarchical bootstrap, seeds
then images) and the paired t-test over seeds.
"""

from __future__ import annotations

import math

from losslab.core.experiment.label_noise import ALL, LabelNoise, describe, percent
from losslab.core.names import LABEL_NOISE_KEY
from losslab.core.train.regions import REGIONS
from losslab.reports.analysis import EXPLORATORY, NOT_TESTED, SIGNIFICANT, Analysis, MetricResult
from losslab.reports.collect import Study
from losslab.reports.render import Block, Heading, Paragraph, Table
from losslab.reports.stats import format_p, format_value

LEVEL_LABELS = {ALL: "all pixels", "fg": "fg interior", "boundary": "boundary band", "ground": "ground",
                "wall-sky": "wall or sky"}


def records(study: Study) -> list[LabelNoise]:
    """The runner's label-noise records of the study (none for a study that trained on its validation truth)."""
    raw = (study.summary or {}).get(LABEL_NOISE_KEY) or []
    out = []
    for item in raw if isinstance(raw, list) else []:
        try:
            noise = LabelNoise(**item)
        except TypeError:
            continue  # a record of another version's shape: left out rather than misread
        if noise.variant in study.variants:
            out.append(noise)
    return out


def table(found: list[LabelNoise]) -> Table:
    levels = [ALL, *REGIONS]
    rows = []
    for n in found:
        rates = n.rates()
        rows.append([n.variant, n.train_truth, n.val_truth, *[percent(rates.get(lv, math.nan)) for lv in levels],
                     f"{n.n_images} of {n.n_train}"])
    return Table(["variant", "trained on", "scored on", *[LEVEL_LABELS[lv] for lv in levels], "training images"],
                 rows, caption=("Share of the training pixels whose training mask label differs from the validation "
                                "truth's, pooled over the images measured (regions of core/train/regions.py, from "
                                "the validation truth's mask and the true depth)"))


def effect_sentence(result: MetricResult, clean: str, noisy: str, noise: LabelNoise) -> str:
    """e.g. "Training on diff instead of alpha changed held-out mask IoU by -0.012 [-0.020, -0.004] ..."."""
    c = result.vs(clean, noisy)
    if c is None:
        return f"{clean} and {noisy} were not both scored on held-out {result.label}, so its cost is not measured."
    sign = 1.0 if c.better == clean else -1.0  # the difference as clean minus noisy, in the metric's good direction
    gain, low, high = (sign * c.gain, sign * c.gain_low, sign * c.gain_high)
    if sign < 0:
        low, high = high, low
    if not result.higher_is_better:
        gain, low, high = -gain, -high, -low  # back to the metric's own units: clean minus noisy
    span = f" [{format_value(low)}, {format_value(high)}]" if math.isfinite(low) and math.isfinite(high) else ""
    diff = f"{clean} minus {noisy}: {gain:+.4f}{span} (95% interval)"
    where = f"held-out {result.label} (scored on {noise.val_truth})"
    if c.status == SIGNIFICANT:
        verdict = (f"training on {noise.train_truth} labels {'lowered' if c.better == clean else 'raised'} it "
                   "significantly")
    elif c.status == EXPLORATORY:
        verdict = "too few seeds for a claim (exploratory)"
    elif c.status == NOT_TESTED:
        verdict = "not tested"
    else:
        verdict = f"training on {noise.train_truth} labels made no difference the seeds can tell apart"
    evidence = f"p = {format_p(c.seed_p_adj)} over {c.seed.n} seeds, paired" if c.seed.possible else "no t-test"
    below = [v for v in (clean, noisy) if v in result.below_floor]
    if clean in below:  # the clean labels did not train a working segmenter either: nothing to cost against
        caveat = (f" {' and '.join(below)} {'is' if len(below) == 1 else 'are'} below the task's no-skill floor, "
                  "so this is the cost on a mask not yet learned, not on a working segmenter.")
    elif below:  # the clean labels did: the noisy ones cost the model its skill
        caveat = (f" {noisy} is below the task's no-skill floor while {clean} is above it: the {noise.train_truth} "
                  "labels cost the model more than the whole margin a working segmenter has over the floor.")
    else:
        caveat = ""
    return f"Effect on {where}, {diff}: {verdict} ({evidence}).{caveat}"


def blocks(study: Study, analysis: Analysis) -> list[Block]:
    """The section, or nothing when every variant trained on the truth it is scored against."""
    found = records(study)
    if not found:
        return []
    out: list[Block] = [Heading("Training label noise"), Paragraph(
        "Some variants trained on a mask truth other than the one every variant is scored against. Before "
        "training, both producers were applied to the same training samples (a seeded draw; held-out images "
        "are never read) and their labels compared pixel by pixel.", css="note"), table(found)]
    out += [Paragraph(describe(n) + ".") for n in found]
    noisy = {n.variant for n in found}
    clean = [v for v in study.variants if v not in noisy]
    result = analysis.headline.get("mask")
    if result is None or not clean:
        out.append(Paragraph("No variant trained on the validation truth (or none was scored on the mask), so "
                             "the cost of the noise on held-out scores is not measured."))
        return out
    out += [Paragraph(effect_sentence(result, c, n.variant, n)) for n in found for c in clean]
    return out

