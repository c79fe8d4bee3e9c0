"""The sentences of a report: who won on each task, by how much, and how sure we are.

A ranking by means alone is what a reviewer rejects, so every claim here comes from the
Holm-corrected tests of :mod:`losslab.reports.analysis`, and a difference the tests cannot
separate from noise is called that in plain words rather than left for the reader to infer.
"""

from __future__ import annotations

from losslab.reports.analysis import Analysis, Comparison, MetricResult, TuneResult
from losslab.reports.stats import ALPHA, format_p, format_pm, format_value


def _evidence(c: Comparison) -> str:
    """``p = 0.004, 3 seeds; images: p = 2.1e-06, n = 64`` (Holm-adjusted p-values)."""
    parts = []
    if c.seed.possible:
        parts.append(f"p = {format_p(c.seed_p_adj)}, {c.seed.n} seeds")
    elif c.seed.n:
        parts.append(f"{c.seed.n} seed{'s' if c.seed.n != 1 else ''}, no test over seeds")
    if c.image.possible:
        parts.append(f"images: p = {format_p(c.image_p_adj)}, n = {c.image.n}")
    return "; ".join(parts)


def _amount(c: Comparison) -> str:
    return format_pm(c.gain, c.gain_half_width)


def comparison_sentence(c: Comparison, result: MetricResult) -> str:
    """One pair in words, e.g. "BCE+Dice beat BCE on mask IoU by 0.031 +/- 0.008 (p = 0.004, 3 seeds)"."""
    direction = "" if result.higher_is_better else "lower is better; "
    if not c.tested:
        reasons = [r for r in (c.seed.note, c.image.note) if r]
        return (
            f"{c.better} and {c.worse} could not be tested against each other on {result.label} "
            f"({'; '.join(reasons) or 'no paired data'}); the difference of means, "
            f"{format_value(c.gain)}, is not evidence either way."
        )
    if c.significant:
        return f"{c.better} beat {c.worse} on {result.label} by {_amount(c)} ({direction}{_evidence(c)})."
    return (
        f"{c.better} and {c.worse} were not distinguishable on {result.label}: the difference, "
        f"{_amount(c)}, is not significant ({_evidence(c)})." + _disagreement(c)
    )


def _disagreement(c: Comparison) -> str:
    """When one test rejects and the other does not, say which and what that means."""
    seed_rejects = c.seed.possible and c.seed_p_adj < ALPHA
    image_rejects = c.image.possible and c.image_p_adj < ALPHA
    if image_rejects and c.seed.possible and not seed_rejects:
        return (
            f" The gap is consistent over the {c.image.n} validation images of these runs but not across "
            "seeds: training noise is as large as the gap, so more seeds are needed to call it."
        )
    if seed_rejects and c.image.possible and not image_rejects:
        return (
            " The gap holds across seeds but not consistently across validation images: it comes from "
            "a minority of the images."
        )
    return ""


def metric_paragraph(result: MetricResult) -> str:
    """What won on one metric: a winner, a partial win, or that no variant was distinguishable."""
    if not result.ranking:
        return f"No finished run logged {result.label}."
    best = result.ranking[0]
    s = result.summaries[best]
    n_seeds = f"{s.n} seed{'s' if s.n != 1 else ''}"
    if len(result.ranking) == 1:
        return (
            f"Only one variant ({best}) has {result.label}, so there is nothing to compare: it scored "
            f"{format_pm(s.mean, s.half_width)} ({n_seeds}{', 95% interval' if s.n > 1 else ''})."
        )
    against = [c for c in result.comparisons if c.better == best]
    beaten = [c for c in against if c.significant]
    tied = [c for c in against if c.tested and not c.significant]
    untested = [c for c in against if not c.tested]
    sentences = [comparison_sentence(c, result) for c in beaten + tied + untested]
    if untested and not beaten and not tied:
        lead = (
            f"No test was possible on {result.label}: {best} ranked first by its mean "
            f"({format_value(s.mean)}), but with {n_seeds} and no per-image scores that ranking is not "
            "evidence of a difference."
        )
        return " ".join([lead, *sentences])
    if beaten and not tied and not untested:
        lead = f"{best} won on {result.label} ({format_value(s.mean)} mean over {n_seeds})."
    elif beaten:
        others = ", ".join(c.worse for c in tied + untested)
        lead = (
            f"{best} ranked first on {result.label} ({format_value(s.mean)} mean over {n_seeds}) "
            f"but could not be told apart from {others}."
        )
    else:
        lead = (
            f"No variant was distinguishable on {result.label}: {best} ranked first by its mean, but no "
            f"difference is significant at the {ALPHA:.0%} level after Holm's correction; more seeds or "
            "more validation images would be needed to separate them."
        )
    return " ".join([lead, *sentences])


def task_paragraphs(analysis: Analysis) -> list[str]:
    """The verdict of each task on its headline metric, e.g. "Mask: BCE+Dice won on mask IoU ..."."""
    out = []
    for task, result in analysis.headline.items():
        out.append(f"{task.capitalize()} task: {metric_paragraph(result)}")
    if analysis.tune is not None:
        out.append(tune_sentence(analysis.tune))
    elif not out:
        out.append("No finished child run logged a held-out metric (val/mask_* or val/depth_*), so "
                   "there is nothing to rank.")
    return out


def method_note(n_seeds: int, n_images: int) -> str:
    """How to read the numbers: what the intervals and p-values are."""
    return (
        "How to read this: each score is the value at the best epoch of a run; mean, standard deviation "
        "and the 95% Student-t interval are over seeds. Two variants are compared by a paired t-test over "
        "the seeds both ran and by a Wilcoxon signed-rank test over the same validation images (each "
        "image's score averaged over seeds). p-values are Holm-corrected over all pairs of variants, per "
        "metric and per test. A difference is called significant only when every test that could run "
        f"gives p < {ALPHA:g} in the same direction; '+/-' is the 95% interval half-width of the paired "
        f"difference (over seeds; over images when there is one seed). This study: up to {n_seeds} "
        f"seed(s) per variant and {n_images} paired validation image(s)."
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
