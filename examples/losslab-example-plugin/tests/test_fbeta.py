"""The F-beta metric against hand-worked counts and its relation to Dice."""

from __future__ import annotations

import pytest
import torch
from losslab.core import Registry

from losslab_example_plugin import FBetaScore, fbeta_score, lab_register_metrics


def test_hand_worked_counts() -> None:
    probs = torch.tensor([[[[0.9, 0.8, 0.1, 0.2]]], [[[0.9, 0.9, 0.9, 0.1]]]])
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]], [[[1.0, 1.0, 1.0, 1.0]]]])
    # image 0: TP=1 FP=1 FN=1 -> 5/(5+4+1); image 1: TP=3 FN=1 -> 15/(15+4)
    expected = torch.tensor([5 / 10, 15 / 19])
    assert torch.allclose(fbeta_score(probs, target), expected)


def test_beta_one_is_the_dice_of_the_binarised_mask() -> None:
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(4, 1, 6, 6, generator=gen)
    target = (torch.rand(4, 1, 6, 6, generator=gen) > 0.6).float()
    pred = (probs >= 0.5).float()
    dice = 2 * (pred * target).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + target.sum((1, 2, 3)))
    assert torch.allclose(fbeta_score(probs, target, beta=1.0), dice)


def test_empty_mask_predicted_empty_scores_one() -> None:
    zeros = torch.zeros(1, 1, 3, 3)
    assert fbeta_score(zeros, zeros).tolist() == [1.0]
    assert fbeta_score(torch.ones(1, 1, 3, 3), zeros).tolist() == [0.0]


def test_hook_registers_a_mask_metric() -> None:
    registry = Registry("metric")
    lab_register_metrics(registry=registry)
    metric = registry.get("f2-score").create()
    assert isinstance(metric, FBetaScore)
    assert metric.task == "mask" and metric.higher_is_better
    assert metric(torch.ones(2, 1, 2, 2), torch.ones(2, 1, 2, 2)).shape == (2,)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"f2-score.*\(B, 1, H, W\)"):
        fbeta_score(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
