"""The report's "where" and "why" sections as document blocks, for ``sections.build_document``.

Kept in its own module so the report's main flow needs one line to include them:
breakdowns by grid row, region and true-depth bin (:mod:`losslab.reports.breakdown`), then the
training scores against held-out ones (:mod:`losslab.reports.generalization`), then the training
diagnostics and the mask's calibration (:mod:`losslab.reports.why`).
"""

from __future__ import annotations

from losslab.reports import breakdown, generalization, why
from losslab.reports.collect import Study
from losslab.reports.render import Block, Heading, Image, Paragraph, Table


def _tables_section(title: str, note: str, tables: list[tuple[str, list[str], list[list[str]], str]]) -> list[Block]:
    """A heading, its note, then each (caption, headers, rows, sentence) as a table and the sentence under it."""
    if not tables:
        return []
    blocks: list[Block] = [Heading(title), Paragraph(note, css="note")]
    for caption, headers, rows, text in tables:
        blocks += [Table(headers, rows, caption=caption), Paragraph(text)]
    return blocks


def where_blocks(study: Study) -> list[Block]:
    return _tables_section(
        "Where the differences lie",
        "Each score per variant, restricted to part of the held-out set: each seed's mean over the images "
        "(an image without pixels of a region does not count there), then the mean over seeds and its 95% "
        "interval. Regions come from the true mask and the scene's depth (docs/tracking.md, "
        "core/train/regions.py); the last column is the leading variant's gain over the runner-up "
        "(positive: the leader is better).",
        [(b.title, *breakdown.table_rows(b), breakdown.sentence(b)) for b in breakdown.breakdowns(study)])


def fit_blocks(study: Study) -> list[Block]:
    return _tables_section(
        "Why: fit or generalization",
        "Each score on training backgrounds (the best weights on train.fit_check training samples, no "
        "augmentation) beside the held-out one: each seed's mean over the images, then the mean over seeds; the "
        "gap's 95% interval is over seeds. High on training and low held out: the model fits the scenes it saw "
        "and the fit does not carry over. Low on both: it does not fit them (core/train/fit_check.py).",
        [(f"{t.label}: training against held-out backgrounds", *generalization.table_rows(t),
          generalization.sentence(t)) for t in generalization.fit_tables(study)])


def why_blocks(study: Study) -> list[Block]:
    blocks: list[Block] = []
    plot = why.diagnostics_plot(study)
    if plot is not None:
        blocks += [Heading("Why: gradients during training"), Image(plot.name, plot.png, plot.caption)]
        text = why.cosine_sentence(study)
        if text:
            blocks.append(Paragraph(text))
    cals = why.calibrations(study)
    if cals:
        headers, rows = why.calibration_table(cals)
        reliability = why.reliability_plot(cals, study.variants)
        blocks += [Heading("Mask calibration"),
                   Table(headers, rows, caption="Expected calibration error of the mask (15 bins; lower is better)")]
        if reliability is not None:
            blocks.append(Image(reliability.name, reliability.png, reliability.caption))
    return blocks


def blocks(study: Study) -> list[Block]:
    """The sections, each empty for a study whose runs did not record it."""
    return where_blocks(study) + fit_blocks(study) + why_blocks(study)
