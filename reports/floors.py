"""The report's floors: each task's verdict against its floors, and the floors as marked rows.

Built from what the tracker holds (``summary.json``'s ``floors`` and ``claims``, written by ``lab run``
from the one judgement that also set the MLflow tags), so the words here, the terminal and the tags
agree. The rule itself lives in the engine (``losslab.core.experiment.floors``); nothing is decided here.
"""

from __future__ import annotations

import statistics
from typing import Any

from losslab.core.names import VAL_PREFIX
from losslab.reports.collect import Study
from losslab.reports.render import Block, Heading, Paragraph, Table

HEADLINE_KEYS = ("val/mask_iou", "val/depth_delta1", "val/depth_absrel")


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def floor_blocks(study: Study) -> list[Block]:
    """A 'Floors' section for the report's first screen; empty when the run measured no floors."""
    summary: dict[str, Any] = study.summary or {}
    floors, claims = summary.get("floors"), summary.get("claims") or {}
    if not floors:
        return []
    blocks: list[Block] = [Heading("Floors")]
    for verdict in (claims.get("tasks") or {}).values():
        blocks.append(Paragraph(str(verdict.get("sentence", "")), css="verdict"))
    rows = floors.get("rows") or []
    keys = [k for k in HEADLINE_KEYS if any(k in (r.get("scores") or {}) for r in rows)]
    below = claims.get("below_floor") or {}
    table_rows = []
    for variant in study.variants:
        values = {k: [v for c in study.ok_children if c.variant == variant if (v := c.value(k)) is not None]
                  for k in keys}
        if not any(values.values()):
            continue
        tasks = below.get(variant) or []
        mark = f"below floor: {', '.join(tasks)}" if tasks else "above every floor"
        table_rows.append([variant, *(_cell(statistics.fmean(v)) if v else "—" for v in values.values()), mark])
    for row in rows:
        scores = row.get("scores") or {}
        table_rows.append([f"[floor] {row.get('name')}", *(_cell(scores.get(k)) for k in keys),
                           f"{row.get('task')} floor"])
    shown = "Variants (mean over seeds) beside the floors" if len(table_rows) > len(rows) else "The floors"
    blocks.append(Table(
        ["", *(k.removeprefix(VAL_PREFIX) for k in keys), ""], table_rows,
        caption=(f"{shown}: baselines fitted on the training split "
                 f"({floors.get('n_train')} samples, no gradient training), scored on the same "
                 f"{floors.get('n_val')} held-out samples (bgs {floors.get('val_bgs')}) by the same metrics. "
                 "A variant is below floor unless its mean beats the best floor and its 95% interval over seeds "
                 "excludes it; one below floor never wins."),
    ))
    return blocks
