"""The terminal tables: one renderer, and ``lab run``'s comparison (metrics only, no spread for one seed, run ids)."""

from __future__ import annotations

import re
import statistics

import pytest

from losslab.core.experiment.runner import ChildResult, summary_table
from losslab.core.experiment.table import render_table


def test_render_table_pads_every_column_to_its_widest_cell():
    lines = render_table(["a", "long header"], [["wide cell", "x"], ["y"]])
    assert lines == [
        "a          long header",
        "---------  -----------",
        "wide cell  x",
        "y",
    ]
    with pytest.raises(ValueError, match="more cells than the 2 headers"):
        render_table(["a", "b"], [["1", "2", "3"]])


def _children() -> list[ChildResult]:
    metrics = lambda iou, rmse, loss: {  # noqa: E731
        "val/mask_iou": iou, "val/depth_rmse": rmse, "val/loss": loss, "val/mask/bce": loss / 2,
    }
    return [
        ChildResult("bce", 0, "run-bce-0", metrics(0.50, 1.00, 3.0)),
        ChildResult("bce", 1, "run-bce-1", metrics(0.70, 1.20, 3.5)),
        ChildResult("dice", 0, "run-dice-0", metrics(0.80, 1.10, 0.4)),
        ChildResult("dice", 1, "run-dice-1", {}, status="failed", error="NaN loss"),
    ]


def _rows(table: str) -> dict[str, list[str]]:
    """The comparison rows by variant (first table only), split on the two-space column gaps."""
    first = table.split("\n\n")[0].splitlines()
    cells = [re.split(r" {2,}", line.strip()) for line in first[2:-1]]
    return {row[0].removesuffix(" *"): row for row in cells}


def test_summary_shows_metrics_only_with_spread_only_over_several_seeds():
    table, winner = summary_table(_children(), "val/mask_iou", "max")
    header = table.splitlines()[0].split()
    assert header == ["variant", "mask_iou", "depth_rmse", "seeds"]  # no loss column: not comparable
    rows = _rows(table)
    bce_iou = f"{statistics.fmean([0.5, 0.7]):.4f} ± {statistics.stdev([0.5, 0.7]):.4f}"
    assert rows["bce"][1] == bce_iou == "0.6000 ± 0.1414"
    assert rows["dice"][1:] == ["0.8000", "1.1000", "1"]  # one finished seed: the value alone, no "± 0.0000"
    assert winner == "dice" and table.splitlines()[2].startswith("dice *")


def test_summary_lists_every_child_run_id_with_its_status():
    table, _ = summary_table(_children(), "val/mask_iou", "max")
    runs = table.split("\n\n")[1].splitlines()
    assert runs[0].split() == ["variant", "seed", "status", "run", "id"]
    assert [line.split() for line in runs[2:]] == [
        ["bce", "0", "finished", "run-bce-0"], ["bce", "1", "finished", "run-bce-1"],
        ["dice", "0", "finished", "run-dice-0"], ["dice", "1", "failed", "run-dice-1"],
    ]


def test_a_loss_monitor_still_ranks_but_is_not_shown():
    table, winner = summary_table(_children(), "val/loss", "min")
    assert winner == "dice"  # mean val/loss 0.4 < 3.25
    assert "loss" not in table.splitlines()[0]
    assert "first by the mean of val/loss (min), a loss: not shown" in table


def test_no_finished_run_still_lists_the_runs():
    failed = [ChildResult("bce", 0, "run-x", {}, status="failed", error="boom")]
    table, winner = summary_table(failed, "val/mask_iou", "max")
    assert winner is None and table.startswith("no run finished") and "run-x" in table
