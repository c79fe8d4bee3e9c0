"""Where a win comes from: each headline score broken down by grid row, region and true-depth bin.

The per-image rows of ``val_per_image.csv`` carry each image's grid row (its depth layer) and, as
extra columns written by evaluation (``core/train/regions.py``), its scores restricted to the
regions of the scene (``mask_iou@boundary``, ``depth_delta1@near``, ...). For every variant and
every level of a breakdown this module takes **each seed's mean over the images** (NaN-skipping:
an image without pixels of a region does not count there), then the mean over seeds and its 95%
t-interval (:func:`losslab.reports.stats.summarize`); the trained model stays the unit of
replication. The sentence beneath each table is written from the same numbers: the leading
variant's gain over the runner-up on the level where it is largest and where it is smallest.

Breakdowns (skipped where the runs did not record the columns):

- by grid row: ``mask_iou``, ``depth_delta1``, ``depth_absrel`` per documented depth layer
  (rows 0-3 of the grid generator, fg 90/80/70/60 px at the 150 px source size);
- by region: ``mask_iou`` on the fg interior and the boundary band, ``mask_fp`` (share of pixels
  wrongly called foreground) on ground and wall or sky, ``depth_delta1`` and ``depth_absrel`` on all
  four regions;
- by true-depth bin: ``depth_delta1`` and ``depth_absrel`` on near, mid and far (thirds of
  ``data.max_depth``).

The variants are ordered by the same per-seed means over all images ("all images" level; for
``mask_fp``, which has none, by the mean of its levels), so the table, its ranking and its
sentence come from one computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from losslab.reports.collect import ChildRun, Study
from losslab.reports.stats import Summary, format_value, summarize

#: fg sizes of the grid generator's rows (px at the 150 px source size), as documented in docs/data.md.
DOCUMENTED_SIZES = (90, 80, 70, 60)
ALL = "all images"
REGION_LABELS = {"fg": "fg interior", "boundary": "fg boundary band", "ground": "ground",
                 "wall-sky": "wall or sky"}
BIN_LABELS = {"near": "near (< 1/3 max depth)", "mid": "mid (1/3-2/3)", "far": "far (> 2/3 max depth)"}
METRIC_LABELS = {"mask_iou": ("mask IoU", True), "mask_fp": ("mask false-positive share", False),
                 "depth_delta1": ("depth delta<1.25", True), "depth_absrel": ("depth AbsRel", False)}


@dataclass
class Breakdown:
    """One score of one breakdown: each variant's summary over seeds at each level."""

    kind: str  # "grid row", "region", "true-depth bin"
    metric: str  # the per-image column's base name, e.g. "mask_iou"
    label: str
    higher_is_better: bool
    levels: list[str]  # level labels, ALL first when present
    summaries: dict[str, dict[str, Summary]]  # variant -> level -> summary over seeds
    per_seed: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)  # variant -> level -> seed
    ranking: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.label} by {self.kind}"

    def gain(self, a: str, b: str, level: str) -> float:
        """How far ``a`` is ahead of ``b`` at ``level`` (positive: ``a`` better), from the seed means."""
        sa, sb = self.summaries[a].get(level), self.summaries[b].get(level)
        if sa is None or sb is None or sa.n == 0 or sb.n == 0:
            return math.nan
        diff = sa.mean - sb.mean
        return diff if self.higher_is_better else -diff


def _seed_means(children: Sequence[ChildRun], column: str,
                select: dict[str, tuple[str, int]] | None = None) -> dict[str, dict[int, float]]:
    """level -> seed -> that seed's NaN-skipping mean of ``column`` over the images of the level.

    ``select`` maps level label -> (id column, value); None gives the ``ALL`` level only.
    """
    out: dict[str, dict[int, float]] = {}
    for child in children:
        table = child.per_image
        if table is None or column not in table.columns:
            continue
        values = table.columns[column]
        choices = select if select is not None else {ALL: ("", 0)}
        for level, (id_col, wanted) in choices.items():
            if id_col:
                ids = table.ids.get(id_col)
                if ids is None:
                    continue
                picked = values[ids == wanted]
            else:
                picked = values
            finite = picked[np.isfinite(picked)]
            if finite.size:
                out.setdefault(level, {})[child.seed] = float(finite.mean())
    return out


def _by_variant(study: Study) -> dict[str, list[ChildRun]]:
    groups: dict[str, list[ChildRun]] = {v: [] for v in study.variants}
    for child in study.ok_children:
        groups.setdefault(child.variant, []).append(child)
    return groups


def _make(kind: str, metric: str, levels: list[str], per_seed: dict[str, dict[str, dict[int, float]]]
          ) -> Breakdown | None:
    label, hib = METRIC_LABELS[metric]
    present = [lv for lv in levels if any(lv in p for p in per_seed.values())]
    if not [lv for lv in present if lv != ALL]:
        return None
    summaries = {v: {lv: summarize(list(p[lv].values())) for lv in present if lv in p}
                 for v, p in per_seed.items() if p}
    # ordered by the mean over all images; a score without one (mask_fp) by the mean of its levels
    overall = {v: s[ALL].mean if ALL in s else float(np.mean([x.mean for x in s.values()]))
               for v, s in summaries.items() if s}
    ranking = sorted(overall, key=lambda v: -overall[v] if hib else overall[v])
    return Breakdown(kind, metric, label, hib, present, summaries, per_seed, ranking)


def row_labels(study: Study) -> list[str]:
    """``row 0 (90 px)`` ... from the config's grid sizes (the documented ones by default)."""
    data = study.config.get("data") if isinstance(study.config.get("data"), dict) else {}
    gen = data.get("generator") if isinstance(data, dict) else None
    params = gen.get("params") if isinstance(gen, dict) else None
    sizes = params.get("sizes") if isinstance(params, dict) and isinstance(params.get("sizes"), list) else None
    sizes = list(sizes or DOCUMENTED_SIZES)
    return [f"row {r} ({s} px)" for r, s in enumerate(sizes)]


def breakdowns(study: Study) -> list[Breakdown]:
    """Every breakdown the study's per-image rows support (see the module's docstring)."""
    groups = _by_variant(study)
    out: list[Breakdown] = []
    labels = row_labels(study)
    rows = {label: ("row", r) for r, label in enumerate(labels)}
    for metric in ("mask_iou", "depth_delta1", "depth_absrel"):
        per_seed = {}
        for v, children in groups.items():
            merged = _seed_means(children, metric)
            merged.update(_seed_means(children, metric, rows))
            per_seed[v] = merged
        made = _make("grid row", metric, [ALL, *labels], per_seed)
        if made:
            out.append(made)
    region_sets = {"mask_iou": ("fg", "boundary"), "mask_fp": ("ground", "wall-sky"),
                   "depth_delta1": tuple(REGION_LABELS), "depth_absrel": tuple(REGION_LABELS)}
    for kind, names, level_labels in (("region", region_sets, REGION_LABELS),
                                      ("true-depth bin", {"depth_delta1": tuple(BIN_LABELS),
                                                          "depth_absrel": tuple(BIN_LABELS)}, BIN_LABELS)):
        for metric, where in names.items():
            per_seed = {}
            for v, children in groups.items():
                merged = _seed_means(children, metric) if metric in ("mask_iou", "depth_delta1",
                                                                      "depth_absrel") else {}
                for w in where:
                    level = _seed_means(children, f"{metric}@{w}")
                    if ALL in level:
                        merged[level_labels[w]] = level[ALL]
                per_seed[v] = merged
            made = _make(kind, metric, [ALL, *(level_labels[w] for w in where)], per_seed)
            if made:
                out.append(made)
    return out


def sentence(b: Breakdown) -> str:
    """Where the leading variant's advantage lies, from the table's own numbers."""
    if len(b.ranking) < 2:
        return (f"{b.title}: one variant only ({b.ranking[0] if b.ranking else 'none'}); "
                "nothing to compare.")
    lead, second = b.ranking[0], b.ranking[1]
    gains = [(lv, b.gain(lead, second, lv)) for lv in b.levels if lv != ALL]
    gains = [(lv, g) for lv, g in gains if math.isfinite(g)]
    if not gains:
        return f"{b.title}: {lead} and {second} share no level with scores."
    gains.sort(key=lambda item: -item[1])
    (hi_lv, hi), (lo_lv, lo) = gains[0], gains[-1]
    units = "" if b.metric != "mask_fp" else " (share of pixels)"
    if hi_lv == lo_lv:
        where = f"{format_gain(hi)} on {hi_lv}"
    else:
        where = f"{format_gain(hi)} on {hi_lv} and {format_gain(lo)} on {lo_lv}"
    seeds = min((b.summaries[v][lv].n for v in (lead, second) for lv, _ in gains
                 if lv in b.summaries[v]), default=0)
    caveat = " (exploratory: fewer than 3 seeds)" if seeds < 3 else ""
    return (f"{lead}'s gain over {second} in {b.label}{units} is {where}{caveat}; "
            "positive means better for " + lead + ".")


def format_gain(x: float) -> str:
    """A signed difference to 3 significant digits: ``+0.05``, ``-0.00122``; a zero gain reads ``0``, never ``-0``."""
    return "0" if x == 0 else f"{x:+.3g}"


def table_rows(b: Breakdown) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per level, one column per variant (mean [95% interval] over seeds)."""
    headers = [b.kind, *b.ranking]
    if len(b.ranking) >= 2:
        headers.append(f"{b.ranking[0]} - {b.ranking[1]}")
    rows = []
    for level in b.levels:
        row = [level]
        for v in b.ranking:
            s = b.summaries[v].get(level)
            row.append(_cell(s))
        if len(b.ranking) >= 2:
            g = b.gain(b.ranking[0], b.ranking[1], level)
            row.append(format_gain(g) if math.isfinite(g) else "n/a")
        rows.append(row)
    return headers, rows


def _cell(s: Summary | None) -> str:
    if s is None or s.n == 0:
        return "n/a"
    if s.n < 2 or not math.isfinite(s.low):
        return f"{format_value(s.mean)} (1 seed)"
    return f"{format_value(s.mean)} [{format_value(s.low)}, {format_value(s.high)}]"
