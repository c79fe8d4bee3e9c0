"""Where a win comes from: region masks and region scores on the device, and the report's breakdowns.

References: a hand-built scene whose regions are counted by hand, numpy re-implementations of
the restricted scores, hand-worked per-seed means and t-intervals, and the per-image columns
that a real (tiny) evaluation writes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sstats

from losslab.core.train.regions import band_width, depth_bins, region_masks, region_scores, split_column
from losslab.reports.breakdown import ALL, breakdowns, sentence, table_rows
from losslab.reports.collect import ChildRun, PerImage, Study


def _scene(h: int = 12, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0-3 at the far plane (30 m), rows 4-11 ground (20 down to 6 m); a 4x4 fg at rows 6-9, cols 3-6."""
    depth = torch.zeros(1, 1, h, w)
    depth[..., :4, :] = 30.0
    depth[..., 4:, :] = torch.linspace(20.0, 6.0, h - 4).view(-1, 1)
    mask = torch.zeros(1, 1, h, w)
    mask[..., 6:10, 3:7] = 1.0
    depth = torch.where(mask > 0, torch.full_like(depth, 8.0), depth)
    return mask, depth


def test_regions_of_a_hand_built_scene():
    mask, depth = _scene()
    r = region_masks(mask, depth, band=1)
    # interior: the 4x4 square eroded by 1 px (3x3 max-pool) -> 2x2; band: 6x6 dilation minus it
    assert int(r["fg"].sum()) == 4 and int(r["boundary"].sum()) == 36 - 4
    # the rest: 120 - 36 = 84 pixels; rows 0-3 (40 px) lie at the far plane, none of them near the fg
    assert int(r["wall-sky"].sum()) == 40 and int(r["ground"].sum()) == 84 - 40
    total = sum(v.int() for v in r.values())
    assert torch.equal(total, torch.ones_like(total))  # a partition: every pixel in exactly one region
    assert band_width(64) == 2 and band_width(16) == 1 and band_width(256) == 8


def test_a_constant_background_is_all_wall_or_sky():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    depth = torch.where(mask > 0, torch.full_like(mask, 3.0), torch.full_like(mask, 20.0))
    r = region_masks(mask, depth, band=1)
    assert int(r["ground"].sum()) == 0 and int(r["wall-sky"].sum()) == 64 - 25


def test_depth_bins_are_thirds_of_max_depth():
    d = torch.tensor([0.0, 9.99, 10.0, 19.99, 20.0, 30.0]).view(1, 1, 1, -1)
    bins = depth_bins(d, 30.0)
    assert bins["near"].flatten().tolist() == [True, True, False, False, False, False]
    assert bins["mid"].flatten().tolist() == [False, False, True, True, False, False]
    assert bins["far"].flatten().tolist() == [False, False, False, False, True, True]


def test_region_scores_match_numpy():
    rng = np.random.default_rng(0)
    mask, depth = _scene(24, 20)
    mask, depth = mask.repeat(3, 1, 1, 1), depth.repeat(3, 1, 1, 1)
    prob = torch.from_numpy(rng.random(mask.shape).astype(np.float32))
    pred_depth = depth * torch.from_numpy(rng.uniform(0.7, 1.4, mask.shape).astype(np.float32))
    out = region_scores(prob, mask, pred_depth, depth, max_depth=30.0)
    regions = {k: v.numpy() for k, v in region_masks(mask, depth).items()}
    bins = {k: v.numpy() for k, v in depth_bins(depth, 30.0).items()}
    p, t = prob.numpy() > 0.5, mask.numpy() > 0.5
    pd, td = pred_depth.numpy().astype(np.float64), depth.numpy().astype(np.float64)
    for i in range(3):
        for name in ("fg", "boundary"):
            r = regions[name][i]
            ref = (p[i] & t[i] & r).sum() / ((p[i] | t[i]) & r).sum()
            assert out[f"mask_iou@{name}"][i].item() == pytest.approx(ref, rel=1e-6)
        for name in ("ground", "wall-sky"):
            r = regions[name][i]
            assert out[f"mask_fp@{name}"][i].item() == pytest.approx(p[i][r].mean(), rel=1e-6)
        for name, r in {**{k: v[i] for k, v in regions.items()}, **{k: v[i] for k, v in bins.items()}}.items():
            if not r.any():
                assert math.isnan(out[f"depth_delta1@{name}"][i].item())
                continue
            ratio = np.maximum(pd[i][r] / td[i][r], td[i][r] / pd[i][r])
            assert out[f"depth_delta1@{name}"][i].item() == pytest.approx((ratio < 1.25).mean(), rel=1e-6)
            ref = (np.abs(pd[i][r] - td[i][r]) / td[i][r]).mean()
            assert out[f"depth_absrel@{name}"][i].item() == pytest.approx(ref, rel=1e-5)
    assert math.isnan(out["depth_delta1@mid"][0].item()) is False  # 10-20 m ground rows exist
    assert split_column("mask_iou@boundary") == ("mask_iou", "boundary") and split_column("mask_iou") is None


def test_an_empty_region_scores_nan_and_a_clean_region_scores_one():
    mask = torch.zeros(1, 1, 8, 8)  # no foreground: no interior, no band
    depth = torch.full_like(mask, 10.0)
    out = region_scores(torch.zeros_like(mask), mask, depth, depth, 30.0)
    assert math.isnan(out["mask_iou@fg"].item()) and math.isnan(out["mask_iou@boundary"].item())
    assert out["mask_fp@wall-sky"].item() == 0.0 and out["depth_delta1@wall-sky"].item() == 1.0


def test_evaluation_writes_the_region_columns(tmp_path):
    from losslab.core.config import resolve_variants
    from losslab.core.plugin.manager import load_catalog
    from losslab.core.train.trainer import Trainer

    catalog = load_catalog()
    cfg = {"name": "regions", "data": {"source": {"kind": "synthetic", "n_bg": 6, "n_fg": 4, "size": 64},
                                       "image_size": 32, "train_limit": 16, "val_limit": 8},
           "model": {"name": "unet", "params": {"base_channels": 4, "depth": 2}},
           "train": {"epochs": 1, "batch_size": 8, "progress": False, "num_threads": 1, "diagnostics": False},
           "metrics": {"mask": ["iou"], "depth": ["delta1"]}}
    (resolved,) = resolve_variants(cfg, None, catalog)
    _, rows, _ = Trainer(resolved, 0, catalog, tmp_path).evaluate()
    expected = {"mask_iou@fg", "mask_iou@boundary", "mask_fp@ground", "mask_fp@wall-sky",
                *(f"depth_{m}@{r}" for m in ("delta1", "absrel")
                  for r in ("fg", "boundary", "ground", "wall-sky", "near", "mid", "far"))}
    assert expected <= set(rows[0]) and len(rows) == 8
    # the ground-plane scenes have both ground and sky in every image
    assert all(0 <= r["mask_fp@ground"] <= 1 and not math.isnan(r["depth_delta1@wall-sky"]) for r in rows)


# -- the report's breakdowns -------------------------------------------------------------------------


def _child(variant: str, seed: int, rows: np.ndarray, columns: dict[str, np.ndarray]) -> ChildRun:
    c = ChildRun(f"{variant}{seed}", f"{variant}-s{seed}", variant, seed, "finished", "", {}, {}, {})
    n = len(rows)
    c.per_image = PerImage(np.arange(n), columns, {"row": rows, "bg": np.zeros(n, dtype=np.int64)})
    return c


def _study(children: list[ChildRun], variants: list[str]) -> Study:
    seeds = sorted({c.seed for c in children})
    return Study("uri", "e", "1", "p", "p", "run", {}, {}, variants, seeds, children=children)


ROWS = np.array([0, 0, 1, 1, 2, 2, 3, 3, -1])  # the last image is a free placement: no row


def _iou(base: float, gains: list[float], seed: int) -> np.ndarray:
    values = np.array([base + gains[r] if r >= 0 else 0.5 for r in ROWS]) + 0.01 * seed
    values[1] += 0.02  # two images per row differ; their mean is what a seed scores on that row
    return values


def test_breakdown_by_row_per_seed_means_then_interval_and_sentence():
    gains = [0.01, 0.02, 0.03, 0.05]  # dice's lead grows as the fg shrinks, row 0 (90 px) to row 3 (60 px)
    kids = []
    for s in (0, 1, 2):
        kids.append(_child("bce", s, ROWS, {"mask_iou": _iou(0.7, [0, 0, 0, 0], s)}))
        kids.append(_child("dice", s, ROWS, {"mask_iou": _iou(0.7, gains, s)}))
    (b,) = [x for x in breakdowns(_study(kids, ["bce", "dice"])) if x.kind == "grid row"]
    assert b.ranking == ["dice", "bce"]
    assert b.levels == [ALL, "row 0 (90 px)", "row 1 (80 px)", "row 2 (70 px)", "row 3 (60 px)"]
    # seed means on row 0 for bce: (0.70 + 0.72) / 2 + 0.01 s -> 0.71, 0.72, 0.73: mean 0.72, t-interval
    s = b.summaries["bce"]["row 0 (90 px)"]
    half = sstats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert s.mean == pytest.approx(0.72) and s.high - s.mean == pytest.approx(half)
    assert b.per_seed["bce"]["row 0 (90 px)"] == pytest.approx({0: 0.71, 1: 0.72, 2: 0.73})
    for r, g in enumerate(gains):
        assert b.gain("dice", "bce", f"row {r} ({(90, 80, 70, 60)[r]} px)") == pytest.approx(g)
    text = sentence(b)
    assert text.startswith("dice's gain over bce in mask IoU is +0.05 on row 3 (60 px) and +0.01 on row 0 (90 px)")
    assert "exploratory" not in text
    headers, rows = table_rows(b)
    assert headers == ["grid row", "dice", "bce", "dice - bce"] and rows[4][-1] == "+0.05"


def test_lower_is_better_scores_rank_and_gain_the_right_way_and_nans_are_skipped():
    kids = []
    for s in (0, 1):
        n = len(ROWS)
        good = np.full(n, 0.1)
        bad = np.full(n, 0.3)
        bad[0] = np.nan  # an image without that region: skipped, not zero
        kids.append(_child("a", s, ROWS, {"depth_absrel": good, "depth_absrel@ground": good}))
        kids.append(_child("b", s, ROWS, {"depth_absrel": bad, "depth_absrel@ground": bad}))
    found = {(x.kind, x.metric): x for x in breakdowns(_study(kids, ["b", "a"]))}
    b = found[("region", "depth_absrel")]
    assert b.ranking == ["a", "b"] and b.levels == [ALL, "ground"]
    assert b.summaries["b"]["ground"].mean == pytest.approx(0.3)
    assert b.gain("a", "b", "ground") == pytest.approx(0.2)
    assert "a's gain over b in depth AbsRel is +0.2 on ground (exploratory: fewer than 3 seeds)" in sentence(b)
    assert ("grid row", "mask_iou") not in found  # no such column: no such breakdown


def test_a_study_without_region_columns_has_no_region_breakdown():
    kids = [_child("a", 0, ROWS, {"mask_iou": np.full(len(ROWS), 0.5)})]
    kinds = {x.kind for x in breakdowns(_study(kids, ["a"]))}
    assert kinds == {"grid row"}
    (b,) = breakdowns(_study(kids, ["a"]))
    assert "one variant only" in sentence(b)


def test_a_zero_gain_reads_zero_never_minus_zero():
    from losslab.reports.breakdown import format_gain

    # two variants with no false positives on a region differ by -0.0 in floating point
    assert format_gain(0.0 - 0.0) == format_gain(-0.0) == "0"
    assert (format_gain(0.05), format_gain(-0.00122)) == ("+0.05", "-0.00122")
