"""The built-in baselines against hand-worked tiny cases and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losslab.core.plugin.contracts import Baseline
from losslab.plugins.baselines import GlobalMedian, ImageDifference, MaskPrior, MedianMap
from losslab.plugins.metrics import MaskIoU


def difference_batch(levels: list[list[int]], masks: list[list[int]]) -> dict[str, torch.Tensor]:
    """Images of 1 x W pixels whose max-over-channels difference is ``level / 255`` (on the green channel)."""
    n, w = len(levels), len(levels[0])
    bg = torch.full((n, 3, 1, w), 0.2)
    fg_bg = bg.clone()
    fg_bg[:, 1, 0] += torch.tensor(levels, dtype=torch.float32) / 255
    fg_bg[:, 0, 0] -= torch.tensor(levels, dtype=torch.float32) / 255 / 2  # smaller: the max ignores it
    mask = torch.tensor(masks, dtype=torch.float32).reshape(n, 1, 1, w)
    return {"bg": bg, "fg_bg": fg_bg, "mask": mask, "depth": torch.ones(n, 1, 1, w)}


def test_every_builtin_keeps_the_contract():
    for cls in (ImageDifference, MaskPrior, MedianMap, GlobalMedian):
        assert isinstance(cls(), Baseline)


def test_image_difference_picks_the_threshold_of_best_mean_iou_by_hand():
    # levels 10, 20, 30, 40 with fg at 20 and 40. Predict level > t:
    #   t < 10: all four, IoU 2/4;  10 <= t < 20: {20, 30, 40}, IoU 2/3;  20 <= t < 30: {30, 40}, IoU 1/3;
    #   30 <= t < 40: {40}, IoU 1/2;  t >= 40: nothing, IoU 0.   Best: t = 10 (the lowest of its run).
    baseline = ImageDifference()
    baseline.fit([difference_batch([[10, 20, 30, 40]], [[0, 1, 0, 1]])])
    assert baseline.threshold == 10
    assert baseline.train_iou == pytest.approx(2 / 3)
    pred = baseline.predict({k: v for k, v in difference_batch([[10, 11, 200, 0]], [[0, 0, 0, 0]]).items()
                             if k in ("bg", "fg_bg")})
    assert pred.tolist() == [[[[0.0, 1.0, 1.0, 0.0]]]]


def test_image_difference_averages_iou_per_image_and_an_empty_mask_scores_one_when_left_empty():
    # image A levels (0, 10, 30, 50), fg at 30 and 50; image B (5, 20, 40, 60), fg at 20, 40, 60;
    # image C (3, 7, 0, 2) has no fg: any t >= 7 leaves it empty (IoU 1), t < 7 marks something (IoU 0).
    # 10 <= t < 20 is perfect on A and B, so with C the best is t = 10, every image at IoU 1.
    batch = difference_batch([[0, 10, 30, 50], [5, 20, 40, 60], [3, 7, 0, 2]],
                             [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    baseline = ImageDifference()
    baseline.fit([batch])
    assert baseline.threshold == 10 and baseline.train_iou == pytest.approx(1.0)


def test_image_difference_matches_a_brute_force_search_with_the_iou_metric():
    gen = torch.Generator().manual_seed(3)
    bg = torch.randint(0, 256, (6, 3, 9, 7), generator=gen).float() / 255
    fg_bg = torch.randint(0, 256, (6, 3, 9, 7), generator=gen).float() / 255
    mask = (torch.rand(6, 1, 9, 7, generator=gen) > 0.6).float()
    batches = [{"bg": bg[:4], "fg_bg": fg_bg[:4], "mask": mask[:4]},
               {"bg": bg[4:], "fg_bg": fg_bg[4:], "mask": mask[4:]}]
    baseline = ImageDifference()
    baseline.fit(batches)
    diff = (fg_bg - bg).abs().amax(dim=1, keepdim=True)
    iou = MaskIoU()
    scores = [float(iou((diff * 255 > t + 0.5).float(), mask).mean()) for t in range(255)]
    assert baseline.threshold == int(np.argmax(scores))
    assert baseline.train_iou == pytest.approx(max(scores))


def test_image_difference_refuses_a_threshold_out_of_range():
    with pytest.raises(ValueError, match=r"0\.\.254"):
        ImageDifference(threshold=255)


def test_prior_thresholds_the_training_frequency_at_the_best_level_by_hand():
    # masks (1,0,0), (1,1,0), (1,0,0): frequencies (1, 1/3, 0). Candidate sets and mean IoU:
    #   {} 0;  {p0} (1 + 1/2 + 1) / 3 = 5/6;  {p0, p1} (1/2 + 1 + 1/2) / 3 = 2/3;  all (1/3 + 2/3 + 1/3) / 3 = 4/9.
    masks = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float32).reshape(3, 1, 1, 3)
    baseline = MaskPrior()
    baseline.fit([{"mask": masks[:2]}, {"mask": masks[2:]}])
    assert baseline.frequency.tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert baseline.level == pytest.approx(1 / 3)
    assert baseline.train_iou == pytest.approx(5 / 6)
    pred = baseline.predict({"bg": torch.zeros(2, 3, 1, 3), "fg_bg": torch.ones(2, 3, 1, 3)})
    assert pred.tolist() == [[[[1.0, 0.0, 0.0]]]] * 2  # the input is ignored


def test_prior_matches_a_brute_force_search_over_its_level_sets():
    gen = torch.Generator().manual_seed(5)
    masks = (torch.rand(12, 1, 4, 5, generator=gen) > 0.55).float()
    baseline = MaskPrior()
    baseline.fit([{"mask": masks}])
    frequency = masks.mean(0, keepdim=True)
    iou = MaskIoU()
    levels = [-1.0, *sorted(set(frequency.flatten().tolist()))]
    scores = {lv: float(iou((frequency > lv).float().expand_as(masks), masks).mean()) for lv in levels}
    best = max(scores.values())
    assert baseline.train_iou == pytest.approx(best)
    assert scores[min(scores, key=lambda lv: (-round(scores[lv], 12), -lv))] == pytest.approx(best)
    # ties go in together: the prediction is a level set of the frequency
    pred = baseline.predict({"bg": torch.zeros(1, 3, 4, 5), "fg_bg": torch.zeros(1, 3, 4, 5)})
    assert torch.equal(pred[0], (frequency[0] > baseline.level).float())


def test_prior_scores_blocks_of_images_as_one(monkeypatch):
    """The fit sums per-image IoUs over blocks of images (bounded memory); the block size changes nothing."""
    import losslab.plugins.baselines as baselines

    gen = torch.Generator().manual_seed(7)
    masks = (torch.rand(23, 1, 6, 5, generator=gen) > 0.6).float()
    fitted = {}
    for block in (1, 5, 1000):
        monkeypatch.setattr(baselines, "PRIOR_BLOCK", block)
        baseline = MaskPrior()
        baseline.fit([{"mask": masks[:10]}, {"mask": masks[10:]}])
        fitted[block] = (baseline.level, baseline.train_iou, baseline.frequency)
    for block in (1, 5):
        assert fitted[block][0] == fitted[1000][0]
        assert fitted[block][1] == pytest.approx(fitted[1000][1], abs=1e-12)
        assert torch.equal(fitted[block][2], fitted[1000][2])


def test_median_map_is_the_per_pixel_median_in_metres():
    depths = torch.tensor([[1.0, 10.0], [3.0, 20.0], [2.0, 30.0]]).reshape(3, 1, 1, 2)
    odd = MedianMap()
    odd.fit([{"depth": depths}])
    assert odd.map.tolist() == [[2.0, 20.0]]
    even = MedianMap()
    even.fit([{"depth": depths}, {"depth": torch.tensor([4.0, 40.0]).reshape(1, 1, 1, 2)}])
    assert even.map.tolist() == [[2.5, 25.0]]  # the mean of the two middle values, as numpy's median
    pred = even.predict({"bg": torch.zeros(3, 3, 1, 2), "fg_bg": torch.zeros(3, 3, 1, 2)})
    assert pred.shape == (3, 1, 1, 2) and pred[2].tolist() == [[[2.5, 25.0]]]


def test_median_map_agrees_with_numpy_and_refuses_another_image_size():
    gen = torch.Generator().manual_seed(1)
    depths = torch.rand(10, 1, 3, 4, generator=gen) * 50
    baseline = MedianMap()
    baseline.fit([{"depth": depths[:6]}, {"depth": depths[6:]}])
    assert np.allclose(baseline.map.numpy(), np.median(depths.numpy()[:, 0], axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="image_size"):
        baseline.predict({"bg": torch.zeros(1, 3, 4, 4), "fg_bg": torch.zeros(1, 3, 4, 4)})


def test_global_median_is_one_depth_everywhere():
    baseline = GlobalMedian()
    baseline.fit([{"depth": torch.tensor([1.0, 10.0]).reshape(1, 1, 1, 2)},
                  {"depth": torch.tensor([3.0, 2.0]).reshape(1, 1, 1, 2)}])
    assert baseline.value == pytest.approx(2.5)
    pred = baseline.predict({"bg": torch.zeros(2, 3, 2, 2), "fg_bg": torch.zeros(2, 3, 2, 2)})
    assert pred.shape == (2, 1, 2, 2) and pred.unique().tolist() == [2.5]


@pytest.mark.parametrize("cls", [ImageDifference, MaskPrior, MedianMap, GlobalMedian])
def test_fit_without_batches_and_predict_before_fit_say_what_to_do(cls):
    with pytest.raises(ValueError, match="no training batches"):
        cls().fit([])
    with pytest.raises(RuntimeError, match="before fit"):
        cls().predict({"bg": torch.zeros(1, 3, 2, 2), "fg_bg": torch.zeros(1, 3, 2, 2)})
