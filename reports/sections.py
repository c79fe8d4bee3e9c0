"""The report's contents in reading order: verdict first, evidence next, provenance last.

Turns a :class:`Study` and its :class:`Analysis` into a :class:`~losslab.reports.render.Document`;
both output formats are rendered from that one document, so they never disagree.
"""

from __future__ import annotations

import datetime as _dt
import math

from losslab.core.names import TAG_PREFIX, VAL_PREFIX, VERSION_TAGS
from losslab.reports import explain, label_noise, multitask, plots, words
from losslab.reports.analysis import EXPLORATORY, NOT_TESTED, Analysis, MetricResult, TuneResult
from losslab.reports.collect import Study
from losslab.reports.floors import floor_blocks
from losslab.reports.render import Code, Details, Document, EmbeddedHtml, Heading, Image, Paragraph, Table
from losslab.reports.stats import MIN_SEEDS_FOR_CLAIM, Summary, format_p, format_value

MAX_TRIALS_SHOWN = 15


def _interval(s: Summary) -> str:
    if s.n < 2 or not math.isfinite(s.low):
        return "n/a (one seed)" if s.n == 1 else "n/a"
    return f"[{format_value(s.low)}, {format_value(s.high)}]"


def _image(plot: plots.Plot | None) -> Image | None:
    return Image(plot.name, plot.png, plot.caption) if plot else None


#: Marks of the summary table: how each variant stands against the best on that metric.
MARK_BEST, MARK_TIED, MARK_BEHIND, MARK_NO_CLAIM = "best", "~ best", "below best", "no claim"


def mark(r: MetricResult, variant: str) -> str:
    """The summary table's mark for ``variant`` on ``r``: read off the same comparison as the words."""
    floor = "below floor" if variant in r.below_floor else ""
    if variant == r.best:
        base = MARK_BEST if len(r.ranking) > 1 else ""
    else:
        c = r.vs(r.best, variant)
        base = (MARK_NO_CLAIM if c is None or c.status in (EXPLORATORY, NOT_TESTED)
                else MARK_BEHIND if c.significant else MARK_TIED)
    return ", ".join(x for x in (base, floor) if x)


def _differences(diffs: dict[str, str] | None) -> str:
    if diffs is None:
        return "n/a (no per-variant config recorded)"
    return ", ".join(f"{k}={v}" for k, v in diffs.items()) or "(base)"


def summary_table(analysis: Analysis, variants: list[str]) -> Table | None:
    """Variant x headline metric: mean, 95% interval and the mark against the best; one row per variant."""
    heads = list(analysis.headline.values())
    if not heads:
        return None
    lead = analysis.verdict_metric or heads[0]
    order = lead.ranking + [v for v in variants if v not in lead.ranking]
    rows = []
    for v in order:
        row = [v, _differences(analysis.variant_diffs.get(v))]
        seeds = 0
        for r in heads:
            if v in r.summaries:
                s = r.summaries[v]
                seeds = max(seeds, s.n)
                tag = mark(r, v)
                row.append(f"{format_value(s.mean)} {_interval(s)}" + (f" ({tag})" if tag else ""))
            else:
                row.append("n/a")
        row.append(str(seeds))
        rows.append(row)
    for r in heads:  # reference rows (a task's floors) are marked and never ranked
        for name, s in r.references.items():
            if not any(row[0] == f"{name} (reference)" for row in rows):
                rows.append([f"{name} (reference)", "no-skill floor, fitted without gradient training",
                             *[f"{format_value(x.references[name].mean)}" if name in x.references else ""
                               for x in heads], str(s.n)])
    headers = ["variant", "differs from the base config",
               *[f"{r.label} ({'higher' if r.higher_is_better else 'lower'} is better)" for r in heads], "seeds"]
    return Table(headers, rows, css="summary", caption=(
        "Summary: mean over seeds [95% bootstrap interval]; 'below best' = significantly behind the best "
        "(paired t-test over seeds, Holm-corrected), '~ best' = not distinguishable from it, 'no claim' = "
        f"fewer than {MIN_SEEDS_FOR_CLAIM} seeds to compare."))


def metric_table(r: MetricResult) -> Table:
    best = r.best
    rows = []
    with_iqm = any(math.isfinite(x) for x in r.iqm.values())
    for rank, v in enumerate(r.ranking, start=1):
        s = r.summaries[v]
        seeds = ", ".join(f"s{k}: {format_value(x)}" for k, x in sorted(r.per_seed[v].items()))
        c = r.vs(best, v) if best and v != best else None
        row = [str(rank), v, format_value(s.mean), _interval(s)]
        if with_iqm:
            row.append(format_value(r.iqm.get(v, float("nan"))))
        row += [format_value(s.std) if s.n > 1 else "n/a", str(s.n), seeds,
                f"{format_value(c.gain)}{words.interval(c.gain_low, c.gain_high)}" if c else "(best)",
                format_p(c.seed_p_adj) if c else "",
                f"{c.effect:.2f}" if c and math.isfinite(c.effect) else "",
                c.status if c else ""]
        rows.append(row)
    arrow = "higher is better" if r.higher_is_better else "lower is better"
    headers = ["rank", "variant", "mean", "95% interval"] + (["IQM"] if with_iqm else []) + [
        "std", "seeds", "per seed", "behind best by", "p (seeds, Holm)", "P(improvement)", "vs best"]
    return Table(headers, rows, caption=f"{r.label} ({r.key}, {arrow})"
                 + ("; IQM = interquartile mean over seeds" if with_iqm else ""))


def pairwise_table(results: list[MetricResult]) -> Table | None:
    """Every pair of every metric; the verdict column is the status the words print."""
    rows = []
    for r in results:
        for c in r.comparisons:
            rows.append([
                r.label, c.better, c.worse, f"{format_value(c.gain)}{words.interval(c.gain_low, c.gain_high)}",
                format_p(c.seed.p), format_p(c.seed_p_adj), str(c.seed.n),
                f"{c.effect:.2f}" if math.isfinite(c.effect) else "n/a",
                format_value(c.detectable),
                format_p(c.image_p_adj), str(c.image.n), c.status,
            ])
    if not rows:
        return None
    return Table(
        ["metric", "ahead", "behind", "by [95% interval]", "p seeds", "p seeds (Holm)", "seeds",
         "P(improvement)", "gap detectable at 80% power", "p images (Holm, descriptive)", "images", "verdict"],
        rows,
        caption=("Every pair of variants: the verdict comes from the paired t-test over seeds; the per-image "
                 "Wilcoxon p is descriptive only (images scored by one model are not independent replicates)"),
    )


def _range(s: Summary, values: list[float]) -> str:
    if not s.n:
        return "n/a"
    if s.n == 1:
        return format_value(s.mean)
    return f"{format_value(s.mean)} (range {format_value(min(values))} to {format_value(max(values))})"


def perf_table(analysis: Analysis) -> Table | None:
    rows = []
    for p in analysis.perf:
        rows.append([p.variant, _range(p.total_s, p.total_values), _range(p.samples_per_s, p.speed_values),
                     str(max(p.total_s.n, p.samples_per_s.n))])
    if not rows:
        return None
    return Table(["variant", "wall time per run (s)", "training samples / s", "seeds"], rows,
                 caption="Cost per run: mean over seeds and the range (samples/s averaged over epochs)")


def trials_table(tune: TuneResult) -> Table:
    headers = ["rank", "trial", "state", *tune.objective_keys]
    if len(tune.objective_keys) > 1:
        headers.append("Pareto front")
    judged = any(t.below_floor is not None for t in tune.trials)
    if judged:
        headers.append("floors")
    headers += tune.varying_params
    rows = []
    for rank, t in enumerate(tune.trials[:MAX_TRIALS_SHOWN], start=1):
        row = [str(rank), str(t.number) if t.number is not None else t.name, t.state]
        row += [format_value(t.objectives[k]) if k in t.objectives else "" for k in tune.objective_keys]
        if len(tune.objective_keys) > 1:
            row.append("yes" if t.run_id in tune.pareto else "")
        if judged:
            row.append("" if t.below_floor is None else
                       f"below floor: {', '.join(t.below_floor)}" if t.below_floor else "above every floor")
        row += [t.params.get(k, "") for k in tune.varying_params]
        rows.append(row)
    direction = ", ".join(f"{k}: {d}" for k, d in zip(tune.objective_keys, tune.directions, strict=True))
    return Table(headers, rows, caption=f"Best trials ({direction or 'no objective logged'})")


def build_document(study: Study, analysis: Analysis) -> Document:
    """Verdict, summary table and score plot first (the first screen); evidence and provenance below."""
    doc = Document(f"Loss study: {study.experiment_name}")
    ok = study.ok_children
    n_seeds = max((r.summaries[v].n for r in analysis.metrics for v in r.summaries), default=0)
    n_images = max((r.n_images for r in analysis.metrics), default=0)

    doc.add(Paragraph(" ".join(words.verdict_sentences(analysis)), css="verdict"))
    doc.add(summary_table(analysis, study.variants))
    doc.add(*floor_blocks(study))  # each task's verdict against its floors (reports/floors.py)
    doc.add(_image(plots.score_plot(list(analysis.headline.values()), study.variants, "scores_headline",
                                    what="Headline scores")))

    if analysis.metrics:
        doc.add(Heading("How the claims are made"))
        doc.add(Paragraph(words.method_note(n_seeds, n_images), css="note"))
        if analysis.sequential is not None:
            doc.add(Paragraph(analysis.sequential.describe(), css="note"))
    if study.failed_children:
        names = ", ".join(c.name for c in study.failed_children)
        doc.add(Paragraph(f"Failed runs are left out of every statistic: {names} (see 'Failed runs')."))

    if analysis.metrics:
        doc.add(Heading("Per metric"))
        heads = list(analysis.headline.values())
        for r in heads + [m for m in analysis.metrics if m not in heads]:
            task = next((t for t, h in analysis.headline.items() if h is r), None)
            title = f"{r.label}" + (f" (headline of the {task} task)" if task else "")
            doc.add(Details(title, [Paragraph(words.metric_paragraph(r)), metric_table(r)],
                            open=task is not None and r is analysis.verdict_metric))
        if len(analysis.metrics) > len(analysis.headline):
            every = _image(plots.score_plot(analysis.metrics, study.variants, what="Every metric"))
            if every is not None:
                doc.add(Details("Every metric, plotted", [every]))
        table = pairwise_table(analysis.metrics)
        if table:
            doc.add(Details("Every pair of variants, every metric", [table]))
    doc.add(*multitask.section(study))  # only for studies whose variants differ in loss.weighting
    doc.add(*label_noise.blocks(study, analysis))  # only where a variant trains off the validation mask truth
    doc.add(*explain.blocks(study))  # where a difference lies, and why (reports/explain.py)

    groups = plots.curve_groups(study)
    if any(groups.values()):
        doc.add(Heading("Learning curves"))
        doc.add(_image(plots.learning_curves(study, groups["losses"], "Loss terms")))
        doc.add(_image(plots.learning_curves(study, groups["metrics"], "Validation metrics")))

    table = perf_table(analysis)
    if table:
        doc.add(Heading("Wall time and throughput"), table)

    lead = analysis.verdict_metric
    column = lead.key.removeprefix(VAL_PREFIX) if lead else None
    grids = plots.sample_grids(study, best=lead.best if lead else None, score_column=column,
                               higher_is_better=lead.higher_is_better if lead else True)
    if grids:
        doc.add(Heading("Validation images across variants"))
        doc.add(*[_image(p) for p in grids])

    if analysis.tune is not None:
        _tune_section(doc, study, analysis.tune)

    if study.failed_children:
        doc.add(Heading("Failed runs"), Table(
            ["run", "variant", "seed", "run id", "error"],
            [[c.name, c.variant, str(c.seed), c.run_id, c.error or "(no reason recorded)"]
             for c in study.failed_children],
        ))
    if study.children:
        doc.add(Heading("Runs"), Table(
            ["run", "variant", "seed", "status", "run id"],
            [[c.name, c.variant, str(c.seed), c.status, c.run_id] for c in study.children],
        ))

    built = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if study.children or not study.trials:
        shape = (f"{len(study.variants)} variant(s) x {len(study.seeds)} seed(s), {len(ok)} finished and "
                 f"{len(study.failed_children)} failed child run(s)")
    else:
        shape = f"{len(study.trials)} trial run(s)"
    doc.add(Heading("Provenance"))
    doc.add(Paragraph(
        f"Parent run {study.parent_run_id} ({study.parent_name}, kind: {study.kind}) of experiment "
        f"{study.experiment_name!r}: {shape}. Built {built} from the tracking store {study.tracking_uri}.",
        css="note",
    ))
    doc.add(Table(
        ["", "value"],
        [[tag.removeprefix(TAG_PREFIX), study.tags.get(tag, "not recorded")] for tag in VERSION_TAGS],
        caption="Versions",
    ))
    first = _first_config(study.config_text)
    if first:
        others = "; the other variants differ from it only as the summary table says" if len(study.variants) > 1 else ""
        doc.add(Details(f"Resolved configuration (one variant's; re-runnable{others})", [Code(first, "yaml")]))
    else:
        doc.add(Paragraph("The parent run holds no config.yaml artifact."))
    return doc


def _first_config(text: str | None) -> str:
    """The first variant's resolved YAML of the parent's config.yaml (one document per variant)."""
    if not text:
        return ""
    docs = [d for d in text.split("\n---\n") if d.strip()]
    return docs[0].strip() + "\n" if docs else ""


def _tune_section(doc: Document, study: Study, tune: TuneResult) -> None:
    doc.add(Heading("Tune study"))
    if tune.trials:
        doc.add(trials_table(tune))
        complete = sum(t.state.lower() in ("complete", "finished") for t in tune.trials)
        doc.add(Paragraph(f"{len(tune.trials)} trial(s), {complete} complete. "
                          + (tune.direction_note or "")))
    else:
        doc.add(Paragraph("The study has no trial runs yet."))
    for path in study.optuna_artifacts:
        caption = f"Optuna: {path.stem.replace('_', ' ')}"
        if path.suffix.lower() == ".png":
            doc.add(Image(f"optuna_{path.stem}", path.read_bytes(), caption))
        else:
            doc.add(EmbeddedHtml(f"optuna_{path.stem}", path.read_text(encoding="utf-8", errors="replace"),
                                 caption + " (interactive)"))
