"""Which held-out images the prediction grids show: the worst and best case, then the most varied scenes."""

from __future__ import annotations

from losslab.core.train.evaluation import choose_kept


def _rows() -> list[dict]:
    # 12 images: 3 bgs x 2 fgs x 2 rows, in the validation order (bg-major, as a split by bg gives)
    rows = []
    for bg in (8, 15, 16):
        for fg in (0, 1):
            for row in (0, 3):
                rows.append({"index": len(rows) + 100, "bg": bg, "fg": fg, "row": row, "mask_iou": 0.5})
    rows[7]["mask_iou"] = 0.1   # the worst
    rows[10]["mask_iou"] = 0.9  # the best
    return rows


def test_worst_and_best_come_first_then_every_bg_fg_and_row():
    indices, roles = choose_kept(_rows(), 6, "val/mask_iou", "max")
    assert indices[:2] == [107, 110] and roles[:2] == ["worst", "best"]
    assert roles[2:] == ["spread"] * 4 and len(set(indices)) == 6
    by_index = {r["index"]: r for r in _rows()}
    shown = [by_index[i] for i in indices]
    assert {r["bg"] for r in shown} == {8, 15, 16}   # the first batch alone would show one background
    assert {r["fg"] for r in shown} == {0, 1} and {r["row"] for r in shown} == {0, 3}


def test_a_lower_is_better_monitor_swaps_worst_and_best():
    rows = [{**r, "depth_rmse": float(i)} for i, r in enumerate(_rows())]
    indices, roles = choose_kept(rows, 2, "val/depth_rmse", "min")
    assert indices == [111, 100] and roles == ["worst", "best"]


def test_a_monitor_without_per_image_values_falls_back_to_the_mask_metric_and_nan_is_skipped():
    rows = _rows()
    rows[3]["mask_iou"] = float("nan")
    indices, roles = choose_kept(rows, 3, "val/loss", "min", {"mask_iou": True})
    assert indices[:2] == [107, 110] and roles == ["worst", "best", "spread"]


def test_small_sets_and_no_keep():
    assert choose_kept(_rows(), 0, "val/mask_iou", "max") == ([], [])
    indices, _ = choose_kept(_rows()[:3], 8, "val/mask_iou", "max")
    assert sorted(indices) == [100, 101, 102]
