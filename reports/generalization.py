"""Fit or generalization: each headline score on training backgrounds beside the held-out one, per region.

A low held-out score has two opposite causes. The model may not fit the scenes at all (the training
backgrounds score low too: more steps, capacity or another loss may help), or it may fit them and not
carry the fit to backgrounds it has not seen (training high, held-out low: it learned something tied to
the training backgrounds, and more steps make that worse). Every run scores its best weights on
``train.fit_check`` training samples with the evaluation's own code (``core/train/fit_check.py``,
``train_per_image.csv``), so the two tables have the same columns.

For every variant, metric and level (all images, then each region of ``core/train/regions.py``) this
module takes each seed's NaN-skipping mean over the images of each table, the seed's gap (training minus
held-out, signed so that positive means the training backgrounds score better), then the mean over seeds
and its 95% t-interval (:func:`losslab.reports.stats.summarize`): the trained model is the unit of
replication. The sentences are written from the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from losslab.reports.breakdown import ALL, METRIC_LABELS, REGION_LABELS, format_gain
from losslab.reports.collect import ChildRun, PerImage, Study
from losslab.reports.stats import Summary, format_value, summarize

#: The levels each headline score is shown on (regions where the score is defined).
LEVELS = {"mask_iou": ("fg", "boundary"), "depth_delta1": tuple(REGION_LABELS),
          "depth_absrel": tuple(REGION_LABELS)}
#: A gap (in the metric's units) below this is "carries over": per-image noise at a few hundred images.
SMALL_GAP = 0.02


@dataclass
class Cell:
    """One variant at one level: training score, held-out score, gap (each a summary over seeds)."""

    train: Summary
    held: Summary
    gap: Summary


@dataclass
class FitTable:
    """One metric: variant -> level label -> :class:`Cell`; levels in display order, ``ALL`` first."""

    metric: str
    label: str
    higher_is_better: bool
    levels: list[str]
    cells: dict[str, dict[str, Cell]]


def _mean(table: PerImage | None, column: str) -> float:
    if table is None or column not in table.columns:
        return math.nan
    values = table.columns[column]
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _cell(children: list[ChildRun], column: str, higher: bool) -> Cell | None:
    train, held, gap = [], [], []
    for child in children:
        t, h = _mean(child.train_per_image, column), _mean(child.per_image, column)
        if math.isfinite(t) and math.isfinite(h):
            train.append(t)
            held.append(h)
            gap.append(t - h if higher else h - t)
    if not gap:
        return None
    return Cell(summarize(train), summarize(held), summarize(gap))


def fit_tables(study: Study) -> list[FitTable]:
    """One table per headline score the runs recorded on both sides; empty when none wrote training rows."""
    groups: dict[str, list[ChildRun]] = {}
    for child in study.ok_children:
        if child.train_per_image is not None and child.per_image is not None:
            groups.setdefault(child.variant, []).append(child)
    out: list[FitTable] = []
    for metric, regions in LEVELS.items():
        label, higher = METRIC_LABELS[metric]
        cells: dict[str, dict[str, Cell]] = {}
        for variant in study.variants:
            for level, column in [(ALL, metric), *((REGION_LABELS[r], f"{metric}@{r}") for r in regions)]:
                made = _cell(groups.get(variant, []), column, higher)
                if made is not None:
                    cells.setdefault(variant, {})[level] = made
        levels = [lv for lv in [ALL, *(REGION_LABELS[r] for r in regions)] if any(lv in c for c in cells.values())]
        if cells:
            out.append(FitTable(metric, label, higher, levels, cells))
    return out


def _interval(s: Summary) -> str:
    if s.n < 2 or not math.isfinite(s.low):
        return "1 seed"
    return f"[{format_value(s.low)}, {format_value(s.high)}]"


def table_rows(t: FitTable) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (level, variant): training, held-out, gap with its interval."""
    headers = ["level", "variant", "training bgs", "held-out bgs", "gap (training better: +)"]
    rows = []
    for level in t.levels:
        for variant, by_level in t.cells.items():
            c = by_level.get(level)
            if c is None:
                continue
            rows.append([level, variant, format_value(c.train.mean), format_value(c.held.mean),
                         f"{format_gain(c.gap.mean)} {_interval(c.gap)}"])
    return headers, rows


def _leader(t: FitTable) -> str:
    """The variant with the best held-out score over all images (the first level where none has ``ALL``)."""
    level = ALL if ALL in t.levels else t.levels[0]
    sign = 1.0 if t.higher_is_better else -1.0
    return max(t.cells, key=lambda v: sign * t.cells[v][level].held.mean if level in t.cells[v] else -math.inf)


def sentence(t: FitTable) -> str:
    """Where the gap is widest and whether it is shown, and where even the training scenes are not fitted.

    The gap is claimed only with at least 3 seeds and a 95% interval above zero; the numbers are the
    leading variant's (best held-out score over all images), the widest region by the mean over variants.
    """
    region_levels = [lv for lv in t.levels if lv != ALL]
    if not region_levels:
        return f"{t.label}: no region has scores on both training and held-out backgrounds."
    mean_gap = {lv: float(np.mean([c[lv].gap.mean for c in t.cells.values() if lv in c])) for lv in region_levels}
    widest = max(region_levels, key=lambda lv: mean_gap[lv])
    lead = _leader(t)
    mine = t.cells[lead]
    c = mine.get(widest)
    if c is None:
        return f"{t.label}: {lead} has no score on {widest}."
    numbers = (f"{lead}: {format_value(c.train.mean)} on training backgrounds, {format_value(c.held.mean)} held out, "
               f"gap {format_gain(c.gap.mean)} {_interval(c.gap)}")
    if c.gap.n < 3:
        verdict = "exploratory: fewer than 3 seeds, no claim"
    elif not (math.isfinite(c.gap.low) and c.gap.low > 0):
        verdict = "the interval includes no gap: what is learned there is not shown to stay behind"
    elif c.gap.mean < SMALL_GAP:
        verdict = f"a gap, but under {SMALL_GAP}: what is learned there carries over almost whole"
    else:
        verdict = ("a fit that does not carry over: there the model learned something tied to the backgrounds it "
                   "trained on, which more steps make worse and a rule that holds on every background (an input, "
                   "an architecture, an augmentation, more backgrounds) makes better")
    text = f"{t.label}: the gap is widest on {widest} ({numbers}; {verdict})."
    sign = 1.0 if t.higher_is_better else -1.0
    fitted = [lv for lv in region_levels if lv in mine]
    worst = min(fitted, key=lambda lv: sign * mine[lv].train.mean) if fitted else None
    if worst is not None and worst != widest:
        w = mine[worst]
        text += (f" The training backgrounds themselves score lowest on {worst} ({lead}: "
                 f"{format_value(w.train.mean)} on training, {format_value(w.held.mean)} held out): what is "
                 f"missing there is the fit, not its transfer.")
    return text
