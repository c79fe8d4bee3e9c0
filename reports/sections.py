"""The report's contents in reading order: verdict first, evidence next, provenance last.

Turns a :class:`Study` and its :class:`Analysis` into a :class:`~losslab.reports.render.Document`;
both output formats are rendered from that one document, so they never disagree.
"""

from __future__ import annotations

import datetime as _dt
import math

from losslab.reports import multitask, plots, words
from losslab.reports.analysis import Analysis, MetricResult, TuneResult
from losslab.reports.collect import VERSION_TAGS, Study
from losslab.reports.render import Code, Document, EmbeddedHtml, Heading, Image, Paragraph, Table
from losslab.reports.stats import Summary, format_p, format_pm, format_value

MAX_TRIALS_SHOWN = 15


def _interval(s: Summary) -> str:
    if s.n < 2 or not math.isfinite(s.low):
        return "n/a (one seed)"
    return f"[{format_value(s.low)}, {format_value(s.high)}]"


def _image(plot: plots.Plot | None) -> Image | None:
    return Image(plot.name, plot.png, plot.caption) if plot else None


def metric_table(r: MetricResult) -> Table:
    best = r.best
    rows = []
    for rank, v in enumerate(r.ranking, start=1):
        s = r.summaries[v]
        seeds = ", ".join(f"s{k}: {format_value(x)}" for k, x in sorted(r.per_seed[v].items()))
        c = r.vs(best, v) if best and v != best else None
        rows.append([
            str(rank), v, format_value(s.mean), format_value(s.std) if s.n > 1 else "n/a", _interval(s),
            str(s.n), seeds,
            format_pm(c.gain, c.gain_half_width) if c else "(best)",
            format_p(c.seed_p_adj) if c else "",
            format_p(c.image_p_adj) if c else "",
            c.verdict if c else "",
        ])
    arrow = "higher is better" if r.higher_is_better else "lower is better"
    return Table(
        ["rank", "variant", "mean", "std", "95% interval", "seeds", "per seed", "behind best by",
         "p (seeds)", "p (images)", "vs best"],
        rows,
        caption=f"{r.label} ({r.key}, {arrow})",
    )


def pairwise_table(results: list[MetricResult]) -> Table | None:
    rows = []
    for r in results:
        for c in r.comparisons:
            rows.append([
                r.label, c.better, c.worse, format_pm(c.gain, c.gain_half_width),
                format_p(c.seed.p), format_p(c.seed_p_adj), str(c.seed.n),
                format_p(c.image.p), format_p(c.image_p_adj), str(c.image.n), c.verdict,
            ])
    if not rows:
        return None
    return Table(
        ["metric", "ahead", "behind", "by (95% half-width)", "p seeds", "p seeds (Holm)", "seeds",
         "p images", "p images (Holm)", "images", "verdict"],
        rows,
        caption="Every pair of variants, every metric",
    )


def perf_table(analysis: Analysis) -> Table | None:
    rows = []
    for p in analysis.perf:
        rows.append([
            p.variant,
            format_pm(p.total_s.mean, p.total_s.half_width) if p.total_s.n else "n/a",
            format_pm(p.samples_per_s.mean, p.samples_per_s.half_width) if p.samples_per_s.n else "n/a",
            str(max(p.total_s.n, p.samples_per_s.n)),
        ])
    if not rows:
        return None
    return Table(["variant", "wall time (s)", "training samples / s", "seeds"], rows,
                 caption="Cost per run (mean +/- 95% half-width over seeds; samples/s averaged over epochs)")


def trials_table(tune: TuneResult) -> Table:
    headers = ["rank", "trial", "state", *tune.objective_keys]
    if len(tune.objective_keys) > 1:
        headers.append("Pareto front")
    headers += tune.varying_params
    rows = []
    for rank, t in enumerate(tune.trials[:MAX_TRIALS_SHOWN], start=1):
        row = [str(rank), str(t.number) if t.number is not None else t.name, t.state]
        row += [format_value(t.objectives[k]) if k in t.objectives else "" for k in tune.objective_keys]
        if len(tune.objective_keys) > 1:
            row.append("yes" if t.run_id in tune.pareto else "")
        row += [t.params.get(k, "") for k in tune.varying_params]
        rows.append(row)
    direction = ", ".join(f"{k}: {d}" for k, d in zip(tune.objective_keys, tune.directions, strict=True))
    return Table(headers, rows, caption=f"Best trials ({direction or 'no objective logged'})")


def build_document(study: Study, analysis: Analysis) -> Document:
    doc = Document(f"Loss study report: {study.experiment_name}")
    ok = study.ok_children
    n_seeds = max((r.summaries[v].n for r in analysis.metrics for v in r.summaries), default=0)
    n_images = max((r.n_images for r in analysis.metrics), default=0)
    built = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if study.children or not study.trials:
        shape = (f"{len(study.variants)} variant(s) x {len(study.seeds)} seed(s), {len(ok)} finished and "
                 f"{len(study.failed_children)} failed child run(s)")
    else:
        shape = f"{len(study.trials)} trial run(s)"
    doc.add(Paragraph(
        f"Parent run {study.parent_run_id} ({study.parent_name}, kind: {study.kind}) of experiment "
        f"{study.experiment_name!r}: {shape}. Built {built} from the tracking store {study.tracking_uri}.",
        css="note",
    ))

    doc.add(Heading("Verdict"))
    for text in words.task_paragraphs(analysis):
        doc.add(Paragraph(text, css="verdict"))
    if study.failed_children:
        names = ", ".join(c.name for c in study.failed_children)
        doc.add(Paragraph(f"Failed runs are left out of every statistic: {names} (see 'Failed runs')."))
    if analysis.metrics:
        doc.add(Paragraph(words.method_note(n_seeds, n_images), css="note"))
        doc.add(Heading("Scores per variant"))
        doc.add(_image(plots.score_bars(analysis.metrics, study.variants)))
        for r in analysis.metrics:
            doc.add(metric_table(r))
            doc.add(Paragraph(words.metric_paragraph(r)))
        doc.add(Heading("Pairwise tests"))
        doc.add(pairwise_table(analysis.metrics))
    doc.add(*multitask.section(study))  # only for studies whose variants differ in loss.weighting

    groups = plots.curve_groups(study)
    if any(groups.values()):
        doc.add(Heading("Learning curves"))
        doc.add(_image(plots.learning_curves(study, groups["losses"], "Loss terms")))
        doc.add(_image(plots.learning_curves(study, groups["metrics"], "Validation metrics")))

    table = perf_table(analysis)
    if table:
        doc.add(Heading("Wall time and throughput"), table)

    grids = plots.sample_grids(study)
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

    doc.add(Heading("Versions"), Table(
        ["", "value"],
        [[tag.removeprefix("losslab."), study.tags.get(tag, "not recorded")] for tag in VERSION_TAGS],
    ))
    doc.add(Heading("Resolved configuration"))
    if study.config_text:
        doc.add(Code(study.config_text, "yaml"))
    else:
        doc.add(Paragraph("The parent run holds no config.yaml artifact."))
    return doc


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
