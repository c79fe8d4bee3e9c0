"""The sentences of a report: the verdict, and per metric what beat what, by how much, how sure.

Every sentence is read off the :class:`~losslab.reports.analysis.StudyAnalysis`: the status of
each comparison (significant, not significant, exploratory, not tested) is decided there once,
and the words, the tables, the terminal and the parent run's tags all print that status. Each
pair of variants is named in exactly one clause of its metric's paragraph, under the heading of
its status, so no sentence can say less (or more) than the pairwise table.
"""

from __future__ import annotations

import math

from losslab.reports.analysis import (
    EXPLORATORY,
    NOT_SIGNIFICANT,
    NOT_TESTED,
    SIGNIFICANT,
    Comparison,
    MetricResult,
    StudyAnalysis,
    TuneResult,
)
from losslab.reports.stats import ALPHA, MIN_SEEDS_FOR_CLAIM, POWER, detectable_gap, format_p, format_value

EXPLORATORY_NOTE = "Exploratory: no claim"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _names(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def interval(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" [{format_value(low)}, {format_value(high)}]"


def _gap(c: Comparison) -> str:
    return f"{format_value(c.gain)}{interval(c.gain_low, c.gain_high)}"


def _evidence(c: Comparison) -> str:
    """``p = 0.004, 3 seeds, P(better) = 0.89``: the seed-level evidence, Holm-adjusted."""
    parts = [f"p = {format_p(c.seed_p_adj)}" if c.seed.possible else "no t-test possible", _seeds(c.seed.n)]
    if math.isfinite(c.effect):
        parts.append(f"P(improvement) = {c.effect:.2f}")
    if c.alpha != ALPHA:  # a sequential study: the looks decide, not the final p
        parts.append(f"decided at the {c.decided_at}-seed look" if c.decided_at is not None
                     else "undecided at every look")
    return ", ".join(parts)


def comparison_sentence(c: Comparison, result: MetricResult) -> str:
    """One pair on its own, e.g. "bce+dice beat bce on mask IoU by 0.031 [0.024, 0.038] (p = 0.004, 3 seeds)"."""
    if c.status == SIGNIFICANT:
        return f"{c.better} beat {c.worse} on {result.label} by {_gap(c)} ({_evidence(c)})."
    if c.status == NOT_SIGNIFICANT:
        return (f"{c.better} and {c.worse} were not distinguishable on {result.label}: "
                f"difference {_gap(c)} ({_evidence(c)}).")
    if c.status == EXPLORATORY:
        return (f"{EXPLORATORY_NOTE} on {c.better} against {c.worse} ({result.label}): "
                f"{_seeds(c.seed.n)} in common, difference {format_value(c.gain)}.")
    reasons = "; ".join(r for r in (c.seed.note, c.image.note) if r) or "no paired data"
    return f"{c.better} and {c.worse} could not be compared on {result.label} ({reasons})."


def lead_sentence(result: MetricResult) -> str:
    """What one metric says overall: a winner, a tie at the top, nothing to separate, or no claim."""
    if not result.ranking:
        return f"No finished run logged {result.label}."
    best = result.ranking[0]
    s = result.summaries[best]
    scored = f"{format_value(s.mean)}{interval(s.low, s.high)}"
    if len(result.ranking) == 1:
        return (f"Only one variant ({best}) has {result.label}, so there is nothing to compare: "
                f"it scored {scored} over {_seeds(s.n)}.")
    if result.exploratory:
        return (f"{EXPLORATORY_NOTE} on {result.label}: with {_too_few(result)} seed-to-seed variation cannot "
                f"be tested, and {best} ranking first by its mean ({format_value(s.mean)}) is not evidence of "
                "a difference.")
    if result.winner:
        return (f"{best} is significantly ahead of every other variant on {result.label} "
                f"({scored} over {_seeds(s.n)}).")
    if not any(c.significant for c in result.comparisons):
        return (f"No difference between variants is significant on {result.label}; {best} ranked first by "
                f"its mean ({format_value(s.mean)}).")
    return f"{best} ranked first on {result.label} ({scored}) but {_not_ahead(result)}."


def _not_ahead(r: MetricResult) -> str:
    """'cannot be told apart from a and b, and has no claim against c (fewer than 3 seeds)'."""
    tied = [v for v in r.tied_with_best if v != r.best]
    ahead = [v for v in r.ranking[1:] if (c := r.vs(r.best, v)) is not None and c.significant]
    parts = []
    if ahead:
        parts.append(f"is significantly ahead of {_names(ahead)}")
    if tied:
        parts.append(f"cannot be told apart from {_names(tied)}")
    if r.no_claim_against_best:
        parts.append(f"has no claim against {_names(r.no_claim_against_best)} (fewer than "
                     f"{MIN_SEEDS_FOR_CLAIM} seeds in common)")
    if len(parts) > 2:
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return " and ".join(parts) or "is not significantly ahead of every other variant"


def _too_few(r: MetricResult) -> str:
    """Why a metric is exploratory, e.g. '2 seeds per variant (at least 3 are needed),'."""
    if r.n_seeds < MIN_SEEDS_FOR_CLAIM:
        return f"{_seeds(r.n_seeds)} for {r.best} (at least {MIN_SEEDS_FOR_CLAIM} are needed),"
    return f"fewer than {MIN_SEEDS_FOR_CLAIM} seeds shared by any two variants,"


def _clauses(result: MetricResult) -> list[str]:
    """One sentence per status, naming every pair of that status once."""
    by = {status: [c for c in result.comparisons if c.status == status]
          for status in (SIGNIFICANT, NOT_SIGNIFICANT, EXPLORATORY, NOT_TESTED)}
    out = []
    if by[SIGNIFICANT]:
        out.append(f"Significant on {result.label}: " + "; ".join(
            f"{c.better} beat {c.worse} by {_gap(c)} ({_evidence(c)})" for c in by[SIGNIFICANT]) + ".")
    if by[NOT_SIGNIFICANT]:
        out.append(f"Not distinguishable on {result.label}: " + "; ".join(
            f"{c.better} and {c.worse} (difference {_gap(c)}, {_evidence(c)})" for c in by[NOT_SIGNIFICANT]) + ".")
    if by[EXPLORATORY]:
        out.append(f"{EXPLORATORY_NOTE} on {result.label} (fewer than {MIN_SEEDS_FOR_CLAIM} seeds in common): "
                   + "; ".join(f"{c.better} and {c.worse} (difference {format_value(c.gain)}, "
                               f"{_seeds(c.seed.n)})" for c in by[EXPLORATORY]) + ".")
    if by[NOT_TESTED]:
        out.append(f"Not compared on {result.label}: " + "; ".join(
            f"{c.better} and {c.worse} ({'; '.join(r for r in (c.seed.note, c.image.note) if r) or 'no paired data'})"
            for c in by[NOT_TESTED]) + ".")
    return out


def seeds_needed(spread: float, gap: float, alpha: float, power: float = POWER, limit: int = 100) -> int | None:
    """The fewest seeds whose paired t-test detects ``gap`` with ``power``, or None beyond ``limit``."""
    if not (spread > 0 and math.isfinite(gap) and gap > 0):
        return None
    if detectable_gap(spread, limit, alpha, power) > gap:
        return None
    low, high = 1, limit  # the detectable gap shrinks as seeds grow: bisect for the first n that suffices
    while high - low > 1:
        mid = (low + high) // 2
        if detectable_gap(spread, mid, alpha, power) <= gap:
            high = mid
        else:
            low = mid
    return high


def power_sentence(result: MetricResult) -> str | None:
    """How small a gap this study could have seen, from the spread of its paired per-seed differences."""
    against = [c for c in result.against_best() if c.seed.n >= 2 and math.isfinite(c.spread) and c.spread > 0]
    if result.exploratory or not against:
        return None
    spread = float(sorted(c.spread for c in against)[len(against) // 2])
    n = min(c.seed.n for c in against)
    gap = detectable_gap(spread, n, result.per_test_alpha)
    text = (f"Power on {result.label}: with this seed-to-seed spread (s.d. of paired per-seed differences "
            f"{format_value(spread)}), {n} seeds detect a gap of {format_value(gap)} at {POWER:.0%} power "
            f"(two-sided paired t-test at {result.per_test_alpha:.2g}, 5% split over the pairs)")
    open_ = [c for c in against if not c.significant and c.gain > 0]
    if open_:
        closest = min(open_, key=lambda c: c.gain)
        needed = seeds_needed(spread, closest.gain, result.per_test_alpha)
        text += (f"; the smallest undecided gap, {format_value(closest.gain)} ({closest.better} over "
                 f"{closest.worse}), would need " + (f"about {needed} seeds" if needed else "more than 100 seeds"))
    return text + "."


def metric_paragraph(result: MetricResult) -> str:
    """Everything one metric says, each pair of variants named once."""
    parts = [lead_sentence(result), *_clauses(result)]
    power = power_sentence(result)
    if power:
        parts.append(power)
    return " ".join(parts)


def verdict_sentences(analysis: StudyAnalysis) -> list[str]:
    """The verdict in one or two sentences: on the monitored metric, then the other task's headline."""
    r = analysis.verdict_metric
    if analysis.tune is not None and (r is None or not r.ranking):
        return [tune_sentence(analysis.tune)]
    if r is None or not r.ranking:
        return ["No finished child run logged a held-out metric (val/mask_* or val/depth_*), so there is "
                "nothing to rank."]
    best = r.best
    if len(r.ranking) == 1:
        first = f"Only one variant ({best}) finished, so there is nothing to compare."
    elif r.exploratory:
        first = (f"{EXPLORATORY_NOTE}: {_too_few(r)} so {best} ranking first on {r.label} by its mean is "
                 "not evidence.")
    elif r.best_below_floor:
        first = (f"No winner on {r.label}: {best} ranked first but did not beat the task's no-skill floor"
                 f"{_floor_note(r)}, and a variant below its floor never wins.")
    elif r.winner:
        first = (f"Winner: {best}, significantly ahead of every other variant on {r.label} "
                 f"(paired t-tests over {_seeds(r.n_seeds)}, Holm-corrected).")
    else:
        first = f"No single winner on {r.label}: {best} ranked first but {_not_ahead(r)}."
    out = [first]
    others = [m for m in analysis.headline.values() if m is not r and len(m.ranking) > 1 and not r.exploratory]
    if others:
        bits = []
        for m in others:
            if m.exploratory:
                bits.append(f"on {m.label} no claim (too few seeds)")
            elif m.best_below_floor:
                bits.append(f"on {m.label} no winner: {m.best} ranked first but is below the floor{_floor_note(m)}")
            elif m.winner:
                bits.append(f"on {m.label} {m.winner} is significantly ahead of every other")
            else:
                bits.append(f"on {m.label} {m.best} ranked first but {_not_ahead(m)}")
        out.append(bits[0][0].upper() + bits[0][1:] + "".join(f"; {b}" for b in bits[1:]) + ".")
    return out


def winner_tag(analysis: StudyAnalysis) -> str:
    """``<variant>`` when significantly ahead of every other and above the floors, else ``tied``,
    ``exploratory`` or ``none`` (nothing to rank, or the best is below its task's floor)."""
    r = analysis.verdict_metric
    if r is None or len(r.ranking) < 2:
        return "none"
    if r.exploratory:
        return "exploratory"
    if r.best_below_floor:
        return "none"
    return r.winner or "tied"


def _floor_note(r: MetricResult) -> str:
    """`` (its mean 0.901 against the image-difference floor's 0.918)`` from the metric's reference rows."""
    if not r.references or r.best is None:
        return ""
    sign = 1.0 if r.higher_is_better else -1.0
    name, floor = max(r.references.items(), key=lambda item: sign * item[1].mean)
    return f" (its mean {format_value(r.summaries[r.best].mean)} against the {name} floor's {format_value(floor.mean)})"


def task_paragraphs(analysis: StudyAnalysis) -> list[str]:
    """Each headline metric's paragraph, e.g. "Mask task: bce+dice is significantly ahead ..."."""
    out = [f"{task.capitalize()} task: {metric_paragraph(result)}" for task, result in analysis.headline.items()]
    if analysis.tune is not None:
        out.append(tune_sentence(analysis.tune))
    elif not out:
        out.append("No finished child run logged a held-out metric (val/mask_* or val/depth_*), so "
                   "there is nothing to rank.")
    return out


def method_note(n_seeds: int, n_images: int) -> str:
    """How the claims are made: unit of replication, intervals, tests, corrections."""
    return (
        "The trained model (one per seed) is the unit of replication. Each score "
        "is the value at a run's best epoch; the mean is over seeds, and the 95% interval in brackets is a "
        "two-level bootstrap (seeds resampled, then validation images). Two variants are compared by a "
        "paired t-test over the seeds both ran, Holm-corrected over every pair of variants per metric; "
        f"'significant' means a corrected p below {ALPHA:g}. P(improvement) is the chance that a random "
        "seed of the better variant beats a random seed of the other (Vargha-Delaney A). Per-image "
        "Wilcoxon tests are shown in the tables as descriptive only: the images scored by one model are "
        f"not independent replicates. Fewer than {MIN_SEEDS_FOR_CLAIM} seeds: exploratory, no claim. "
        f"This study: up to {_seeds(n_seeds)} per variant and {n_images} paired validation image(s)."
    )


def tune_sentence(tune: TuneResult) -> str:
    """The best trial of a tune study, with its objective(s) and the parameters that varied."""
    scored = [t for t in tune.trials if all(k in t.objectives for k in tune.objective_keys)]
    if not tune.objective_keys or not scored:
        return f"Tune study: {len(tune.trials)} trial(s), none with an objective logged yet."
    best = scored[0]
    label = f"trial {best.number}" if best.number is not None else best.name
    values = ", ".join(f"{k} = {format_value(best.objectives[k])}" for k in tune.objective_keys)
    params = ", ".join(f"{k} = {best.params[k]}" for k in tune.varying_params if k in best.params)
    if len(tune.objective_keys) == 1:
        lead = "Tune study: the best of"
    else:
        lead = f"Tune study: first by {tune.objective_keys[0]} (see the Pareto front column) of"
    tail = f" ({params})." if params else "."
    return f"{lead} {len(tune.trials)} trial(s) is {label} with {values}{tail}"
